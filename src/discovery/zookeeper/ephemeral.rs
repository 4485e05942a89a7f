//! A registration: an EPHEMERAL znode `<base>/<service>/<id>` in a session of its own.
//!
//! The session's timeout is the registration's TTL and the session is detached: when the
//! sidecar dies (or the registration is dropped) nobody closes it, it expires, and
//! ZooKeeper deletes the znode, which is what callers must see of a crash. While the
//! session lives, a keep-alive task watches the znode and the session: a znode deleted
//! by someone else is created again, and an expired session is replaced by a new one
//! holding a new znode. Parents are created persistent, as Curator does; a znode left by
//! an earlier session under the same id is replaced, as Curator does too.
//!
//! NOTE: after deregistering, the detached session has nothing left and lingers until
//! it expires: zookeeper-client offers no way to close a detached session.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use zookeeper_client::{Acls, Client, CreateMode, OneshotWatcher, SessionState, Stat};

use super::{curator, ZkFailure, ZookeeperRegistry, NAME};
use crate::discovery::{DiscoveryError, Instance, Registration};

/// Attempts at creating the znode before giving up on a path that keeps changing.
const CREATE_ATTEMPTS: usize = 4;

/// The znode of one registration.
#[derive(Clone)]
struct Node {
    registry: ZookeeperRegistry,
    /// `<base>/<service>/<id>`.
    path: String,
    /// Curator's `ServiceInstance` JSON.
    data: Arc<[u8]>,
    /// The session timeout asked for.
    ttl: Duration,
}

/// Registers `instance` of `service` as an ephemeral znode kept while the returned
/// registration lives.
pub(super) async fn register(
    registry: ZookeeperRegistry,
    service: String,
    instance: Instance,
    ttl: Duration,
) -> Result<Registration, DiscoveryError> {
    let id = &instance.id;
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return Err(DiscoveryError::new(
            NAME,
            format!("instance id {id:?} must be a znode name: non-empty, free of '/', not . or .."),
        ));
    }
    if ttl.is_zero() {
        return Err(DiscoveryError::new(
            NAME,
            "the session timeout must be non-zero",
        ));
    }
    let payload = registry.config.payload;
    let data = curator::to_json(&service, &instance, payload, SystemTime::now());
    let node = Node {
        path: format!("{}/{id}", registry.service_path(&service)),
        registry,
        data: data.into_bytes().into(),
        ttl,
    };
    let client = node.open().await?;
    let current = Arc::new(Mutex::new(client.clone()));
    let keep_alive = tokio::spawn(node.clone().hold(client, current.clone()));
    let remove = Box::pin(node.remove(current));
    Ok(Registration::new(NAME, &service, id, keep_alive, remove))
}

impl Node {
    /// A new session holding the znode.
    async fn open(&self) -> Result<Client, DiscoveryError> {
        let client = self.registry.connect(self.ttl, true).await?;
        if client.session_timeout() != self.ttl {
            tracing::info!(registry = NAME, znode = %self.path, asked = ?self.ttl, granted = ?client.session_timeout(), "the server bounded the session timeout");
        }
        let stat = self.create(&client).await?;
        tracing::debug!(registry = NAME, znode = %self.path, session = %client.session_id(), czxid = stat.czxid, "registered in zookeeper");
        Ok(client)
    }

    /// Creates the znode in `client`'s session, its parents as needed.
    async fn create(&self, client: &Client) -> Result<Stat, DiscoveryError> {
        let registry = &self.registry;
        let path = self.path.as_str();
        let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        for _ in 0..CREATE_ATTEMPTS {
            let create = client.create(path, &self.data, &ephemeral);
            let failure = match registry.timed("create", path, create).await {
                Ok((stat, _)) => return Ok(stat),
                Err(failure) => failure,
            };
            match failure.code() {
                Some(zookeeper_client::Error::NoNode) => self.create_parents(client).await?,
                Some(zookeeper_client::Error::NodeExists) => {
                    let stat = registry
                        .timed("read", path, client.check_stat(path))
                        .await?;
                    let Some(stat) = stat else { continue };
                    if stat.ephemeral_owner == client.session_id().0 {
                        // Ours: a create retried after a lost answer.
                        return Ok(stat);
                    }
                    tracing::info!(registry = NAME, znode = %path, owner = stat.ephemeral_owner, "replacing the znode of another session under this id");
                    match registry
                        .timed("delete", path, client.delete(path, Some(stat.version)))
                        .await
                    {
                        Ok(()) => {}
                        Err(failure) if benign_delete(&failure) => {}
                        Err(failure) => return Err(failure.into()),
                    }
                }
                _ => return Err(failure.into()),
            }
        }
        Err(DiscoveryError::new(
            NAME,
            format!("create {path}: the znode kept changing; giving up after {CREATE_ATTEMPTS} attempts"),
        ))
    }

