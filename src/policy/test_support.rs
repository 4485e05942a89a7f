//! What the policies' unit tests share: requests as the proxy hands them to a stack, and
//! a programmable service to stand below a layer where `Forward` stands in a stack.
//!
//! [`proxied`] stamps a request with the [`CallInfo`] that `serve::proxy` puts on every
//! call, so that the layers take the branches production takes.
//!
//! [`Upstream`] answers each call by a script (by call number, replaceable mid-test),
//! after a delay the test chooses, optionally held at a gate; it counts calls when they
//! are made (so a call not yet polled counts) and records what each request carried.
//! Like `Forward`, it rewrites `grpc-timeout` to the call's remaining time right before
//! "sending", and when told to refuse it gives the request back unsent.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::Service;

use crate::core::body::ProxyBody;
use crate::core::call::CallInfo;
use crate::core::error::{ProxyError, Unsent};
use crate::core::grpc::{is_grpc, set_grpc_timeout};

/// The client tests' calls come from.
pub(crate) const CLIENT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 5000));

/// `request` as the proxy hands it to a stack: with the [`CallInfo`] `serve::proxy`
/// stamps on every call (from [`CLIENT`], arriving now, no deadline yet, gRPC when its
/// content type says so).
pub(crate) fn proxied(request: Request<ProxyBody>) -> Request<ProxyBody> {
    proxied_from(CLIENT, request)
}

/// [`proxied`], from `client`.
pub(crate) fn proxied_from(
    client: SocketAddr,
    mut request: Request<ProxyBody>,
) -> Request<ProxyBody> {
    let call = CallInfo {
        client,
        arrived: Instant::now(),
        deadline: None,
        grpc: is_grpc(&request),
        peer_identity: None,
    };
    request.extensions_mut().insert(call);
    request
}

/// What a call below a layer ends with.
pub(crate) type Outcome = Result<Response<ProxyBody>, ProxyError>;

/// A response with `code` and the body `upstream`.
pub(crate) fn status(code: u16) -> Outcome {
    let mut response = Response::new(ProxyBody::full("upstream"));
    *response.status_mut() = StatusCode::from_u16(code).expect("a status code");
    Ok(response)
}

/// `outcome`, its response (if any) carrying `name: value`.
pub(crate) fn with_header(
    mut outcome: Outcome,
    name: &'static str,
    value: &'static str,
) -> Outcome {
    if let Ok(response) = &mut outcome {
        response
            .headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
    }
    outcome
}

/// One answer of an [`Upstream`]'s script.
// NOTE: made and consumed once per call in tests; boxing the outcome buys nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Reply {
    /// This outcome.
    Outcome(Outcome),
    /// What `Forward` does when no connection could be made: a connect failure that
    /// gives the request back unsent.
    Refused,
}

impl From<Outcome> for Reply {
    fn from(outcome: Outcome) -> Self {
        Self::Outcome(outcome)
    }
}

/// How much of a request's body an [`Upstream`] reads before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// All of it.
    Whole,
    /// Its first frame; the rest stays held, as by a connection still sending it.
    First,
    /// None of it: the body is dropped unread.
    Nothing,
}

/// What an [`Upstream`] saw of one call.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    /// The headers as they would be sent (`grpc-timeout` rewritten).
    pub(crate) headers: HeaderMap,
    pub(crate) extensions: Extensions,
    /// What was read of the body.
    pub(crate) body: Bytes,
    /// When the call was made.
    pub(crate) at: Instant,
}

impl Seen {
    /// The value of header `name`, if it came.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("a text header"))
    }
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;
type Delay = Arc<dyn Fn(usize) -> Duration + Send + Sync>;

/// A programmable inner service (see the module doc). Clones share everything.
#[derive(Clone)]
pub(crate) struct Upstream {
    state: Arc<State>,
}

