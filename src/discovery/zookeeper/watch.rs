//! The watch of one service: a persistent recursive watch on `<base>/<service>` and the
//! instances it implies.
//!
//! Each session: add the watch, then list the service's znodes, then apply each event by
//! reading the znode it names (the read returns the latest data, so an event stands for
//! every change before it). While the connection is lost the client reconnects within
//! the session and the watch reports an outage every `max_backoff`; once connected
//! again the service is listed anew, because events can be lost meanwhile. A session
//! that expires or closes is replaced after a backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use zookeeper_client::{AddWatchMode, Client, EventType, PersistentWatcher, SessionState};

use super::{curator, ZkFailure, ZookeeperRegistry, NAME};
use crate::discovery::feed::{Closed, Feed};
use crate::discovery::metrics::count_malformed;
use crate::discovery::{Backoff, DiscoveryError, Instance};

/// Why one session of a watch ended.
enum WatchEnd {
    /// The consumer went away.
    Closed,
    /// The session or a request failed; start a new session after a backoff.
    Failed(DiscoveryError),
}

impl From<Closed> for WatchEnd {
    fn from(_: Closed) -> Self {
        WatchEnd::Closed
    }
}

impl From<ZkFailure> for WatchEnd {
    fn from(failure: ZkFailure) -> Self {
        WatchEnd::Failed(failure.into())
    }
}

/// One service followed across sessions.
struct ServiceWatch {
    registry: ZookeeperRegistry,
    service: String,
    /// `<base>/<service>`.
    path: String,
    /// Usable instances by znode name.
    instances: BTreeMap<String, Instance>,
    /// Znodes whose data could not be used; each is logged and counted once while it
    /// stays so.
    malformed: BTreeSet<String>,
}

/// Follows `service` in `registry`, sending snapshots and outages to `feed`.
pub(super) async fn run(
    registry: ZookeeperRegistry,
    service: String,
    feed: Feed,
) -> Result<(), Closed> {
    let mut backoff = registry.backoff();
    let mut watch = ServiceWatch {
        path: registry.service_path(&service),
        registry,
        service,
        instances: BTreeMap::new(),
        malformed: BTreeSet::new(),
    };
    loop {
        match watch.session(&feed, &mut backoff).await {
            WatchEnd::Closed => return Err(Closed),
            WatchEnd::Failed(error) => {
                tracing::warn!(registry = NAME, znode = %watch.path, %error, "zookeeper watch failed; keeping the last instances");
                feed.outage(error).await?;
                backoff.wait().await;
            }
        }
    }
}

