//! What every connection of the sidecar shares: the current state and the process-wide
//! metrics and tracing.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::build::metrics::Metrics;
use crate::build::state::State;

/// What every connection of the sidecar shares.
#[derive(Debug)]
pub struct Shared {
    /// The current state; replaced whole on reload.
    pub state: ArcSwap<State>,
    /// Every metric; stacks hold clones of the policy metrics inside.
    pub metrics: Arc<Metrics>,
    /// True once shutdown began: `/ready` answers 503.
    pub draining: AtomicBool,
    /// This sidecar's tracer, propagators and access log (bound at start).
    pub tracing: crate::trace::Tracing,
    /// Upgraded connections (WebSocket) spliced into tunnels, which a drain waits for.
    pub tunnels: crate::upstream::Tunnels,
}
