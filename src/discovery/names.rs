//! Static lists with names among their endpoints: `10.0.0.7:80` serves as written, and
//! `orders:8080` stands for every address `orders` resolves to, kept current by the
//! [`DnsRegistry`]'s watch of the name.
//!
//! One watch per name; their items merge into the list's snapshots under the module
//! contract of [`discovery`](super): a name that fails to resolve keeps its last
//! addresses, and the list is stale while any of its names fails. A list without names
//! is the [`StaticRegistry`](super::StaticRegistry)'s, and costs no resolver.

use std::collections::HashMap;
use std::net::SocketAddr;

use futures_util::stream::{self, BoxStream, StreamExt};

use super::feed::{self, Closed, Feed};
use super::{DiscoveryError, DnsRegistry, Instance, Registry};

/// Endpoint lists whose names are resolved through DNS.
#[derive(Debug, Clone)]
pub struct NamedEndpoints {
    dns: DnsRegistry,
    services: HashMap<String, Listed>,
}

/// One service's list, split by kind.
#[derive(Debug, Clone, Default)]
struct Listed {
    /// The addresses written as such.
    fixed: Vec<Instance>,
    /// The names, as `host:port`.
    names: Vec<String>,
}

impl NamedEndpoints {
    /// No lists yet; their names will be resolved by `dns`.
    pub fn new(dns: DnsRegistry) -> Self {
        Self {
            dns,
            services: HashMap::new(),
        }
    }

    /// Sets `service`'s list: `addrs` as written, and each of `names` (`host:port`).
    pub fn insert(&mut self, service: &str, addrs: &[SocketAddr], names: &[String]) {
        let listed = Listed {
            fixed: addrs.iter().copied().map(Instance::new).collect(),
            names: names.to_vec(),
        };
        self.services.insert(service.to_string(), listed);
    }
}

impl Registry for NamedEndpoints {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>> {
        let listed = self.services.get(service).cloned().unwrap_or_default();
        let watches = listed
            .names
            .iter()
            .enumerate()
            .map(|(index, name)| self.dns.watch(name).map(move |item| (index, item)));
        let names = stream::select_all(watches);
        let merge = Merge::new(listed.fixed, listed.names.len());
        feed::spawn(move |feed| merge.run(names, feed))
    }
}

/// What the list's watch knows: each name's last addresses and current failure.
struct Merge {
    fixed: Vec<Instance>,
    /// Per name: its last snapshot, `None` before the first.
    resolved: Vec<Option<Vec<Instance>>>,
    /// Per name: why its last resolution failed, while it fails.
    failing: Vec<Option<DiscoveryError>>,
    /// The last snapshot sent; `None` before the first.
    sent: Option<Vec<Instance>>,
    /// Whether an outage was reported since that snapshot.
    stale: bool,
}

impl Merge {
    fn new(fixed: Vec<Instance>, names: usize) -> Self {
        Self {
            fixed,
            resolved: vec![None; names],
            failing: vec![None; names],
            sent: None,
            stale: false,
        }
    }

    async fn run(
        mut self,
        mut names: impl stream::Stream<Item = (usize, Result<Vec<Instance>, DiscoveryError>)>
            + Unpin
            + Send
            + 'static,
        feed: Feed,
    ) -> Result<(), Closed> {
        if !self.fixed.is_empty() {
            // The addresses serve before any name resolves.
            self.send(&feed).await?;
        }
        while let Some((index, item)) = names.next().await {
            let failed = item.is_err();
            match item {
                Ok(instances) => {
                    self.resolved[index] = Some(instances);
                    self.failing[index] = None;
                }
                Err(error) => self.failing[index] = Some(error),
            }
            let outage = self.failing.iter().flatten().next().cloned();
            // A change is sent even during an outage (traffic follows the names that
            // resolve), and so is the first snapshot after one. Nothing resolved yet is
            // no snapshot: the set starts empty anyway.
            let last = self.sent.as_deref().unwrap_or_default();
            let sent = if last != self.merged() || (self.stale && outage.is_none()) {
                self.send(&feed).await?;
                true
            } else {
                false
            };
            if let Some(error) = outage.filter(|_| failed || sent) {
                // NOTE: a snapshot sent during an outage ends it for the consumer; the
                // error right after it starts it again, so the stale clock restarts.
                self.stale = true;
                feed.outage(error).await?;
            }
        }
        Ok(())
    }

