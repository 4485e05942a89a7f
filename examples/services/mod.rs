//! The example services of `examples/compose` and `examples/local`: `frontend` (HTTP)
//! calls `orders` (HTTP), which calls `inventory` (gRPC), each through its own remora
//! sidecar. The cargo examples `frontend`, `orders`, `inventory` and `loadgen` are thin
//! `main`s over these modules; `tests/it/local_topology.rs` and `tests/it/netns.rs` run the
//! same code in-process.
//!
//! Every service forwards the trace headers it received ([`propagate`]) and takes the
//! same fault knobs ([`knobs`]) so that remora's retries, breakers and fallbacks have
//! something to act on.
#![allow(dead_code)]

pub mod frontend;
pub mod http_server;
pub mod inventory;
pub mod knobs;
pub mod loadgen;
pub mod orders;
pub mod propagate;

/// The response header naming the `inventory` instance that answered (or `fallback`
/// when orders' sidecar answered for it); frontend passes it back to its caller.
pub const INVENTORY_INSTANCE: &str = "x-inventory-instance";

/// Reads `name` from the environment, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}
