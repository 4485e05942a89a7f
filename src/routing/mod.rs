//! Routing within a service: which of its routes a request takes ([`matcher`]), and
//! what the route does with it ([`RouteAction`]): split it over weighted backends
//! ([`split`]), edit its headers and path ([`edit`]), answer it itself ([`reply`]), or
//! copy a share of it to another service ([`mirror`]).
//!
//! The build floor turns a service's `routes:` into matchers sorted by precedence and
//! actions whose legs are stacks (`S`, the service's own route stack or another
//! service's); the proxy asks the action what to do per request. A route without an
//! action field pays for none: its action is absent. No YAML here: every piece takes its
//! own typed settings.

pub mod edit;
pub mod matcher;
pub mod mirror;
pub mod reply;
pub mod split;

use http::{Request, Response};

pub use edit::{HeaderEdits, PathRewrite};
pub use matcher::{by_precedence, whole_regex, PathMatch, RequestMatcher, ValueMatch};
pub use mirror::{Mirror, MirrorConfig, MirrorConfigError, MirrorMetrics, PendingCopy};
pub use reply::{DirectResponse, Redirect, Reply, ReplyError};
pub use split::{Split, SplitError};

/// What a route does with its requests besides sending them through its own stack.
/// `S` is a stack: a backend's, or the mirror's.
#[derive(Debug)]
pub struct RouteAction<S> {
    /// An answer remora gives itself; nothing is forwarded.
    pub reply: Option<Reply>,
    /// Changes to the request's headers.
    pub request_headers: HeaderEdits,
    /// Changes to the answer's headers (remora's own answers included).
    pub response_headers: HeaderEdits,
    /// The path sent upstream.
    pub rewrite: Option<PathRewrite>,
    /// The backends the requests are spread over; absent: the route's own stack.
    pub split: Option<Split<S>>,
    /// Copies of a share of the requests.
    pub mirror: Option<Mirror<S>>,
}

impl<S> Default for RouteAction<S> {
    fn default() -> Self {
        Self {
            reply: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            rewrite: None,
            split: None,
            mirror: None,
        }
    }
}

impl<S> RouteAction<S> {
    /// Whether the action does nothing (the route is its stack alone).
    pub fn is_empty(&self) -> bool {
        self.reply.is_none()
            && self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && self.rewrite.is_none()
            && self.split.is_none()
            && self.mirror.is_none()
    }

    /// The stack `request` goes through: a backend of the split, else `own`.
    pub fn leg<'a, B>(&'a self, request: &Request<B>, own: &'a S) -> &'a S {
        match &self.split {
            Some(split) => split.pick(request),
            None => own,
        }
    }

    /// Whether [`Self::edit_request`] edits headers.
    pub fn edits_request_headers(&self) -> bool {
        !self.request_headers.is_empty()
    }

    /// Rewrites the request's path and edits its headers.
    pub fn edit_request<B>(&self, request: &mut Request<B>) {
        if let Some(uri) = self.rewrite.as_ref().and_then(|r| r.apply(request.uri())) {
            *request.uri_mut() = uri;
        }
        self.request_headers.apply(request.headers_mut());
    }

    /// Edits the answer's headers.
    pub fn edit_response<B>(&self, response: &mut Response<B>) {
        self.response_headers.apply(response.headers_mut());
    }
}
