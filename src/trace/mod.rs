//! Distributed tracing on the request path: trace context in and out, and spans.
//!
//! - `config`: what a tracer is told, and the checks that let the request path trust it;
//! - `tracer`: [`Tracing`], one sidecar's tracer (its own provider, so several sidecars
//!   can run in one process); [`Tracing::start`] reads the caller's trace context (W3C,
//!   B3 or Jaeger), makes sure the request has an id (`crate::access`), starts the
//!   request span (a server span inbound, a client span outbound) and puts a
//!   [`CallTrace`] in the request's extensions;
//! - `call`: the call's trace; [`RequestTrace::finish`] records the answer, ends the
//!   span and writes the access log line (for a gRPC answer whose status comes in
//!   trailers, when its body ends: see [`trailers`]);
//! - `attempt`: [`attempt`] in `Forward` writes the context the upstream continues into
//!   each try's request and starts a child span per try of retried calls (of every call
//!   with [`AttemptSpans::Always`]);
//! - `semconv`: the semantic conventions' attributes and statuses, and [`event`], with
//!   which policy layers record their decisions on the current span.
//!
//! Spans are remora's own records (`span.rs`), written in OTLP wire form as they are
//! filled and exported by remora's encoder (`otlp.rs`); trace context, its propagators and
//! the span API that [`event`] uses are the opentelemetry crate's.
//!
//! NOTE: spans use the opentelemetry API directly, not `tracing` + tracing-opentelemetry:
//! a `tracing` layer is one per process (we need one tracer per sidecar), it allocates
//! span state for every span even when sampling says no, and the attempt span has to
//! cross the type-erased stack in a request extension anyway. With sampling off a
//! request costs a header parse, two span ids and a `traceparent` write.

mod attempt;
mod call;
mod config;
mod export;
mod otlp;
mod propagation;
#[cfg(feature = "otlp-sdk-exporter")]
mod sdk_export;
mod semconv;
mod span;
#[cfg(test)]
mod tests;
mod tracer;
pub mod trailers;
mod wire;

pub use attempt::{attempt, Attempt};
pub use call::{headers_edited, routed, CallTrace, RequestTrace};
pub use config::{
    AttemptSpans, CollectorTls, Compression, OtlpProtocol, Propagation, TracingConfig, TracingError,
};
pub use semconv::{event, recording, PEER_IDENTITY};
pub use tracer::Tracing;
pub use trailers::AnswerEnd;

use call::*;
use config::*;
pub use export::TracingMetrics;
use export::{Backend, Collector, Flusher, QueueLimits, Sink};
pub(crate) use propagation::Propagators;
use semconv::*;
use span::{Kind, LiveSpan, Recording, SpanHandle};
