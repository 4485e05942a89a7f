//! The `dns` registry: instances from A/AAAA or SRV records, re-resolved as they expire.
//!
//! A service name is either `host:port` (every A and AAAA address of `host`, on `port`)
//! or an SRV name `_service._proto.name` (every target of the lowest priority, with the
//! record's port and weight). Records are re-resolved when their TTL runs out, bounded by
//! [`DnsRefresh::Ttl`]'s `min` and `max`, or at a fixed interval. A failed resolution,
//! NXDOMAIN included, is an outage: DNS never empties an endpoint set. Every instance
//! carries the name it was resolved from as metadata [`DNS_NAME_METADATA`].
//!
//! The same registry resolves the names written among a static list's endpoints
//! ([`NamedEndpoints`](super::NamedEndpoints)).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, BoxStream, StreamExt};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};

use super::feed::{self, Closed, Feed};
use super::{Backoff, DiscoveryError, Instance, Registry};

const NAME: &str = "dns";

/// The instance metadata key holding the name an instance was resolved from, as the
/// watch was given it (`orders:8080`, `_http._tcp.orders`).
pub const DNS_NAME_METADATA: &str = "dns_name";

/// When to resolve again after a successful resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRefresh {
    /// When the records expire, but never sooner than `min` nor later than `max`.
    Ttl {
        /// Floor on the wait (and the first retry delay after a failure).
        min: Duration,
        /// Ceiling on the wait (and on the retry delay after failures).
        max: Duration,
    },
    /// Every `interval`, whatever the TTL says.
    Every(Duration),
}

/// Settings of the `dns` registry.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The server to ask (UDP, then TCP on truncation); `None` reads the system's
    /// resolver configuration.
    pub nameserver: Option<SocketAddr>,
    /// When to re-resolve.
    pub refresh: DnsRefresh,
    /// How long one query may take.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    /// The system's resolver, TTL-driven between 1 s and 5 min, 2 s timeout.
    fn default() -> Self {
        Self {
            nameserver: None,
            refresh: DnsRefresh::Ttl {
                min: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            timeout: Duration::from_secs(2),
        }
    }
}

/// Instances resolved from DNS.
#[derive(Debug, Clone)]
pub struct DnsRegistry {
    resolver: Arc<TokioResolver>,
    refresh: DnsRefresh,
}

impl DnsRefresh {
    /// Refuses bounds that are zero or inverted, and a zero interval.
    pub fn check(&self) -> Result<(), DiscoveryError> {
        let invalid = |message: &str| Err(DiscoveryError::new(NAME, message));
        match *self {
            Self::Ttl { min, max } if min.is_zero() || max < min => {
                invalid("refresh needs 0 < min <= max")
            }
            Self::Every(interval) if interval.is_zero() => {
                invalid("refresh interval must be non-zero")
            }
            _ => Ok(()),
        }
    }
}

impl DnsConfig {
    /// Refuses what [`DnsRegistry::new`] would, without building a resolver.
    pub fn check(&self) -> Result<(), DiscoveryError> {
        self.refresh.check()?;
        if self.timeout.is_zero() {
            return Err(DiscoveryError::new(NAME, "timeout must be non-zero"));
        }
        Ok(())
    }
}

impl DnsRegistry {
    /// Checks `config` and builds the resolver.
    pub fn new(config: DnsConfig) -> Result<Self, DiscoveryError> {
        config.check()?;
        let mut builder = match config.nameserver {
            Some(server) => {
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                let resolver_config = ResolverConfig::from_parts(None, vec![], servers);
                TokioResolver::builder_with_config(
                    resolver_config,
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| {
                DiscoveryError::new(
                    NAME,
                    format!("cannot read the system resolver configuration: {e}"),
                )
            })?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = 2;
        // Every address of a name, not only its A records when it has some.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(Self {
            resolver: Arc::new(builder.build()),
            refresh: config.refresh,
        })
    }
}

impl Registry for DnsRegistry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>> {
        let target = match Target::parse(service) {
            Ok(target) => target,
            Err(error) => {
                // A name that can never resolve: say so once, then stay open like a
                // registry that has nothing to add.
                return stream::once(async move { Err(error) })
                    .chain(stream::pending())
                    .boxed();
            }
        };
        let this = self.clone();
        let name = service.to_string();
        feed::spawn(move |feed| async move { this.run(target, name, feed).await })
    }
}

/// What a service name asks DNS for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A/AAAA of `host`, all on `port`.
    Host { host: String, port: u16 },
    /// SRV records of a `_service._proto.name`.
    Srv(String),
}

impl Target {
    fn parse(service: &str) -> Result<Target, DiscoveryError> {
        if service.starts_with('_') {
            return Ok(Target::Srv(service.to_string()));
        }
        let parsed = service
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        match parsed {
            Some((host, port)) if !host.is_empty() => Ok(Target::Host {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            }),
            _ => Err(DiscoveryError::new(
                NAME,
                format!("{service:?} is neither host:port nor an SRV name (_service._proto.name)"),
            )),
        }
    }
}

