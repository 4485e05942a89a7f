//! HTTP/1.1 to an upstream, spoken by remora itself: a pooled connection is driven by
//! the task of the call that checked it out, not by a task of its own.
//!
//! hyper's client gives every connection a task (its dispatcher) and reaches it
//! through channels: per call the request crosses to that task, the answer's head and
//! every body frame cross back, and each crossing wakes the other task. A proxy's call
//! waits for its answer anyway, so here the call's own task writes the request
//! ([`writer`]), reads the answer's head ([`head`]) and the answer's body reads the rest
//! ([`chunked`] or a length) from the socket as the caller's side polls it; at the
//! body's clean end the connection goes back to its pool
//! ([`ConnectionHome`]). The request's body is any body: this module knows nothing of
//! remora's own body type.
//!
//! The parsing is strict where a lying upstream could make remora pass off a broken
//! answer as whole: a body shorter than its length, a chunked body without its last
//! chunk, conflicting lengths and malformed chunk sizes are errors, and the caller's
//! answer is cut, never completed. Upgrades (`101`) stay with hyper: they are rare and
//! leave HTTP behind.

mod chunked;
mod conn;
mod framed;
mod head;
mod io;
mod request;
mod response;
mod server;
mod writer;

pub use conn::{Connection, ConnectionHome, Http1Error, ResponseBody, SendFailure};
pub use head::{content_length, parse_response, Framing, ParsedHead, MAX_HEADERS, MAX_HEAD_BYTES};
pub use io::{CallerRead, CallerWrite, SplitIo};
pub use request::{HeadError, RequestBody};
pub use server::{Handler, OnUpgrade, ServeError, ServerConnection, ServerLimits, Upgraded};

/// A chunked answer body as the body of a connection decodes it: `body` reaches the
/// decoder in reads of `step` bytes (at least 1). Returns the data, the trailers and
/// whether the body ended, or the framing error. For the fuzz targets
/// (`crate::fuzzing`), which cannot reach the decoder itself.
#[doc(hidden)]
pub fn decode_chunked_for_fuzzing(
    body: &[u8],
    step: usize,
) -> Result<(Vec<u8>, Option<http::HeaderMap>, bool), Http1Error> {
    let mut decoder = chunked::Chunked::Size;
    let mut buf = bytes::BytesMut::new();
    let mut data = Vec::new();
    for read in body.chunks(step.max(1)) {
        buf.extend_from_slice(read);
        while let Some(decoded) = decoder.decode(&mut buf)? {
            match decoded {
                chunked::Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                chunked::Decoded::Trailers(trailers) => return Ok((data, Some(trailers), true)),
                chunked::Decoded::End => return Ok((data, None, true)),
            }
        }
    }
    Ok((data, None, false))
}

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;
