//! The drain of one listener's connections: once it starts, every connection is asked to
//! shut down gracefully (HTTP/1.1 finishes its request in flight and closes, HTTP/2 sends
//! GOAWAY), and the drain waits until every [`Watcher`] is gone.
//!
//! hyper-util's `GracefulShutdown` does the same through a watch channel whose `changed()`
//! future every poll of every connection polls: a lock and a version check, about 150
//! instructions a poll, twice per HTTP/1.1 request. Here a poll reads one flag; a
//! connection hands its task's waker to the drain once (and again only if it changes).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::sync::Notify;

/// One listener's drain.
#[derive(Debug, Default)]
pub(super) struct Drain {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Set once, when the drain starts.
    draining: AtomicBool,
    /// The wakers of the watched connections not yet told, by watcher.
    wakers: Mutex<HashMap<u64, Waker>>,
    /// Watchers alive.
    live: AtomicUsize,
    /// Watchers made so far: each one's key in `wakers`.
    made: AtomicU64,
    /// Notified when the last watcher goes during a drain.
    gone: Notify,
}

impl Shared {
    fn wakers(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        self.wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drain {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// A watcher the drain waits for until it is dropped (or the connection it watches
    /// ends).
    pub(super) fn watcher(&self) -> Watcher {
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        let key = self.shared.made.fetch_add(1, Ordering::Relaxed);
        Watcher {
            shared: self.shared.clone(),
            key,
        }
    }

    /// Starts the drain and waits until every watcher is gone.
    pub(super) async fn shutdown(self) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::SeqCst);
        for (_, waker) in shared.wakers().drain() {
            waker.wake();
        }
        loop {
            let gone = shared.gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if shared.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            gone.await;
        }
    }
}

/// Holds the drain back while alive.
#[derive(Debug)]
pub(super) struct Watcher {
    shared: Arc<Shared>,
    key: u64,
}

impl Watcher {
    /// `connection`, shut down gracefully when the drain starts; the watcher goes with it.
    pub(super) fn watch<C: Graceful>(self, connection: C) -> Watched<C> {
        Watched {
            connection,
            watcher: self,
            registered: None,
            told: false,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.wakers().remove(&self.key);
        if shared.live.fetch_sub(1, Ordering::SeqCst) == 1 && shared.draining.load(Ordering::SeqCst)
        {
            shared.gone.notify_waiters();
        }
    }
}

/// A connection that can be asked to finish what is in flight and close: hyper's, and the
/// tests' stand-ins.
pub(super) trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<C: GracefulConnection> Graceful for C {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        GracefulConnection::graceful_shutdown(self);
    }
}

impl<H: crate::core::http1::Handler> Graceful for crate::core::http1::ServerConnection<H> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        crate::core::http1::ServerConnection::graceful_shutdown(self);
    }
}

pin_project! {
    /// A connection under a drain's watch (see [`Watcher::watch`]).
    pub(super) struct Watched<C> {
        #[pin]
        connection: C,
        watcher: Watcher,
        // The waker handed to the drain, to hand it again only when it changes.
        registered: Option<Waker>,
        // Whether the connection was asked to shut down.
        told: bool,
    }
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.told {
            let shared = &this.watcher.shared;
            let fresh = !this
                .registered
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()));
            if fresh && !shared.draining.load(Ordering::SeqCst) {
                shared.wakers().insert(this.watcher.key, cx.waker().clone());
                *this.registered = Some(cx.waker().clone());
            }
            // Looked at after handing over the waker: a drain that started meanwhile
            // woke the waker it found, or none, but its flag is seen here.
            if shared.draining.load(Ordering::SeqCst) {
                *this.told = true;
                Graceful::graceful_shutdown(this.connection.as_mut());
            }
        }
        this.connection.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection that ends once asked to shut down, counting its polls.
    struct Fake {
        asked: bool,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Fake {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.asked {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Graceful for Fake {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.asked = true;
        }
    }

    /// `future`'s output, failing the test with `what` if it takes over 5 s.
    async fn within<F: Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), future)
            .await
            .unwrap_or_else(|_| panic!("{what}"))
    }

    fn fake() -> (Fake, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let fake = Fake {
            asked: false,
            polls: polls.clone(),
        };
        (fake, polls)
    }

    #[tokio::test]
    async fn a_drain_wakes_idle_connections_and_waits_for_them() {
        let drain = Drain::new();
        let mut ended = Vec::new();
        let mut polls = Vec::new();
        for _ in 0..3 {
            let (connection, polled) = fake();
            polls.push(polled);
            ended.push(tokio::spawn(drain.watcher().watch(connection)));
        }
        // A held watcher (a connection still handshaking) holds the drain back too.
        let handshaking = drain.watcher();
        tokio::task::yield_now().await;
        for polled in &polls {
            assert_eq!(polled.load(Ordering::SeqCst), 1, "polled once, then idle");
        }
        let shutdown = tokio::spawn(drain.shutdown());
        for task in ended {
            within("woken and ended", task).await.unwrap();
        }
        tokio::task::yield_now().await;
        assert!(!shutdown.is_finished(), "a watcher is still held");
        drop(handshaking);
        within("the drain ends once every watcher is gone", shutdown)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_connection_first_polled_during_a_drain_is_told_at_once() {
        let drain = Drain::new();
        let watcher = drain.watcher();
        let shutdown = tokio::spawn(drain.shutdown());
        tokio::task::yield_now().await;
        let (connection, _) = fake();
        within("told on its first poll", watcher.watch(connection)).await;
        within("the drain ends", shutdown).await.unwrap();
    }

    #[tokio::test]
    async fn a_drain_with_no_watcher_ends_at_once() {
        within("nothing to wait for", Drain::new().shutdown()).await;
    }
}
