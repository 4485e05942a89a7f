//! Fault injection, after Envoy's fault filter: with configured probabilities, delay a
//! call before it goes on and/or abort it with a chosen status.
//!
//! Each request draws its own decisions: first whether to delay (a tokio sleep before
//! the inner service is called), then whether to abort ([`ProxyError::FaultInjected`],
//! which a plain HTTP caller sees as the status and a gRPC caller as the matching gRPC
//! code). A call both delayed and aborted waits, then fails without reaching the
//! upstream. Decisions draw from a fast thread-local generator; a layer can be given a
//! seed instead, for reproducible runs and exact tests.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either};
use http::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as MetricsRegistry;
use rand::rngs::{SmallRng, SysRng};
use rand::{RngExt, SeedableRng};
use tower::{Layer, Service};

use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::core::labels::{register_per_service, ByService, PerService};

/// Probabilities are kept in parts per million: exact at 0 % and 100 %.
const PPM: u32 = 1_000_000;

/// Delay some calls before they go on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelayFault {
    /// Share of calls delayed, in parts per million.
    ppm: u32,
    duration: Duration,
}

impl DelayFault {
    /// Delays `percent` (0 to 100) of calls by `duration` (non-zero).
    pub fn try_new(percent: f64, duration: Duration) -> Result<Self, FaultConfigError> {
        if duration.is_zero() {
            return Err(FaultConfigError::ZeroDelay);
        }
        Ok(Self {
            ppm: percent_to_ppm(percent)?,
            duration,
        })
    }

    /// The share of calls delayed, in percent.
    pub fn percent(&self) -> f64 {
        ppm_to_percent(self.ppm)
    }

    /// How long a delayed call waits.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// Abort some calls with a status instead of calling the upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbortFault {
    /// Share of calls aborted, in parts per million.
    ppm: u32,
    status: StatusCode,
}

impl AbortFault {
    /// Aborts `percent` (0 to 100) of calls with `status` (a 4xx or 5xx).
    pub fn try_new(percent: f64, status: StatusCode) -> Result<Self, FaultConfigError> {
        if !(status.is_client_error() || status.is_server_error()) {
            return Err(FaultConfigError::NotAnErrorStatus(status));
        }
        Ok(Self {
            ppm: percent_to_ppm(percent)?,
            status,
        })
    }

    /// The share of calls aborted, in percent.
    pub fn percent(&self) -> f64 {
        ppm_to_percent(self.ppm)
    }

    /// The status an aborted call gets.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The faults injected into one service's calls; each part is validated on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultConfig {
    /// Delay some calls.
    pub delay: Option<DelayFault>,
    /// Abort some calls.
    pub abort: Option<AbortFault>,
}

/// Why a fault was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultConfigError {
    /// A percentage outside 0 to 100 (or not a number).
    #[error("fault percentage must be between 0 and 100, got {0}")]
    Percent(f64),
    /// A delay of zero.
    #[error("fault delay must be non-zero")]
    ZeroDelay,
    /// An abort status that is not an error.
    #[error("fault abort status must be a 4xx or 5xx, got {0}")]
    NotAnErrorStatus(StatusCode),
}

fn percent_to_ppm(percent: f64) -> Result<u32, FaultConfigError> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(FaultConfigError::Percent(percent));
    }
    // In range by the check above (NaN fails it), so the cast cannot saturate.
    Ok((percent * 10_000.0).round() as u32)
}

fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

/// Fault-injection metrics, shared by every service's layer.
#[derive(Debug, Clone)]
pub struct FaultMetrics {
    delays: PerService<Counter>,
    aborts: PerService<Counter>,
}

impl FaultMetrics {
    /// Registers the fault-injection metrics.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        Self {
            delays: register_per_service(
                registry,
                "fault_delays_injected",
                "Requests delayed by fault injection, by service",
            ),
            aborts: register_per_service(
                registry,
                "fault_aborts_injected",
                "Requests aborted by fault injection, by service",
            ),
        }
    }

    fn labels(service: &Arc<str>) -> ByService {
        ByService::of(service)
    }
}

thread_local! {
    /// Each worker thread's generator: seeded once from the OS, then no locking.
    static THREAD_RNG: RefCell<SmallRng> = RefCell::new(
        SmallRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| SmallRng::seed_from_u64(thread_seed())),
    );
}

/// A fallback seed when the OS has no randomness to give: distinct per thread and run.
fn thread_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::thread::current().id())
}

/// Where fault decisions draw from.
#[derive(Debug, Clone)]
enum Dice {
    /// The calling thread's generator.
    ThreadLocal,
    /// One seeded generator shared by every clone of the layer, so that a sequence of
    /// calls draws a reproducible sequence.
    Seeded(Arc<Mutex<SmallRng>>),
}

