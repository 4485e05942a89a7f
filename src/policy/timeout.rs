//! The overall bound on a call: every attempt and every backoff sleep fit inside it.
//!
//! The bound is the configured request timeout or, for a gRPC call, the caller's
//! deadline (`grpc-timeout`), whichever ends first, counted from the call's arrival. The
//! call records it in its [`CallInfo`] so that the layers below (retry) can tell how
//! much time is left. A gRPC call's deadline is propagated upstream by rewriting
//! `grpc-timeout` to the time remaining ([`set_grpc_timeout`]), once per attempt by
//! `Forward`, right before it is sent, so that queueing, backoff and injected delays are
//! all subtracted. Whether a call is gRPC is [`CallInfo::grpc`] (its content type): a
//! `grpc-timeout` on any other call is passed on untouched and bounds nothing.
//!
//! [`set_grpc_timeout`]: crate::core::grpc::set_grpc_timeout

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::core::body::ProxyBody;
use crate::core::call::CallInfo;
use crate::core::error::ProxyError;
use crate::core::grpc::{parse_grpc_timeout, GRPC_TIMEOUT};
use crate::core::labels::ServiceLabel;

/// The overall time a call may take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeoutConfig {
    /// Bound on the whole call (all attempts and backoff); `None` leaves only the
    /// caller's `grpc-timeout`, if any.
    pub request: Option<Duration>,
}

/// A rejected timeout configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeout: {0}")]
pub struct InvalidTimeout(&'static str);

impl TimeoutConfig {
    /// A config bounding every call by `request`.
    pub fn try_new(request: Option<Duration>) -> Result<Self, InvalidTimeout> {
        if request.is_some_and(|d| d.is_zero()) {
            return Err(InvalidTimeout("request timeout must be non-zero"));
        }
        Ok(Self { request })
    }
}

/// Which bound ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// The whole call ([`TimeoutLayer`]).
    Request,
    /// One attempt (retry's per-try timeout).
    PerTry,
}

impl EncodeLabelValue for TimeoutKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Self::Request => "request",
            Self::PerTry => "per_try",
        })
    }
}

/// Labels of the timeout counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// The service called.
    pub service: ServiceLabel,
    /// Which bound ran out.
    pub kind: TimeoutKind,
}

/// Timeouts by service and kind (`remora_timeouts_total`).
#[derive(Debug, Clone, Default)]
pub struct TimeoutMetrics {
    timeouts: Family<TimeoutLabels, Counter>,
}

impl TimeoutMetrics {
    /// Registers the timeout counter.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "timeouts",
            "Calls (kind=request) and attempts (kind=per_try) that ran out of time",
            metrics.timeouts.clone(),
        );
        metrics
    }

    /// Counts one timeout of `kind` for `service`.
    pub fn record(&self, service: &Arc<str>, kind: TimeoutKind) {
        self.timeouts
            .get_or_create(&TimeoutLabels {
                service: ServiceLabel(service.clone()),
                kind,
            })
            .inc();
    }

    #[cfg(test)]
    pub(crate) fn count(&self, service: &str, kind: TimeoutKind) -> u64 {
        self.timeouts
            .get_or_create(&TimeoutLabels {
                service: ServiceLabel(service.into()),
                kind,
            })
            .get()
    }
}

/// Bounds each call by its [`TimeoutConfig`] and the caller's `grpc-timeout`.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    /// Behind one pointer: the stack is cloned per call, and a bounded call keeps it.
    shared: Arc<TimeoutShared>,
}

/// What every clone of a [`TimeoutLayer`] and its services share.
#[derive(Debug)]
struct TimeoutShared {
    config: TimeoutConfig,
    service: Arc<str>,
    metrics: TimeoutMetrics,
}

