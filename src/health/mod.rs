//! Endpoint health: active probes and passive outlier ejection, the two mechanisms that
//! decide from outside the balancer which endpoints it may pick.
//!
//! Both work through the readiness flags of [`Endpoint`](crate::balance::Endpoint): the
//! balancer skips an endpoint while any flag is set, and each flag has one owner.
//!
//! - **Active health checks** ([`HealthChecker`], `active.rs`): a task per service probes
//!   every endpoint on an interval (HTTP `GET`, TCP connect or `grpc.health.v1`) and owns
//!   `readiness.unhealthy`. They catch an endpoint that is down before a request finds it.
//! - **Outlier ejection** ([`OutlierDetector`], `outlier.rs`): an
//!   [`EndpointObserver`](crate::upstream::EndpointObserver) that watches real requests'
//!   outcomes and owns `readiness.ejected`. It catches an endpoint that answers probes
//!   but fails calls.
//!
//! Neither sits on the request path beyond the observer's short bookkeeping; both export
//! their metrics through [`HealthMetrics`].

mod active;
mod metrics;
mod outlier;
mod probe;
mod tracker;

pub use active::{
    HealthCheckConfig, HealthCheckConfigError, HealthCheckHandle, HealthChecker,
    DEFAULT_HEALTHY_THRESHOLD, DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_UNHEALTHY_THRESHOLD,
    MAX_CONCURRENT_PROBES,
};
pub use metrics::HealthMetrics;
pub use outlier::{EjectionView, OutlierConfig, OutlierConfigError, OutlierDetector};
pub use probe::Probe;
