# oauth3: every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
CLUSTER := tests/cluster/control-plane.sh

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

.PHONY: test
test: lint control-plane ## Every test tier: lint, unit, schema + controller tests on a real kube-apiserver
	REQUIRE_K8S=1 bash $(CLUSTER) run $(CARGO) test --workspace --all-targets

.PHONY: cluster-up
cluster-up: ## Start etcd + kube-apiserver on loopback; prints the KUBECONFIG to use
	@kc=$$(bash $(CLUSTER) up | tail -n1) && echo "export KUBECONFIG=$$kc"

.PHONY: cluster-down
cluster-down: ## Stop the control plane started by cluster-up
	bash $(CLUSTER) down

.PHONY: demo
demo: control-plane ## Run the main flow end to end on the local control plane (real binaries)
	bash demo/run.sh
