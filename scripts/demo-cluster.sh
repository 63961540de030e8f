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
llmscale run --kubeconfig "$KUBECONFIG" --prometheus-url http://127.0.0.1:19090 --metrics-port 18080 --health-port 18081 \
  > e2e/.state/logs/operator-demo.log 2>&1 &
OP=$!
# On the way out the demo's LLMDeployment goes too, while the operator still runs (its finalizer):
# its pods would hold H100s of the test bed that `make test` fills.
trap 'curl -s -X PUT localhost:18000/traffic/default/llama-8b -d "{\"rate\": 0}" >/dev/null
      "$KUBECTL" delete llmd llama-8b --ignore-not-found --wait=true --timeout=60s >/dev/null; kill $OP 2>/dev/null' EXIT
# A fresh start: an LLMDeployment left by an earlier run remembers its bursts (and would hold for
# one). The operator is running, so its finalizer lets the old one go.
"$KUBECTL" delete llmd llama-8b --ignore-not-found --wait=true --timeout=120s >/dev/null
sed 's/interval: 15s/interval: 5s/; s/stabilizationWindow: 300s/stabilizationWindow: 60s/' examples/llama-8b-h100.yaml | "$KUBECTL" apply -f -
traffic() { curl -fsS -X PUT localhost:18000/traffic/default/llama-8b -d "{\"rate\": $1, \"meanInput\": 1000, \"meanOutput\": 200}" >/dev/null; }
# Print `kubectl get llmd` every 5 s for $1 seconds, or (with $2) until READY is at most $2.
watch_for() { local end=$((SECONDS + $1)) row; while [ $SECONDS -lt $end ]; do
  row=$("$KUBECTL" get llmd llama-8b --no-headers); echo "$row" | sed "s/^/[t+$((SECONDS - T0))s] /"
  [ -n "${2:-}" ] && [ "$(echo "$row" | awk '{print $5}')" -le "$2" ] 2>/dev/null && return 0
  sleep 5; done; [ -z "${2:-}" ] || echo "(READY still above $2 after $1 s)"; }
T0=$SECONDS
echo "== 4 req/s for 40 s"; traffic 4; watch_for 40
echo "== burst: 40 req/s for 90 s"; traffic 40; watch_for 90
# The burst leaves the 1 m rate window a minute after it ends; the scale-down window (60 s here)
# then has to see only low recommendations: the replicas fall about two minutes after the burst.
echo "== back to 4 req/s: replicas fall once the 1 m rate window and the 60 s scale-down window have passed the burst"
traffic 4; watch_for 300 1
echo; "$KUBECTL" get events --field-selector involvedObject.name=llama-8b --sort-by=.lastTimestamp | tail -12
echo; llmscale explain llama-8b --kubeconfig "$KUBECONFIG" --prometheus-url http://127.0.0.1:19090
echo; echo "the test bed is still up (the demo's LLMDeployment is deleted on exit): e2e/cluster down stops it"
