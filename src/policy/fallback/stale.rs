//! The last good answer per GET target, served when the live call fails.
//!
//! A 2xx answer to a GET is recorded as its body streams to the client: the body is
//! wrapped, never buffered ahead, and the copy is stored only when the body completes
//! within the size bound. The cache holds at most `max_entries` answers; storing one
//! more evicts the least recently stored.
//!
//! NOTE: answers are shared between callers. Requests carrying `Authorization` or
//! `Cookie`, and answers with `Set-Cookie` or `Cache-Control: no-store`/`private`, are
//! never recorded, so that one user's answer is never served to another.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::FallbackConfigError;
use crate::core::body::{BoxError, ProxyBody};

/// A bounded cache of the last good answer per (host, path and query) of GET requests.
///
/// Clones share the entries.
#[derive(Debug, Clone)]
pub struct StaleCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Most answers kept.
    max_entries: usize,
    /// Largest body kept; larger answers stream through unrecorded.
    max_body_bytes: usize,
    /// Oldest answer served.
    max_age: Duration,
    entries: Mutex<Entries>,
}

/// The entries and their storage order (for eviction).
#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, (u64, Arc<Cached>)>,
    /// Storage sequence number -> key; the first is the least recently stored.
    order: BTreeMap<u64, String>,
    next_seq: u64,
}

/// One recorded answer.
#[derive(Debug)]
struct Cached {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
}

impl StaleCache {
    /// A cache of at most `max_entries` answers of at most `max_body_bytes` each, served
    /// for `max_age` after they were recorded.
    pub fn try_new(
        max_entries: usize,
        max_body_bytes: usize,
        max_age: Duration,
    ) -> Result<Self, FallbackConfigError> {
        if max_entries == 0 {
            return Err(FallbackConfigError(
                "stale cache max_entries must be non-zero".into(),
            ));
        }
        if max_body_bytes == 0 {
            return Err(FallbackConfigError(
                "stale cache max_body_bytes must be non-zero".into(),
            ));
        }
        if max_age.is_zero() {
            return Err(FallbackConfigError(
                "stale cache max_age must be non-zero".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                max_entries,
                max_body_bytes,
                max_age,
                entries: Mutex::default(),
            }),
        })
    }

    /// How many answers are stored (expired ones included until looked up).
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether no answer is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer stored for `key` if it is fresh enough, as a new response.
    pub(super) fn lookup(&self, key: &str) -> Option<Response<ProxyBody>> {
        let cached = {
            let mut entries = self.lock();
            let (seq, cached) = entries.by_key.get(key)?;
            if cached.stored_at.elapsed() > self.inner.max_age {
                let seq = *seq;
                entries.by_key.remove(key);
                entries.order.remove(&seq);
                return None;
            }
            cached.clone()
        };
        let mut response = Response::new(ProxyBody::full(cached.body.clone()));
        *response.status_mut() = cached.status;
        *response.headers_mut() = cached.headers.clone();
        response.headers_mut().insert(
            header::AGE,
            HeaderValue::from(cached.stored_at.elapsed().as_secs()),
        );
        Some(response)
    }

    fn store(&self, key: String, cached: Cached) {
        let mut entries = self.lock();
        let seq = entries.next_seq;
        entries.next_seq += 1;
        if let Some((old_seq, _)) = entries.by_key.insert(key.clone(), (seq, Arc::new(cached))) {
            entries.order.remove(&old_seq);
        }
        entries.order.insert(seq, key);
        while entries.by_key.len() > self.inner.max_entries {
            let Some((_, oldest)) = entries.order.pop_first() else {
                break;
            };
            entries.by_key.remove(&oldest);
        }
    }

    /// Wraps a response to `key` so that its answer is recorded once its body completes,
    /// when the answer may be shared; other responses are returned as they are.
    pub(super) fn record(&self, key: String, response: Response<ProxyBody>) -> Response<ProxyBody> {
        if !response.status().is_success() || !shareable_response(response.headers()) {
            return response;
        }
        let max = self.inner.max_body_bytes as u64;
        if response.body().size_hint().lower() > max {
            return response;
        }
        let recording = Recording {
            cache: self.clone(),
            key,
            status: response.status(),
            headers: response.headers().clone(),
            data: BytesMut::new(),
        };
        if response.body().is_end_stream() {
            recording.finish();
            return response;
        }
        response.map(|body| {
            ProxyBody::boxed(RecordingBody {
                body,
                recording: Some(recording),
            })
        })
    }
}

