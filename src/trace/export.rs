//! Finished spans to the collector: a bounded queue, a batching task, counted drops.
//!
//! The SDK hands every finished sampled span to [`QueueProcessor::on_end`], which only
//! tries to put it in a bounded channel: when the queue is full (the collector is slow
//! or down) the span is dropped and counted, and the request path never waits. One task
//! per sidecar drains the queue in batches and exports them with a time limit; a batch
//! that fails or times out is counted as dropped too.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

/// Span export counters, registered in the sidecar's Prometheus registry.
#[derive(Debug, Clone, Default)]
pub struct TracingMetrics {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans lost: queue full, export failed or timed out.
    pub dropped: Counter,
}

impl TracingMetrics {
    /// Registers `remora_spans_exported_total` and `remora_spans_dropped_total`
    /// (the registry carries the `remora` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "spans_exported",
            "Spans accepted by the OTLP collector",
            metrics.exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans dropped because the export queue was full or an export failed",
            metrics.dropped.clone(),
        );
        metrics
    }
}

/// How the batching task behaves; the bounds come from [`TracingConfig`](super::TracingConfig).
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueLimits {
    /// Spans waiting for export at most; more are dropped.
    pub queue_size: usize,
    /// Spans per export call at most.
    pub batch_size: usize,
    /// How long a partial batch waits for more spans.
    pub delay: Duration,
    /// How long one export call may take before its spans count as dropped.
    pub export_timeout: Duration,
}

/// What the batching task is asked besides spans.
enum Control {
    /// Export everything queued, then answer.
    Flush(oneshot::Sender<()>),
}

/// The span processor of one sidecar's tracer provider.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::Sender<Control>,
    metrics: TracingMetrics,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl QueueProcessor {
    /// Starts the batching task on the current tokio runtime; it ends when the
    /// processor (and so the provider) is dropped.
    pub(super) fn spawn<E>(exporter: E, limits: QueueLimits, metrics: TracingMetrics) -> Self
    where
        E: SpanExporter + 'static,
    {
        let (spans, queue) = mpsc::channel(limits.queue_size.max(1));
        let (control, commands) = mpsc::channel(4);
        tokio::spawn(drain(exporter, queue, commands, limits, metrics.clone()));
        Self {
            spans,
            control,
            metrics,
        }
    }

    /// A handle that asks the task to flush.
    pub(super) fn flusher(&self) -> Flusher {
        Flusher(self.control.clone())
    }
}

/// Asks a [`QueueProcessor`]'s task to export what it holds.
#[derive(Debug, Clone)]
pub(super) struct Flusher(mpsc::Sender<Control>);

impl Flusher {
    /// Waits until every span queued before the call was exported (or dropped).
    pub(super) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.0.send(Control::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// NOTE: the SDK's flush is synchronous and may be called on a runtime thread, where
    /// waiting for the task would deadlock; use `Tracing::flush` to wait.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The batching task: fills a batch until it is full or `delay` passed since the last
/// export, exports it, and repeats until the processor is gone.
async fn drain<E: SpanExporter>(
    exporter: E,
    mut queue: mpsc::Receiver<SpanData>,
    mut commands: mpsc::Receiver<Control>,
    limits: QueueLimits,
    metrics: TracingMetrics,
) {
    let mut batch = Vec::with_capacity(limits.batch_size);
    loop {
        let deadline = tokio::time::sleep(limits.delay);
        tokio::pin!(deadline);
        let flush = loop {
            tokio::select! {
                span = queue.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= limits.batch_size {
                            break None;
                        }
                    }
                    None => {
                        export(&exporter, &mut batch, limits, &metrics).await;
                        return;
                    }
                },
                Some(Control::Flush(done)) = commands.recv() => break Some(done),
                () = &mut deadline, if !batch.is_empty() => break None,
            }
        };
        if let Some(done) = flush {
            while let Ok(span) = queue.try_recv() {
                batch.push(span);
                if batch.len() >= limits.batch_size {
                    export(&exporter, &mut batch, limits, &metrics).await;
                }
            }
            export(&exporter, &mut batch, limits, &metrics).await;
            let _ = done.send(());
        } else {
            export(&exporter, &mut batch, limits, &metrics).await;
        }
    }
}

/// Exports `batch` (emptying it) within the export timeout and counts the outcome.
async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    limits: QueueLimits,
    metrics: &TracingMetrics,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::replace(batch, Vec::with_capacity(limits.batch_size));
    let count = spans.len() as u64;
    match tokio::time::timeout(limits.export_timeout, exporter.export(spans)).await {
        Ok(Ok(())) => {
            metrics.exported.inc_by(count);
        }
        Ok(Err(error)) => {
            metrics.dropped.inc_by(count);
            tracing::debug!(%error, spans = count, "span export failed");
        }
        Err(_) => {
            metrics.dropped.inc_by(count);
            tracing::debug!(spans = count, "span export timed out");
        }
    }
}
