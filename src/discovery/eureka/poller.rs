//! One poller per registry, shared by its watches.
//!
//! Eureka's delta and its hash code cover the whole registry, so one local copy serves
//! every watched application: the poller fetches, and each watch reads its application
//! out of the copy. The poller starts with the first watch and stops when the last one
//! is dropped; a watch that starts while the copy is fresh gets its first snapshot
//! without a fetch.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::apps::Apps;
use super::{EurekaRegistry, NAME};
use crate::discovery::DiscoveryError;

/// What the poller last learned.
#[derive(Debug, Clone)]
pub(super) enum Polled {
    /// No fetch has ended yet.
    Waiting,
    /// The copy is current; `full` after a full fetch.
    Fresh { apps: Arc<Apps>, full: bool },
    /// The last fetch failed; the copy will be fetched in full when the server returns.
    Failed(DiscoveryError),
}

/// Where the running poller publishes, if one runs.
pub(super) type Slot = Arc<Mutex<Option<Arc<watch::Sender<Polled>>>>>;

impl EurekaRegistry {
    /// A receiver of the shared poller's results, starting the poller if none runs.
    pub(super) fn subscribe(&self) -> watch::Receiver<Polled> {
        let mut slot = self.poller.lock().unwrap();
        if let Some(sender) = slot.as_ref() {
            // The poller decides to stop under this same lock, so it cannot stop
            // between this subscription and its next round.
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Polled::Waiting);
        let sender = Arc::new(sender);
        *slot = Some(sender.clone());
        tokio::spawn(self.clone().poll(sender));
        receiver
    }

    async fn poll(self, sender: Arc<watch::Sender<Polled>>) {
        let mut backoff = self.backoff();
        let mut copy: Option<Apps> = None;
        loop {
            let wait = match self.refresh(&mut copy).await {
                Ok(full) => {
                    backoff.reset();
                    let apps = Arc::new(copy.clone().expect("a refresh leaves a copy"));
                    sender.send_replace(Polled::Fresh { apps, full });
                    self.config.poll_interval
                }
                Err(error) => {
                    tracing::warn!(registry = NAME, %error, "eureka fetch failed; watches keep their last instances");
                    // Deltas missed during the outage would be caught by the hash code,
                    // but a full fetch after it is simpler to reason about.
                    copy = None;
                    sender.send_replace(Polled::Failed(error));
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = sender.closed() => {}
            }
            let mut slot = self.poller.lock().unwrap();
            if sender.receiver_count() == 0 {
                *slot = None;
                return;
            }
        }
    }
}
