//! Endpoint sets and the choice of one endpoint per request.
//!
//! An [`EndpointSet`] holds the current snapshot of a service's endpoints behind an
//! `ArcSwap`: discovery replaces it whole ([`EndpointSet::update`]), requests read it
//! without a lock. Whatever an algorithm precomputes (a round-robin schedule, a hash
//! ring, a Maglev table) is built with the snapshot, never per request, and there is no
//! worker task: [`Forward`](crate::upstream::Forward) picks inline.
//!
//! A pick ([`EndpointSet::pick_for`]) first settles which endpoints it may take
//! (readiness, the retry's avoid list, panic mode: `eligible.rs` says how), then lets the
//! configured [`Balancer`] choose among them, each algorithm in its own file:
//!
//! - `P2cPeakEwma` (default, `p2c.rs` and `ewma.rs`): two random candidates, the lower
//!   `(in_flight + 1) × RTT / weight` wins;
//! - `LeastRequest` (`p2c.rs`): the same on `(in_flight + 1) / weight`;
//! - `RoundRobin` (`round_robin.rs`): smooth weighted round robin;
//! - `Random` (`random.rs`): weighted random;
//! - `ConsistentHash` (`ring.rs`, `maglev.rs`, `hash.rs`): a hash ring or a Maglev table
//!   over a key taken from the request ([`HashKey`]); a request without the key is
//!   balanced at random.
//!
//! [`Forward`](crate::upstream::Forward) computes the key ([`EndpointSet::hash_key`],
//! `None` unless the balancer hashes), picks, and wraps the attempt in an [`InFlight`]
//! ([`EndpointSet::start`]) that counts it and samples its RTT.
//!
//! Readiness is a set of flags on each [`Endpoint`], each owned by one mechanism (active
//! health checks, outlier ejection, the endpoint circuit breaker). An endpoint is picked
//! only when no mechanism holds it out, except in panic mode.

mod config;
mod eligible;
mod ewma;
mod hash;
mod load;
mod maglev;
mod metrics;
mod p2c;
mod random;
mod ring;
mod round_robin;

pub use config::{Balancer, BalancerConfig, BalancerConfigError, HashAlgorithm, HashKey};
pub use ewma::PeakEwma;
pub use load::{InFlight, OpenConnection};
pub use metrics::BalancerMetrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use fastrand::Rng;
use http::uri::Authority;
use http::Request;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::time::Instant;

use crate::core::clock;
use crate::discovery::Instance;
use eligible::Choice;
use ewma::EwmaParams;
use maglev::Maglev;
use ring::Ring;
use round_robin::Schedule;

/// One upstream endpoint and its live counters.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once so requests do not format it.
    pub authority: Authority,
    /// Relative share of traffic, at least 1; discovery updates it in place.
    weight: AtomicU32,
    /// Attempts sent and not yet answered with response headers.
    pub in_flight: AtomicUsize,
    /// Round-trip time estimate, fed by every attempt ([`InFlight`]).
    pub rtt: PeakEwma,
    /// Why the endpoint is held out of balancing, if it is.
    pub readiness: Readiness,
    /// The id of the endpoint-breaker set whose breaker of this endpoint is settled (a
    /// success would change nothing), so that a success is not recorded at all; 0 when
    /// none is known to be. Written by that set under its breaker's lock.
    pub settled_breaker: AtomicU64,
    /// The SPIFFE ID its registry entry advertises (metadata `remora_mtls`): the endpoint
    /// is a sidecar that speaks mutual TLS. Only a claim: the caller expects the identity
    /// it names the service by. Fixed for the endpoint's life (a change is a new endpoint).
    pub advertised_mtls: Option<Arc<str>>,
    /// The name DNS resolved it from (metadata `dns_name`), for `/endpoints`. Fixed for
    /// the endpoint's life, like `advertised_mtls`.
    pub dns_name: Option<Arc<str>>,
}

/// Flags that hold an endpoint out of balancing; each is set and cleared by its owner.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Set by active health checks after `unhealthy_threshold` failed probes.
    pub unhealthy: AtomicBool,
    /// Set by passive outlier ejection while the endpoint is ejected.
    pub ejected: AtomicBool,
    /// Set by the endpoint's circuit breaker while it is open.
    pub breaker_open: AtomicBool,
}

impl Readiness {
    /// Whether nothing holds the endpoint out.
    pub fn is_ready(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
            && !self.ejected.load(Ordering::Relaxed)
            && !self.breaker_open.load(Ordering::Relaxed)
    }
}