impl DnsRegistry {
    async fn run(self, target: Target, name: String, feed: Feed) -> Result<(), Closed> {
        let (min, max) = match self.refresh {
            DnsRefresh::Ttl { min, max } => (min, max),
            DnsRefresh::Every(interval) => (interval, interval),
        };
        let mut backoff = Backoff::try_new(min, max).expect("bounds checked by the constructor");
        let mut last: Option<Vec<Instance>> = None;
        loop {
            // The resolver's cache would answer from memory until the TTL; a fixed
            // interval shorter than the TTL must reach the server.
            self.resolver.clear_cache();
            match self.resolve(&target).await {
                Ok((mut instances, valid_until)) => {
                    for instance in &mut instances {
                        let key = DNS_NAME_METADATA.to_string();
                        instance.metadata.insert(key, name.clone());
                    }
                    backoff.reset();
                    if last.as_ref() != Some(&instances) {
                        last = Some(instances.clone());
                        feed.snapshot(instances).await?;
                    }
                    tokio::time::sleep(self.delay(valid_until)).await;
                }
                Err(error) => {
                    last = None;
                    feed.outage(error).await?;
                    backoff.wait().await;
                }
            }
        }
    }

    /// The wait until the next resolution.
    fn delay(&self, valid_until: Instant) -> Duration {
        match self.refresh {
            DnsRefresh::Every(interval) => interval,
            DnsRefresh::Ttl { min, max } => valid_until
                .saturating_duration_since(Instant::now())
                .clamp(min, max),
        }
    }

    /// The instances behind `target`, sorted, and when the answer expires.
    async fn resolve(&self, target: &Target) -> Result<(Vec<Instance>, Instant), DiscoveryError> {
        let (mut instances, valid_until) = match target {
            Target::Host { host, port } => self.resolve_host(host, *port).await?,
            Target::Srv(name) => self.resolve_srv(name).await?,
        };
        instances.sort_by_key(|instance| instance.addr);
        instances.dedup_by(|a, b| a.addr == b.addr);
        Ok((instances, valid_until))
    }

    async fn resolve_host(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<Instance>, Instant), DiscoveryError> {
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| failed(host, e))?;
        let instances = lookup
            .iter()
            .map(|ip| Instance::new(SocketAddr::new(ip, port)))
            .collect();
        Ok((instances, lookup.valid_until()))
    }

    async fn resolve_srv(&self, name: &str) -> Result<(Vec<Instance>, Instant), DiscoveryError> {
        let lookup = self
            .resolver
            .srv_lookup(name)
            .await
            .map_err(|e| failed(name, e))?;
        let mut valid_until = lookup.as_lookup().valid_until();
        let Some(priority) = lookup.iter().map(|srv| srv.priority()).min() else {
            return Err(DiscoveryError::new(NAME, format!("{name}: no SRV records")));
        };
        let mut instances = Vec::new();
        for srv in lookup.iter().filter(|srv| srv.priority() == priority) {
            let target = srv.target().to_utf8();
            let ips = self
                .resolver
                .lookup_ip(srv.target().clone())
                .await
                .map_err(|e| failed(&target, e))?;
            valid_until = valid_until.min(ips.valid_until());
            for ip in ips.iter() {
                let mut instance = Instance::new(SocketAddr::new(ip, srv.port()));
                instance.weight = u32::from(srv.weight()).max(1);
                instance
                    .metadata
                    .insert("srv_target".into(), target.clone());
                instances.push(instance);
            }
        }
        Ok((instances, valid_until))
    }
}

fn failed(name: &str, error: ResolveError) -> DiscoveryError {
    DiscoveryError::new(NAME, format!("cannot resolve {name}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_srv_names() {
        assert_eq!(
            Target::parse("orders.internal:8080").unwrap(),
            Target::Host {
                host: "orders.internal".into(),
                port: 8080
            }
        );
        assert_eq!(
            Target::parse("[::1]:80").unwrap(),
            Target::Host {
                host: "::1".into(),
                port: 80
            }
        );
        assert_eq!(
            Target::parse("_http._tcp.orders").unwrap(),
            Target::Srv("_http._tcp.orders".into())
        );
        assert!(Target::parse("orders").is_err());
        assert!(Target::parse(":80").is_err());
    }

    #[test]
    fn rejects_inverted_ttl_bounds() {
        let config = DnsConfig {
            refresh: DnsRefresh::Ttl {
                min: Duration::from_secs(2),
                max: Duration::from_secs(1),
            },
            nameserver: Some("127.0.0.1:53".parse().unwrap()),
            ..DnsConfig::default()
        };
        assert!(DnsRegistry::new(config).is_err());
    }
}
