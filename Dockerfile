# syntax=docker/dockerfile:1
#
# One build, three images: pick one with --target.
#
#   docker build --target api-server  -t scalechat/api-server:0.1.0 .
#   docker build --target chat-server -t scalechat/chat-server:0.1.0 .
#   docker build --target operator    -t scalechat/operator:0.1.0 .
#
# The three binaries are compiled once in the builder stage (BuildKit reuses
# it across the three builds). The cargo registry and target/ live in BuildKit
# cache mounts, so a rebuild after a source change only recompiles what
# changed; the workspace is copied whole (copying the manifests first does
# not pay off with a workspace of path dependencies).

FROM rust:1-slim-bookworm AS builder
# The slim image already has gcc and libc6-dev (ring builds its C parts with
# them); the workspace needs no other system library (TLS is rustls).
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin api-server --bin chat-server --bin operator \
 && mkdir -p /out \
 && cp target/release/api-server target/release/chat-server target/release/operator /out/

# Distroless "cc": glibc and libgcc of Debian 12, the same as the builder's
# bookworm, no shell, no package manager; "nonroot" is UID/GID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS api-server
COPY --from=builder /out/api-server /usr/local/bin/api-server
# Listen on every interface inside the container (the binary defaults to
# loopback); the Helm chart sets the same.
ENV CHAT_API_LISTEN=0.0.0.0:8080 CHAT_LOG_FORMAT=json
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/api-server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS chat-server
COPY --from=builder /out/chat-server /usr/local/bin/chat-server
ENV CHAT_SERVER_LISTEN=0.0.0.0:9001 CHAT_LOG_FORMAT=json
EXPOSE 9001
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/chat-server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=builder /out/operator /usr/local/bin/operator
ENV CHAT_OPERATOR_LISTEN=0.0.0.0:9100 CHAT_LOG_FORMAT=json
EXPOSE 9100
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/operator"]
