//! What a retry sends: a copy of the request (its head kept at the first attempt, its
//! body replayed from what that attempt sent), or the request itself when no connection
//! took it.

use http::header::{HeaderName, HeaderValue};
use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;

use crate::core::body::{ProxyBody, Replay};
use crate::core::call::CallInfo;
use crate::core::error::{ProxyError, Unsent};
use crate::trace::CallTrace;

/// Where a call's next attempt comes from.
// NOTE: one per retried call, in its boxed state; boxing the copy would add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Resend {
    /// Nowhere: the call is sent once (a single attempt configured, or a method that may
    /// not be repeated); kept only for its per-try bound.
    Never,
    /// Nowhere, though the call could be retried: its body is known to be larger than
    /// what is kept (a failure that would be retried is counted as not replayable).
    TooLarge,
    /// The request itself, which `Forward` gives back in its error when no connection
    /// could be made: only failed connections are retried.
    Unsent,
    /// A copy of the request for every retry: any condition may be retried.
    Copy {
        template: Template,
        /// What the first attempt sends of the body, recorded; `None` without a body.
        body: Option<Replay>,
    },
}

impl Resend {
    /// A copy of `request` for its retries; its body becomes the first of its copies,
    /// recorded up to `max_replay_bytes`. `call` is the request's [`CallInfo`], read once.
    pub(super) fn copy(
        request: &mut Request<ProxyBody>,
        call: Option<CallInfo>,
        max_replay_bytes: usize,
    ) -> Self {
        let body = if request.body().is_end_stream() {
            None
        } else if request.body().size_hint().lower() > max_replay_bytes as u64 {
            return Self::TooLarge;
        } else {
            let (first, replay) =
                Replay::wrap(std::mem::take(request.body_mut()), max_replay_bytes);
            *request.body_mut() = first;
            Some(replay)
        };
        let extensions = KeptExtensions::of(call, request.extensions());
        Self::Copy {
            template: Template::of(request, extensions),
            body,
        }
    }

    /// Whether an attempt that ended with `result` may be sent again at all.
    pub(super) fn may_retry(&self, result: &Result<Response<ProxyBody>, ProxyError>) -> bool {
        match self {
            Self::Never => false,
            Self::TooLarge | Self::Copy { .. } => true,
            Self::Unsent => matches!(
                result,
                Err(ProxyError::Connect {
                    unsent: Some(_),
                    ..
                })
            ),
        }
    }

    /// Whether the next attempt is the unsent request itself.
    pub(super) fn is_unsent(&self) -> bool {
        matches!(self, Self::Unsent)
    }

    /// The unsent request `result` gives back, for the next attempt of an
    /// [`Unsent`](Self::Unsent) call.
    pub(super) fn unsent(
        &self,
        result: &mut Result<Response<ProxyBody>, ProxyError>,
    ) -> Option<Request<ProxyBody>> {
        match (self, result) {
            (Self::Unsent, Err(ProxyError::Connect { unsent, .. })) => {
                unsent.take().map(|Unsent(request)| *request)
            }
            _ => None,
        }
    }

    /// The body of the next attempt of a [`Copy`](Self::Copy) call, after `result`;
    /// `None` when it cannot be sent again (or the call is not copied).
    pub(super) fn body(
        &self,
        result: &mut Result<Response<ProxyBody>, ProxyError>,
    ) -> Option<ProxyBody> {
        let Self::Copy { body, .. } = self else {
            return None;
        };
        // An unsent request given back holds the first copy of the body: it must let
        // go before another copy can read on.
        if let Err(ProxyError::Connect { unsent, .. }) = result {
            *unsent = None;
        }
        match body {
            None => Some(ProxyBody::empty()),
            Some(replay) => replay.try_body(),
        }
    }

    /// The next attempt's request of a [`Copy`](Self::Copy) call, carrying `body`.
    pub(super) fn request(&self, body: ProxyBody) -> Option<Request<ProxyBody>> {
        match self {
            Self::Copy { template, .. } => Some(template.request(body)),
            _ => None,
        }
    }
}

/// What is needed to rebuild the request for another attempt.
pub(super) struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderCopy,
    extensions: KeptExtensions,
}

impl Template {
    fn of(request: &Request<ProxyBody>, extensions: KeptExtensions) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: HeaderCopy::of(request.headers()),
            extensions,
        }
    }

    fn request(&self, body: ProxyBody) -> Request<ProxyBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.to_map();
        *request.extensions_mut() = self.extensions.to_extensions();
        request
    }
}

/// A request's header fields, copied in order into one allocation (a `HeaderMap`'s clone
/// takes two and copies its index too); a `HeaderMap` is built from it only for a retry.
struct HeaderCopy(Vec<(HeaderName, HeaderValue)>);

impl HeaderCopy {
    fn of(headers: &HeaderMap) -> Self {
        let mut fields = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            fields.push((name.clone(), value.clone()));
        }
        Self(fields)
    }

    fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            map.append(name.clone(), value.clone());
        }
        map
    }
}

/// A request's extensions, as kept for its retries.
enum KeptExtensions {
    /// Only remora's own, copied without allocating; put back into an attempt's map
    /// only when there is a retry.
    Known {
        call: Option<CallInfo>,
        trace: Option<CallTrace>,
    },
    /// Every extension (http 1 requires them to be `Clone`), for requests carrying others
    /// too: a shared `OnUpgrade`, say (only the attempt answered 101 takes the upgrade).
    All(Extensions),
}

impl KeptExtensions {
    /// `extensions`, of which `call` is the [`CallInfo`] (already looked up).
    fn of(call: Option<CallInfo>, extensions: &Extensions) -> Self {
        // A proxied call's usual map holds its `CallInfo` alone: no further lookup.
        if call.is_some() && extensions.len() == 1 {
            return Self::Known { call, trace: None };
        }
        let trace = extensions.get::<CallTrace>().cloned();
        let known = usize::from(call.is_some()) + usize::from(trace.is_some());
        if known == extensions.len() {
            Self::Known { call, trace }
        } else {
            Self::All(extensions.clone())
        }
    }

    fn to_extensions(&self) -> Extensions {
        match self {
            Self::Known { call, trace } => {
                let mut extensions = Extensions::new();
                if let Some(call) = call {
                    extensions.insert(call.clone());
                }
                if let Some(trace) = trace {
                    extensions.insert(trace.clone());
                }
                extensions
            }
            Self::All(extensions) => extensions.clone(),
        }
    }
}
