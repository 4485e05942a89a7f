//! A watch stream driven by a background task.
//!
//! Backends write their watch as a plain async loop that sends items into a [`Feed`];
//! the consumer reads them as a stream. The channel holds one item, so a slow consumer
//! slows the loop instead of queueing snapshots, and dropping the stream aborts the task.

use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;

use super::{DiscoveryError, Instance, Snapshots};

/// The sending side of a watch stream.
#[derive(Debug)]
pub(crate) struct Feed {
    tx: mpsc::Sender<Result<Vec<Instance>, DiscoveryError>>,
}

/// The consumer went away; the watch loop should end.
#[derive(Debug)]
pub(crate) struct Closed;

impl Feed {
    /// Sends a full snapshot.
    pub(crate) async fn snapshot(&self, instances: Vec<Instance>) -> Result<(), Closed> {
        self.tx.send(Ok(instances)).await.map_err(|_| Closed)
    }

    /// Reports an outage.
    pub(crate) async fn outage(&self, error: DiscoveryError) -> Result<(), Closed> {
        self.tx.send(Err(error)).await.map_err(|_| Closed)
    }
}

/// Aborts the watch task when the stream is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `watch` in a task and returns its items as a stream.
pub(crate) fn spawn<F, Fut>(watch: F) -> Snapshots
where
    F: FnOnce(Feed) -> Fut,
    Fut: std::future::Future<Output = Result<(), Closed>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(watch(Feed { tx }));
    let guard = AbortOnDrop(task.abort_handle());
    stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let item = rx.recv().await?;
        Some((item, (rx, guard)))
    })
    .boxed()
}
