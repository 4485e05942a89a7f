//! Registries, balancers, health checks, outlier ejection, pools and the sidecar's own
//! registration -> the settings of discovery, balancing, health and the pools.

use std::sync::Arc;

use http::HeaderName;

use super::{conditions, At, BuildError};

/// The name of a registry's backend.
pub fn registry_backend(config: &crate::config::RegistrySection) -> &'static str {
    crate::config::backend_of(config).unwrap_or("invalid")
}

/// A registry client for `config`.
pub fn registry(
    config: &crate::config::RegistrySection,
) -> Result<Arc<dyn crate::discovery::Registry>, BuildError> {
    use crate::discovery::{
        ConsulConfig, ConsulRegistry, DnsConfig, DnsRefresh, DnsRegistry, EtcdConfig, EtcdRegistry,
        EurekaConfig, EurekaRegistry, FileConfig, FileRegistry, NacosConfig, NacosRegistry,
        ZookeeperConfig, ZookeeperPayload, ZookeeperRegistry,
    };
    if let Some(etcd) = &config.etcd {
        let mut settings = EtcdConfig::new(etcd.endpoints.clone());
        settings.prefix = etcd.prefix.clone();
        let https = etcd.endpoints.iter().any(|url| url.starts_with("https://"));
        settings.tls = registry_tls(etcd.tls.as_deref(), https).map_err(|e| e.under("etcd"))?;
        return Ok(Arc::new(EtcdRegistry::new(settings).at("etcd")?));
    }
    if let Some(consul) = &config.consul {
        let mut settings = ConsulConfig::new(consul.address.clone());
        settings.token = consul.token.clone().filter(|t| !t.is_empty());
        let https = consul.address.starts_with("https://");
        settings.tls = registry_tls(consul.tls.as_deref(), https).map_err(|e| e.under("consul"))?;
        return Ok(Arc::new(ConsulRegistry::new(settings).at("consul")?));
    }
    if let Some(eureka) = &config.eureka {
        let mut settings = EurekaConfig::new(eureka.url.clone());
        settings.app = eureka.app.clone();
        settings.renew_interval = eureka.renew_interval;
        settings.poll_interval = eureka.poll_interval;
        let https = eureka.url.starts_with("https://");
        settings.tls = registry_tls(eureka.tls.as_deref(), https).map_err(|e| e.under("eureka"))?;
        return Ok(Arc::new(EurekaRegistry::new(settings).at("eureka")?));
    }
    if let Some(nacos) = &config.nacos {
        let mut settings = NacosConfig::new(nacos.address.clone());
        settings.namespace = nacos.namespace.clone().unwrap_or_default();
        settings.group = nacos.group.clone();
        settings.cluster = nacos.cluster.clone();
        settings.username = nacos.username.clone();
        settings.password = nacos.password.clone();
        settings.poll_interval = nacos.poll_interval;
        let https = nacos.address.starts_with("https://");
        settings.tls = registry_tls(nacos.tls.as_deref(), https).map_err(|e| e.under("nacos"))?;
        return Ok(Arc::new(NacosRegistry::new(settings).at("nacos")?));
    }
    if let Some(zookeeper) = &config.zookeeper {
        let mut settings = ZookeeperConfig::new(zookeeper.servers.clone());
        settings.base = zookeeper.base.clone();
        settings.session_timeout = zookeeper.session_timeout;
        settings.payload = match zookeeper.payload {
            crate::config::ZookeeperPayloadSection::SpringCloud => ZookeeperPayload::SpringCloud,
            crate::config::ZookeeperPayloadSection::None => ZookeeperPayload::Empty,
        };
        return Ok(Arc::new(ZookeeperRegistry::new(settings).at("zookeeper")?));
    }
    if let Some(dns) = &config.dns {
        let mut settings = DnsConfig {
            nameserver: dns.nameserver,
            ..DnsConfig::default()
        };
        if let Some(interval) = dns.interval {
            settings.refresh = DnsRefresh::Every(interval);
        }
        return Ok(Arc::new(DnsRegistry::new(settings).at("dns")?));
    }
    if let Some(file) = &config.file {
        return Ok(Arc::new(
            FileRegistry::new(FileConfig::new(file.path.clone())).at("file")?,
        ));
    }
    Err(
        "a registry takes exactly one of `etcd`, `consul`, `dns`, `file`, `eureka`, `nacos`, `zookeeper`"
            .into(),
    )
}