/// The cache key of a request whose answer may be recorded or served: GET only, not
/// carrying credentials.
pub(super) fn cache_key<B>(request: &Request<B>) -> Option<String> {
    if request.method() != Method::GET
        || request.headers().contains_key(header::AUTHORIZATION)
        || request.headers().contains_key(header::COOKIE)
    {
        return None;
    }
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default(),
    };
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |target| target.as_str());
    Some(format!("{host}{target}"))
}

/// Whether an answer may be served to other callers.
fn shareable_response(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::SET_COOKIE) {
        return false;
    }
    !headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|directive| {
            directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("private")
        })
}

/// An answer being copied as it streams.
struct Recording {
    cache: StaleCache,
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    data: BytesMut,
}

impl Recording {
    /// Adds a data frame; `false` when the body outgrew the bound.
    fn push(&mut self, data: &[u8]) -> bool {
        if self.data.len() + data.len() > self.cache.inner.max_body_bytes {
            return false;
        }
        self.data.extend_from_slice(data);
        true
    }

    fn finish(self) {
        let cached = Cached {
            status: self.status,
            headers: self.headers,
            body: self.data.freeze(),
            stored_at: Instant::now(),
        };
        self.cache.store(self.key, cached);
    }
}

/// A response body that copies its frames into a [`Recording`] on their way out.
struct RecordingBody {
    body: ProxyBody,
    /// `None` once stored or abandoned (too large, failed).
    recording: Option<Recording>,
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = ready!(Pin::new(&mut this.body).poll_frame(cx));
        let Some(mut recording) = this.recording.take() else {
            return Poll::Ready(polled);
        };
        let keep = match &polled {
            Some(Ok(frame)) => frame.data_ref().is_none_or(|data| recording.push(data)),
            Some(Err(_)) => false,
            None => true,
        };
        if !keep {
            return Poll::Ready(polled);
        }
        // The server may stop polling once the body says it is at its end.
        let ended = match &polled {
            Some(Ok(frame)) => frame.is_trailers() || this.body.is_end_stream(),
            _ => true,
        };
        if ended {
            recording.finish();
        } else {
            this.recording = Some(recording);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn ok(body: &'static str) -> Response<ProxyBody> {
        Response::new(ProxyBody::full(body))
    }

    #[test]
    fn zero_limits_are_refused() {
        let error = StaleCache::try_new(0, 1, Duration::from_secs(1)).unwrap_err();
        assert!(error.to_string().contains("max_entries"), "{error}");
        assert!(StaleCache::try_new(1, 0, Duration::from_secs(1)).is_err());
        assert!(StaleCache::try_new(1, 1, Duration::ZERO).is_err());
    }

    #[tokio::test]
    async fn recorded_only_after_the_body_completes() {
        let cache = StaleCache::try_new(4, 1024, Duration::from_secs(60)).unwrap();
        let response = cache.record("h/a".into(), ok("body"));
        assert!(
            cache.lookup("h/a").is_none(),
            "recorded before the body was sent"
        );
        response.into_body().collect().await.unwrap();
        let served = cache.lookup("h/a").expect("recorded");
        assert_eq!(
            served.into_body().collect().await.unwrap().to_bytes(),
            "body"
        );
    }

    #[tokio::test]
    async fn private_answers_are_not_recorded() {
        let cache = StaleCache::try_new(4, 1024, Duration::from_secs(60)).unwrap();
        let mut response = ok("secret");
        response
            .headers_mut()
            .insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
        let response = cache.record("h/a".into(), response);
        response.into_body().collect().await.unwrap();
        assert!(cache.is_empty());

        let with_credentials = Request::get("http://h/a")
            .header(header::AUTHORIZATION, "Bearer x")
            .body(())
            .unwrap();
        assert_eq!(cache_key(&with_credentials), None);
        let plain = Request::get("/a?b=1")
            .header(header::HOST, "h")
            .body(())
            .unwrap();
        assert_eq!(cache_key(&plain).as_deref(), Some("h/a?b=1"));
    }

    #[tokio::test]
    async fn storing_past_the_bound_evicts_the_oldest() {
        let cache = StaleCache::try_new(2, 1024, Duration::from_secs(60)).unwrap();
        for key in ["a", "b", "a", "c"] {
            let response = cache.record(key.into(), ok("x"));
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(cache.len(), 2);
        assert!(
            cache.lookup("b").is_none(),
            "b was the least recently stored"
        );
        assert!(cache.lookup("a").is_some());
        assert!(cache.lookup("c").is_some());
    }
}
