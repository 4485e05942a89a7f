//! Floor 1, the core: what every other floor speaks, and nothing of theirs.
//!
//! Bodies (streamed, pooled, watched for their gRPC status), HTTP/1.1 to an upstream
//! on connections driven by the calls themselves, the error a call fails with and the
//! answer it becomes, the executor HTTP/2 connections run their streams on, the time a
//! connection's task reads while it is polled, the per-call extensions, gRPC on the
//! wire, hex ids, short texts (addresses), maps keyed by endpoint address, metric label
//! types, outcome classification and path matchers. This floor imports nothing of
//! remora; the floors above (config, the mechanisms, build, serve) import it.

pub mod addr_map;
pub mod body;
pub mod call;
pub mod clock;
pub mod error;
pub mod executor;
pub mod grpc;
pub mod hex;
pub mod http1;
pub mod labels;
pub mod matcher;
pub mod outcome;
pub mod protocol;
pub mod short_text;
pub mod stream;