impl Endpoint {
    /// An endpoint at `addr` of weight 1.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_weight(addr, 1)
    }

    /// An endpoint at `addr` taking a `weight` share of traffic (0 counts as 1).
    pub fn with_weight(addr: SocketAddr, weight: u32) -> Self {
        let authority = Authority::try_from(addr.to_string())
            .expect("a socket address is always a valid authority");
        Self {
            addr,
            authority,
            weight: AtomicU32::new(weight.max(1)),
            in_flight: AtomicUsize::new(0),
            rtt: PeakEwma::new(),
            readiness: Readiness::default(),
            settled_breaker: AtomicU64::new(0),
            advertised_mtls: None,
            dns_name: None,
        }
    }

    /// The endpoint of `instance`: its address, weight, advertised mutual TLS and the
    /// name it was resolved from.
    pub fn of_instance(instance: &Instance) -> Self {
        let mut endpoint = Self::with_weight(instance.addr, instance.weight);
        endpoint.advertised_mtls = advertised_mtls(instance).map(Arc::from);
        endpoint.dns_name = dns_name(instance).map(Arc::from);
        endpoint
    }

    /// Its share of traffic relative to the others, at least 1.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether the balancer may pick it (outside panic mode).
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }
}

/// The name `instance` was resolved from, if DNS found it.
fn dns_name(instance: &Instance) -> Option<&str> {
    let name = instance.metadata.get(crate::discovery::DNS_NAME_METADATA);
    name.map(String::as_str)
}

/// The SPIFFE ID `instance` advertises as a mutual-TLS sidecar, if it does (an empty
/// value does not).
fn advertised_mtls(instance: &Instance) -> Option<&str> {
    instance
        .metadata
        .get(crate::discovery::MTLS_METADATA)
        .map(String::as_str)
        .filter(|id| !id.is_empty())
}

/// One endpoint as `/endpoints` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointView {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its share of traffic.
    pub weight: u32,
    /// Attempts waiting for response headers.
    pub in_flight: usize,
    /// The RTT estimate the balancer sees now, in milliseconds.
    pub ewma_ms: f64,
    /// Whether nothing holds it out.
    pub ready: bool,
    /// Held out by active health checks.
    pub unhealthy: bool,
    /// Held out by outlier ejection.
    pub ejected: bool,
    /// Held out by its circuit breaker.
    pub breaker_open: bool,
    /// The SPIFFE ID its registry entry advertises for mutual TLS (`remora_mtls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_mtls: Option<String>,
    /// The name it was resolved from (`orders:8080`), when DNS found it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One discovery snapshot and what the balancer precomputed for it.
#[derive(Debug)]
struct Snapshot {
    endpoints: Arc<Vec<Arc<Endpoint>>>,
    plan: Plan,
}

/// The algorithm with its per-snapshot data.
#[derive(Debug)]
enum Plan {
    P2cPeakEwma,
    LeastRequest,
    Random,
    RoundRobin(Schedule),
    Ring(Ring),
    Maglev(Maglev),
}

impl Plan {
    fn build(balancer: &Balancer, endpoints: &[Arc<Endpoint>]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight()).collect();
        match balancer {
            Balancer::P2cPeakEwma { .. } => Self::P2cPeakEwma,
            Balancer::LeastRequest => Self::LeastRequest,
            Balancer::Random => Self::Random,
            Balancer::RoundRobin => Self::RoundRobin(Schedule::build(&reduced_weights(
                &weights,
                round_robin::MAX_SLOTS,
            ))),
            Balancer::ConsistentHash { algorithm, .. } => match *algorithm {
                HashAlgorithm::Ring { virtual_nodes } => {
                    let units = (ring::MAX_POINTS / u64::from(virtual_nodes)).max(1);
                    let points: Vec<u32> = reduced_weights(&weights, units)
                        .into_iter()
                        .map(|w| w.saturating_mul(virtual_nodes))
                        .collect();
                    Self::Ring(Ring::build(endpoints, &points))
                }
                HashAlgorithm::Maglev { table_size } => {
                    Self::Maglev(Maglev::build(endpoints, &weights, table_size))
                }
            },
        }
    }
}

