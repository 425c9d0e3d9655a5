#!/usr/bin/env bash
# `make demo`: the main flow end to end on a local control plane, with the real binaries.
# An agent requests a Permit for a (stand-in) GitHub issues API, the owner reviews and approves
# it with `kubectl oauth3`, the agent submits Executions, and the operator runs each in the
# sandbox runner (process launcher: no TEE here), which injects the owner's sealed token. Then
# the same over plain HTTP through the agent gateway: an agent signs up, asks with curl, the
# owner approves on the gateway's web page, the agent runs code and long-polls for the result.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
D=${OAUTH3_DEMO_DIR:-$repo/.demo}
NS=oauth3-demo
BIN=$repo/target/debug
# Headings in bold on a terminal only (and never with NO_COLOR): a piped or logged demo stays
# plain text.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi
pids=()
started_cluster=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$started_cluster" ]; then bash tests/cluster/control-plane.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "Building oauth3 (operator, kubectl plugin, sandbox runner, gateway)"
cargo build -q --bins
rm -rf "$D"; mkdir -p "$D"

say "Starting a local control plane (etcd + kube-apiserver)"
bash tests/cluster/control-plane.sh status >/dev/null 2>&1 || started_cluster=1
KUBECONFIG=$(bash tests/cluster/control-plane.sh up | tail -n1)
export KUBECONFIG
kubectl apply --server-side -f charts/oauth3/crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/permits.oauth3.dev crd/executions.oauth3.dev >/dev/null
kubectl create namespace "$NS" >/dev/null 2>&1 || true
kubectl() { command kubectl -n "$NS" "$@"; }
oauth3() { "$BIN/kubectl-oauth3" -n "$NS" "$@"; }

say "Starting a stand-in for api.github.com (HTTPS on loopback, records what it receives)"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=demo-ca -keyout "$D/ca.key" -out "$D/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$D/up.key" -out "$D/up.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$D/up.cnf"
openssl x509 -req -in "$D/up.csr" -CA "$D/ca.crt" -CAkey "$D/ca.key" -CAcreateserial -days 1 -extfile "$D/up.cnf" -out "$D/up.crt" 2>/dev/null
python3 demo/upstream.py --cert "$D/up.crt" --key "$D/up.key" --port-file "$D/up.port" --log "$D/upstream.log" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$D/up.port" ] && break; sleep 0.1; done
UP="https://127.0.0.1:$(cat "$D/up.port")"
echo "upstream: $UP"

say "The enclave key (development key provider: NOT confidential, demo only)"
openssl rand -hex 32 > "$D/dev.key"
PK=$("$BIN/oauth3-sandbox-runner" public-key --key-provider dev --dev-key-file "$D/dev.key" --insecure-dev-key)
echo "public key: $PK"

say "The owner seals their GitHub token to that key (only the runner can open it)"
TOKEN="ghp_demo_$(openssl rand -hex 10)"
oauth3 seal GITHUB_TOKEN --public-key "$PK" --from-literal "$TOKEN" --apply

say "Starting the operator (process launcher)"
"$BIN/oauth3-operator" --namespace "$NS" --leader-elect=false --metrics-addr 127.0.0.1:0 \
  --launcher process --attestation none --runner-binary "$BIN/oauth3-sandbox-runner" \
  --runner-arg=--key-provider --runner-arg=dev --runner-arg=--dev-key-file --runner-arg="$D/dev.key" \
  --runner-arg=--insecure-dev-key --runner-arg=--ca-file --runner-arg="$D/ca.crt" \
  --callback-addr 127.0.0.1:0 > "$D/operator.log" 2>&1 &
pids+=($!)

say "The agent requests a Permit (examples/permit-github-issues.yaml, pointed at the stand-in)"
sed "s|https://api.github.com|$UP|" examples/permit-github-issues.yaml | kubectl apply -f - >/dev/null
kubectl wait --for=jsonpath='{.status.phase}'=Pending --timeout=60s permit/github-issues >/dev/null
kubectl get permits

say "What the owner reviews: kubectl oauth3 get github-issues"
oauth3 get github-issues

say "The owner approves it: kubectl oauth3 approve github-issues"
oauth3 approve github-issues
kubectl wait --for=jsonpath='{.status.phase}'=Approved --timeout=60s permit/github-issues >/dev/null

say "The agent submits Executions"
kubectl apply -f examples/execution-list-issues.yaml -f examples/execution-create-issue.yaml >/dev/null
cat > "$D/sneaky.yaml" <<YAML
apiVersion: oauth3.dev/v1alpha1
kind: Execution
metadata: {name: try-to-escape}
spec:
  permitRef: github-issues
  code: |
    const tries = [];
    for (const [m, p] of [['DELETE', '/repos/owner/repo/issues/1'], ['GET', '/user/repos'],
                          ['GET', '/repos/owner/repo/issues/%2e%2e/%2e%2e/secrets']]) {
      try { await github(m, p); tries.push('sent ' + p); } catch (e) { tries.push(e.message); }
    }
    console.log(typeof fetch, typeof require, typeof process);
    return tries;
