//! Mirroring: copies of a share of a route's requests, sent to another service and
//! never waited for.
//!
//! The primary call never waits for, and never fails because of, its copy. A request
//! without a body is copied when it is sent; a request with one is copied once the
//! primary's answer arrives, from what its [`Replay`] recorded of the body (bounded by
//! `max_body_bytes`: a longer body is not mirrored, and the primary still streams whole).
//! Copies in flight are capped; a copy beyond the cap is dropped, and so is one whose
//! body could not be recorded, each counted and noted on the primary's span. A copy's
//! answer is read to its end and discarded, within the mirror's timeout.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry::KeyValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Service, ServiceExt};

use crate::core::body::{ProxyBody, Replay};
use crate::core::call::CallInfo;
use crate::core::error::ProxyError;
use crate::core::labels::ServiceLabel;

/// A mirror setting that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorConfigError {
    /// A share outside `(0, 1]`.
    #[error("a mirror copies more than 0% and at most 100% of the requests")]
    Share,
    /// No copy could ever be in flight.
    #[error("max_in_flight must be at least 1")]
    InFlight,
    /// Every copy would be abandoned at once.
    #[error("a timeout must be longer than zero")]
    Timeout,
}

/// How a route mirrors.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// The share of requests copied, in `(0, 1]`.
    share: f64,
    /// Longest body copied.
    max_body_bytes: usize,
    /// Most copies in flight.
    max_in_flight: usize,
    /// A copy unanswered after this is abandoned.
    timeout: Duration,
}

impl MirrorConfig {
    /// Copies of `share` (a fraction) of the requests with bodies up to
    /// `max_body_bytes`, at most `max_in_flight` at once, each abandoned after `timeout`.
    pub fn try_new(
        share: f64,
        max_body_bytes: usize,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Result<Self, MirrorConfigError> {
        if share.is_nan() || share <= 0.0 || share > 1.0 {
            return Err(MirrorConfigError::Share);
        }
        if max_in_flight == 0 {
            return Err(MirrorConfigError::InFlight);
        }
        if timeout.is_zero() {
            return Err(MirrorConfigError::Timeout);
        }
        Ok(Self {
            share,
            max_body_bytes,
            max_in_flight,
            timeout,
        })
    }
}

/// Labels of the mirror counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MirrorLabels {
    /// The service whose route mirrors.
    pub service: ServiceLabel,
    /// The service the copies go to.
    pub mirror: ServiceLabel,
}

/// Labels of dropped copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DroppedLabels {
    /// The service whose route mirrors.
    pub service: ServiceLabel,
    /// The service the copies would have gone to.
    pub mirror: ServiceLabel,
    /// `full` (the cap of copies in flight) or `body` (longer than the bound, or not
    /// recorded whole when the primary's answer came).
    pub reason: &'static str,
}

/// The mirror metrics, registered once per process.
#[derive(Debug, Clone, Default)]
pub struct MirrorMetrics {
    sent: Family<MirrorLabels, Counter>,
    dropped: Family<DroppedLabels, Counter>,
}

impl MirrorMetrics {
    /// Registers the mirror metrics in `registry`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "mirrored_requests",
            "Copies of requests sent to a mirror service, by service and mirror",
            metrics.sent.clone(),
        );
        registry.register(
            "mirror_dropped",
            "Copies of requests not sent to a mirror, by service, mirror and reason \
             (full: too many in flight; body: longer than max_body_bytes)",
            metrics.dropped.clone(),
        );
        metrics
    }
}

/// One mirror's counters, looked up once per config.
#[derive(Debug, Clone)]
struct Counters {
    sent: Counter,
    full: Counter,
    body: Counter,
}

/// A route's mirror: `S` is the mirror service's stack.
#[derive(Debug)]
pub struct Mirror<S> {
    /// The mirror service's name (span events).
    name: Arc<str>,
    stack: S,
    config: MirrorConfig,
    /// One permit per copy in flight (or waiting for its body).
    permits: Arc<Semaphore>,
    counters: Counters,
}

