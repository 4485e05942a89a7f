//! Upgraded connections (WebSocket and the like) spliced into byte tunnels: they leave
//! the HTTP server once upgraded, so a drain counts them here and waits for them, up to
//! the same `drain_timeout`, before it closes what is left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The tunnels of one sidecar. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tunnels(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    open: AtomicUsize,
    /// Woken when the last tunnel closes.
    idle: Notify,
    /// True once the drain gave up waiting: every tunnel closes.
    closing: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self(Arc::new(Inner {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            closing: watch::channel(false).0,
        }))
    }
}

/// One open tunnel: counted while it lives.
#[derive(Debug)]
pub struct TunnelGuard {
    tunnels: Tunnels,
    closing: watch::Receiver<bool>,
}

impl TunnelGuard {
    /// Resolves when the drain closes the tunnels.
    pub async fn closing(&mut self) {
        let _ = self.closing.wait_for(|closing| *closing).await;
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.tunnels.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tunnels.0.idle.notify_waiters();
        }
    }
}

impl Tunnels {
    /// Counts a new tunnel until the guard drops.
    pub fn open(&self) -> TunnelGuard {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        TunnelGuard {
            tunnels: self.clone(),
            closing: self.0.closing.subscribe(),
        }
    }

    /// Tunnels open now.
    pub fn count(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }

    /// Waits until every tunnel closed or `deadline` passed; then closes those left.
    /// Returns how many were left open.
    pub async fn drain(&self, deadline: Instant) -> usize {
        loop {
            let idle = self.0.idle.notified();
            if self.count() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let left = self.count();
                self.0.closing.send_replace(true);
                return left;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_open_tunnels_then_closes_the_rest() {
        let tunnels = Tunnels::default();
        assert_eq!(tunnels.drain(Instant::now()).await, 0);
        let quick = tunnels.open();
        let mut slow = tunnels.open();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(quick);
        });
        let draining = tunnels.clone();
        let left = tokio::spawn(async move {
            draining
                .drain(Instant::now() + Duration::from_millis(200))
                .await
        });
        tokio::time::timeout(Duration::from_secs(5), slow.closing())
            .await
            .expect("the drain closed the slow tunnel at its deadline");
        assert_eq!(left.await.unwrap(), 1);
        drop(slow);
        assert_eq!(tunnels.count(), 0);
    }
}
