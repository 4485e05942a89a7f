//! remora: a sidecar proxy for HTTP/1.1, HTTP/2 and gRPC, configured by one YAML file.
//!
//! The request path: a [`listener`] accepts a connection, [`proxy`] routes each request
//! ([`route`]) to a service, picks an endpoint ([`balance`]) that [`discovery`] keeps
//! current, and forwards it over a pooled client ([`upstream`]). [`sidecar`] owns the
//! listeners and the reloadable state; [`admin`] serves health and [`metrics`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access;
pub mod balance;
pub mod build;
pub mod config;
pub mod core;
pub mod demo;
pub mod discovery;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod policy;
pub mod routing;
pub mod serve;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use serve::sidecar::{BoundAddrs, Sidecar, SidecarHandle};

/// Code generated from `proto/echo.proto`: the example gRPC service.
pub mod echo {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("remora.echo.v1");
}
