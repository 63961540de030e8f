{{- define "llmscale.name" -}}llmscale{{- end -}}
{{- define "llmscale.fullname" -}}{{ .Release.Name }}{{- end -}}
{{- define "llmscale.labels" -}}
app.kubernetes.io/name: llmscale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "llmscale.selector" -}}
app.kubernetes.io/name: llmscale
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
