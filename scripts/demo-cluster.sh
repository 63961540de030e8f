#!/usr/bin/env bash
# The main job on the local cluster: bring up the test bed, apply the CRD and an example, run the
# operator, send a traffic burst, and watch `kubectl get llmd` follow it. Ctrl-C stops the operator.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
KUBECTL=${KUBECTL:-$HOME/.cache/llmscale/kubernetes-v1.36.3/kubectl}
export KUBECONFIG=$ROOT/e2e/.state/kubeconfig
e2e/cluster up
"$KUBECTL" apply --server-side --force-conflicts -f crds/llmdeployments.llmscale.io.yaml >/dev/null
# (not `kubectl wait`: it fails at once while a new CRD has no condition yet)
for _ in $(seq 200); do
  [ "$("$KUBECTL" get crd llmdeployments.llmscale.io -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ] && break
  sleep 0.3
done
sed 's/interval: 15s/interval: 5s/; s/stabilizationWindow: 300s/stabilizationWindow: 60s/' examples/llama-8b-h100.yaml | "$KUBECTL" apply -f -
llmscale run --kubeconfig "$KUBECONFIG" --prometheus-url http://127.0.0.1:19090 --metrics-port 18080 --health-port 18081 \
  > e2e/.state/logs/operator-demo.log 2>&1 &
OP=$!
trap 'kill $OP 2>/dev/null; curl -s -X PUT localhost:18000/traffic/default/llama-8b -d "{\"rate\": 0}" >/dev/null' EXIT
traffic() { curl -fsS -X PUT localhost:18000/traffic/default/llama-8b -d "{\"rate\": $1, \"meanInput\": 1000, \"meanOutput\": 200}" >/dev/null; }
watch_for() { local end=$((SECONDS + $1)); while [ $SECONDS -lt $end ]; do
  "$KUBECTL" get llmd llama-8b --no-headers | sed "s/^/[t+$((SECONDS - T0))s] /"; sleep 5; done; }
T0=$SECONDS
echo "== 4 req/s for 40 s"; traffic 4; watch_for 40
echo "== burst: 40 req/s for 90 s"; traffic 40; watch_for 90
echo "== back to 4 req/s: replicas fall after the 60 s scale-down window"; traffic 4; watch_for 120
echo; "$KUBECTL" get events --field-selector involvedObject.name=llama-8b --sort-by=.lastTimestamp | tail -12
echo; llmscale explain llama-8b --kubeconfig "$KUBECONFIG" --prometheus-url http://127.0.0.1:19090
echo; echo "the test bed is still up: e2e/cluster down stops it"