YAML
kubectl apply -f "$D/sneaky.yaml" >/dev/null
for e in count-open-issues file-flaky-test-issue try-to-escape; do
  for _ in $(seq 1 300); do
    p=$(kubectl get execution "$e" -o 'jsonpath={.status.phase}' 2>/dev/null || true)
    case "$p" in Succeeded|Failed|Denied|TimedOut) break ;; esac
    sleep 0.2
  done
done
kubectl get executions

for e in count-open-issues file-flaky-test-issue try-to-escape; do
  say "kubectl oauth3 logs $e"
  oauth3 logs "$e"
done

say "Calls without code: a Permit with spec.proxy (examples/permit-github-proxy.yaml)"
kubectl apply --server-side -f charts/oauth3/templates/user-clusterroles.yaml >/dev/null
kubectl create serviceaccount coder >/dev/null 2>&1 || true
kubectl create rolebinding coder --clusterrole=oauth3-agent --serviceaccount="$NS:coder" >/dev/null 2>&1 || true
sed "s|https://api.github.com|$UP|" examples/permit-github-proxy.yaml | kubectl apply -f - >/dev/null
kubectl wait --for=jsonpath='{.status.phase}'=Pending --timeout=60s permit/github-proxy >/dev/null
oauth3 approve github-proxy
kubectl wait --for=jsonpath='{.status.proxy.phase}'=Ready --timeout=60s permit/github-proxy >/dev/null
PROXY=$(kubectl get permit github-proxy -o 'jsonpath={.status.proxy.endpoint}')
echo "the operator started its proxy at $PROXY"
CODER=$(kubectl create token coder)
echo "the agent's GitHub client, with its own Kubernetes token as the API key:"
curl -s -H "Authorization: Bearer $CODER" "$PROXY/github/repos/owner/repo/issues?state=open"; echo
echo "a call the Permit does not allow (refused in the proxy, nothing sent):"
curl -s -H "Authorization: Bearer $CODER" "$PROXY/github/user/repos"; echo
echo "another identity (the owner approved only coder):"
kubectl create serviceaccount intruder >/dev/null 2>&1 || true
curl -s -H "Authorization: Bearer $(kubectl create token intruder)" "$PROXY/github/repos/owner/repo/issues"; echo
for _ in $(seq 1 50); do
  [ "$(kubectl get configmap oauth3-proxy-log-github-proxy -o 'jsonpath={.data.calls\.jsonl}' 2>/dev/null | grep -c .)" -ge 2 ] && break
  sleep 0.2
done
say "kubectl oauth3 logs permit/github-proxy"
oauth3 logs permit/github-proxy
say "The owner revokes it: the proxy stops"
oauth3 revoke github-proxy
kubectl wait --for=jsonpath='{.status.proxy.phase}'=Stopped --timeout=60s permit/github-proxy >/dev/null
kubectl get permit github-proxy -o 'jsonpath={.status.proxy.reason}: {.status.proxy.message}'; echo

say "The agent gateway: the same flow over HTTP (curl); an agent signs up for its own namespace"
kubectl create serviceaccount demo-owner >/dev/null 2>&1 || true
GP=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GW="http://127.0.0.1:$GP"
"$BIN/oauth3-gateway" --listen "127.0.0.1:$GP" --public-url "$GW" --long-poll 10s \
  --enclave-public-key "$PK" --signup-namespace-prefix oauth3-demo-agent- > "$D/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do curl -sf "$GW/health" >/dev/null && break; sleep 0.1; done
echo "gateway: $GW"
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {"d": d, "json": json}))' "$1"; }
curl -s "$GW/signup" -d '{"name": "agent"}' > "$D/signup.json"
json 'json.dumps({k: (v[:16] + "…" if k in ("token", "jwt", "api_key") else v) for k, v in d.items()}, indent=1)' < "$D/signup.json"
AGENT=$(json 'd["jwt"]' < "$D/signup.json")
TENANT=$(json 'd["tenant_id"]' < "$D/signup.json")
echo "an owner cannot be signed up:"
curl -s "$GW/signup" -d '{"name": "me", "role": "owner"}'; echo

say "The admin makes the owner the approver of the new namespace; the owner seals the token there through the gateway"
command kubectl -n "$TENANT" create rolebinding demo-owner --clusterrole=oauth3-owner --serviceaccount="$NS:demo-owner" >/dev/null
OWNER=$(kubectl create token demo-owner)
curl -s -H "Authorization: Bearer $OWNER" -H "X-OAuth3-Namespace: $TENANT" "$GW/secrets" \
  -d '{"name": "GITHUB_TOKEN", "value": "'"$TOKEN"'"}' | sed "s/$TOKEN/LEAKED/"; echo
