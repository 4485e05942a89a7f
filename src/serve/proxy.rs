//! The request path: route a request, forward it to one endpoint, relay the answer.
//!
//! One [`ProxyService`] serves one client connection. Per request it loads the current
//! [`State`] snapshot (a lock-free `ArcSwap` read), so a config reload applies to the next
//! request while in-flight ones finish on the snapshot they started with.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use opentelemetry::context::FutureExt as _;
use tower::ServiceExt;

use crate::build::metrics::{DeniedLabels, Metrics, Series};
use crate::build::route::{RouteId, Target};
use crate::build::state::State;
use crate::core::body::{
    watch, BodyEnd, BodyMeter, CallerBody, MeteredBody, ProxyBody, StatusWaiter,
};
use crate::core::call::CallInfo;
use crate::core::clock;
use crate::core::error::ProxyError;
use crate::core::grpc::{grpc_status_at, is_grpc, GrpcStatusAt};
use crate::core::labels::{Direction, GrpcCode};
use crate::core::short_text::ShortText;
use crate::policy::Stack;
use crate::routing::{Mirror, RouteAction};
use crate::serve::shared::Shared;
use crate::upstream::{requested_upgrade, set_forwarded, strip_hop_by_hop, ForwardedFor};

/// What decides the destination of the requests a listener accepts.
#[derive(Debug, Clone)]
pub enum Entry {
    /// The inbound listener: always the local app.
    Inbound,
    /// The shared outbound listener: Host / `:authority` and path.
    SharedOutbound,
    /// A service's dedicated outbound port.
    Service(Arc<str>),
}

impl Entry {
    fn direction(&self) -> Direction {
        match self {
            Self::Inbound => Direction::Inbound,
            Self::SharedOutbound | Self::Service(_) => Direction::Outbound,
        }
    }
}

/// The hyper service of one client connection.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    entry: Entry,
    peer: SocketAddr,
    /// `peer` as the access log writes it, formatted once per connection (when the
    /// access log is on).
    client: Option<Arc<str>>,
    /// `peer`'s `x-forwarded-for` element, formatted once per connection.
    forwarded_for: ForwardedFor,
    /// The caller's SPIFFE ID, read from its certificate once per connection (`None`
    /// for a plaintext connection).
    peer_identity: Option<Arc<str>>,
}

impl ProxyService {
    /// The service for a connection from `peer` (whose certificate says it is
    /// `peer_identity`, over mutual TLS) accepted by a listener of kind `entry`.
    pub fn new(
        shared: Arc<Shared>,
        entry: Entry,
        peer: SocketAddr,
        peer_identity: Option<Arc<str>>,
    ) -> Self {
        let client = shared
            .tracing
            .logs_access()
            .then(|| Arc::from(ShortText::socket_addr(peer).as_str()));
        Self {
            shared,
            entry,
            client,
            forwarded_for: ForwardedFor::new(peer.ip()),
            peer,
            peer_identity,
        }
    }
}

/// An answer on its way to the caller.
type ResponseFuture = Pin<Box<dyn Future<Output = Response<Answering>> + Send>>;

/// The body of an answer on its way to the caller: the request's trace waits for its end.
pub type Answering = MeteredBody<crate::trace::AnswerEnd>;

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<Answering>;
    type Error = Infallible;
    type Future = Answered;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        Answered(self.respond(request.map(CallerBody::Hyper)))
    }
}

impl crate::core::http1::Handler for ProxyService {
    type Body = Answering;
    type Future = ResponseFuture;

    fn call(&mut self, request: Request<crate::core::http1::RequestBody>) -> ResponseFuture {
        self.respond(request.map(CallerBody::Http1))
    }
}

/// An answer on its way to a caller hyper serves, which never fails.
pub struct Answered(ResponseFuture);

