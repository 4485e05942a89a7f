//! The sidecar registers its local app while it runs.
//!
//! Registration waits until the app accepts connections (an instance nobody can serve
//! must not attract traffic), then holds a lease (etcd, Eureka), a passing TTL check
//! (Consul), a healthy ephemeral instance (Nacos) or an ephemeral znode's session
//! (ZooKeeper) that the registry's keep-alive renews. On shutdown the sidecar deregisters *first*,
//! waits `deregister_delay` so callers learn of the departure, and only then drains. A
//! sidecar that dies without deregistering disappears when its TTL expires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::{Instance, Registration, Registry};

/// How long to wait for a deregistration before draining anyway.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What to register: the instance, under which name, for how long.
#[derive(Debug, Clone)]
pub struct RegistrationPlan {
    /// The service name the instance registers under.
    pub service: String,
    /// The instance (address, id, weight, metadata).
    pub instance: Instance,
    /// The name the instance's address is resolved from when it was written as one
    /// (`instance.addr` then holds only the port).
    pub host: Option<String>,
    /// Lease or TTL check length; the registry's keep-alive renews it.
    pub ttl: Duration,
    /// Wait after deregistering, before draining, for callers to notice.
    pub deregister_delay: Duration,
}

/// The running registration of the local app.
pub struct SelfRegistration {
    task: tokio::task::JoinHandle<()>,
    held: Arc<Mutex<Option<Registration>>>,
    deregister_delay: Duration,
}

impl SelfRegistration {
    /// Starts registering as `plan` says, once `app` (`ip:port` or `host:port`) is
    /// reachable.
    pub fn start(plan: RegistrationPlan, app: String, registry: Arc<dyn Registry>) -> Self {
        let RegistrationPlan {
            service: name,
            mut instance,
            host,
            ttl,
            deregister_delay,
        } = plan;
        let held = Arc::new(Mutex::new(None));
        let slot = held.clone();
        let task = tokio::spawn(async move {
            wait_until_reachable(app).await;
            if let Some(host) = host {
                instance.addr = resolve_own_address(&host, instance.addr.port()).await;
            }
            let mut backoff = Duration::from_millis(200);
            loop {
                match registry.register(&name, instance.clone(), ttl).await {
                    Ok(registration) => {
                        tracing::info!(service = %name, id = %instance.id, address = %instance.addr, "registered");
                        *slot.lock().await = Some(registration);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(service = %name, %error, ?backoff, "registration failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        Self {
            task,
            held,
            deregister_delay,
        }
    }

    /// Deregisters (if registered), then waits `deregister_delay` for callers to notice.
    pub async fn deregister(self) {
        self.task.abort();
        let Some(registration) = self.held.lock().await.take() else {
            return;
        };
        match tokio::time::timeout(DEREGISTER_TIMEOUT, registration.deregister()).await {
            Ok(Ok(())) => tracing::info!("deregistered"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "deregistration failed; the entry expires at its TTL")
            }
            Err(_) => tracing::warn!("deregistration timed out; the entry expires at its TTL"),
        }
        tokio::time::sleep(self.deregister_delay).await;
    }
}

/// This host's address as `host` resolves, retried until the name resolves (in
/// docker-compose a container's own name may take a moment to appear in Docker's DNS).
/// The system resolver answers (`/etc/hosts` included): the name is this sidecar's own.
/// Of several addresses the first IPv4 one is registered, else the first.
async fn resolve_own_address(host: &str, port: u16) -> SocketAddr {
    let mut backoff = Duration::from_millis(200);
    loop {
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let chosen = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
                if let Some(&addr) = chosen {
                    if addrs.len() > 1 {
                        tracing::info!(%host, ?addrs, %addr, "the registered name has several addresses; registering one");
                    }
                    return addr;
                }
                tracing::warn!(%host, ?backoff, "the registered name resolves to no address; retrying");
            }
            Err(error) => {
                tracing::warn!(%host, %error, ?backoff, "cannot resolve the registered name; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Waits until `app` accepts a TCP connection.
///
/// NOTE: a name is resolved by the system's resolver here, not by the `resolver`
/// section's server: reachability is all this asks.
async fn wait_until_reachable(app: String) {
    let mut logged = false;
    loop {
        let connect = tokio::net::TcpStream::connect(app.as_str());
        let attempt = tokio::time::timeout(Duration::from_secs(1), connect).await;
        if matches!(attempt, Ok(Ok(_))) {
            return;
        }
        if !logged {
            tracing::info!(%app, "waiting for the app to accept connections before registering");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
