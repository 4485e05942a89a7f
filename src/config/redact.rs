//! The effective config as others may read it (`/config` on the admin listener): every
//! secret replaced by [`REDACTED`]. Paths stay: a key file's path is not the key.
//!
//! The secrets are the values that authenticate remora to something it calls: today
//! the Consul ACL token, the Nacos password, the OTLP export headers (API keys of hosted
//! backends) and the credentials in a shared rate limit's Redis URL. A new secret field
//! (a header value, a password) is added here
//! when it is added to the schema; the admin test checks the token stays hidden.

use super::schema::Config;

/// What a secret reads as once redacted.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// This config with every secret replaced by [`REDACTED`] (an unset one stays
    /// unset).
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        for registry in config.registries.values_mut() {
            if let Some(token) = registry.consul.as_mut().and_then(|c| c.token.as_mut()) {
                *token = REDACTED.to_string();
            }
            if let Some(password) = registry.nacos.as_mut().and_then(|n| n.password.as_mut()) {
                *password = REDACTED.to_string();
            }
        }
        for value in config.tracing.headers.0.values_mut() {
            *value = REDACTED.to_string();
        }
        for limit in config.policies.rate_limits.values_mut() {
            if let Some(shared) = limit.shared.as_mut() {
                shared.redis = redact_userinfo(&shared.redis);
            }
        }
        config
    }
}

/// `scheme://user:password@host/...` with its `user:password` part redacted.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_credentials_are_hidden_and_the_host_is_kept() {
        assert_eq!(
            redact_userinfo("redis://app:s3cret@cache:6379/0"),
            format!("redis://{REDACTED}@cache:6379/0")
        );
        assert_eq!(redact_userinfo("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn the_consul_token_is_hidden_and_paths_are_kept() {
        let yaml = "service: orders
inbound: { listen: 127.0.0.1:0, app: 127.0.0.1:8080 }
registries:
  main:
    consul:
      address: https://consul:8501
      token: s3cret-token
      tls: { ca: /etc/consul/ca.pem }
";
        let config = crate::config::parse("test.yaml", yaml, &|_| Vec::new()).unwrap();
        let shown = crate::config::to_yaml(&config.redacted());
        assert!(!shown.contains("s3cret-token"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
        assert!(shown.contains("/etc/consul/ca.pem"), "{shown}");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cret-token"),
            "Debug hides it too: {debug}"
        );
        assert_eq!(
            config.registries["main"]
                .consul
                .as_ref()
                .unwrap()
                .token
                .as_deref(),
            Some("s3cret-token"),
            "the config itself keeps the token"
        );
    }

    #[test]
    fn export_header_values_are_hidden_and_their_names_kept() {
        let yaml = "service: svc
inbound: { listen: 127.0.0.1:0, app: 127.0.0.1:8080 }
tracing:
  endpoint: https://otlp.example.com:4317
  headers: { x-api-key: very-secret }
";
        let config = crate::config::parse("test.yaml", yaml, &|_| Vec::new()).unwrap();
        let shown = crate::config::to_yaml(&config.redacted());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("x-api-key"), "{shown}");
        assert!(!format!("{config:?}").contains("very-secret"));
    }

    #[test]
    fn the_nacos_password_is_hidden() {
        let yaml = "service: svc
inbound: { listen: 127.0.0.1:0, app: 127.0.0.1:8080 }
registries:
  naming:
    nacos: { address: http://nacos:8848, username: remora, password: hunter2 }
";
        let config = crate::config::parse("test.yaml", yaml, &|_| Vec::new()).unwrap();
        let shown = crate::config::to_yaml(&config.redacted());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("remora"), "{shown}");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