impl Future for Answered {
    type Output = Result<Response<Answering>, Infallible>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

impl ProxyService {
    /// The answer to `request`, traced and logged.
    fn respond(&self, mut request: Request<CallerBody>) -> ResponseFuture {
        // Room for the headers remora adds on the way (request id, forwarding, trace
        // context, attempt, grpc-timeout): the map grows once here, not step by step.
        request.headers_mut().reserve(ADDED_HEADERS);
        let this = self.clone();
        // tracing: request id, caller's context, request span; the access log at the end.
        let trace = this
            .shared
            .tracing
            .start(&mut request, this.entry.direction())
            .with_peer_identity(this.peer_identity.as_ref())
            .with_client(this.client.as_ref());
        Box::pin(async move {
            // The response body's byte counter, once the call is routed.
            let mut sent = None;
            let context = trace.context();
            let response = this.handle(request, &mut sent).with_context(context).await;
            let (response, end) = trace.finish(response);
            response.map(|body| MeteredBody::waited(body, sent, end))
        })
    }
}

/// How many headers remora may add to a request before it is sent.
const ADDED_HEADERS: usize = 8;

/// Failed requests logged per second at most; the rest are counted in metrics only.
static FAILURE_LOG: LogBudget = LogBudget::new(10);

/// Denied calls logged per second at most, like [`FAILURE_LOG`].
static DENIAL_LOG: LogBudget = LogBudget::new(10);

/// The `caller` of a denied call without an identity.
const UNAUTHENTICATED: &str = "unauthenticated";

/// A per-second budget of log lines, so an outage does not turn into a log flood.
struct LogBudget {
    per_second: u64,
    /// The second (since the Unix epoch) the count belongs to.
    second: AtomicU64,
    /// Lines admitted in that second.
    admitted: AtomicU64,
    /// Lines refused since the last admitted one.
    suppressed: AtomicU64,
}

impl LogBudget {
    const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed before this one)` when a line may be logged now.
    fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.admitted.store(0, Ordering::Relaxed);
        }
        if self.admitted.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The metrics label of requests that matched no service.
fn unknown_service() -> Arc<str> {
    Arc::from("unknown")
}

impl ProxyService {
    /// Routes and forwards `request`; `sent` gets the counter of the response body's
    /// bytes once a route takes it.
    async fn handle(
        self,
        mut request: Request<CallerBody>,
        sent: &mut Option<prometheus_client::metrics::counter::Counter>,
    ) -> Response<ProxyBody> {
        if request.headers().contains_key(header::UPGRADE) {
            // A tunnel it may become is counted by the drain.
            request.extensions_mut().insert(self.shared.tunnels.clone());
        }
        // tokio's clock (the same as std's outside tests): the call's arrival for the
        // layers (`CallInfo`) and the start of its metrics' durations. The poll's
        // reading (`core::clock`), as are the durations below.
        let started = clock::now();
        let state = self.shared.state.load_full();
        let grpc = is_grpc(&request);
        let direction = self.entry.direction();
        let connect = request.method() == http::Method::CONNECT;
        let routed = if connect {
            // remora routes requests to configured services; it never opens raw tunnels.
            Err(ProxyError::BadRequest("CONNECT is not supported".into()))
        } else {
            route(&state, &self.entry, &request)
        };
        let target = match routed {
            Ok(target) => target,
            Err(error) => {
                let mut response = error.to_response(grpc);
                if connect && request.version() < Version::HTTP_2 {
                    // What follows a CONNECT on this connection was meant for a tunnel.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                let service = unknown_service();
                // remora's own answers carry a gRPC status in their headers.
                let grpc_code = grpc_code_in_headers(response.headers());
                self.shared.metrics.record_request(
                    direction,
                    &service,
                    response.status().as_u16(),
                    grpc_code.unwrap_or(GrpcCode::Unknown),
                    clock::elapsed(started),
                );
                tracing::debug!(peer = %self.peer, %error, "refused");
                return response;
            }
        };
        crate::trace::routed(&request, &target.name); // tracing: name the service on the span
        if let (Entry::Inbound, Some(authorization)) = (&self.entry, &state.authorization) {
            let identity = self.peer_identity.as_deref();
            if !authorization.admits(request.uri().path(), identity) {
                return self.deny(&target, identity, grpc, started);
            }
        }
        let route_id = target.route_for(&request);
        let route = target.route(route_id);
        let series = Series {
            direction,
            service: &target.name,
            cache: &target.metrics,
            route: &route.metrics,
        };
        let metrics = &self.shared.metrics;
        let bytes = metrics.body_bytes(&series);
        *sent = Some(bytes.response);
        let read = request
            .extensions()
            .get::<crate::trace::CallTrace>()
            .and_then(crate::trace::CallTrace::request_bytes);
        let meter = BodyMeter::new(Some(bytes.request), read);
        let call = CallInfo {
            client: self.peer,
            arrived: started,
            deadline: None,
            grpc,
            peer_identity: self.peer_identity.clone(),
        };
        let forwarded = match &route.action {
            None => {
                let (stack, forwarded_for) = (&route.stack, &self.forwarded_for);
                send_through(stack, request, meter, call, forwarded_for, None).await
            }
            // Boxed: a route with an action would otherwise make every call's future
            // as large as its own.
            Some(action) => {
                Box::pin(act(
                    action,
                    &route.stack,
                    request,
                    meter,
                    call,
                    &self.forwarded_for,
                ))
                .await
            }
        };
        let mut response = match forwarded {
            Ok(response) => {
                if let Some(trigger) = response
                    .headers()
                    .get(&crate::policy::fallback::FALLBACK_HEADER)
                {
                    // A decision, recorded on the request's span.
                    if crate::trace::recording() {
                        let trigger = String::from_utf8_lossy(trigger.as_bytes()).into_owned();
                        crate::trace::event(
                            "fallback",
                            vec![opentelemetry::KeyValue::new(
                                "remora.fallback.trigger",
                                trigger,
                            )],
                        );
                    }
                }
                response
            }
            Err(error) => {
                if crate::trace::recording() {
                    crate::trace::event(error.reason(), Vec::new());
                }
                if let Some(suppressed) = FAILURE_LOG.admit() {
                    tracing::warn!(
                        service = %target.name,
                        peer = %self.peer,
                        %error,
                        suppressed,
                        "request failed",
                    );
                }
                error.to_response(grpc)
            }
        };
        if let Some(action) = &route.action {
            action.edit_response(&mut response);
        }
        let status = response.status().as_u16();
        let Some(grpc_code) = grpc_code_in_headers(response.headers()) else {
            // Counted once the trailers say how the call ended.
            metrics.observe_duration(&series, clock::elapsed(started));
            let count = RequestCount {
                metrics: metrics.clone(),
                target: target.clone(),
                route: route_id,
                direction,
                status,
            };
            watch(&mut response, Box::new(count));
            return response;
        };
        metrics.record_request_cached(&series, status, grpc_code, clock::elapsed(started));
        response
    }
}

impl ProxyService {
    /// Answers an inbound call authorization refused (403, or gRPC PERMISSION_DENIED),
    /// counted, logged (within [`DENIAL_LOG`]) and recorded on the span: nothing of it
    /// reaches the app.
    fn deny(
        &self,
        target: &Target,
        identity: Option<&str>,
        grpc: bool,
        started: tokio::time::Instant,
    ) -> Response<ProxyBody> {
        let caller = identity.unwrap_or(UNAUTHENTICATED);
        let metrics = &self.shared.metrics;
        metrics
            .requests_denied
            .get_or_create(&DeniedLabels {
                listener: "inbound",
                caller: caller.to_string(),
            })
            .inc();
        if crate::trace::recording() {
            crate::trace::event(
                "authorization denied",
                vec![opentelemetry::KeyValue::new(
                    crate::trace::PEER_IDENTITY,
                    caller.to_string(),
                )],
            );
        }
        if let Some(suppressed) = DENIAL_LOG.admit() {
            tracing::info!(peer = %self.peer, caller, suppressed, "authorization denied");
        }
        let response = ProxyError::Forbidden(caller.to_string()).to_response(grpc);
        metrics.record_request(
            Direction::Inbound,
            &target.name,
            response.status().as_u16(),
            grpc_code_in_headers(response.headers()).unwrap_or(GrpcCode::Unknown),
            clock::elapsed(started),
        );
        response
    }
}

/// The `grpc_code` label of an answer with `headers`, or `None` when its gRPC status
/// comes in its trailers.
fn grpc_code_in_headers(headers: &http::HeaderMap) -> Option<GrpcCode> {
    match grpc_status_at(headers) {
        GrpcStatusAt::NotGrpc => Some(GrpcCode::NotGrpc),
        GrpcStatusAt::Headers(code) => Some(GrpcCode::of(code)),
        GrpcStatusAt::Trailers => None,
    }
}

/// The count of a request whose gRPC status comes in its response's trailers: it waits
/// in the response body (see [`crate::core::body::watch`]) and counts when they arrive.
#[derive(Debug)]
pub struct RequestCount {
    metrics: Arc<Metrics>,
    /// Keeps the route's cached counters alive past a reload.
    target: Arc<Target>,
    route: RouteId,
    direction: Direction,
    /// The HTTP status sent to the caller.
    status: u16,
}

impl StatusWaiter for RequestCount {
    /// Counts the request with the gRPC status its body ended with.
    fn settle(self: Box<Self>, end: BodyEnd<'_>, _sent: u64) {
        let grpc_code = GrpcCode::of(end.grpc_status());
        let route = self.target.route(self.route);
        let series = Series {
            direction: self.direction,
            service: &self.target.name,
            cache: &self.target.metrics,
            route: &route.metrics,
        };
        self.metrics.count_request(&series, self.status, grpc_code);
    }
}

fn route<B>(state: &State, entry: &Entry, request: &Request<B>) -> Result<Arc<Target>, ProxyError> {
    // An HTTP/1 request in absolute form (`GET http://host/...`) names its destination:
    // a listener serves it only when that is where the listener goes.
    let absolute = (request.version() < Version::HTTP_2)
        .then(|| request.uri().authority())
        .flatten();
    let found = match entry {
        Entry::Inbound => {
            if let Some(authority) = absolute {
                return Err(ProxyError::BadRequest(format!(
                    "an absolute-form request (for {authority}) on the inbound listener: it \
                     serves the local app, in origin form"
                )));
            }
            state
                .inbound
                .clone()
                .ok_or_else(|| "inbound app".to_string())
        }
        Entry::Service(name) => {
            let target = state.routes.service(name).cloned();
            if let (Some(authority), Some(target)) = (absolute, &target) {
                let same = state
                    .routes
                    .route(request)
                    .is_ok_and(|routed| Arc::ptr_eq(routed, target));
                if !same {
                    return Err(ProxyError::BadRequest(format!(
                        "an absolute-form request for {authority} on the port of {name}, \
                         which serves {name} only"
                    )));
                }
            }
            target.ok_or_else(|| name.to_string())
        }
        Entry::SharedOutbound => state.routes.route(request).cloned(),
    };
    found.map_err(ProxyError::UnknownDestination)
}

