#!/usr/bin/env bash
# remora's main job on an embedded default, on a fresh Debian machine with Rust:
# installs protoc (the build generates gRPC code) when missing, then `remora demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq protobuf-compiler
fi
exec cargo run --release --locked -- demo "$@"
