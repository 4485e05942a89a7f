#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust: installs what the build and
# the tests need (protoc for the gRPC code generation), then format, lint and test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# The discovery tests start a real etcd.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# The TLS tests check what `remora cert` writes with an ordinary tool.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The inbound mutual-TLS tests call the sidecar with curl (and openssl s_client).
command -v curl >/dev/null 2>&1 || need+=(curl)
# The TCP passthrough and shared rate-limit tests start a real Redis.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The network namespace test (tests/it/netns.rs) runs `ip netns` and `ip link`.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# The ZooKeeper discovery tests start a real ZooKeeper (the package brings a Java runtime).
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
# ... and check what remora writes and reads with Apache Curator itself, compiled there.
[ -f /usr/share/java/curator-x-discovery.jar ] || need+=(libcurator-discovery-java)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The opentelemetry-otlp exporter variant exists to repeat a measurement
# (docs/dependencies.md): linted, so that it keeps building.
cargo clippy --all-targets --locked --features otlp-sdk-exporter -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast
else
    cargo test --locked --no-fail-fast
fi