impl Dice {
    /// Whether an event of probability `ppm` per million happens; draws nothing for the
    /// certain and the impossible.
    fn happens(&self, ppm: u32) -> bool {
        match ppm {
            0 => false,
            PPM.. => true,
            _ => self.draw() < ppm,
        }
    }

    fn draw(&self) -> u32 {
        match self {
            Self::ThreadLocal => THREAD_RNG.with(|rng| rng.borrow_mut().random_range(0..PPM)),
            Self::Seeded(rng) => rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random_range(0..PPM),
        }
    }
}

/// Injects faults into one service's calls.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    shared: Arc<Shared>,
}

/// What every clone of a layer and its services shares.
#[derive(Debug)]
struct Shared {
    config: FaultConfig,
    dice: Dice,
    delays: Counter,
    aborts: Counter,
}

impl FaultLayer {
    /// A layer injecting `config`'s faults into `service`'s calls.
    pub fn new(service: Arc<str>, config: FaultConfig, metrics: &FaultMetrics) -> Self {
        Self::with_dice(service, config, metrics, Dice::ThreadLocal)
    }

    /// Like [`new`](Self::new), with decisions drawn from one generator seeded with
    /// `seed`: the same sequence of calls gets the same faults.
    pub fn with_seed(
        service: Arc<str>,
        config: FaultConfig,
        metrics: &FaultMetrics,
        seed: u64,
    ) -> Self {
        let rng = SmallRng::seed_from_u64(seed);
        Self::with_dice(
            service,
            config,
            metrics,
            Dice::Seeded(Arc::new(Mutex::new(rng))),
        )
    }

