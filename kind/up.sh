#!/usr/bin/env bash
# oauth3 on a local kind cluster, for users with Docker: creates the cluster, builds and loads
# the operator and runner images, and installs the chart with the pod launcher over a plain
# runc RuntimeClass. DEVELOPMENT ONLY: sandbox Pods are ordinary containers, NOT confidential.
#
#   kind/up.sh            create (or reuse) the cluster `oauth3` and install
#   kind/up.sh down       delete the cluster
#   RUNTIME=kata-qemu kind/up.sh   use Kata's kata-qemu RuntimeClass instead (install Kata first,
#                                  see kind/README.md; a VM per sandbox, still NOT confidential)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=${CLUSTER:-oauth3}
NS=${NS:-oauth3-system}
AGENTS=${AGENTS:-agents}
TAG=${TAG:-dev}
RUNTIME=${RUNTIME:-runc}
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "up.sh: $tool is required" >&2; exit 1; }
done
if [ "${1:-}" = down ]; then kind delete cluster --name "$CLUSTER"; exit 0; fi

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config "$repo/kind/cluster.yaml" --name "$CLUSTER"
kubectl config use-context "kind-$CLUSTER" >/dev/null

echo "== building images (static binaries, multi-stage; the first build takes a while)"
docker build -f "$repo/operator/Dockerfile" -t "ghcr.io/oauth3/operator:$TAG" "$repo"
docker build -f "$repo/sandbox-runner/Dockerfile" -t "ghcr.io/oauth3/sandbox-runner:$TAG" "$repo"
kind load docker-image --name "$CLUSTER" "ghcr.io/oauth3/operator:$TAG" "ghcr.io/oauth3/sandbox-runner:$TAG"

kubectl create namespace "$AGENTS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
if [ "$RUNTIME" = runc ]; then
  runtime_args=(--set runtimeClass.create=true --set runtimeClass.name=oauth3-dev-runc
                --set runtimeClass.handler=runc --set sandbox.runtimeClassName=oauth3-dev-runc)
else
  runtime_args=(--set "sandbox.runtimeClassName=$RUNTIME")
fi
echo "== installing the chart (sandbox RuntimeClass: $RUNTIME; NOT confidential)"
helm upgrade --install oauth3 "$repo/charts/oauth3" -n "$NS" --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=Never --set sandbox.runnerImage.tag="$TAG" \
  --set "sandbox.defaultDenyNetworkPolicy.namespaces={$AGENTS}" --set sandbox.attestation=none \
  "${runtime_args[@]}" --wait
kubectl -n "$NS" get pods -l app.kubernetes.io/name=oauth3-operator
cat <<MSG

oauth3 runs in namespace $NS; agents use namespace $AGENTS.
  kubectl -n $AGENTS apply -f examples/permit-weather-typed.yaml   # an agent's request
  kubectl oauth3 -n $AGENTS get weather                            # the owner reviews
Sandboxes here are plain containers (RuntimeClass $RUNTIME): NOT confidential, and without a
key broker they cannot open sealed secrets; see kind/README.md.
MSG