/// The settings of the resolver of names among endpoints and `inbound.app`.
pub fn resolver(
    section: &crate::config::ResolverSection,
) -> Result<crate::discovery::DnsConfig, BuildError> {
    use crate::discovery::{DnsConfig, DnsRefresh};
    let refresh = DnsRefresh::Ttl {
        min: section.ttl.min,
        max: section.ttl.max,
    };
    // The registry's words without its name: this is no registry.
    refresh.check().map_err(|e| e.message).at("ttl")?;
    let config = DnsConfig {
        nameserver: section.nameserver,
        refresh,
        timeout: section.timeout,
    };
    config.check().map_err(|e| e.message).at("timeout")?;
    Ok(config)
}

/// A registry's TLS: its `tls` block read, or the system's roots for an `https://`
/// server without one; `None` for plain HTTP.
fn registry_tls(
    section: Option<&crate::config::TlsSection>,
    https: bool,
) -> Result<Option<crate::discovery::RegistryTls>, BuildError> {
    let default = crate::config::TlsSection::default();
    let section = match section {
        Some(section) => section,
        None if https => &default,
        None => return Ok(None),
    };
    let config = super::external_tls(section).map_err(|e| e.under("tls"))?;
    Ok(Some(crate::discovery::RegistryTls {
        config,
        server_name: section.server_name.clone(),
    }))
}

/// A service's balancer.
pub fn balancer(
    section: &crate::config::BalancerSection,
) -> Result<crate::balance::BalancerConfig, BuildError> {
    use crate::balance::{Balancer, BalancerConfig, HashAlgorithm, HashKey};
    use crate::config::BalancerAlgorithm as Algorithm;
    let key = || -> Result<HashKey, BuildError> {
        let text = section.hash_key.as_deref().ok_or(
            "consistent hashing needs `hash_key`: `header:<name>`, `cookie:<name>` or `client_ip`",
        ).here()?;
        hash_key(text, "hash_key").at("hash_key")
    };
    let balancer = match section.algorithm {
        Algorithm::P2c => Balancer::default(),
        Algorithm::RoundRobin => Balancer::RoundRobin,
        Algorithm::LeastRequest => Balancer::LeastRequest,
        Algorithm::Random => Balancer::Random,
        Algorithm::RingHash => Balancer::ConsistentHash {
            key: key()?,
            algorithm: HashAlgorithm::ring(),
        },
        Algorithm::Maglev => Balancer::ConsistentHash {
            key: key()?,
            algorithm: HashAlgorithm::maglev(),
        },
    };
    if section.hash_key.is_some()
        && !matches!(section.algorithm, Algorithm::RingHash | Algorithm::Maglev)
    {
        return Err("`hash_key` only applies to `ring_hash` and `maglev`").at("hash_key");
    }
    let threshold = (section.panic_threshold.0 * 100.0).round() as u8;
    BalancerConfig::try_new(balancer, threshold).at("panic_threshold")
}

/// A hash key written `header:<name>`, `cookie:<name>` or `client_ip` (a balancer's
/// `hash_key`, a route's `sticky`: `field` names it in the message).
pub fn hash_key(text: &str, field: &str) -> Result<crate::balance::HashKey, String> {
    use crate::balance::HashKey;
    if text == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(name.trim().as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("invalid header name in {field} {text:?}"));
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        return Ok(HashKey::Cookie(name.trim().to_string()));
    }
    Err(format!(
        "invalid {field} {text:?}: expected `header:<name>`, `cookie:<name>` or `client_ip`"
    ))
}