struct State {
    script: Mutex<Script>,
    delay: Delay,
    read: Read,
    calls: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// Bodies read in part, held as a connection still sending them would hold them.
    held: Mutex<Vec<ProxyBody>>,
    gated: AtomicBool,
    gate: Semaphore,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Upstream {
    /// Answers every call 200, at once, reading whole bodies.
    pub(crate) fn ok() -> Self {
        Self::answering(|_| status(200).into())
    }

    /// Answers call `n` (from 1) with `script(n)`, at once, reading whole bodies.
    pub(crate) fn answering(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        Self {
            state: Arc::new(State {
                script: Mutex::new(Arc::new(script)),
                delay: Arc::new(|_| Duration::ZERO),
                read: Read::Whole,
                calls: AtomicUsize::new(0),
                seen: Mutex::new(Vec::new()),
                held: Mutex::new(Vec::new()),
                gated: AtomicBool::new(false),
                gate: Semaphore::new(0),
            }),
        }
    }

    /// Answers call `n` after `delay(n)` (once its body is read).
    pub(crate) fn after(
        mut self,
        delay: impl Fn(usize) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.configure().delay = Arc::new(delay);
        self
    }

    /// Reads `read` of each body before answering.
    pub(crate) fn reading(mut self, read: Read) -> Self {
        self.configure().read = read;
        self
    }

    fn configure(&mut self) -> &mut State {
        Arc::get_mut(&mut self.state).expect("an upstream is configured before it is shared")
    }

    /// Answers the calls from now on with `script(n)` (`n` still counts every call).
    pub(crate) fn answer_with(&self, script: impl Fn(usize) -> Reply + Send + Sync + 'static) {
        *lock(&self.state.script) = Arc::new(script);
    }

    /// While `gated`, each answer waits for a [`release`](Self::release).
    pub(crate) fn gate(&self, gated: bool) {
        self.state.gated.store(gated, Ordering::SeqCst);
    }

    /// Lets `answers` gated answers through.
    pub(crate) fn release(&self, answers: usize) {
        self.state.gate.add_permits(answers);
    }

    /// Calls made so far.
    pub(crate) fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// What each call carried, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    /// The values of header `name` in each call, in order (`-` where it did not come).
    pub(crate) fn header_of_each(&self, name: &str) -> Vec<String> {
        self.seen()
            .iter()
            .map(|seen| seen.header(name).unwrap_or("-").to_string())
            .collect()
    }
}

impl Service<Request<ProxyBody>> for Upstream {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Outcome> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<ProxyBody>) -> Self::Future {
        // As `Forward` does right before sending.
        set_grpc_timeout(&mut request);
        let state = self.state.clone();
        let n = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&state.seen).push(Seen {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            body: Bytes::new(),
            at: Instant::now(),
        });
        let script = lock(&state.script).clone();
        Box::pin(async move {
            if state.gated.load(Ordering::SeqCst) {
                if let Ok(permit) = state.gate.acquire().await {
                    permit.forget();
                }
            }
            let outcome = match script(n) {
                Reply::Outcome(outcome) => outcome,
                Reply::Refused => {
                    return Err(ProxyError::Connect {
                        endpoint: "10.0.0.1:80".into(),
                        source: "refused".into(),
                        unsent: Some(Unsent(Box::new(request))),
                    });
                }
            };
            let read = read(&state, request.into_body()).await;
            lock(&state.seen)[n - 1].body = read;
            let delay = (state.delay)(n);
            if !delay.is_zero() {
                // A zero sleep would still wait for the timer's next tick.
                tokio::time::sleep(delay).await;
            }
            outcome
        })
    }
}

/// Reads what `state` reads of `body`.
async fn read(state: &State, mut body: ProxyBody) -> Bytes {
    match state.read {
        Read::Nothing => Bytes::new(),
        Read::Whole => body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default(),
        Read::First => {
            let mut read = BytesMut::new();
            if let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            lock(&state.held).push(body);
            read.freeze()
        }
    }
}