    fn with_dice(
        service: Arc<str>,
        config: FaultConfig,
        metrics: &FaultMetrics,
        dice: Dice,
    ) -> Self {
        let labels = FaultMetrics::labels(&service);
        if config.delay.is_some() || config.abort.is_some() {
            tracing::info!(service = %service, ?config, "fault injection enabled");
        }
        Self {
            shared: Arc::new(Shared {
                config,
                dice,
                delays: metrics.delays.get_or_create(&labels).clone(),
                aborts: metrics.aborts.get_or_create(&labels).clone(),
            }),
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service into whose calls faults are injected.
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A call's response: passed through, or (aborted at once, or delayed first) boxed. The
/// type is in every call's future of a stack with the fault layer, so the rare outcomes
/// are boxed: an aborted result inline would add the size of a response to every call.
type FaultFuture<F> =
    Either<F, Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>>;

impl<S> Service<Request<ProxyBody>> for Fault<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = FaultFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let shared = &self.shared;
        let delay = shared
            .config
            .delay
            .filter(|delay| shared.dice.happens(delay.ppm))
            .map(|delay| delay.duration);
        let abort = shared
            .config
            .abort
            .filter(|abort| shared.dice.happens(abort.ppm))
            .map(|abort| abort.status);
        let Some(duration) = delay else {
            return match abort {
                Some(status) => {
                    shared.aborts.inc();
                    Either::Right(Box::pin(future::ready(Err(ProxyError::FaultInjected(
                        status,
                    )))))
                }
                None => Either::Left(self.inner.call(request)),
            };
        };
        shared.delays.inc();
        // NOTE: a delayed call is boxed; the undelayed path allocates nothing. The
        // ready inner service goes into the future and a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let aborts = shared.aborts.clone();
        Either::Right(Box::pin(async move {
            tokio::time::sleep(duration).await;
            match abort {
                Some(status) => {
                    aborts.inc();
                    Err(ProxyError::FaultInjected(status))
                }
                None => inner.call(request).await,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;
    use crate::policy::test_support::{proxied, Upstream};

    struct Harness {
        service: Fault<Upstream>,
        upstream: Upstream,
        metrics: FaultMetrics,
    }

    impl Harness {
        fn new(config: FaultConfig, seed: u64) -> Self {
            let metrics = FaultMetrics::register(&mut MetricsRegistry::default());
            let upstream = Upstream::ok();
            let layer = FaultLayer::with_seed("svc".into(), config, &metrics, seed);
            Self {
                service: layer.layer(upstream.clone()),
                upstream,
                metrics,
            }
        }

        fn send(&mut self) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
            let mut service = self.service.clone();
            async move {
                service
                    .ready()
                    .await?
                    .call(proxied(Request::new(ProxyBody::empty())))
                    .await
            }
        }

        /// Sends `n` calls one after another; returns how many were aborted.
        async fn aborted_of(&mut self, n: usize) -> usize {
            let mut aborted = 0;
            for _ in 0..n {
                match self.send().await {
                    Ok(_) => {}
                    Err(ProxyError::FaultInjected(StatusCode::SERVICE_UNAVAILABLE)) => aborted += 1,
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            aborted
        }

        fn delays(&self) -> u64 {
            self.metrics
                .delays
                .get_or_create(&FaultMetrics::labels(&"svc".into()))
                .get()
        }

        fn aborts(&self) -> u64 {
            self.metrics
                .aborts
                .get_or_create(&FaultMetrics::labels(&"svc".into()))
                .get()
        }
    }

    fn abort(percent: f64) -> FaultConfig {
        FaultConfig {
            delay: None,
            abort: Some(AbortFault::try_new(percent, StatusCode::SERVICE_UNAVAILABLE).unwrap()),
        }
    }

    fn delay(percent: f64, duration: Duration) -> Option<DelayFault> {
        Some(DelayFault::try_new(percent, duration).unwrap())
    }

    #[tokio::test]
    async fn zero_percent_never_aborts_and_hundred_percent_always_does() {
        let mut never = Harness::new(abort(0.0), 1);
        assert_eq!(never.aborted_of(10_000).await, 0);
        assert_eq!(never.upstream.calls(), 10_000);
        assert_eq!(never.aborts(), 0);

        let mut always = Harness::new(abort(100.0), 1);
        assert_eq!(always.aborted_of(10_000).await, 10_000);
        assert_eq!(always.upstream.calls(), 0);
        assert_eq!(always.aborts(), 10_000);
    }

    #[tokio::test]
    async fn half_of_seeded_draws_abort_within_a_tight_bound() {
        for seed in [1, 2, 3] {
            let mut h = Harness::new(abort(50.0), seed);
            let aborted = h.aborted_of(10_000).await;
            // Binomial(10 000, 0.5): a standard deviation of 50; four of them either side.
            assert!(
                (4_800..=5_200).contains(&aborted),
                "seed {seed}: {aborted} aborted"
            );
            assert_eq!(h.upstream.calls(), 10_000 - aborted);
            assert_eq!(h.aborts(), aborted as u64);
            // The same seed draws the same faults.
            assert_eq!(
                Harness::new(abort(50.0), seed).aborted_of(10_000).await,
                aborted
            );
        }
    }

    #[tokio::test]
    async fn the_thread_local_generator_draws_too() {
        let metrics = FaultMetrics::register(&mut MetricsRegistry::default());
        let mut service =
            FaultLayer::new("svc".into(), abort(50.0), &metrics).layer(Upstream::ok());
        let mut aborted = 0;
        for _ in 0..10_000 {
            let result = service
                .ready()
                .await
                .unwrap()
                .call(proxied(Request::new(ProxyBody::empty())))
                .await;
            aborted += usize::from(result.is_err());
        }
        // Not seeded: a bound of eight standard deviations, which no fair draw misses.
        assert!((4_600..=5_400).contains(&aborted), "{aborted} aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_call_back_exactly_that_long() {
        let config = FaultConfig {
            delay: delay(100.0, Duration::from_secs(2)),
            abort: None,
        };
        let mut h = Harness::new(config, 1);
        let started = Instant::now();
        let call = tokio::spawn(h.send());
        tokio::time::sleep(Duration::from_millis(1999)).await;
        assert_eq!(h.upstream.calls(), 0);
        tokio::time::sleep(Duration::from_millis(1)).await;
        call.await.unwrap().unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(h.upstream.calls(), 1);
        assert_eq!(h.delays(), 1);

        // A zero-percent delay passes at once.
        let config = FaultConfig {
            delay: delay(0.0, Duration::from_secs(2)),
            abort: None,
        };
        let mut h = Harness::new(config, 1);
        let started = Instant::now();
        h.send().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(h.delays(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_abort_waits_then_fails_without_calling_the_upstream() {
        let config = FaultConfig {
            delay: delay(100.0, Duration::from_millis(300)),
            ..abort(100.0)
        };
        let mut h = Harness::new(config, 1);
        let started = Instant::now();
        let result = h.send().await;
        assert!(matches!(
            result,
            Err(ProxyError::FaultInjected(StatusCode::SERVICE_UNAVAILABLE))
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(h.upstream.calls(), 0);
        assert_eq!((h.delays(), h.aborts()), (1, 1));
    }

    #[test]
    fn nonsense_faults_are_refused() {
        for percent in [-0.1, 100.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                AbortFault::try_new(percent, StatusCode::SERVICE_UNAVAILABLE),
                Err(FaultConfigError::Percent(_))
            ));
        }
        assert_eq!(
            AbortFault::try_new(10.0, StatusCode::OK).unwrap_err(),
            FaultConfigError::NotAnErrorStatus(StatusCode::OK)
        );
        assert_eq!(
            DelayFault::try_new(10.0, Duration::ZERO).unwrap_err(),
            FaultConfigError::ZeroDelay
        );
        let fine = DelayFault::try_new(12.5, Duration::from_millis(5)).unwrap();
        assert_eq!(fine.percent(), 12.5);
    }
}
