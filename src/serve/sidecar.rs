//! One running sidecar: its listeners, its current state, reload and shutdown.
//!
//! [`State`] is everything a request needs that a config change can alter (routes,
//! endpoints, clients, server limits). It is built whole from a [`Config`] and swapped
//! atomically. The data listeners follow the config (`listeners`); the admin listener
//! is bound once at start.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::sync::{Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::build::connections::UpstreamConnections;
use crate::build::metrics::{Metrics, ReloadLabels};
use crate::build::state::State;
use crate::config::Config;
use crate::discovery::self_registration::SelfRegistration;
use crate::serve::listeners::ListenerSet;
use crate::serve::shared::Shared;

/// Addresses the sidecar's listeners are bound to (port 0 in the config is resolved).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// The inbound listener.
    pub inbound: Option<SocketAddr>,
    /// The shared outbound listener.
    pub outbound: Option<SocketAddr>,
    /// Dedicated service ports, by service name.
    pub services: Vec<(String, SocketAddr)>,
}

impl BoundAddrs {
    /// The dedicated port of `service`.
    pub fn service(&self, service: &str) -> Option<SocketAddr> {
        self.services
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, addr)| *addr)
    }
}

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The tracing config was refused or its exporter could not be built.
    #[error("tracing: {0}")]
    Tracing(#[from] crate::trace::TracingError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A data listener could not be bound.
    #[error("{0}")]
    Listener(#[from] crate::serve::listeners::BindError),
    /// A section could not be built into what it configures (validation refuses the
    /// same config with its location; this is the start of an unvalidated one).
    #[error("{0}")]
    Build(#[from] crate::build::resolve::BuildError),
}

/// A running sidecar.
pub struct Sidecar {
    shared: Arc<Shared>,
    /// Where the admin listener is bound (bound once, at start).
    admin_addr: Option<SocketAddr>,
    /// The data listeners, which reloads add, move and remove.
    listeners: Arc<Mutex<ListenerSet>>,
    admin: tokio::task::JoinHandle<()>,
    /// The local app's registration, when `register` is configured.
    registration: Option<SelfRegistration>,
}

/// A cheap handle for reloading and inspecting a running sidecar.
#[derive(Clone, Debug)]
pub struct SidecarHandle {
    shared: Arc<Shared>,
    listeners: Arc<Mutex<ListenerSet>>,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_string(),
            addr,
            source,
        })
}

impl Sidecar {
    /// Binds every listener of `config` and starts serving, tracing as its `tracing`
    /// section says.
    pub async fn start(config: Config) -> Result<Sidecar, StartError> {
        let tracing = crate::build::resolve::tracing(&config)
            .map_err(|e| e.within(&crate::config::FieldPath::root().key("tracing")))?;
        Self::start_with(config, tracing).await
    }

    /// Like [`Sidecar::start`], with this sidecar's own tracer exporting per `tracing`.
    pub async fn start_with(
        config: Config,
        tracing: crate::trace::TracingConfig,
    ) -> Result<Sidecar, StartError> {
        warn_about_exposed_keys(&config);
        let (mut listeners, pending) = ListenerSet::bind(&config)?;
        let admin_tcp = bind("admin", config.admin.listen).await?;
        let admin_addr = admin_tcp.local_addr().ok();

        let mut metrics = Metrics::new();
        let tracing_metrics = crate::trace::TracingMetrics::register(metrics.registry_mut());
        let current = UpstreamConnections::register(metrics.registry_mut());
        let tracing = crate::trace::Tracing::new(&tracing, tracing_metrics)?;
        let metrics = Arc::new(metrics);
        let state = State::build(config, &metrics, None).await?;
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
            metrics,
            draining: AtomicBool::new(false),
            tracing,
            tunnels: Default::default(),
        });
        let weak = Arc::downgrade(&shared);
        let _ = current.set(Box::new(move || Some(weak.upgrade()?.state.load_full())));
        listeners.apply(pending, &shared);
        let listeners = Arc::new(Mutex::new(listeners));
        let admin = tokio::spawn(crate::serve::admin::serve(admin_tcp, shared.clone()));
        let sidecar = Sidecar {
            registration: start_registration(&shared.state.load())?,
            shared,
            admin_addr,
            listeners,
            admin,
        };
        tracing::info!(addrs = ?sidecar.addrs(), "remora started");
        Ok(sidecar)
    }

    /// Where the listeners are bound now (a reload may have added or moved some).
    pub fn addrs(&self) -> BoundAddrs {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        BoundAddrs {
            admin: self.admin_addr,
            inbound: listeners.bound("inbound"),
            outbound: listeners.bound("outbound"),
            services: listeners.services(),
        }
    }

    /// A handle for reloading the config.
    pub fn handle(&self) -> SidecarHandle {
        SidecarHandle {
            shared: self.shared.clone(),
            listeners: self.listeners.clone(),
        }
    }

    /// Stops accepting, lets in-flight requests finish within `drain_timeout`, and stops.
    pub async fn shutdown(mut self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        if let Some(registration) = self.registration.take() {
            // Leave the registry first, so callers stop choosing this instance before
            // its connections close.
            registration.deregister().await;
        }
        tracing::info!("shutting down: draining connections");
        let deadline = tokio::time::Instant::now() + self.shared.state.load().config.drain_timeout;
        let mut draining = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop_all();
        while draining.join_next().await.is_some() {}
        // Upgraded connections left the HTTP servers: they get the same deadline.
        let left = self.shared.tunnels.drain(deadline).await;
        if left > 0 {
            tracing::warn!(
                open = left,
                "drain timeout: closing the upgraded connections still open"
            );
        }
        self.admin.abort();
        self.shared.tracing.flush().await;
        tracing::info!("stopped");
    }
}

