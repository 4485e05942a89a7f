//! The overall bound on a call: every attempt and every backoff sleep fit inside it.
//!
//! The bound is the configured request timeout or, for a gRPC call, the caller's
//! deadline (`grpc-timeout`), whichever ends first. A proxied call records it in its
//! [`CallInfo`] (another request in a [`Deadline`] extension) so that the layers below
//! (retry) can tell how much time is left. A gRPC call's deadline is propagated upstream
//! by rewriting `grpc-timeout` to the time remaining ([`set_grpc_timeout`]), once per
//! attempt by `Forward`, right before it is sent, so that queueing, backoff and injected
//! delays are all subtracted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::ServiceLabel;
use crate::proxy::CallInfo;

/// The gRPC deadline header.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

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

/// Request extension: when the call must be answered. Set by [`TimeoutLayer`] on a
/// request that carries no [`CallInfo`] (a proxied call keeps its deadline there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// When the call of a request with `extensions` must be answered, if a timeout layer said.
pub fn deadline_of(extensions: &http::Extensions) -> Option<Instant> {
    match extensions.get::<CallInfo>() {
        Some(call) => call.deadline,
        None => extensions.get::<Deadline>().map(|d| d.0),
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
    pub fn register(registry: &mut Registry) -> Self {
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
        // whether it is gRPC, and the deadline, all in one extension.
        let (deadline, arrived) = match parts.extensions.get_mut::<CallInfo>() {
            Some(call) => {
                let incoming = if call.grpc {
                    incoming_grpc_timeout(&parts.headers)
                } else {
                    None
                };
                let deadline = earliest(call.arrived, [configured, incoming], call.deadline);
                call.deadline = deadline;
                (deadline, call.arrived)
            }
            None => {
                let now = Instant::now();
                let incoming = incoming_grpc_timeout(&parts.headers);
                let earlier = parts.extensions.get::<Deadline>().map(|d| d.0);
                let deadline = earliest(now, [configured, incoming], earlier);
                if let Some(deadline) = deadline {
                    parts.extensions.insert(Deadline(deadline));
                }
                (deadline, now)
            }
        };
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

/// Rewrites `grpc-timeout` to the time left until the request's [`Deadline`].
///
/// Only gRPC requests (a `grpc-timeout` header or an `application/grpc` content type)
/// with a `Deadline` are touched: the upstream then sees the caller's deadline minus the
/// time already spent here.
pub fn set_grpc_timeout(request: &mut Request<ProxyBody>) {
    let (deadline, grpc) = match request.extensions().get::<CallInfo>() {
        Some(call) => (call.deadline, call.grpc),
        None => (
            request.extensions().get::<Deadline>().map(|d| d.0),
            crate::proxy::is_grpc(request) || request.headers().contains_key(&GRPC_TIMEOUT),
        ),
    };
    let Some(deadline) = deadline else {
        return;
    };
    if grpc {
        let remaining = deadline.saturating_duration_since(Instant::now());
        request
            .headers_mut()
            .insert(&GRPC_TIMEOUT, encode_grpc_timeout(significant(remaining)));
    }
}

/// `remaining`, rounded down to three significant digits: at most 1% sooner, never later.
///
/// The upstream then gives up no later than remora would, and calls sent within the same
/// stretch (0.1 s of a 30 s timeout, 1 ms of a 300 ms one) carry the same value, which
/// HTTP/2's header compression sends as a one-byte reference. Exact to the nanosecond,
/// every call's value would be new: encoded in full, added to the connection's HPACK
/// table, evicting headers worth keeping there. This runs for every attempt of a gRPC
/// call with a deadline.
fn significant(remaining: Duration) -> Duration {
    let Ok(nanos) = u64::try_from(remaining.as_nanos()) else {
        return remaining;
    };
    let digits = nanos.checked_ilog10().unwrap_or(0);
    let step = 10u64.pow(digits.saturating_sub(2));
    Duration::from_nanos(nanos - nanos % step)
}

/// Units of `grpc-timeout`, coarsest first, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'H', 3_600_000_000_000),
    (b'M', 60_000_000_000),
    (b'S', 1_000_000_000),
    (b'm', 1_000_000),
    (b'u', 1_000),
    (b'n', 1),
];

/// The units of whole seconds, for timeouts beyond `u64` nanoseconds (585 years).
const SECOND_UNITS: [(u8, u64); 3] = [(b'H', 3600), (b'M', 60), (b'S', 1)];

/// Largest value `grpc-timeout` carries: 8 digits.
const MAX_GRPC_TIMEOUT_VALUE: u64 = 99_999_999;

/// Parses a `grpc-timeout` value (`TimeoutValue TimeoutUnit`: 1 to 8 ASCII digits and one
/// of `H M S m u n`); anything else is `None`.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    let (_, nanos) = UNITS.iter().find(|(u, _)| *u == unit)?;
    let nanos = u128::from(value) * u128::from(*nanos);
    Some(Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    ))
}

