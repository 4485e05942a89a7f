//! The configured answer of a `Respond` fallback: a static HTTP response, and for gRPC
//! callers either a status (trailers-only) or one protobuf message with status OK.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::FallbackConfigError;
use crate::core::body::ProxyBody;
use crate::core::grpc::percent_encode_grpc_message;

/// A fixed answer served in the upstream's place.
#[derive(Debug, Clone)]
pub struct StaticResponse {
    /// Status of the HTTP answer.
    status: StatusCode,
    /// Headers of the answer (gRPC answers get them too, before their own).
    headers: HeaderMap,
    /// Body of the HTTP answer.
    body: Bytes,
    /// What a gRPC caller gets; `None` sends gRPC callers the HTTP answer as configured.
    grpc: Option<GrpcReply>,
}

/// What a gRPC caller gets from a `Respond` fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcReply {
    /// A trailers-only answer with this status.
    Status {
        /// The status code (may be `Ok`).
        code: tonic::Code,
        /// The status message, sent percent-encoded in `grpc-message`.
        message: String,
    },
    /// One protobuf message (the encoded bytes, not yet framed), then `grpc-status: 0`.
    Message(Bytes),
}

impl StaticResponse {
    /// An HTTP answer; `grpc` says what gRPC callers get instead.
    pub fn try_new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        grpc: Option<GrpcReply>,
    ) -> Result<Self, FallbackConfigError> {
        if status.is_informational() {
            return Err(FallbackConfigError(format!(
                "fallback status {status} is informational; a final status is needed"
            )));
        }
        if let Some(GrpcReply::Message(message)) = &grpc {
            if u32::try_from(message.len()).is_err() {
                return Err(FallbackConfigError(
                    "gRPC fallback message is larger than 4 GiB".into(),
                ));
            }
        }
        Ok(Self {
            status,
            headers,
            body,
            grpc,
        })
    }

    /// The answer for a caller (`grpc`: whether it spoke gRPC).
    pub(super) fn to_response(&self, grpc: bool) -> Response<ProxyBody> {
        match (&self.grpc, grpc) {
            (Some(GrpcReply::Status { code, message }), true) => self.grpc_status(*code, message),
            (Some(GrpcReply::Message(message)), true) => self.grpc_message(message),
            _ => {
                let mut response = Response::new(ProxyBody::full(self.body.clone()));
                *response.status_mut() = self.status;
                *response.headers_mut() = self.headers.clone();
                response
            }
        }
    }

    fn grpc_status(&self, code: tonic::Code, message: &str) -> Response<ProxyBody> {
        let mut response = self.grpc_head(ProxyBody::empty());
        let headers = response.headers_mut();
        headers.insert("grpc-status", HeaderValue::from(code as i32));
        if !message.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&percent_encode_grpc_message(message)) {
                headers.insert("grpc-message", value);
            }
        }
        response
    }

    fn grpc_message(&self, message: &Bytes) -> Response<ProxyBody> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        self.grpc_head(ProxyBody::with_trailers(grpc_frame(message), trailers))
    }

    /// HTTP 200, the configured headers, `content-type: application/grpc`.
    fn grpc_head(&self, body: ProxyBody) -> Response<ProxyBody> {
        let mut response = Response::new(body);
        *response.headers_mut() = self.headers.clone();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes.
/// The length fits in `u32`: [`StaticResponse::try_new`] checked it.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn informational_status_is_refused() {
        let error =
            StaticResponse::try_new(StatusCode::CONTINUE, HeaderMap::new(), Bytes::new(), None)
                .unwrap_err();
        assert!(error.to_string().contains("informational"), "{error}");
    }

    #[test]
    fn frame_is_flag_length_bytes() {
        assert_eq!(&grpc_frame(b"ab")[..], &[0, 0, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn grpc_callers_get_http_answer_when_no_grpc_reply_is_set() {
        let reply = StaticResponse::try_new(
            StatusCode::ACCEPTED,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
            None,
        )
        .unwrap();
        assert_eq!(reply.to_response(true).status(), StatusCode::ACCEPTED);
    }
}