/// Warns once per private key file of `config` that others on the host can read (a
/// warning, not a refusal: see `tls::key_file_exposure`). Reloads do not warn again.
fn warn_about_exposed_keys(config: &Config) {
    for key in config.private_key_files() {
        if let Some(exposure) = crate::tls::key_file_exposure(key) {
            tracing::warn!("{exposure}");
        }
    }
}

/// Starts the local app's registration when the config asks for one; a sidecar whose
/// inbound listener speaks mutual TLS advertises its identity with it.
fn start_registration(state: &State) -> Result<Option<SelfRegistration>, StartError> {
    let config = &state.config;
    let (Some(section), Some(inbound)) = (&config.register, &config.inbound) else {
        return Ok(None);
    };
    let root = crate::config::FieldPath::root();
    let registry = config.registries.get(&section.registry).ok_or_else(|| {
        let field = root.key("register").key("registry");
        crate::build::resolve::BuildError::at(field, "unknown registry")
    })?;
    let registry = crate::build::resolve::registry(registry)
        .map_err(|e| e.within(&root.key("registries").key(&section.registry)))?;
    let material = state
        .mesh
        .as_ref()
        .filter(|_| config.inbound_tls() != crate::config::InboundTlsMode::Off)
        .map(|mesh| mesh.credentials.current());
    let mtls = material.as_ref().and_then(|material| material.identity());
    Ok(Some(SelfRegistration::start(
        crate::build::resolve::registration(section, &config.service, mtls),
        inbound.app.to_string(),
        registry,
    )))
}

impl SidecarHandle {
    /// Applies `config` to new requests; in-flight requests finish on the old one.
    /// Listeners it adds or moves are bound first, those it removes drain (see
    /// [`ListenerSet`]). A config whose policies cannot be built, or whose new listener
    /// cannot be bound, is refused and the old one keeps serving.
    /// Policy state (breakers, limiters, budgets, caps) and the connection pools carry
    /// over where the new config leaves them alone (see `build::carry`).
    pub async fn reload(&self, config: Config) -> Result<(), String> {
        let current = self.shared.state.load_full();
        warn_about_listener_changes(&current.config, &config);
        let state = match State::build(config, &self.shared.metrics, Some(&current)).await {
            Ok(state) => state,
            Err(error) => {
                self.reload_refused();
                return Err(error.to_string());
            }
        };
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pending = match listeners.prepare(&state.config) {
            Ok(pending) => pending,
            Err(error) => {
                drop(listeners);
                self.reload_refused();
                return Err(error.to_string());
            }
        };
        self.shared.state.store(Arc::new(state));
        listeners.apply(pending, &self.shared);
        drop(listeners);
        self.shared
            .metrics
            .reloads
            .get_or_create(&ReloadLabels { result: "ok" })
            .inc();
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Counts a reload that was refused.
    pub fn reload_refused(&self) {
        self.shared
            .metrics
            .reloads
            .get_or_create(&ReloadLabels { result: "failed" })
            .inc();
    }

    /// This sidecar's tracer (export counters, flush).
    pub fn tracing(&self) -> &crate::trace::Tracing {
        &self.shared.tracing
    }

    /// The config currently serving.
    pub fn config(&self) -> Arc<Config> {
        self.shared.state.load().config.clone()
    }
}

fn warn_about_listener_changes(old: &Config, new: &Config) {
    if old.register != new.register {
        tracing::warn!("registration is set up at start; restart remora to apply this change");
    }
    if old.tracing != new.tracing || old.service != new.service {
        tracing::warn!(
            "the tracing pipeline is built at start; restart remora to apply this change"
        );
    }
    if old.admin.listen != new.admin.listen {
        tracing::warn!(
            was = %old.admin.listen,
            now = %new.admin.listen,
            "the admin listener is bound at start; restart remora to apply this change",
        );
    }
}