/// `weights` divided by their greatest common divisor, then scaled down (each to at
/// least 1) when their sum is above `max_total`.
fn reduced_weights(weights: &[u32], max_total: u64) -> Vec<u32> {
    let divisor = weights.iter().fold(0u32, |a, &b| gcd(a, b)).max(1);
    let reduced: Vec<u32> = weights.iter().map(|w| (w / divisor).max(1)).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total <= max_total {
        return reduced;
    }
    reduced
        .iter()
        .map(|&w| {
            let scaled = u64::from(w) * max_total / total;
            u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Panic-mode bookkeeping of one set.
#[derive(Debug, Default)]
struct PanicState {
    /// Whether the last pick was in panic mode.
    active: AtomicBool,
    /// The service's series, resolved once.
    metrics: Option<PanicSeries>,
    /// The service's name, for logs.
    service: Option<Arc<str>>,
}

#[derive(Debug)]
struct PanicSeries {
    gauge: Gauge,
    entered: Counter,
}

/// A service's endpoints, swapped whole on every discovery snapshot, and its balancer.
///
/// Cheap to share (`Arc<EndpointSet>`); picks read the snapshot without locking.
#[derive(Debug)]
pub struct EndpointSet {
    current: ArcSwap<Snapshot>,
    config: BalancerConfig,
    /// RTT parameters: the configured ones for P2C, the defaults otherwise (the
    /// estimate is kept for `/endpoints` whatever the algorithm).
    ewma: EwmaParams,
    /// Round robin's position; shared by every snapshot.
    cursor: AtomicUsize,
    panic: PanicState,
    /// Serializes [`update`](Self::update)s (read, merge, store).
    updating: Mutex<()>,
}

impl Default for EndpointSet {
    fn default() -> Self {
        Self::with_config(BalancerConfig::default())
    }
}

impl EndpointSet {
    /// An empty set balanced by the default balancer (P2C peak-EWMA, panic below 50%).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set balanced as `config` says.
    pub fn with_config(config: BalancerConfig) -> Self {
        let ewma = match config.balancer() {
            Balancer::P2cPeakEwma { decay, default_rtt } => EwmaParams::new(*decay, *default_rtt),
            _ => EwmaParams::new(Balancer::DEFAULT_DECAY, Balancer::DEFAULT_RTT),
        };
        let plan = Plan::build(config.balancer(), &[]);
        Self {
            current: ArcSwap::from_pointee(Snapshot {
                endpoints: Arc::new(Vec::new()),
                plan,
            }),
            config,
            ewma,
            cursor: AtomicUsize::new(0),
            panic: PanicState::default(),
            updating: Mutex::new(()),
        }
    }

    /// Reports panic mode of `service` into `metrics` (and names it in logs).
    pub fn with_metrics(mut self, service: Arc<str>, metrics: &BalancerMetrics) -> Self {
        let (gauge, entered) = metrics.series(&service);
        self.panic.metrics = Some(PanicSeries { gauge, entered });
        self.panic.service = Some(service);
        self
    }

    /// The balancer configuration.
    pub fn config(&self) -> &BalancerConfig {
        &self.config
    }

    /// Replaces the set with `instances`, keeping the counters, RTT estimates and
    /// readiness of endpoints that stay (same address and same advertised mutual TLS;
    /// later duplicates of an address are ignored) and taking their new weights, then
    /// rebuilds what the balancer precomputes. An endpoint whose advertisement changed is
    /// replaced: a new endpoint, on the other pool.
    pub fn update(&self, instances: &[Instance]) {
        let _updating = self.updating.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(instances.len());
        for instance in instances {
            if next.iter().any(|e| e.addr == instance.addr) {
                continue;
            }
            let advertised = advertised_mtls(instance);
            let name = dns_name(instance);
            let kept = current.endpoints.iter().find(|e| {
                e.addr == instance.addr
                    && e.advertised_mtls.as_deref() == advertised
                    && e.dns_name.as_deref() == name
            });
            let endpoint = match kept {
                Some(kept) => {
                    kept.weight.store(instance.weight.max(1), Ordering::Relaxed);
                    kept.clone()
                }
                None => Arc::new(Endpoint::of_instance(instance)),
            };
            next.push(endpoint);
        }
        let plan = Plan::build(self.config.balancer(), &next);
        self.current.store(Arc::new(Snapshot {
            endpoints: Arc::new(next),
            plan,
        }));
    }

    /// The current endpoints.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.current.load().endpoints.clone()
    }

    /// The hash key of `request` when the balancer is consistent-hash, else `None`
    /// without looking at the request.
    pub fn hash_key<B>(&self, request: &Request<B>) -> Option<u64> {
        match self.config.balancer() {
            Balancer::ConsistentHash { key, .. } => key.hash_of(request),
            _ => None,
        }
    }

    /// Picks an endpoint for a request without a hash key, avoiding nothing.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        self.pick_for(None, &[])
    }

    /// Picks an endpoint for a request whose hash key is `key` (see
    /// [`hash_key`](Self::hash_key)), preferring endpoints not in `avoid` (a retry goes
    /// elsewhere than the attempts that failed). `None` when the set is empty or no
    /// endpoint is ready.
    pub fn pick_for(&self, key: Option<u64>, avoid: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let snapshot = self.current.load();
        let endpoints = &snapshot.endpoints[..];
        let choice = eligible::choose(endpoints, avoid, self.config.panic_threshold());
        self.note_panic(choice.is_some_and(|c| c.panic), endpoints);
        let choice = choice?;
        self.pick_in(&snapshot, &choice, key, &mut Rng::new())
            .cloned()
    }

    fn pick_in<'s>(
        &self,
        snapshot: &'s Snapshot,
        choice: &Choice<'_>,
        key: Option<u64>,
        rng: &mut Rng,
    ) -> Option<&'s Arc<Endpoint>> {
        let endpoints = &snapshot.endpoints[..];
        let picked = match (&snapshot.plan, key) {
            (Plan::P2cPeakEwma, _) => {
                let now = clock::now();
                let params = self.ewma;
                p2c::pick(endpoints, choice, rng, |e| {
                    p2c::peak_ewma_cost(e, now, params)
                })
            }
            (Plan::LeastRequest, _) => p2c::pick(endpoints, choice, rng, p2c::least_request_cost),
            (Plan::RoundRobin(schedule), _) => schedule.pick(endpoints, choice, &self.cursor),
            (Plan::Ring(ring), Some(key)) => ring
                .pick(key, endpoints, choice)
                .or_else(|| random::nth_by_weight(endpoints, choice, key)),
            (Plan::Maglev(table), Some(key)) => table
                .pick(key, endpoints, choice)
                .or_else(|| random::nth_by_weight(endpoints, choice, key)),
            (Plan::Random | Plan::Ring(_) | Plan::Maglev(_), _) => None,
        };
        // Random, a hash balancer without a key, and any algorithm that found nothing
        // because readiness changed under it.
        picked.or_else(|| random::pick(endpoints, choice, rng))
    }

    /// Records whether picks are in panic mode, on transitions only.
    fn note_panic(&self, panic: bool, endpoints: &[Arc<Endpoint>]) {
        if self.panic.active.load(Ordering::Relaxed) == panic
            || self.panic.active.swap(panic, Ordering::Relaxed) == panic
        {
            return;
        }
        if let Some(series) = &self.panic.metrics {
            series.gauge.set(i64::from(panic));
            if panic {
                series.entered.inc();
            }
        }
        let service = self.panic.service.as_deref().unwrap_or("-");
        let ready = endpoints.iter().filter(|e| e.is_ready()).count();
        if panic {
            tracing::warn!(
                service,
                ready,
                endpoints = endpoints.len(),
                threshold_percent = self.config.panic_threshold(),
                "too few endpoints ready: balancing over all of them (panic mode)"
            );
        } else {
            tracing::info!(
                service,
                ready,
                endpoints = endpoints.len(),
                "left panic mode"
            );
        }
    }

    /// Whether the last pick was in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic.active.load(Ordering::Relaxed)
    }

    /// Starts an attempt on `endpoint` (picked from this set): counts it in flight
    /// until the returned guard is finished or dropped, and records its RTT.
    pub fn start<'e>(&self, endpoint: &'e Endpoint) -> InFlight<'e> {
        InFlight::new(endpoint, self.ewma)
    }

    /// Every endpoint as `/endpoints` shows it, in snapshot order.
    pub fn views(&self) -> Vec<EndpointView> {
        let now = Instant::now();
        self.current
            .load()
            .endpoints
            .iter()
            .map(|e| EndpointView {
                address: e.addr,
                weight: e.weight(),
                in_flight: e.in_flight.load(Ordering::Relaxed),
                ewma_ms: e.rtt.cost_at(now, self.ewma) / 1e6,
                ready: e.is_ready(),
                unhealthy: e.readiness.unhealthy.load(Ordering::Relaxed),
                ejected: e.readiness.ejected.load(Ordering::Relaxed),
                breaker_open: e.readiness.breaker_open.load(Ordering::Relaxed),
                advertised_mtls: e.advertised_mtls.as_deref().map(str::to_string),
                name: e.dns_name.as_deref().map(str::to_string),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