/// Does what a route's `action` says with `request` (its body counted by `meter`):
/// answers it, or edits it and sends it through the backend the action picks (`own`,
/// the route's stack, without a split), mirroring a share of it.
async fn act(
    action: &RouteAction<Stack>,
    own: &Stack,
    mut request: Request<CallerBody>,
    meter: BodyMeter,
    call: CallInfo,
    forwarded_for: &ForwardedFor,
) -> Result<Response<ProxyBody>, ProxyError> {
    if let Some(reply) = &action.reply {
        return Ok(reply.answer(&request));
    }
    if action.edits_request_headers() {
        crate::trace::headers_edited(&request);
    }
    action.edit_request(&mut request);
    let leg = action.leg(&request, own);
    let mirror = action.mirror.as_ref();
    send_through(leg, request, meter, call, forwarded_for, mirror).await
}

/// Cleans `request` for its hop and sends it through `stack`, its body's bytes counted
/// by `meter` as they are read; a copy goes to `mirror` when it takes one.
async fn send_through(
    stack: &Stack,
    request: Request<CallerBody>,
    meter: BodyMeter,
    call: CallInfo,
    forwarded_for: &ForwardedFor,
    mirror: Option<&Mirror<Stack>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let caller_version = request.version();
    let upgrade = (caller_version == Version::HTTP_11)
        .then(|| requested_upgrade(request.headers()))
        .flatten();
    let chunked = caller_version < Version::HTTP_2 && is_chunked(request.headers());

    let (mut parts, body) = request.into_parts();
    let body = if chunked {
        Box::pin(read_first_chunk(body, meter)).await?
    } else {
        ProxyBody::metered(None, body, meter)
    };
    if parts.headers.get(header::HOST).is_none() {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    // remora answers `Expect: 100-continue` itself when it reads the body.
    parts.headers.remove(header::EXPECT);
    set_forwarded(&mut parts.headers, forwarded_for);
    parts.extensions.insert(call);
    if let Some(protocol) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }
    // An upgrade is a tunnel: there is nothing to copy.
    let (body, copy) = match mirror.filter(|_| !parts.headers.contains_key(header::UPGRADE)) {
        Some(mirror) => mirror.tap(&parts, body),
        None => (body, None),
    };
    let answered = stack
        .clone()
        .oneshot(Request::from_parts(parts, body))
        .await;
    if let Some(copy) = copy {
        copy.send();
    }
    answered
}

