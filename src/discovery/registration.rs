//! A live entry of this sidecar's app in a registry.

use std::fmt;

use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use super::DiscoveryError;

/// Keeps an instance registered: a background task renews its lease or TTL check.
///
/// [`deregister`](Self::deregister) removes the entry at once. Dropping the registration
/// only stops the renewals, so the registry forgets the entry when its TTL runs out:
/// exactly what a crashed sidecar looks like to everyone else.
pub struct Registration {
    registry: &'static str,
    service: String,
    id: String,
    /// Renews the entry; aborted on drop and before removal.
    keep_alive: Option<JoinHandle<()>>,
    /// Removes the entry; lazy, so it reads the backend's state (the current lease) only
    /// when deregistration happens.
    remove: Option<BoxFuture<'static, Result<(), DiscoveryError>>>,
}

impl Registration {
    /// A registration of `service`/`id` renewed by `keep_alive` and removed by `remove`.
    pub(crate) fn new(
        registry: &'static str,
        service: &str,
        id: &str,
        keep_alive: JoinHandle<()>,
        remove: BoxFuture<'static, Result<(), DiscoveryError>>,
    ) -> Self {
        Self {
            registry,
            service: service.to_string(),
            id: id.to_string(),
            keep_alive: Some(keep_alive),
            remove: Some(remove),
        }
    }

    /// The registered instance's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The service it is registered under.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Stops the renewals and removes the entry from the registry now.
    pub async fn deregister(mut self) -> Result<(), DiscoveryError> {
        if let Some(keep_alive) = self.keep_alive.take() {
            keep_alive.abort();
            // Wait until it is gone so that no renewal re-creates the entry afterwards.
            let _ = keep_alive.await;
        }
        match self.remove.take() {
            Some(remove) => remove.await,
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(keep_alive) = self.keep_alive.take() {
            keep_alive.abort();
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("registry", &self.registry)
            .field("service", &self.service)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