"$BIN/oauth3-operator" --namespace "$TENANT" --leader-elect=false --metrics-addr 127.0.0.1:0 \
  --launcher process --runner-binary "$BIN/oauth3-sandbox-runner" \
  --runner-arg=--key-provider --runner-arg=dev --runner-arg=--dev-key-file --runner-arg="$D/dev.key" \
  --runner-arg=--insecure-dev-key --runner-arg=--ca-file --runner-arg="$D/ca.crt" \
  --callback-addr 127.0.0.1:0 > "$D/operator-tenant.log" 2>&1 &
pids+=($!)

say "The agent asks for a Permit: POST /permit (the hosted quick start's api-gateway form)"
curl -s -H "Authorization: Bearer $AGENT" "$GW/permit" -d '{
  "description": "File one issue on owner/repo",
  "capabilities": [{"name": "github.createIssue", "method": "POST",
    "endpoint": "'"$UP"'/repos/{owner}/{repo}/issues",
    "auth": {"header": "Authorization", "value": "token {GITHUB_TOKEN}"},
    "params": {"owner": {"in": "path"}, "repo": {"in": "path"},
               "title": {"in": "body"}, "body": {"in": "body"}}}]}' > "$D/permit.json"
json 'json.dumps({k: d[k] for k in ("request_id", "status", "permit_id", "capabilities", "spec_digest")}, indent=1)' < "$D/permit.json"
APPROVAL_URL=$(json 'd["approval_url"]' < "$D/permit.json")
STATUS_URL=$(json 'd["status_url"]' < "$D/permit.json")
PERMIT_ID=$(json 'd["permit_id"]' < "$D/permit.json")
echo "approval_url: $APPROVAL_URL"

say "The link alone cannot approve"
curl -s "$APPROVAL_URL" -H 'Content-Type: application/json' -d '{"action": "approve"}'; echo

say "The owner opens the approval page (the same text as kubectl oauth3 get) and approves with their token"
curl -s -c "$D/cookies" -H 'Accept: text/html' "$APPROVAL_URL" > "$D/page.html"
python3 -c 'import html,re,sys; print(html.unescape(re.search(r"<pre id=\"permit\">(.*?)</pre>", open(sys.argv[1]).read(), re.S).group(1)))' "$D/page.html"
CSRF=$(sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' "$D/page.html")
curl -s -b "$D/cookies" "$APPROVAL_URL" --data-urlencode "csrf=$CSRF" --data-urlencode "owner_token=$OWNER" \
  --data-urlencode action=approve | sed -n 's/.*<h1 id="result">\(.*\)<\/h1>.*/\1/p'

say "The agent's long-poll on status_url (no headers: the URL carries a read-only token)"
curl -s "$STATUS_URL"; echo

say "The agent runs code: POST /execute, then long-polls the result"
curl -s -H "Authorization: Bearer $AGENT" "$GW/execute" -d '{"permit_id": "'"$PERMIT_ID"'",
  "code": "const r = await createIssue(\"owner\", \"repo\", \"Filed through the gateway\", \"From oauth3\"); console.log(JSON.stringify(r)); return r.number;"}' > "$D/exec.json"
EXEC_URL=$(json 'd["status_url"]' < "$D/exec.json")
for _ in $(seq 1 30); do
  curl -s "$EXEC_URL" > "$D/result.json"
  case "$(json 'd["status"]' < "$D/result.json")" in completed|failed|denied) break ;; esac
done
json 'json.dumps(d, indent=1)' < "$D/result.json"
[ "$(json 'd["status"]' < "$D/result.json")" = completed ]

say "What the upstream received (the token was injected inside the runner)"
python3 - "$D/upstream.log" "$TOKEN" <<'PY'
import json, sys
token = sys.argv[2]
for line in open(sys.argv[1]):
    r = json.loads(line)
    auth = (r["authorization"] or "").replace(token, token[:12] + "…")
    print(f'{r["method"]:5} {r["path"]:55} Authorization: {auth}')
PY

say "Where the token does NOT appear"
leaks=$(command kubectl get permits,executions,events -A -o json | grep -c "$TOKEN" || true)
echo "occurrences of the token in Permits, Executions and Events (all namespaces): $leaks"
grep -q "$TOKEN" "$D/operator.log" && echo "operator log: LEAKED" || echo "occurrences in the operator log: 0"
grep -q "$TOKEN" "$D/gateway.log" "$D/operator-tenant.log" && echo "gateway log: LEAKED" || echo "occurrences in the gateway log: 0"
[ "$leaks" = 0 ]
say "Done. The control plane is $( [ -n "$started_cluster" ] && echo "stopped on exit" || echo "left running (make cluster-down)")."
