//! remora: a sidecar proxy for HTTP/1.1, HTTP/2 and gRPC.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod config;