    /// Creates the service znode and its ancestors, persistent.
    async fn create_parents(&self, client: &Client) -> Result<(), DiscoveryError> {
        let (parent, _) = self.path.rsplit_once('/').expect("an absolute path");
        let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
        self.registry
            .timed("create", parent, client.mkdir(parent, &persistent))
            .await
            .map_err(DiscoveryError::from)
    }

    /// Keeps the znode while the registration lives, in a new session whenever the
    /// current one ends.
    async fn hold(self, mut client: Client, current: Arc<Mutex<Client>>) {
        let mut backoff = self.registry.backoff();
        loop {
            let ended = self.watch_over(&client).await;
            tracing::warn!(registry = NAME, znode = %self.path, session = %client.session_id(), state = %ended, "zookeeper session ended; registering again in a new one");
            loop {
                backoff.wait().await;
                match self.open().await {
                    Ok(opened) => {
                        client = opened;
                        *current.lock().unwrap() = client.clone();
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(registry = NAME, znode = %self.path, %error, "zookeeper registration failed")
                    }
                }
            }
            backoff.reset();
        }
    }

    /// Keeps the znode present while `client`'s session lives; returns the state that
    /// ended the session.
    async fn watch_over(&self, client: &Client) -> SessionState {
        let mut states = client.state_watcher();
        let mut backoff = self.registry.backoff();
        loop {
            let state = states.state();
            if state.is_terminated() {
                return state;
            }
            if state == SessionState::Disconnected {
                tracing::warn!(registry = NAME, znode = %self.path, session = %client.session_id(), "connection to zookeeper lost; the znode lives as long as the session");
                states.changed().await;
                continue;
            }
            let watch = client.check_and_watch_stat(&self.path);
            let watcher = match self.registry.timed("watch", &self.path, watch).await {
                Ok((Some(_), watcher)) => Some(watcher),
                Ok((None, _)) => {
                    tracing::warn!(registry = NAME, znode = %self.path, "the znode was deleted while the session lives; creating it again");
                    if let Err(error) = self.create(client).await {
                        tracing::warn!(registry = NAME, znode = %self.path, %error, "zookeeper registration failed");
                        backoff.wait().await;
                    }
                    continue;
                }
                Err(failure) => {
                    let error = DiscoveryError::from(failure);
                    tracing::warn!(registry = NAME, znode = %self.path, %error, "cannot watch the registration's znode");
                    None
                }
            };
            // Without a watch, look again after a backoff; with one, wait for news.
            let missing = watcher.is_none();
            if !missing {
                backoff.reset();
            }
            let retry = backoff.next_delay();
            tokio::select! {
                () = node_event(watcher) => {}
                _ = states.changed() => {}
                () = tokio::time::sleep(retry), if missing => {}
            }
        }
    }

    /// Deletes the znode now, from the current session.
    async fn remove(self, current: Arc<Mutex<Client>>) -> Result<(), DiscoveryError> {
        let client = current.lock().unwrap().clone();
        let delete = client.delete(&self.path, None);
        match self.registry.timed("delete", &self.path, delete).await {
            Ok(()) => Ok(()),
            // Already gone (the session expired, or someone deleted it).
            Err(failure) if benign_delete(&failure) => Ok(()),
            Err(failure) => Err(failure.into()),
        }
    }
}

/// A delete that found the znode gone or changed: someone else acted first.
fn benign_delete(failure: &ZkFailure) -> bool {
    matches!(
        failure.code(),
        Some(zookeeper_client::Error::NoNode | zookeeper_client::Error::BadVersion)
    )
}

/// The next event of `watcher`, or never without one.
async fn node_event(watcher: Option<OneshotWatcher>) {
    match watcher {
        Some(watcher) => {
            watcher.changed().await;
        }
        None => std::future::pending().await,
    }
}