impl TimeoutLayer {
    /// A layer for `service`'s calls.
    pub fn new(config: TimeoutConfig, service: Arc<str>, metrics: TimeoutMetrics) -> Self {
        Self {
            shared: Arc::new(TimeoutShared {
                config,
                service,
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TimeoutLayer`] makes.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    layer: TimeoutLayer,
}

impl<S> Service<Request<ProxyBody>> for Timeout<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let configured = self.layer.shared.config.request;
        let (mut parts, body) = request.into_parts();
        // A proxied call carries its arrival (bounds run from it: read, not the clock),
        // whether it is gRPC, and the deadline, all in one extension. NOTE: the proxy
        // stamps every call; a request without a `CallInfo` is bounded by the configured
        // timeout from now, which no layer below can read.
        let call = parts.extensions.get_mut::<CallInfo>();
        let arrived = call.as_ref().map_or_else(Instant::now, |call| call.arrived);
        let incoming = match &call {
            Some(call) if call.grpc => incoming_grpc_timeout(&parts.headers),
            _ => None,
        };
        let earlier = call.as_ref().and_then(|call| call.deadline);
        let deadline = earliest(arrived, [configured, incoming], earlier);
        if let Some(call) = call {
            call.deadline = deadline;
        }
        let request = Request::from_parts(parts, body);
        let Some(deadline) = deadline else {
            return ResponseFuture {
                inner: self.inner.call(request),
                sleep: None,
                expiry: None,
            };
        };
        ResponseFuture {
            inner: self.inner.call(request),
            sleep: Some(tokio::time::sleep_until(deadline)),
            expiry: Some(Expiry {
                deadline,
                arrived,
                shared: self.layer.shared.clone(),
            }),
        }
    }
}

/// The `grpc-timeout` a request arrived with, if it is well-formed.
fn incoming_grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout)
}

/// The first of `earlier` and the `bounds` counted from `start`.
fn earliest(
    start: Instant,
    bounds: [Option<Duration>; 2],
    earlier: Option<Instant>,
) -> Option<Instant> {
    bounds
        .into_iter()
        .flatten()
        .filter_map(|bound| start.checked_add(bound))
        .chain(earlier)
        .min()
}

/// What a timed-out call reports: the limit it ran out of, from its deadline and
/// arrival (worked out only when it expires).
#[derive(Debug)]
struct Expiry {
    deadline: Instant,
    arrived: Instant,
    shared: Arc<TimeoutShared>,
}

pin_project! {
    /// The response of a call bounded by [`Timeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        expiry: Option<Expiry>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        let Some(sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let Some(expiry) = this.expiry.take() else {
            // Polled again after completing.
            return Poll::Pending;
        };
        let shared = &expiry.shared;
        shared.metrics.record(&shared.service, TimeoutKind::Request);
        let limit = expiry.deadline.saturating_duration_since(expiry.arrived);
        Poll::Ready(Err(ProxyError::Timeout(limit)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{proxied, Upstream};
    use tower::ServiceExt;

    const MS: Duration = Duration::from_millis(1);

    fn layer(request: Option<Duration>) -> (TimeoutLayer, TimeoutMetrics) {
        let metrics = TimeoutMetrics::default();
        let config = TimeoutConfig::try_new(request).unwrap();
        (
            TimeoutLayer::new(config, "svc".into(), metrics.clone()),
            metrics,
        )
    }

    /// An upstream answering 200 after a second.
    fn slow() -> Upstream {
        Upstream::ok().after(|_| Duration::from_secs(1))
    }

    /// A proxied call; a gRPC one (by its content type) when `grpc_timeout` is given,
    /// carrying it.
    fn call(grpc_timeout: Option<&'static str>) -> Request<ProxyBody> {
        let mut request = Request::new(ProxyBody::empty());
        if let Some(timeout) = grpc_timeout {
            let headers = request.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            headers.insert(&GRPC_TIMEOUT, http::HeaderValue::from_static(timeout));
        }
        proxied(request)
    }

    /// The deadline the layer recorded in the call `upstream` saw first.
    fn recorded_deadline(upstream: &Upstream) -> Option<Instant> {
        upstream.seen()[0]
            .extensions
            .get::<CallInfo>()
            .and_then(|call| call.deadline)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_bounded_from_its_arrival_and_keeps_its_deadline_in_call_info() {
        let (layer, _) = layer(Some(100 * MS));
        let upstream = slow();
        let request = call(None);
        let arrived = request.extensions().get::<CallInfo>().unwrap().arrived;
        tokio::time::advance(30 * MS).await;
        let started = Instant::now();
        let result = layer.layer(upstream.clone()).oneshot(request).await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 100 * MS));
        assert_eq!(
            started.elapsed(),
            70 * MS,
            "100ms from arrival, 30ms of it spent"
        );
        assert_eq!(recorded_deadline(&upstream), Some(arrived + 100 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn overall_timeout_returns_timeout() {
        let (layer, metrics) = layer(Some(100 * MS));
        let started = Instant::now();
        let result = layer.layer(slow()).oneshot(call(None)).await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 100 * MS));
        assert_eq!(started.elapsed(), 100 * MS);
        assert_eq!(metrics.count("svc", TimeoutKind::Request), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_calls_pass_and_no_bound_means_no_deadline() {
        let (layer, metrics) = layer(None);
        let upstream = Upstream::ok();
        let result = layer.layer(upstream.clone()).oneshot(call(None)).await;
        assert!(result.is_ok());
        assert_eq!(recorded_deadline(&upstream), None);
        assert!(upstream.seen()[0].header(GRPC_TIMEOUT.as_str()).is_none());
        assert_eq!(metrics.count("svc", TimeoutKind::Request), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_timeout_bounds_the_call_when_smaller() {
        let (layer, _) = layer(Some(Duration::from_secs(10)));
        let result = layer.layer(slow()).oneshot(call(Some("200m"))).await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 200 * MS));

        // A larger grpc-timeout loses to the configured bound, which is propagated.
        let (layer, _) = self::layer(Some(Duration::from_secs(2)));
        let upstream = slow();
        layer
            .layer(upstream.clone())
            .oneshot(call(Some("1M")))
            .await
            .unwrap();
        assert_eq!(upstream.header_of_each(GRPC_TIMEOUT.as_str()), ["2S"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_timeout_on_a_call_that_is_not_grpc_bounds_nothing() {
        let (layer, metrics) = layer(None);
        let upstream = slow();
        let mut request = call(None);
        request
            .headers_mut()
            .insert(&GRPC_TIMEOUT, http::HeaderValue::from_static("200m"));
        let result = layer.layer(upstream.clone()).oneshot(request).await;
        assert!(
            result.is_ok(),
            "a plain call is not bounded by grpc-timeout"
        );
        assert_eq!(recorded_deadline(&upstream), None);
        assert_eq!(upstream.header_of_each(GRPC_TIMEOUT.as_str()), ["200m"]);
        assert_eq!(metrics.count("svc", TimeoutKind::Request), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_grpc_timeout_is_ignored() {
        let (layer, _) = layer(None);
        let upstream = Upstream::ok();
        let result = layer
            .layer(upstream.clone())
            .oneshot(call(Some("soon")))
            .await;
        assert!(result.is_ok());
        assert_eq!(recorded_deadline(&upstream), None);
    }
}