/// Active health checks.
pub fn health_check(
    section: &crate::config::HealthCheckSection,
) -> Result<crate::health::HealthCheckConfig, BuildError> {
    use crate::health::{HealthCheckConfig, Probe};
    let probes = [
        section.http.is_some(),
        section.tcp.is_some(),
        section.grpc.is_some(),
    ];
    if probes.iter().filter(|given| **given).count() != 1 {
        return Err("a health check takes exactly one of `http`, `tcp`, `grpc`".into());
    }
    let probe = if let Some(http) = &section.http {
        let mut expected = Vec::new();
        for range in &http.expected {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            let parse = |text: &str| {
                text.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("invalid status range {range:?}: write it like `200-399`"))
                    .at("http.expected")
            };
            expected.push(parse(low)?..=parse(high)?);
        }
        Probe::Http {
            path: http.path.clone(),
            expected,
            host: http.host.clone(),
        }
    } else if let Some(grpc) = &section.grpc {
        Probe::Grpc {
            service: grpc.service.clone(),
        }
    } else {
        Probe::Tcp
    };
    HealthCheckConfig::try_new(
        probe,
        section.interval,
        section.timeout,
        section.unhealthy_threshold,
        section.healthy_threshold,
        0.1,
    )
    .here()
}

/// Passive outlier ejection.
pub fn outlier(
    section: &crate::config::OutlierSection,
) -> Result<crate::health::OutlierConfig, BuildError> {
    let percent = (section.max_ejection_percent.0 * 100.0).round() as u8;
    crate::health::OutlierConfig::try_new(
        section.consecutive_failures,
        conditions(&section.failure_on),
        section.base_ejection,
        section.max_ejection,
        percent,
    )
    .here()
}

/// The connection pools' settings of `upstream` (validation keeps the HTTP/2 spread and
/// the connect slots ≥ 1).
pub fn pool(upstream: &crate::config::UpstreamSection) -> crate::upstream::PoolConfig {
    crate::upstream::PoolConfig {
        connect_timeout: upstream.connect_timeout,
        idle_timeout: upstream.pool_idle_timeout,
        max_idle_per_endpoint: upstream.pool_max_idle_per_endpoint,
        http2_max_connections: upstream.http2_connections_per_endpoint.max(1),
        http2_streams_per_connection: upstream.http2_streams_per_connection.max(1),
        http2_keep_alive_interval: std::time::Duration::from_secs(30),
        max_connecting_per_endpoint: upstream.max_connecting_per_endpoint.max(1),
        max_pending_per_endpoint: upstream.max_pending_per_endpoint,
        pending_timeout: upstream.pending_timeout,
    }
}

/// What the sidecar of `service` registers, from its `register` section. `mtls`: the
/// sidecar's own identity when its inbound listener speaks mutual TLS, advertised to
/// callers as the metadata `remora_mtls` (callers upgrade to mutual TLS on seeing it).
pub fn registration(
    section: &crate::config::RegisterSection,
    service: &str,
    mtls: Option<&crate::tls::Identity>,
) -> crate::discovery::self_registration::RegistrationPlan {
    let id = section
        .id
        .clone()
        .unwrap_or_else(|| section.address.to_string());
    // A name is resolved when the sidecar registers; until then the address is a
    // placeholder on the right port.
    let (addr, host) = match &section.address {
        crate::config::Destination::Addr(addr) => (*addr, None),
        crate::config::Destination::Name { host, port } => (
            std::net::SocketAddr::from(([0, 0, 0, 0], *port)),
            Some(host.clone()),
        ),
    };
    let mut instance = crate::discovery::Instance::new(addr).with_id(id);
    instance.weight = section.weight;
    instance.metadata = section.metadata.clone();
    if let Some(identity) = mtls {
        instance.metadata.insert(
            crate::discovery::MTLS_METADATA.to_string(),
            identity.to_string(),
        );
    }
    crate::discovery::self_registration::RegistrationPlan {
        service: section.name.clone().unwrap_or_else(|| service.to_string()),
        instance,
        host,
        ttl: section.ttl,
        deregister_delay: section.deregister_delay,
    }
}