/// Whether an HTTP/1 request body is chunked.
fn is_chunked(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.as_bytes()
            .windows(7)
            .any(|w| w.eq_ignore_ascii_case(b"chunked"))
    })
}

/// Reads the first frame of a chunked body so that broken framing is refused (400)
/// before anything reaches the upstream.
async fn read_first_chunk(mut body: CallerBody, meter: BodyMeter) -> Result<ProxyBody, ProxyError> {
    match body.frame().await {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => Ok(ProxyBody::metered(Some(data), body, meter)),
            // Trailers end a body: an empty one that had some.
            Err(frame) => Ok(frame.into_trailers().map_or_else(
                |_| ProxyBody::empty(),
                |trailers| ProxyBody::with_trailers(bytes::Bytes::new(), trailers),
            )),
        },
        Some(Err(error)) => Err(ProxyError::BadRequest(format!("request body: {error}"))),
        None => Ok(ProxyBody::metered(None, body, meter)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_admits_its_share_per_second_and_reports_what_it_suppressed() {
        let budget = LogBudget::new(2);
        assert_eq!(budget.admit_at(100), Some(0));
        assert_eq!(budget.admit_at(100), Some(0));
        assert_eq!(budget.admit_at(100), None);
        assert_eq!(budget.admit_at(100), None);
        assert_eq!(budget.admit_at(101), Some(2));
        assert_eq!(budget.admit_at(101), Some(0));
        assert_eq!(budget.admit_at(101), None);
    }
}
