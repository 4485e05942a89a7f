//! A chunked body as it arrives (RFC 9112 7.1): sizes, data, the last chunk, trailers.
//!
//! Strict where a lenient reading would let an upstream smuggle or truncate: a size
//! line must end in CRLF, a size must be hex that fits 64 bits, data must be followed by
//! CRLF, and the size line and the trailers are bounded.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::conn::Http1Error;
use super::head::{MAX_HEADERS, MAX_HEAD_BYTES};

/// A size line (size and extensions) is at most this long.
const MAX_SIZE_LINE: usize = 4096;

/// What the decoder took off the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailers after the last chunk; the body has ended.
    Trailers(HeaderMap),
    /// The last chunk without trailers: the body has ended.
    End,
}

/// Where in a chunked body the decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Expecting a size line.
    Size,
    /// Inside a chunk: this many bytes of it are still to come.
    Data(u64),
    /// A chunk's data has come; its CRLF has not.
    DataEnd,
    /// The last chunk has come: trailers or the final CRLF follow.
    Trailers,
    /// The body has ended.
    Done,
}

impl Chunked {
    /// Takes what it can off `buf`: `Ok(None)` when more bytes are needed.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Http1Error> {
        loop {
            match *self {
                Self::Size => {
                    let Some(size) = size_line(buf)? else {
                        return Ok(None);
                    };
                    *self = if size == 0 {
                        Self::Trailers
                    } else {
                        Self::Data(size)
                    };
                }
                Self::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let rest = remaining - take as u64;
                    *self = if rest == 0 {
                        Self::DataEnd
                    } else {
                        Self::Data(rest)
                    };
                    return Ok(Some(Decoded::Data(buf.split_to(take).freeze())));
                }
                Self::DataEnd => match buf.get(..2) {
                    None if buf.first().is_none_or(|&byte| byte == b'\r') => return Ok(None),
                    Some(b"\r\n") => {
                        buf.advance(2);
                        *self = Self::Size;
                    }
                    _ => return Err(Http1Error::Chunked("no CRLF after a chunk's data")),
                },
                Self::Trailers => {
                    let Some(decoded) = trailers(buf)? else {
                        return Ok(None);
                    };
                    *self = Self::Done;
                    return Ok(Some(decoded));
                }
                Self::Done => return Ok(Some(Decoded::End)),
            }
        }
    }
}

/// The size of the size line at the start of `buf`, taken off it.
fn size_line(buf: &mut BytesMut) -> Result<Option<u64>, Http1Error> {
    let window = &buf[..buf.len().min(MAX_SIZE_LINE)];
    let Some(end) = window.iter().position(|&byte| byte == b'\n') else {
        if buf.len() >= MAX_SIZE_LINE {
            return Err(Http1Error::Chunked("size line too long"));
        }
        return Ok(None);
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(Http1Error::Chunked("size line not ended by CRLF"));
    }
    let line = &buf[..end - 1];
    let digits = line
        .iter()
        .take_while(|byte| byte.is_ascii_hexdigit())
        .count();
    if digits == 0 {
        return Err(Http1Error::Chunked("no chunk size"));
    }
    if line[..digits]
        .iter()
        .skip_while(|&&byte| byte == b'0')
        .count()
        > 16
    {
        return Err(Http1Error::Chunked("chunk size overflows"));
    }
    let size = line[..digits].iter().fold(0u64, |size, &byte| {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => byte - b'A' + 10,
        };
        (size << 4) | u64::from(digit)
    });
    // Extensions (`;name=value`) are allowed and ignored, after optional whitespace.
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Http1Error::Chunked("junk after the chunk size"));
    }
    if rest.iter().any(|&byte| byte == b'\r' || byte == 0) {
        return Err(Http1Error::Chunked(
            "control character in a chunk extension",
        ));
    }
    buf.advance(end + 1);
    Ok(Some(size))
}

/// The trailer section at the start of `buf` (after the last chunk), taken off it.
fn trailers(buf: &mut BytesMut) -> Result<Option<Decoded>, Http1Error> {
    match buf.get(..2) {
        Some(b"\r\n") => {
            buf.advance(2);
            return Ok(Some(Decoded::End));
        }
        None if buf.first().is_none_or(|&byte| byte == b'\r') => return Ok(None),
        _ => {}
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((length, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields.iter() {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| Http1Error::BadHeader)?;
                let value =
                    HeaderValue::from_bytes(field.value).map_err(|_| Http1Error::BadHeader)?;
                map.append(name, value);
            }
            buf.advance(length);
            Ok(Some(Decoded::Trailers(map)))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => Ok(None),
        Ok(httparse::Status::Partial) => Err(Http1Error::HeadTooLarge),
        Err(error) => Err(Http1Error::Parse(error)),
    }
}
