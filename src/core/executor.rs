//! The executor hyper's HTTP/2 server connections spawn their streams through: each
//! stream runs inside its connection's task rather than in a task of its own.
//!
//! hyper hands every incoming HTTP/2 stream to an executor as a future. (Upstream
//! HTTP/2 connections do not go through hyper: `upstream::exchange` speaks `h2`
//! directly, each call in its own task.) Spawned on tokio, each stream is a task: allocated, entered in the runtime's
//! list of tasks (a lock), scheduled, and woken across tasks by its connection. Here a
//! [`ConnectionTask`] wraps the connection future and owns a set of what it spawned;
//! while it polls the connection, the set is the thread's current one, and
//! [`ConnectionExecutor`] adds to it. Called anywhere else (no connection being polled,
//! or a future of another type than the set's), the executor spawns on tokio, as
//! hyper's own executor does.
//!
//! A `ConnectionTask` polls the connection first and its streams after, each time it is
//! woken, and completes once the connection has ended *and* every stream in its set
//! has: a drain that waits for the task waits for the streams. The streams share the
//! task's cooperative budget; when it runs out, tokio's resources answer `Pending` and
//! wake the task again, so the next poll begins with the connection, never starved by
//! its streams.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;

/// Spawns into the set of the connection being polled on this thread, or on tokio.
///
/// Given to hyper's HTTP/2 server builder in place of `TokioExecutor`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionExecutor;

impl<F> hyper::rt::Executor<F> for ConnectionExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        if let Some(future) = adopt(future) {
            tokio::spawn(future);
        }
    }
}

/// The futures a connection spawned, of one type erased (hyper's stream futures cannot
/// be named outside hyper). `None` until the first is spawned.
#[derive(Default)]
pub struct Spawned(Option<Box<dyn SpawnedSet>>);

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.0.as_ref().map_or(0, |set| set.len());
        f.debug_struct("Spawned").field("len", &len).finish()
    }
}

impl Spawned {
    /// Polls the futures of the set that are ready (see [`SpawnedSet::poll_drain`]).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Drain {
        match &mut self.0 {
            Some(set) => set.poll_drain(cx),
            None => Drain {
                empty: true,
                finished: 0,
            },
        }
    }
}

/// What one poll of a set did.
struct Drain {
    /// No future is left in the set.
    empty: bool,
    /// How many of its futures ended in this poll.
    finished: usize,
}

/// A `FuturesUnordered` of one future type, behind a type that names none (hyper's
/// stream futures cannot be named outside hyper).
trait SpawnedSet: Send {
    /// Polls the ready futures until the set is empty or none is ready.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Drain;

    fn len(&self) -> usize;

    /// The set itself, for the executor to check its future type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<F> SpawnedSet for FuturesUnordered<F>
where
    F: Future + Send + 'static,
{
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Drain {
        // Each round ends one future, and nothing is added to this set while it is
        // polled (it is not the current one then): at most `len` rounds. Within a round,
        // `FuturesUnordered` polls each future at most once and answers `Pending` (the
        // task woken to come back) when futures keep waking themselves: no spinning.
        let mut finished = 0;
        loop {
            match self.poll_next_unpin(cx) {
                Poll::Ready(Some(_)) => finished += 1,
                Poll::Ready(None) => {
                    return Drain {
                        empty: true,
                        finished,
                    }
                }
                Poll::Pending => {
                    return Drain {
                        empty: false,
                        finished,
                    }
                }
            }
        }
    }

    fn len(&self) -> usize {
        FuturesUnordered::len(self)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The thread's current set, while a [`ConnectionTask`] polls its connection.
enum Scope {
    /// No connection is being polled: the executor spawns on tokio.
    Outside,
    /// A connection is being polled; its set, moved here for the poll.
    Inside(Spawned),
}

thread_local! {
    static SCOPE: RefCell<Scope> = const { RefCell::new(Scope::Outside) };
}

/// Adds `future` to the current set; gives it back when there is none, or when the set
/// holds futures of another type.
fn adopt<F>(future: F) -> Option<F>
where
    F: Future + Send + 'static,
{
    let mut future = Some(future);
    // `try_with`: a thread tearing down its locals has no set (the future is spawned).
    let _ = SCOPE.try_with(|scope| {
        // Never borrowed across a call out of this module; `try_` all the same.
        let Ok(mut scope) = scope.try_borrow_mut() else {
            return;
        };
        let Scope::Inside(Spawned(set)) = &mut *scope else {
            return;
        };
        let set = set.get_or_insert_with(|| Box::new(FuturesUnordered::<F>::new()));
        if let Some(set) = set.as_any_mut().downcast_mut::<FuturesUnordered<F>>() {
            set.extend(future.take());
        }
    });
    future
}

/// Polls `future` with `spawned` as the thread's current set, and takes it back after
/// (also when the poll unwinds), restoring the set of any enclosing poll.
fn poll_in_scope<T>(spawned: &mut Spawned, poll: impl FnOnce() -> Poll<T>) -> Poll<T> {
    /// Puts the previous scope back and the set where it belongs.
    struct Restore<'a> {
        spawned: &'a mut Spawned,
        previous: Option<Scope>,
    }

    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let previous = self.previous.take().unwrap_or(Scope::Outside);
            if let Ok(Scope::Inside(set)) = SCOPE.try_with(|scope| scope.replace(previous)) {
                *self.spawned = set;
            }
        }
    }

