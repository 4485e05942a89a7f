# syntax=docker/dockerfile:1
#
# remora in a container. Targets:
#   remora    (the default, last stage): the sidecar alone, ~93 MB (bookworm-slim ~75 MB + remora
#             ~18 MB stripped; see docs/deploy.md).
#   examples  the example services of examples/compose (frontend, orders, inventory,
#             loadgen) on the same slim base.
#
#   docker build -t remora .
#   docker run -v $PWD/remora.yaml:/etc/remora/remora.yaml:ro remora
#
# The config is read from /etc/remora/remora.yaml (mount yours there; it reloads on
# change). The container runs as uid 10001, not root.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# protoc: build.rs generates the example gRPC service's code from proto/echo.proto.
# llvm-19 (llvm-profdata), nghttp2-client (h2load), curl and valgrind: scripts/pgo.sh,
# which builds remora with profile-guided optimization and a function order.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler llvm-19 nghttp2-client curl \
      valgrind \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Symbols and line tables stripped: the binary is ~18 MB instead of ~86 MB.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY examples examples
# hyper and h2, patched (third_party/README.md), through [patch.crates-io].
COPY third_party third_party
# scripts/pgo.sh trains remora on the benchmarks' configs (bench/*.yaml.in).
COPY scripts/pgo.sh scripts/pgo.sh
COPY bench bench
# remora itself is built with profile-guided optimization: an instrumented build proxies
# the benchmarks' traffic, and its profile steers the release build (README "Benchmarks").
# The registry and target caches speed up rebuilds; binaries are copied out of the
# cached target directory into /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --example frontend --example orders --example inventory --example loadgen \
 && mkdir -p /out \
 && cp "$(bash scripts/pgo.sh)" /out/remora \
 && cp target/release/examples/frontend target/release/examples/orders \
       target/release/examples/inventory target/release/examples/loadgen /out/

FROM debian:bookworm-slim AS base
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin remora \
 && mkdir -p /ca /certs && chown 10001:10001 /ca /certs
# A new named volume mounted on /ca or /certs takes this owner, so `remora cert` can
# write there as the unprivileged user.
USER 10001:10001

FROM base AS examples
COPY --from=builder /out/frontend /out/orders /out/inventory /out/loadgen /usr/local/bin/
CMD ["frontend"]

FROM base AS remora
COPY --from=builder /out/remora /usr/local/bin/remora
# A placeholder so the image starts on its own; mount the real config over it.
COPY config/minimal.yaml /etc/remora/remora.yaml
# `remora run`, `validate` and `live` read the config from here unless given -c.
ENV REMORA_CONFIG=/etc/remora/remora.yaml
# admin, shared outbound, inbound (remora's defaults).
EXPOSE 15000 15001 15006
# GET /live on the admin address the config names (loopback when it binds every
# address): `remora live` exits 0 on a 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["remora", "live"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["remora", "run", "--config", "/etc/remora/remora.yaml"]
