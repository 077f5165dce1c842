# syntax=docker/dockerfile:1
# The agent image: one static binary, every role (proxy, node, webhook) as a subcommand.
#
#   make image                      # docker build -t $(IMAGE) .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/apiproxy/agent:v0.1.0 .

ARG GO_VERSION=1.26

# Build stage: cross-compiles on the build machine's architecture (no emulation) into a static binary.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-trixie AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=v0.0.0-dev
ARG COMMIT=unknown
ARG BUILDDATE=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath \
      -ldflags "-s -w \
        -X github.com/apiproxy/apiproxy/pkg/version.Version=${VERSION} \
        -X github.com/apiproxy/apiproxy/pkg/version.GitCommit=${COMMIT} \
        -X github.com/apiproxy/apiproxy/pkg/version.BuildDate=${BUILDDATE}" \
      -o /out/agent ./cmd/agent

# Runtime stage. A distroless/static base would do for the proxy and webhook roles, but the node role
# (--setup-iptables) runs the iptables and ip6tables binaries: go-iptables drives them, it does not
# speak netfilter itself. So the base is debian:trixie-slim plus Debian's `iptables` package, which
# ships iptables/ip6tables with both backends (iptables-nft, the default alternative, and
# iptables-legacy); the agent reports the backend it finds and must match the one kube-proxy uses on
# the node. The netlink work (address, dummy device) needs no binary. One image for every role keeps
# the plugin's --image a single value.
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/agent /usr/local/bin/agent
COPY LICENSE /licenses/LICENSE
# Non-root by default (proxy, webhook); the node role's containers set runAsUser 0 with only
# NET_ADMIN (and NET_RAW for iptables) in their securityContext.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agent"]