/// Encodes `timeout` with the coarsest unit that represents it exactly in at most 8
/// digits; when none does, with the finest unit that fits, rounded down (the upstream
/// gives up no later than remora would).
pub fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    let (value, unit) = match u64::try_from(timeout.as_nanos()) {
        Ok(nanos) => in_unit(nanos, &UNITS),
        Err(_) => in_unit(timeout.as_secs(), &SECOND_UNITS),
    };
    // At most 8 digits and the unit, written without the formatting machinery: this
    // runs for every attempt of a gRPC call with a deadline.
    let mut text = [0u8; 9];
    let mut at = text.len() - 1;
    text[at] = unit;
    let mut rest = value;
    loop {
        at -= 1;
        text[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&text[at..]).unwrap_or_else(|_| HeaderValue::from_static("0n"))
}

/// `amount` (in the smallest of `units`) as a value and unit: the coarsest unit that
/// holds it exactly in 8 digits, else the finest that holds it, rounded down.
fn in_unit(amount: u64, units: &[(u8, u64)]) -> (u64, u8) {
    let fits = |length: u64| amount / length <= MAX_GRPC_TIMEOUT_VALUE;
    let (unit, length) = units
        .iter()
        .find(|(_, length)| amount % length == 0 && fits(*length))
        .or_else(|| units.iter().rev().find(|(_, length)| fits(*length)))
        .copied()
        .unwrap_or(units[0]);
    ((amount / length).min(MAX_GRPC_TIMEOUT_VALUE), unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;
    use tower::{service_fn, ServiceExt};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grpc_timeout_parsing_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("30S", Some(Duration::from_secs(30))),
            ("250m", Some(250 * MS)),
            ("1500u", Some(Duration::from_micros(1500))),
            ("7n", Some(Duration::from_nanos(7))),
            ("0m", Some(Duration::ZERO)),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("00000010m", Some(10 * MS)),
            ("123456789S", None), // 9 digits
            ("", None),
            ("S", None),
            ("10", None),
            ("10s", None),
            ("10x", None),
            ("-5S", None),
            ("+5S", None),
            (" 5S", None),
            ("5 S", None),
            ("1.5S", None),
            ("5SS", None),
        ];
        for (text, expected) in cases {
            let value = HeaderValue::from_str(text).unwrap();
            assert_eq!(parse_grpc_timeout(&value), *expected, "{text:?}");
        }
    }

    #[test]
    fn grpc_timeout_encoding_is_coarsest_exact_unit() {
        let cases: &[(Duration, &str)] = &[
            (Duration::from_secs(7200), "2H"),
            (Duration::from_secs(90), "90S"),
            (Duration::from_secs(120), "2M"),
            (1500 * MS, "1500m"),
            (Duration::from_micros(1001), "1001u"),
            (Duration::from_nanos(1_234_567_891), "1234567u"),
            (Duration::from_nanos(5), "5n"),
            (Duration::ZERO, "0H"),
            (Duration::from_secs(99_999_999 * 3600 * 2), "99999999H"),
        ];
        for (duration, expected) in cases {
            assert_eq!(encode_grpc_timeout(*duration), *expected, "{duration:?}");
            let round = parse_grpc_timeout(&encode_grpc_timeout(*duration)).unwrap();
            assert!(round <= *duration);
        }
    }

    fn layer(request: Option<Duration>) -> (TimeoutLayer, TimeoutMetrics) {
        let metrics = TimeoutMetrics::default();
        let config = TimeoutConfig::try_new(request).unwrap();
        (
            TimeoutLayer::new(config, "svc".into(), metrics.clone()),
            metrics,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_proxied_call_is_bounded_from_its_arrival_and_keeps_its_deadline_in_call_info() {
        let (layer, _) = layer(Some(100 * MS));
        let seen = Arc::new(std::sync::Mutex::new(None));
        let log = seen.clone();
        let slow = service_fn(move |request: Request<ProxyBody>| {
            *log.lock().unwrap() = Some((
                request
                    .extensions()
                    .get::<CallInfo>()
                    .and_then(|c| c.deadline),
                request.extensions().get::<Deadline>().copied(),
            ));
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, ProxyError>(Response::new(ProxyBody::empty()))
            }
        });
        let call = CallInfo::new("192.0.2.1:5000".parse().unwrap());
        tokio::time::advance(30 * MS).await;
        let mut request = Request::new(ProxyBody::empty());
        request.extensions_mut().insert(call);
        let started = Instant::now();
        let result = layer.layer(slow).oneshot(request).await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 100 * MS));
        assert_eq!(
            started.elapsed(),
            70 * MS,
            "100ms from arrival, 30ms of it spent"
        );
        let (in_call, separate) = seen.lock().unwrap().take().unwrap();
        assert_eq!(in_call, Some(call.arrived + 100 * MS));
        assert_eq!(separate, None, "no second extension for a proxied call");
    }

    #[tokio::test(start_paused = true)]
    async fn overall_timeout_returns_timeout() {
        let (layer, metrics) = layer(Some(100 * MS));
        let slow = service_fn(|_: Request<ProxyBody>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, ProxyError>(Response::new(ProxyBody::empty()))
        });
        let started = Instant::now();
        let result = layer
            .layer(slow)
            .oneshot(Request::new(ProxyBody::empty()))
            .await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 100 * MS));
        assert_eq!(started.elapsed(), 100 * MS);
        assert_eq!(metrics.count("svc", TimeoutKind::Request), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_calls_pass_and_no_bound_means_no_deadline() {
        let (layer, metrics) = layer(None);
        let inner = service_fn(|request: Request<ProxyBody>| async move {
            assert!(request.extensions().get::<Deadline>().is_none());
            assert!(request.headers().get(&GRPC_TIMEOUT).is_none());
            Ok::<_, ProxyError>(Response::new(ProxyBody::empty()))
        });
        let result = layer
            .layer(inner)
            .oneshot(Request::new(ProxyBody::empty()))
            .await;
        assert!(result.is_ok());
        assert_eq!(metrics.count("svc", TimeoutKind::Request), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_timeout_bounds_the_call_when_smaller() {
        let (layer, _) = layer(Some(Duration::from_secs(10)));
        let inner = service_fn(|mut request: Request<ProxyBody>| async move {
            set_grpc_timeout(&mut request); // as `Forward` does before sending
            let timeout = request.headers()[&GRPC_TIMEOUT].clone();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut response = Response::new(ProxyBody::empty());
            response.headers_mut().insert("seen", timeout);
            Ok::<_, ProxyError>(response)
        });
        let mut request = Request::new(ProxyBody::empty());
        request
            .headers_mut()
            .insert(&GRPC_TIMEOUT, HeaderValue::from_static("200m"));
        let result = layer.layer(inner).oneshot(request).await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 200 * MS));

        // A larger grpc-timeout loses to the configured bound, which is propagated.
        let mut request = Request::new(ProxyBody::empty());
        request
            .headers_mut()
            .insert(&GRPC_TIMEOUT, HeaderValue::from_static("1M"));
        let (layer, _) = self::layer(Some(Duration::from_secs(2)));
        let response = layer.layer(inner).oneshot(request).await.unwrap();
        assert_eq!(response.headers()["seen"], "2S");
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_grpc_timeout_is_ignored() {
        let (layer, _) = layer(None);
        let inner = service_fn(|request: Request<ProxyBody>| async move {
            assert!(request.extensions().get::<Deadline>().is_none());
            Ok::<_, ProxyError>(Response::new(ProxyBody::empty()))
        });
        let mut request = Request::new(ProxyBody::empty());
        request
            .headers_mut()
            .insert(&GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        assert!(layer.layer(inner).oneshot(request).await.is_ok());
    }

    #[test]
    fn passed_on_timeouts_keep_three_significant_digits_rounded_down() {
        let cases: &[(Duration, Duration)] = &[
            (Duration::from_nanos(29_987_654_321), 29_900 * MS),
            (Duration::from_nanos(299_700_001), 299 * MS),
            (
                Duration::from_nanos(4_987_654),
                Duration::from_micros(4_980),
            ),
            (Duration::from_nanos(999), Duration::from_nanos(999)),
            (Duration::from_nanos(7), Duration::from_nanos(7)),
            (Duration::ZERO, Duration::ZERO),
            (Duration::from_secs(3), Duration::from_secs(3)),
        ];
        for (remaining, passed_on) in cases {
            assert_eq!(significant(*remaining), *passed_on, "{remaining:?}");
            assert!(*passed_on <= *remaining);
            assert!(
                remaining.as_secs_f64() - passed_on.as_secs_f64()
                    <= remaining.as_secs_f64() / 100.0
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn set_grpc_timeout_subtracts_elapsed_time() {
        let mut request = Request::new(ProxyBody::empty());
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        request
            .extensions_mut()
            .insert(Deadline(Instant::now() + Duration::from_secs(3)));
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "3S");
        tokio::time::advance(1250 * MS).await;
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "1750m");
        tokio::time::advance(Duration::from_secs(5)).await;
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "0H");

        // Passed on to three significant digits, rounded down.
        tokio::time::advance(1250 * MS).await;
        request.extensions_mut().insert(Deadline(
            Instant::now() + Duration::from_nanos(29_987_654_321),
        ));
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "29900m");

        // Plain HTTP requests get no grpc-timeout.
        let mut plain = Request::new(ProxyBody::empty());
        plain
            .extensions_mut()
            .insert(Deadline(Instant::now() + Duration::from_secs(3)));
        set_grpc_timeout(&mut plain);
        assert!(plain.headers().get(&GRPC_TIMEOUT).is_none());
    }
}
