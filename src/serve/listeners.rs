//! The data listeners a config asks for (inbound, shared outbound, each service's own
//! port), kept in step with the config across reloads.
//!
//! A reload binds the listeners it adds or moves before the new config is applied (a
//! port that cannot be bound refuses the whole reload, and the old config keeps
//! serving), then starts them and drains the ones it removes or moved away from: those
//! stop accepting and let their connections finish, as at shutdown. A listener whose
//! configured address is unchanged keeps its socket, even when written as port 0.
//! Switching a listener between HTTP and TCP passthrough at the same address needs a
//! restart (the old socket holds the port until it drains).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::listener::{self, ProxyListener};
use super::proxy::Entry;
use super::shared::Shared;
use super::tcp::{TcpEntry, TcpProxyListener};
use crate::config::Config;

/// A listener as the config describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    /// The configured address (port 0: any free port).
    addr: SocketAddr,
    /// TCP passthrough rather than HTTP.
    tcp: bool,
}

/// Every data listener `config` asks for, by metrics label (`inbound`, `outbound`,
/// `service:<name>`).
fn wanted(config: &Config) -> BTreeMap<String, Wanted> {
    let mut all = BTreeMap::new();
    if let Some(inbound) = &config.inbound {
        let tcp = inbound.protocol.is_tcp();
        all.insert(
            "inbound".to_string(),
            Wanted {
                addr: inbound.listen,
                tcp,
            },
        );
    }
    if let Some(outbound) = &config.outbound {
        let wanted = Wanted {
            addr: outbound.listen,
            tcp: false,
        };
        all.insert("outbound".to_string(), wanted);
    }
    for (name, service) in &config.services {
        if let Some(addr) = service.listen {
            let tcp = service.protocol.is_tcp();
            all.insert(format!("service:{name}"), Wanted { addr, tcp });
        }
    }
    all
}

/// A listener serving, and how to stop it.
#[derive(Debug)]
struct Running {
    wanted: Wanted,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
}

/// A listener bound for a reload, not serving yet.
struct Bound {
    label: String,
    wanted: Wanted,
    tcp: TcpListener,
}

/// The data listeners of a sidecar and their tasks.
#[derive(Debug, Default)]
pub struct ListenerSet {
    running: BTreeMap<String, Running>,
    /// Serving and draining listeners' tasks.
    tasks: JoinSet<()>,
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// Which listener.
    pub what: String,
    /// Where.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` for the listener `label`.
fn bind(label: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let error = |source| BindError {
        what: label.to_string(),
        addr,
        source,
    };
    let socket = std::net::TcpListener::bind(addr).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    TcpListener::from_std(socket).map_err(error)
}

/// What a reload is about to change, bound and ready to start.
pub struct Pending {
    bound: Vec<Bound>,
    /// Labels to stop: removed, or moved (their new socket is in `bound`).
    retired: Vec<String>,
}

impl ListenerSet {
    /// Binds every data listener of `config`.
    pub fn bind(config: &Config) -> Result<(Self, Pending), BindError> {
        let set = Self::default();
        let pending = set.prepare(config)?;
        Ok((set, pending))
    }

    /// Binds what `config` adds or moves; nothing changes until [`apply`](Self::apply).
    /// A listener switched between HTTP and TCP at the same address is left as it is,
    /// with a warning (it needs a restart).
    pub fn prepare(&self, config: &Config) -> Result<Pending, BindError> {
        let wanted = wanted(config);
        let mut bound = Vec::new();
        let mut retired = Vec::new();
        for (label, running) in &self.running {
            match wanted.get(label) {
                None => retired.push(label.clone()),
                Some(w) if *w == running.wanted => {}
                Some(w) if w.addr == running.wanted.addr => {
                    tracing::warn!(listener = %label, "whether a listener passes TCP through or serves HTTP is set when it is bound; restart remora to apply this change");
                }
                Some(_) => retired.push(label.clone()),
            }
        }
        for (label, w) in wanted {
            let same_place = self
                .running
                .get(&label)
                .is_some_and(|running| running.wanted.addr == w.addr);
            if same_place {
                continue;
            }
            let tcp = bind(&label, w.addr)?;
            bound.push(Bound {
                label,
                wanted: w,
                tcp,
            });
        }
        Ok(Pending { bound, retired })
    }

    /// Starts the listeners of `pending` and drains those it retires.
    pub fn apply(&mut self, pending: Pending, shared: &Arc<Shared>) {
        while self.tasks.try_join_next().is_some() {}
        for label in pending.retired {
            if let Some(running) = self.running.remove(&label) {
                tracing::info!(listener = %label, addr = %running.bound, "listener removed: draining it");
                let _ = running.stop.send(true);
            }
        }
        for Bound { label, wanted, tcp } in pending.bound {
            let Ok(bound) = tcp.local_addr() else {
                continue;
            };
            let (stop, stopped) = watch::channel(false);
            let entry_name = label.strip_prefix("service:").map(Arc::<str>::from);
            if wanted.tcp {
                let entry = match entry_name {
                    Some(name) => TcpEntry::Service(name),
                    None => TcpEntry::Inbound,
                };
                let proxy = TcpProxyListener {
                    label: label.clone(),
                    entry,
                    tcp,
                };
                let serve = super::tcp::serve(proxy, shared.clone(), stopped);
                self.tasks.spawn(serve);
            } else {
                let entry = match (entry_name, label.as_str()) {
                    (Some(name), _) => Entry::Service(name),
                    (None, "inbound") => Entry::Inbound,
                    (None, _) => Entry::SharedOutbound,
                };
                let proxy = ProxyListener {
                    label: label.clone(),
                    entry,
                    tcp,
                };
                let serve = listener::serve(proxy, shared.clone(), stopped);
                self.tasks.spawn(serve);
            }
            self.running.insert(
                label,
                Running {
                    wanted,
                    bound,
                    stop,
                },
            );
        }
    }

    /// Where the listener `label` is bound.
    pub fn bound(&self, label: &str) -> Option<SocketAddr> {
        self.running.get(label).map(|running| running.bound)
    }

    /// Every service's dedicated port, by service name.
    pub fn services(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .iter()
            .filter_map(|(label, running)| {
                let name = label.strip_prefix("service:")?;
                Some((name.to_string(), running.bound))
            })
            .collect()
    }

    /// Stops every listener; the returned tasks end once their connections drained.
    pub fn stop_all(&mut self) -> JoinSet<()> {
        for running in self.running.values() {
            let _ = running.stop.send(true);
        }
        self.running.clear();
        std::mem::take(&mut self.tasks)
    }
}
