//! Floor 5, serve: what runs. The sidecar's shared state, its listeners (HTTP, and TCP
//! passthrough in `tcp`), the proxy service every request goes through, the admin
//! endpoints, config reload and logging.

pub mod admin;
mod drain;
pub mod listener;
pub mod listeners;
mod preface;
pub mod proxy;
pub mod reload;
pub mod shared;
pub mod sidecar;
pub mod tcp;
pub mod telemetry;
