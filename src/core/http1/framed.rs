//! Where a body coming in stands, by its framing: shared by an upstream's answer and a
//! caller's request, which differ only in what happens at the end.

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::chunked::{Chunked, Decoded};
use super::conn::Http1Error;

/// How much of a body is still to come.
#[derive(Debug)]
pub(super) enum Remaining {
    /// This many bytes.
    Length(u64),
    /// Chunks.
    Chunked(Chunked),
    /// Everything until the peer closes.
    UntilClose,
    /// The body has ended.
    Done,
    /// The body failed.
    Failed,
}

impl Remaining {
    /// Takes a frame of the body off `buf`: `Ok(None)` when more bytes are needed,
    /// `Ok(Some(None))` at the body's end. Becomes `Done` once the body's last byte is
    /// taken.
    pub(super) fn take(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Option<Frame<Bytes>>>, Http1Error> {
        match self {
            Self::Done | Self::Failed => Ok(Some(None)),
            Self::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                if *left == 0 {
                    *self = Self::Done;
                }
                Ok(Some(Some(Frame::data(buf.split_to(take).freeze()))))
            }
            Self::Chunked(chunked) => match chunked.decode(buf)? {
                None => Ok(None),
                Some(Decoded::Data(data)) => Ok(Some(Some(Frame::data(data)))),
                Some(Decoded::Trailers(trailers)) => {
                    *self = Self::Done;
                    Ok(Some(Some(Frame::trailers(trailers))))
                }
                Some(Decoded::End) => {
                    *self = Self::Done;
                    Ok(Some(None))
                }
            },
            Self::UntilClose => {
                if buf.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Some(Frame::data(buf.split().freeze()))))
            }
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self {
            Self::Done => SizeHint::with_exact(0),
            Self::Length(left) => SizeHint::with_exact(*left),
            Self::Chunked(_) | Self::UntilClose | Self::Failed => SizeHint::default(),
        }
    }
}