impl ServiceWatch {
    /// One session: connect, then follow until it ends.
    async fn session(&mut self, feed: &Feed, backoff: &mut Backoff) -> WatchEnd {
        let timeout = self.registry.config.session_timeout;
        let client = match self.registry.connect(timeout, false).await {
            Ok(client) => client,
            Err(error) => return WatchEnd::Failed(error),
        };
        match self.follow(&client, feed, backoff).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn follow(
        &mut self,
        client: &Client,
        feed: &Feed,
        backoff: &mut Backoff,
    ) -> Result<Infallible, WatchEnd> {
        let mut watcher = self.add_watch(client).await?;
        self.list(client).await?;
        backoff.reset();
        feed.snapshot(self.snapshot()).await?;
        let max_backoff = backoff.max();
        let mut disconnected = false;
        loop {
            let event = if disconnected {
                tokio::select! {
                    event = watcher.changed() => event,
                    () = tokio::time::sleep(max_backoff) => {
                        feed.outage(self.lost(client)).await?;
                        continue;
                    }
                }
            } else {
                watcher.changed().await
            };
            match (event.event_type, event.session_state) {
                (EventType::Session, SessionState::Disconnected) => {
                    disconnected = true;
                    let error = self.lost(client);
                    tracing::warn!(registry = NAME, znode = %self.path, %error, "keeping the last instances while reconnecting");
                    feed.outage(error).await?;
                }
                (EventType::Session, SessionState::SyncConnected)
                | (EventType::Session, SessionState::ConnectedReadOnly) => {
                    disconnected = false;
                    tracing::info!(registry = NAME, znode = %self.path, session = %client.session_id(), "reconnected; listing again");
                    // NOTE: zookeeper-client 0.11 does not send persistent watches again
                    // when it reconnects within the session (its `resend_watches` keeps
                    // the kind index of the first watch only, so it sends `SetWatches`
                    // without them): the server has lost this one. A new one is added
                    // before the old is dropped, so that dropping it removes nothing.
                    watcher = self.add_watch(client).await?;
                    self.list(client).await?;
                    feed.snapshot(self.snapshot()).await?;
                }
                (EventType::Session, state) => {
                    let message = format!(
                        "watch {}: session {} {state}",
                        self.path,
                        client.session_id()
                    );
                    return Err(WatchEnd::Failed(DiscoveryError::new(NAME, message)));
                }
                (kind, _) => {
                    if self.apply(client, kind, &event.path).await? {
                        feed.snapshot(self.snapshot()).await?;
                    }
                }
            }
        }
    }

    /// A persistent recursive watch on the service's znode.
    async fn add_watch(&self, client: &Client) -> Result<PersistentWatcher, WatchEnd> {
        let watch = client.watch(&self.path, AddWatchMode::PersistentRecursive);
        match self.registry.timed("watch", &self.path, watch).await {
            Ok(watcher) => Ok(watcher),
            Err(failure) if failure.code() == Some(&zookeeper_client::Error::Unimplemented) => {
                let message = format!(
                    "watch {}: the server has no persistent watches (ZooKeeper 3.6 or later is needed)",
                    self.path
                );
                Err(WatchEnd::Failed(DiscoveryError::new(NAME, message)))
            }
            Err(failure) => Err(failure.into()),
        }
    }

    /// The outage of a connection lost within `client`'s session.
    fn lost(&self, client: &Client) -> DiscoveryError {
        DiscoveryError::new(
            NAME,
            format!(
                "watch {}: connection lost; reconnecting within session {}",
                self.path,
                client.session_id()
            ),
        )
    }

    fn snapshot(&self) -> Vec<Instance> {
        self.instances.values().cloned().collect()
    }

    /// Reads every instance znode of the service again.
    async fn list(&mut self, client: &Client) -> Result<(), ZkFailure> {
        let children = client.list_children(&self.path);
        let children = match self.registry.timed("list", &self.path, children).await {
            Ok(children) => children,
            Err(failure) if failure.code() == Some(&zookeeper_client::Error::NoNode) => Vec::new(),
            Err(failure) => return Err(failure),
        };
        self.instances.clear();
        self.malformed.retain(|name| children.contains(name));
        for name in children {
            self.read(client, &name).await?;
        }
        Ok(())
    }

    /// Applies one node event on `path`; whether the instances may have changed.
    async fn apply(
        &mut self,
        client: &Client,
        kind: EventType,
        path: &str,
    ) -> Result<bool, ZkFailure> {
        let Some(below) = path.strip_prefix(self.path.as_str()) else {
            return Ok(false);
        };
        if below.is_empty() {
            // The service znode itself: gone with all its children, or (re)created
            // empty, its children reported one by one.
            if kind == EventType::NodeDeleted {
                self.instances.clear();
                self.malformed.clear();
                return Ok(true);
            }
            return Ok(false);
        }
        let Some(name) = below.strip_prefix('/').filter(|n| !n.contains('/')) else {
            // A znode below an instance: not Curator's layout, nothing of ours.
            return Ok(false);
        };
        match kind {
            EventType::NodeDeleted => {
                self.instances.remove(name);
                self.malformed.remove(name);
            }
            EventType::NodeCreated | EventType::NodeDataChanged => {
                self.read(client, name).await?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Reads the instance znode `name` into the set.
    async fn read(&mut self, client: &Client, name: &str) -> Result<(), ZkFailure> {
        let path = format!("{}/{name}", self.path);
        let data = match self
            .registry
            .timed("read", &path, client.get_data(&path))
            .await
        {
            Ok((data, _)) => data,
            Err(failure) if failure.code() == Some(&zookeeper_client::Error::NoNode) => {
                self.instances.remove(name);
                self.malformed.remove(name);
                return Ok(());
            }
            Err(failure) => return Err(failure),
        };
        match curator::from_json(name, &data) {
            Ok(Some(instance)) => {
                self.instances.insert(name.to_string(), instance);
                self.malformed.remove(name);
            }
            Ok(None) => {
                self.instances.remove(name);
                self.malformed.remove(name);
            }
            Err(why) => {
                // One bad znode must not hide the other instances.
                self.instances.remove(name);
                if self.malformed.insert(name.to_string()) {
                    tracing::warn!(registry = NAME, znode = %path, %why, "ignoring an unreadable instance");
                    count_malformed(NAME, &self.service);
                }
            }
        }
        Ok(())
    }
}
