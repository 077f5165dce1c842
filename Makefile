# kubectl-apiproxy: build, test and benchmark targets. `make help` lists them.
SHELL := /usr/bin/env bash

MODULE    := github.com/apiproxy/apiproxy
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
# krew and `version` want a v-prefixed semantic version; a bare commit hash becomes v0.0.0-<hash>.
VERSION   := $(if $(filter v%,$(VERSION)),$(VERSION),v0.0.0-$(VERSION))
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILDDATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS   := -s -w \
	-X $(MODULE)/pkg/version.Version=$(VERSION) \
	-X $(MODULE)/pkg/version.GitCommit=$(COMMIT) \
	-X $(MODULE)/pkg/version.BuildDate=$(BUILDDATE)
BIN       := bin
GOFLAGS_BUILD := -trimpath
export CGO_ENABLED ?= 0

# Where hack/test-assets.sh keeps kube-apiserver, etcd and kubectl (outside the repository).
ASSETS = $(shell hack/test-assets.sh --dir)
TEST_TIMEOUT ?= 20m

.PHONY: help build test unit test-assets e2e bench lint clean demo demo-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/kubectl-apiproxy and bin/agent with the version stamped in
	go build $(GOFLAGS_BUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/kubectl-apiproxy ./cmd/kubectl-apiproxy
	go build $(GOFLAGS_BUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/agent ./cmd/agent

test-assets: ## build the test kube-apiserver, etcd and kubectl (skipped when already built)
	hack/test-assets.sh

unit: ## unit tests only (no API server, no root)
	go test -short ./...

test: test-assets ## unit + integration + e2e tests against real API servers (root runs the netns tests)
	KUBEBUILDER_ASSETS=$(ASSETS) go test -count=1 -timeout $(TEST_TIMEOUT) ./...

e2e: test-assets ## only the end-to-end tests (test/e2e)
	KUBEBUILDER_ASSETS=$(ASSETS) go test -count=1 -timeout $(TEST_TIMEOUT) -v ./test/e2e/...

bench: test-assets ## benchmarks with ratios against baselines measured in the same run
	KUBEBUILDER_ASSETS=$(ASSETS) go run ./test/bench

demo: ## the seed's cl01/cl02 example on this machine: get-ip and connect, end to end
	hack/demo.sh up

demo-down: ## stop what `make demo` started
	hack/demo.sh down

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...

clean: ## remove build outputs (the test assets cache stays; delete $(ASSETS) by hand)
	rm -rf $(BIN) dist
