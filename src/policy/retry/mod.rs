//! Retries failed attempts of a call, within a budget, after a backoff.
//!
//! The layer sits below the overall timeout and above the service breaker and the
//! balancer: each attempt goes through the balancer again, asking it to avoid the
//! endpoints that already failed ([`AvoidEndpoints`](crate::core::call::AvoidEndpoints)).
//!
//! **How a call goes.** Every call deposits into the service's [`RetryBudget`] when it
//! reaches the layer, dated by its arrival. The first attempt is sent at once, from the
//! service's `call`; each attempt is tagged [`ATTEMPT_HEADER`] and counted. When an
//! attempt's response headers (or its error) arrive, the layer decides whether to retry
//! (`decide`): a call is retried only when
//! - its method is idempotent (or the config allows any method); a call of another
//!   method is still retried when its connection failed (the request never left), and
//!   then `Forward` gives the unsent request back in its error ([`Unsent`]): it is never
//!   copied, and its body streams whatever its size,
//! - the result is a failure the config's [`Conditions`] name and attempts remain,
//! - its body can be sent again (below),
//! - the server did not refuse (`grpc-retry-pushback-ms` negative or malformed), the
//!   call's deadline (set by the timeout layer above) leaves time for the wait, and the
//!   budget allows a withdrawal.
//!
//! **What it replays.** The head of the request is kept at the first attempt (its header
//! fields in one allocation, remora's own extensions without any); a body streams to the
//! first attempt through a [`Replay`] that records what it sends, up to
//! `max_replay_bytes`, and each retry sends a copy of it. A body is sent again only if
//! the attempt before read all of it within the bound, or let go of it having read no
//! more than that (a refused connection); a body known to be larger is not recorded at
//! all and is sent once; a body the failed attempt still holds unfinished (an answer that came
//! before the client finished sending, an open client stream) is not sent again.
//!
//! **Backoff and pushback.** The wait before retry `n` is the [`RetryBackoff`]'s
//! `base × 2ⁿ⁻¹`, jittered and capped; a server's `Retry-After` (seconds) or
//! `grpc-retry-pushback-ms` replaces it, capped at the backoff's maximum (`pushback`).
//! An attempt may be bounded by a per-try timeout, which counts as a `timeout` failure.
//!
//! Decisions are made when response headers arrive; a response is never retried once its
//! body is being relayed. So a streaming gRPC call is retried only before its response
//! headers arrived, by construction.
//!
//! [`RetryBudget`]: crate::policy::budget::RetryBudget
//! [`RetryBackoff`]: crate::policy::backoff::RetryBackoff
//! [`Unsent`]: crate::core::error::Unsent
//! [`Conditions`]: crate::core::outcome::Conditions
//! [`Replay`]: crate::core::body::Replay

mod config;
mod decide;
mod future;
mod layer;
mod metrics;
mod pushback;
mod resend;
mod service;
#[cfg(test)]
mod tests;

use http::header::HeaderName;

pub use config::{InvalidRetryConfig, RetryConfig};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use metrics::{AttemptLabels, FirstOrRetry, RetryMetrics};
pub(crate) use pushback::asked;
#[doc(hidden)]
pub use pushback::ServerDelay;
pub use service::Retry;

/// Header telling the upstream which attempt (1-based) of the call this is.
pub static ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-remora-attempt");
