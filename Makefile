# kubectl-apiproxy: build, test and benchmark targets. `make help` lists them.
SHELL := /usr/bin/env bash

MODULE    := github.com/apiproxy/apiproxy
# `make release` wants the version named (VERSION=vX.Y.Z), not guessed: remember where it came from.
VERSION_ORIGIN := $(origin VERSION)
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

# Where hack/test-assets.sh keeps kube-apiserver, etcd and kubectl (outside the repository; the node
# binaries of test/harness/realnode are in `hack/test-assets.sh --node-dir`).
ASSETS = $(shell hack/test-assets.sh --dir)
TEST_TIMEOUT ?= 20m

.PHONY: help build test unit test-assets e2e bench lint clean demo demo-down fuzz

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/kubectl-apiproxy and bin/agent with the version stamped in
	go build $(GOFLAGS_BUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/kubectl-apiproxy ./cmd/kubectl-apiproxy
	go build $(GOFLAGS_BUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/agent ./cmd/agent

test-assets: ## build the test kube-apiserver, etcd, kubectl and the real-node binaries (skipped when already built)
	hack/test-assets.sh

unit: ## unit tests only (no API server, no root)
	go test -short ./...

test: test-assets ## unit + integration + e2e tests against real API servers (root runs the netns tests)
	KUBEBUILDER_ASSETS=$(ASSETS) go test -count=1 -timeout $(TEST_TIMEOUT) ./...

e2e: test-assets ## only the end-to-end tests (test/e2e)
	KUBEBUILDER_ASSETS=$(ASSETS) go test -count=1 -timeout $(TEST_TIMEOUT) -v ./test/e2e/...

bench: test-assets ## benchmarks with ratios against baselines measured in the same run
	KUBEBUILDER_ASSETS=$(ASSETS) go run ./test/bench

demo: ## the seed's cl01/cl02 example on this machine (as root on Linux: cl02 on a real node, the agents as pods)
	VERSION=$(VERSION) hack/demo.sh up

demo-down: ## stop what `make demo` started, by PID, and clean the real node up
	hack/demo.sh down

FUZZTIME ?= 1m
# Every fuzz target as package:Target; `go test` always runs their corpus (testdata/fuzz).
FUZZ_TARGETS := pkg/proxy:FuzzParseConnectRequest pkg/proxy:FuzzParseAuthority pkg/proxy:FuzzAllowListMatch \
	pkg/proxy:FuzzLogsNeverShowHeaderText \
	pkg/webhook:FuzzWebhookPatch pkg/webhook:FuzzHandleReview pkg/remap:FuzzRemap

fuzz: ## run every fuzz target for FUZZTIME each (default 1m; CI runs them for 10s each)
	for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; f=$${t#*:}; \
	  go test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) ./$$pkg/ || exit 1; done

lint: ## gofmt, go vet, and the plugin vetted for the krew platforms (darwin, windows)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	GOOS=darwin go vet ./cmd/kubectl-apiproxy/... ./pkg/cmd/plugin/... ./pkg/connect/... ./pkg/tunnel/...
	GOOS=windows go vet ./cmd/kubectl-apiproxy/... ./pkg/cmd/plugin/... ./pkg/connect/... ./pkg/tunnel/...

clean: ## remove build outputs (the test assets cache stays; delete $(ASSETS) by hand)
	rm -rf $(BIN) dist

# --- release packaging (issues 7 and 21) -------------------------------------------------------------
.PHONY: image dist release

IMAGE_REPO ?= ghcr.io/apiproxy/agent
IMAGE     ?= $(IMAGE_REPO):$(VERSION)
# The plugin's platforms; plugins/krew.yaml has one entry per platform (hack/release checks both ways).
PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64
# The agent image's platforms (arm64 needs `dpkg --add-architecture arm64 && apt-get update` once).
IMAGE_PLATFORMS ?= linux/amd64 linux/arm64
DIST      ?= dist

# No Docker: hack/image assembles the image with go-containerregistry from the static agent and the
# iptables userspace of Debian's packages (apt-get download), for this machine's architecture.
image: ## write the agent image $(IMAGE) as an OCI archive, $(DIST)/agent-image.tar (no Docker needed)
	GOOS=linux go build $(GOFLAGS_BUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/linux/agent ./cmd/agent
	go run ./hack/image -agent $(BIN)/linux/agent -ref $(IMAGE) -version $(VERSION) -o $(DIST)/agent-image.tar

# hack/release writes, reproducibly (times from SOURCE_DATE_EPOCH, default the commit's time): the
# multi-platform agent image as an OCI layout ($(DIST)/agent-image/, and as agent-image.oci.tar), the
# plugin archives kubectl-apiproxy_<version>_<os>_<arch>.tar.gz (.zip on Windows) whose plugin defaults
# to $(IMAGE_REPO):<version>@sha256:<index digest>, the rendered krew manifest apiproxy.yaml, CycloneDX
# SBOMs and checksums.txt. The release workflow only pushes and uploads what it wrote.
release: ## the release into $(DIST)/: make release VERSION=vX.Y.Z (multi-arch agent image, archives, krew manifest, SBOMs, checksums)
	@case "$(VERSION_ORIGIN)" in "command line"|environment) ;; \
	  *) echo "make release needs the version being released: make release VERSION=v1.2.3" >&2; exit 2 ;; esac
	go run ./hack/release -version $(VERSION) -dist $(DIST) -image-repo $(IMAGE_REPO) \
	  -platforms "$(PLATFORMS)" -image-platforms "$(IMAGE_PLATFORMS)"

# The plugin archives, krew manifest and checksums.txt only (no image, no SBOM): a quick krew test.
dist: ## plugin archives for krew (linux/darwin amd64+arm64, windows amd64), apiproxy.yaml and checksums.txt, into dist/
	go run ./hack/release -plugins-only -version $(VERSION) -dist $(DIST) -image-repo $(IMAGE_REPO) -platforms "$(PLATFORMS)"
