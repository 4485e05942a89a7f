//! One call on an upstream HTTP/2 connection, made with the `h2` crate directly: the
//! request's head is sent, its body piped in the caller's own task while the answer is
//! awaited, and the answer's stream becomes the response body.
//!
//! hyper's HTTP/2 client, which this replaces, handed each request to the connection's
//! task over a channel, spawned one future there to await the answer (sent back over a
//! second channel) and another to pipe a body still arriving, and linked the two with a
//! third channel for cancellation: three channels, two spawned futures and the wake-ups
//! between them, per call. Here the call's task does all of it. A body still being
//! piped when the answer's head arrives (a streaming request) is spawned then, the one
//! case that needs a task of its own.
//!
//! Dropping the call before its answer drops the stream's last handles, and `h2` resets
//! the stream (`CANCEL`), as hyper did.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::SendStream;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;

use crate::core::body::{BoxError, PooledBody, ProxyBody, StreamSlot};
use crate::core::clock;
use crate::core::http1::content_length;

/// Why a call did not get an answer.
pub(super) enum Failed {
    /// The connection takes no new stream (it was closed, or the server sent GOAWAY):
    /// nothing was sent, and the request is given back.
    Refused(Box<Request<ProxyBody>>),
    /// The exchange failed after the request was sent (or could not be encoded).
    Upstream(BoxError),
}

/// Sends `request` on `sender`'s connection and waits for the answer's head; the body
/// it returns holds `slot` until it ends.
pub(super) async fn send(
    mut sender: SendRequest<Bytes>,
    request: Request<ProxyBody>,
    slot: StreamSlot,
) -> Result<Response<ProxyBody>, Failed> {
    // A fresh handle has no stream waiting to open: ready at once, unless the
    // connection is gone.
    if poll_fn(|cx| sender.poll_ready(cx)).await.is_err() {
        return Err(Failed::Refused(Box::new(request)));
    }
    let (head, body) = request.into_parts();
    let end_of_stream = body.is_end_stream();
    let mut head = Request::from_parts(head, ());
    declare_length(&mut head, &body);
    let (mut answer, stream) = sender
        .send_request(head, end_of_stream)
        .map_err(|error| Failed::Upstream(error.into()))?;
    let mut pipe = (!end_of_stream).then(|| Pipe::new(body, stream));
    let answered = poll_fn(|cx| {
        if let Some(sending) = &mut pipe {
            if Pin::new(sending).poll(cx).is_ready() {
                pipe = None;
            }
        }
        Pin::new(&mut answer).poll(cx)
    })
    .await;
    let response = answered.map_err(|error| Failed::Upstream(error.into()))?;
    if let Some(sending) = pipe {
        // The server answered while the request still streams: the body goes on in a
        // task of its own, the caller reading the answer meanwhile.
        tokio::spawn(clock::scoped(sending));
    }
    // `h2` has already refused an answer whose lengths disagree.
    let length = content_length(response.headers()).ok().flatten();
    Ok(response.map(|recv| ProxyBody::Pooled {
        body: PooledBody::new(recv, length, slot),
    }))
}

/// Sets `content-length` from a body of known size when the head has none, where HTTP
/// gives a length meaning: a body that is not empty, or a method that carries one.
pub(super) fn declare_length(head: &mut Request<()>, body: &ProxyBody) {
    let Some(length) = body.size_hint().exact() else {
        return;
    };
    let carries_body = matches!(*head.method(), Method::POST | Method::PUT | Method::PATCH);
    if (length != 0 || carries_body) && !head.headers().contains_key(CONTENT_LENGTH) {
        head.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// A request body going out on its stream, frame by frame, as the stream's window
/// allows. It ends when the body has, when the server resets the stream, or when the
/// body fails (the stream is then reset with `CANCEL`).
pub(super) struct Pipe {
    body: ProxyBody,
    stream: SendStream<Bytes>,
    /// A chunk read from the body, waiting for window (and whether it is the last).
    waiting: Option<(Bytes, bool)>,
}

impl Pipe {
    fn new(body: ProxyBody, stream: SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            waiting: None,
        }
    }

    /// Sends what the body has, until it or the stream's window runs out (`Pending`),
    /// or the body has been sent or cannot be (`Ready`).
    fn pump(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some((data, last)) = self.waiting.take() {
                while self.stream.capacity() == 0 {
                    match self.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            self.waiting = Some((data, last));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
                if self.stream.send_data(data, last).is_err() || last {
                    return Poll::Ready(());
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(_))) => {
                    self.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {
                    // The body ended without saying so with its last chunk.
                    let _ = self.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let last = self.body.is_end_stream();
                    if data.is_empty() {
                        // Needs no window (an explicit end, often).
                        if self.stream.send_data(data, last).is_err() || last {
                            return Poll::Ready(());
                        }
                        continue;
                    }
                    // A claim of one byte, not the chunk: a stream waiting for window
                    // must not hold the connection's window from the others; `h2`
                    // asks for the rest when the chunk is sent.
                    self.stream.reserve_capacity(1);
                    self.waiting = Some((data, last));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.stream.reserve_capacity(0);
                        let _ = self.stream.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

impl Future for Pipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.pump(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            // Waiting for the body or for window: a reset from the server ends the wait
            // (and wakes this task).
            Poll::Pending => match self.stream.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
