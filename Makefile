# oauth3: every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
CLUSTER := tests/cluster/control-plane.sh
CHART := charts/oauth3

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

.PHONY: generate
generate: ## Regenerate the CRD YAML in charts/oauth3/crds from the Rust types
	$(CARGO) run -q -p oauth3-crds --bin crdgen -- charts/oauth3/crds

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: control-plane
control-plane: ## Build (once, cached) kube-apiserver, etcd and kwok from the Go modules
	bash .ci/k8s/build-bins.sh

.PHONY: helm
helm: ## Build (once, cached) helm from its Go module
	bash .ci/k8s/build-helm.sh

.PHONY: oidc-provider
oidc-provider: ## Build (once, cached) the tests' OpenID provider from github.com/zitadel/oidc/v3
	bash .ci/oidc/build.sh

.PHONY: chart-check
chart-check: helm ## helm lint --strict and helm template of the chart (default and everything-on values)
	@helm=$$(bash .ci/k8s/build-helm.sh | tail -n1) && set -x && \
	"$$helm" lint --strict $(CHART) && \
	"$$helm" lint --strict $(CHART) -f $(CHART)/ci/everything-values.yaml && \
	"$$helm" template oauth3 $(CHART) -n oauth3-system --include-crds >/dev/null && \
	"$$helm" template oauth3 $(CHART) -n oauth3-system --include-crds -f $(CHART)/ci/everything-values.yaml >/dev/null

.PHONY: node
node: ## Build (once, cached) the real-node tier: kubelet, kube-proxy, kube-scheduler, containerd, runc, CNI plugins, kube-router
	bash .ci/k8s/build-node.sh

.PHONY: test
test: lint control-plane oidc-provider node chart-check ## Every test tier: lint, chart, unit, schema + controller tests on a real kube-apiserver, pods on kwok, sandbox Pods on a real node
	OAUTH3_HELM=$$(bash .ci/k8s/build-helm.sh | tail -n1) OAUTH3_CILIUM_CRD=$$(bash .ci/k8s/cilium-crd.sh | tail -n1) REQUIRE_K8S=1 bash $(CLUSTER) run $(CARGO) test --workspace --all-targets
	$(MAKE) --no-print-directory test-node

.PHONY: test-node
test-node: control-plane node ## The real-node tier alone: its own control plane, a real node (tests/cluster/node.sh), tests/tests/node_pods.rs
	OAUTH3_CLUSTER_DIR=$(CURDIR)/.cluster-node REQUIRE_K8S=1 REQUIRE_NODE=1 bash $(CLUSTER) run bash tests/cluster/node.sh run $(CARGO) test -p oauth3-tests --test node_pods

.PHONY: cluster-up
cluster-up: ## Start etcd + kube-apiserver on loopback; prints the KUBECONFIG to use
	@kc=$$(bash $(CLUSTER) up | tail -n1) && echo "export KUBECONFIG=$$kc"

.PHONY: cluster-down
cluster-down: ## Stop the control plane started by cluster-up
	bash $(CLUSTER) down

.PHONY: demo
demo: control-plane ## Run the main flow end to end on the local control plane (real binaries)
	bash demo/run.sh