impl<S> Mirror<S> {
    /// A mirror of `service`'s route sending copies through `stack` (of the service
    /// named `mirror`).
    pub fn new(
        service: Arc<str>,
        mirror: Arc<str>,
        stack: S,
        config: MirrorConfig,
        metrics: &MirrorMetrics,
    ) -> Self {
        let labels = MirrorLabels {
            service: ServiceLabel(service.clone()),
            mirror: ServiceLabel(mirror.clone()),
        };
        let dropped = |reason| DroppedLabels {
            service: ServiceLabel(service.clone()),
            mirror: ServiceLabel(mirror.clone()),
            reason,
        };
        // One lookup per statement: a family's guard lives to the end of its statement,
        // and a second lookup that inserts into the same family would wait for it.
        let sent = metrics.sent.get_or_create(&labels).clone();
        let full = metrics.dropped.get_or_create(&dropped("full")).clone();
        let body = metrics.dropped.get_or_create(&dropped("body")).clone();
        let counters = Counters { sent, full, body };
        Self {
            name: mirror,
            stack,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            counters,
        }
    }
}

/// A copy waiting for the primary's answer, so that its body is recorded whole.
pub struct PendingCopy<S> {
    head: Request<()>,
    replay: Replay,
    permit: OwnedSemaphorePermit,
    send: Sender<S>,
}

/// What sends a copy: the mirror's stack, timeout and counters.
struct Sender<S> {
    name: Arc<str>,
    stack: S,
    timeout: Duration,
    counters: Counters,
}

impl<S> Mirror<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    /// Decides whether the request of `head` and `body` is copied. Returns the body to
    /// send on (recorded when a copy waits for it), and the copy to send once the
    /// primary's answer came, when there is one.
    pub fn tap(&self, head: &Parts, body: ProxyBody) -> (ProxyBody, Option<PendingCopy<S>>) {
        if self.config.share < 1.0 && fastrand::f64() >= self.config.share {
            return (body, None);
        }
        let too_long =
            http_body::Body::size_hint(&body).lower() > self.config.max_body_bytes as u64;
        if too_long {
            self.counters.body.inc();
            note("mirror dropped", &self.name, "body");
            return (body, None);
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.counters.full.inc();
            note("mirror dropped", &self.name, "full");
            return (body, None);
        };
        let copy = copy_head(head);
        let send = Sender {
            name: self.name.clone(),
            stack: self.stack.clone(),
            timeout: self.config.timeout,
            counters: self.counters.clone(),
        };
        if http_body::Body::is_end_stream(&body) {
            send.spawn(copy, ProxyBody::empty(), permit);
            return (body, None);
        }
        let (body, replay) = Replay::wrap(body, self.config.max_body_bytes);
        let pending = PendingCopy {
            head: copy,
            replay,
            permit,
            send,
        };
        (body, Some(pending))
    }
}

impl<S> PendingCopy<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Send
        + 'static,
    S::Future: Send,
{
    /// Sends the copy with the body recorded so far; drops it (counted) when the body
    /// was longer than the bound or is not read whole yet.
    pub fn send(self) {
        match self.replay.try_body() {
            Some(body) => self.send.spawn(self.head, body, self.permit),
            None => {
                self.send.counters.body.inc();
                note("mirror dropped", &self.send.name, "body");
            }
        }
    }
}

impl<S> Sender<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Send
        + 'static,
    S::Future: Send,
{
    /// Sends the copy on its own task; its answer is read to the end and discarded.
    fn spawn(self, head: Request<()>, body: ProxyBody, permit: OwnedSemaphorePermit) {
        self.counters.sent.inc();
        note("mirrored", &self.name, "sent");
        let (parts, ()) = head.into_parts();
        let request = Request::from_parts(parts, body);
        let (stack, timeout) = (self.stack, self.timeout);
        let copy = async move {
            let Ok(response) = stack.oneshot(request).await else {
                return;
            };
            let mut body = response.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(timeout, copy).await;
        });
    }
}

/// The head of a copy: method, URI, version, headers and the call's data.
fn copy_head(head: &Parts) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method.clone();
    *copy.uri_mut() = head.uri.clone();
    *copy.version_mut() = head.version;
    *copy.headers_mut() = head.headers.clone();
    if let Some(call) = head.extensions.get::<CallInfo>() {
        copy.extensions_mut().insert(call.clone());
    }
    copy
}

/// An event on the primary call's span, when it records.
fn note(event: &'static str, mirror: &Arc<str>, outcome: &'static str) {
    if crate::trace::recording() {
        crate::trace::event(
            event,
            vec![
                KeyValue::new("remora.mirror.service", mirror.to_string()),
                KeyValue::new("remora.mirror.outcome", outcome),
            ],
        );
    }
}