    /// The addresses written and every name's last addresses, sorted, each once.
    fn merged(&self) -> Vec<Instance> {
        let mut all: Vec<Instance> = self.fixed.clone();
        all.extend(self.resolved.iter().flatten().flatten().cloned());
        all.sort_by_key(|instance| instance.addr);
        all.dedup_by(|a, b| a.addr == b.addr);
        all
    }

    async fn send(&mut self, feed: &Feed) -> Result<(), Closed> {
        let merged = self.merged();
        self.sent = Some(merged.clone());
        self.stale = false;
        feed.snapshot(merged).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(addr: &str) -> Instance {
        Instance::new(addr.parse().unwrap())
    }

    /// What a test sees of one item: the addresses, or the error's message.
    type Sent = Result<Vec<String>, String>;

    fn ok(addrs: &[&str]) -> Sent {
        Ok(addrs.iter().map(|a| a.to_string()).collect())
    }

    fn addrs(item: &Result<Vec<Instance>, DiscoveryError>) -> Sent {
        match item {
            Ok(instances) => Ok(instances.iter().map(|i| i.addr.to_string()).collect()),
            Err(error) => Err(error.message.clone()),
        }
    }

    /// Runs a merge of `fixed` over scripted name items, returning what it sends.
    async fn merged(
        fixed: &[&str],
        names: usize,
        items: Vec<(usize, Result<Vec<Instance>, DiscoveryError>)>,
    ) -> Vec<Sent> {
        let merge = Merge::new(fixed.iter().map(|a| instance(a)).collect(), names);
        let mut out = feed::spawn(move |feed| merge.run(stream::iter(items), feed));
        let mut sent = Vec::new();
        while let Some(item) = out.next().await {
            sent.push(addrs(&item));
        }
        sent
    }

    fn down(message: &str) -> Result<Vec<Instance>, DiscoveryError> {
        Err(DiscoveryError::new("dns", message))
    }

    #[tokio::test]
    async fn addresses_serve_at_once_and_names_join_as_they_resolve() {
        let sent = merged(
            &["10.0.0.1:80"],
            2,
            vec![
                (
                    0,
                    Ok(vec![instance("10.0.0.3:80"), instance("10.0.0.2:80")]),
                ),
                (1, Ok(vec![instance("10.0.0.1:80")])),
            ],
        )
        .await;
        assert_eq!(
            sent,
            vec![
                ok(&["10.0.0.1:80"]),
                ok(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
            ],
            "a duplicate address counts once; an unchanged set is not sent again"
        );
    }

    #[tokio::test]
    async fn a_failing_name_keeps_its_addresses_and_the_list_is_stale_until_it_resolves() {
        let a = || -> Result<Vec<Instance>, DiscoveryError> { Ok(vec![instance("10.0.0.1:80")]) };
        let b = |last: u8| -> Result<Vec<Instance>, DiscoveryError> {
            Ok(vec![instance(&format!("10.0.0.{last}:80"))])
        };
        let sent = merged(
            &[],
            2,
            vec![
                (0, a()),
                (1, b(2)),
                (0, down("a is down")),
                (0, down("a is down")),
                // b changes during a's outage: traffic follows, the list stays stale.
                (1, b(3)),
                // a is back, unchanged: the list is fresh again.
                (0, a()),
            ],
        )
        .await;
        assert_eq!(
            sent,
            vec![
                ok(&["10.0.0.1:80"]),
                ok(&["10.0.0.1:80", "10.0.0.2:80"]),
                Err("a is down".into()),
                Err("a is down".into()),
                ok(&["10.0.0.1:80", "10.0.0.3:80"]),
                Err("a is down".into()),
                ok(&["10.0.0.1:80", "10.0.0.3:80"]),
            ]
        );
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_is_an_outage_not_an_empty_snapshot() {
        let sent = merged(&[], 1, vec![(0, down("no such name"))]).await;
        assert_eq!(sent, vec![Sent::Err("no such name".to_string())]);
    }
}