    let set = std::mem::take(spawned);
    let Ok(previous) = SCOPE.try_with(|scope| scope.replace(Scope::Inside(set))) else {
        // No thread locals left: poll without a set (the executor spawns).
        return poll();
    };
    let _restore = Restore {
        spawned,
        previous: Some(previous),
    };
    poll()
}

pin_project! {
    /// A connection future and the futures it spawned through [`ConnectionExecutor`],
    /// driven together in one task.
    ///
    /// Completes with the connection's output once the connection and every future in
    /// its set have ended. The connection future is dropped as soon as it ends. What
    /// must outlive the streams too (a drain's watcher) is held by the caller until
    /// this completes.
    pub struct ConnectionTask<C: Future> {
        // `None` once it has ended.
        #[pin]
        connection: Option<C>,
        spawned: Spawned,
        // The connection's output, kept while its streams finish.
        ended: Option<C::Output>,
    }
}

impl<C: Future> ConnectionTask<C> {
    /// Wraps `connection`, with an empty set.
    pub fn new(connection: C) -> Self {
        Self {
            connection: Some(connection),
            spawned: Spawned::default(),
            ended: None,
        }
    }
}

impl<C: Future> Future for ConnectionTask<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        let mut turns = 0;
        loop {
            if let Some(connection) = this.connection.as_mut().as_pin_mut() {
                if let Poll::Ready(output) = poll_in_scope(this.spawned, || connection.poll(cx)) {
                    *this.ended = Some(output);
                    this.connection.set(None);
                }
            }
            // Right after the connection: what it just spawned is polled in this same
            // turn (adding to the set does not wake the task).
            let drain = this.spawned.poll_drain(cx);
            if drain.empty {
                if let Some(output) = this.ended.take() {
                    return Poll::Ready(output);
                }
            }
            turns += 1;
            // A stream that ended has just left its last frames for the connection to
            // write: one more turn writes them now, rather than after a self-wake that
            // queues the task behind the others. One only, so a connection whose
            // streams keep ending still yields to the other tasks.
            if drain.finished == 0 || this.connection.is_none() || turns == 2 {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use hyper::rt::Executor;

    use super::*;

    /// Polls `future` once, with a waker that does nothing.
    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
    }

    /// A connection that spawns `streams` on its first poll and then ends.
    fn spawning<S>(streams: Vec<S>) -> impl Future<Output = ()>
    where
        S: Future + Send + 'static,
        S::Output: Send + 'static,
    {
        let mut streams = Some(streams);
        std::future::poll_fn(move |_| {
            for stream in streams.take().into_iter().flatten() {
                ConnectionExecutor.execute(stream);
            }
            Poll::Ready(())
        })
    }

    #[tokio::test]
    async fn streams_run_in_the_connection_task() {
        let ran_in = Arc::new(Mutex::new(Vec::new()));
        let streams = (0..3)
            .map(|_| {
                let ran_in = ran_in.clone();
                async move { ran_in.lock().unwrap().push(tokio::task::id()) }
            })
            .collect();
        let connection = tokio::spawn(ConnectionTask::new(spawning(streams)));
        let connection_id = connection.id();
        connection.await.unwrap();
        assert_eq!(*ran_in.lock().unwrap(), vec![connection_id; 3]);
    }

    #[tokio::test]
    async fn outside_a_connection_it_spawns_on_tokio() {
        let (sent, received) = tokio::sync::oneshot::channel();
        ConnectionExecutor.execute(async move { sent.send(tokio::task::try_id()).unwrap() });
        let ran_in = received.await.unwrap();
        assert!(ran_in.is_some(), "ran as a task of its own");
    }

    #[tokio::test]
    async fn a_future_of_another_type_than_the_set_is_spawned_on_tokio() {
        let (sent, received) = tokio::sync::oneshot::channel();
        let mut other = Some(async move { sent.send(tokio::task::id()).unwrap() });
        let connection = std::future::poll_fn(move |_| {
            ConnectionExecutor.execute(async {});
            ConnectionExecutor.execute(other.take().unwrap());
            Poll::Ready(())
        });
        let connection = tokio::spawn(ConnectionTask::new(connection));
        let connection_id = connection.id();
        connection.await.unwrap();
        assert_ne!(received.await.unwrap(), connection_id);
    }

    #[test]
    fn the_task_ends_once_the_connection_and_its_streams_have() {
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let stream = async move {
            let _ = finished.await;
        };
        let mut task = Box::pin(ConnectionTask::new(async {
            spawning(vec![stream]).await;
            "ended"
        }));
        assert!(poll_once(&mut task).is_pending(), "a stream is in flight");
        assert!(poll_once(&mut task).is_pending(), "a stream is in flight");
        finish.send(()).unwrap();
        assert_eq!(poll_once(&mut task), Poll::Ready("ended"));
    }

    #[test]
    fn the_connection_is_dropped_when_it_ends_before_its_streams() {
        // As hyper's client I/O future, which ends once the dispatcher is dropped.
        let (held, dropped) = tokio::sync::oneshot::channel::<()>();
        let mut stream = Some(async move {
            let _ = dropped.await;
        });
        let connection = std::future::poll_fn(move |_| {
            // Held by the connection future until that is dropped.
            let _held = &held;
            match stream.take() {
                Some(stream) => {
                    ConnectionExecutor.execute(stream);
                    Poll::Pending
                }
                None => Poll::Ready(()),
            }
        });
        let mut task = Box::pin(ConnectionTask::new(connection));
        assert!(poll_once(&mut task).is_pending());
        assert!(poll_once(&mut task).is_ready());
    }

    #[test]
    fn streams_always_ready_neither_starve_the_connection_nor_spin() {
        let stream_polls = Arc::new(AtomicUsize::new(0));
        // Streams that are always ready again, as when the task's budget has run out.
        let streams: Vec<_> = (0..100)
            .map(|_| {
                let stream_polls = stream_polls.clone();
                std::future::poll_fn(move |cx| {
                    stream_polls.fetch_add(1, Ordering::Relaxed);
                    cx.waker().wake_by_ref();
                    Poll::<()>::Pending
                })
            })
            .collect();
        let mut streams = Some(streams);
        let connection_polls = Arc::new(AtomicUsize::new(0));
        let polls = connection_polls.clone();
        let connection = std::future::poll_fn(move |_| {
            polls.fetch_add(1, Ordering::Relaxed);
            for stream in streams.take().into_iter().flatten() {
                ConnectionExecutor.execute(stream);
            }
            Poll::<()>::Pending
        });
        let mut task = Box::pin(ConnectionTask::new(connection));
        for _ in 0..10 {
            assert!(poll_once(&mut task).is_pending());
        }
        assert_eq!(connection_polls.load(Ordering::Relaxed), 10);
        // Each poll of the task gives the streams one turn at most.
        assert!(stream_polls.load(Ordering::Relaxed) <= 10 * 100);
        assert!(stream_polls.load(Ordering::Relaxed) >= 10);
    }

    #[test]
    fn a_connection_polled_inside_another_leaves_the_outer_set_in_place() {
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let mut finished = Some(finished);
        let mut inner = Box::pin(ConnectionTask::new(spawning(vec![async {}])));
        let outer = std::future::poll_fn(move |cx| {
            assert!(Pin::new(&mut inner).poll(cx).is_ready());
            // Still the outer connection's set: this stream keeps the outer task open.
            let finished = finished.take().unwrap();
            ConnectionExecutor.execute(async move {
                let _ = finished.await;
            });
            Poll::Ready(())
        });
        let mut task = Box::pin(ConnectionTask::new(outer));
        assert!(
            poll_once(&mut task).is_pending(),
            "the outer set holds the stream"
        );
        finish.send(()).unwrap();
        assert!(poll_once(&mut task).is_ready());
    }
}
