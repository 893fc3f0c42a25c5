//! Dynamic batching: concurrent single requests for one model version
//! become one model call.
//!
//! Each model version that receives single requests gets a collector task.
//! The collector takes the first waiting job, then waits for a free place in
//! the model's bulkhead; everything that arrived meanwhile (up to the batch
//! size) joins that call. So an idle model answers a lone request at once,
//! and a busy one amortises instantiation and data fetches over the requests
//! that queued while it was busy, with no timer in the way. An optional
//! delay gathers more jobs even when a slot is free. A batch never mixes
//! model versions (one collector per digest); jobs for different as-of
//! dates in one batch run as separate calls. The queue is bounded: when it
//! is full the request is refused with `overloaded` (503, Retry-After).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::ScoreError;
use super::jobs::{DataPin, Executor, JobResult, Lane, PreparedJob};
use riskhost_models::{ModelEntry, Overloaded};

/// Settings of the dynamic batcher.
#[derive(Debug, Clone, Copy)]
pub struct DynamicBatching {
    /// Most jobs in one coalesced call; 1 turns dynamic batching off.
    pub max_batch: usize,
    /// Extra time to wait for more jobs when a slot is free; zero by default.
    pub max_delay: Duration,
    /// Jobs that may wait per model version before requests are refused.
    pub max_queue: usize,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        DynamicBatching {
            max_batch: 64,
            max_delay: Duration::ZERO,
            max_queue: 4096,
        }
    }
}

impl DynamicBatching {
    pub fn enabled(&self) -> bool {
        self.max_batch > 1
    }
}

struct Pending {
    pin: DataPin,
    job: PreparedJob,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
    /// Holds the job's place in the model's queue until its call starts.
    admitted: Option<Admission>,
    /// The submitting request's span, so the call's spans nest under it.
    span: tracing::Span,
}

/// A place in a model's queue (see `Bulkhead::try_admit`), given back when
/// dropped, whichever way the job leaves.
struct Admission(Arc<ModelEntry>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.bulkhead.leave_queue();
    }
}

/// A collector stops after this long without work; the next request for its
/// model version starts a new one. Old versions' collectors go away this way.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The collectors, one per model digest.
pub(crate) struct Batchers {
    settings: DynamicBatching,
    executor: Arc<Executor>,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Pending>>>>,
}

impl Batchers {
    pub(crate) fn new(settings: DynamicBatching, executor: Arc<Executor>) -> Self {
        Batchers {
            settings,
            executor,
            queues: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Queues a job for its model version and waits for its result.
    pub(crate) async fn submit(
        &self,
        entry: &Arc<ModelEntry>,
        pin: DataPin,
        job: PreparedJob,
    ) -> JobResult {
        entry
            .bulkhead
            .try_admit()
            .map_err(|source| super::overloaded(entry, source))?;
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending {
            pin,
            job,
            enqueued: Instant::now(),
            reply,
            admitted: Some(Admission(entry.clone())),
            span: tracing::Span::current(),
        };
        // A collector may have just stopped for idleness: start another once.
        for _ in 0..2 {
            let queue = self.queue_for(entry)?;
            match queue.try_send(pending) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(ScoreError::Internal("the batch was dropped".into()))
                    });
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("riskhost_model_rejected_total", "model" => entry.model.name().to_owned()).increment(1);
                    return Err(ScoreError::Overloaded {
                        model: entry.model.name().to_owned(),
                        source: Overloaded {
                            queued: self.settings.max_queue,
                        },
                    });
                }
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    pending = returned;
                    self.forget(&entry.model.digest);
                }
            }
        }
        Err(ScoreError::Internal(
            "the model's batcher could not be started".into(),
        ))
    }

    fn queue_for(&self, entry: &Arc<ModelEntry>) -> Result<mpsc::Sender<Pending>, ScoreError> {
        let mut queues = self
            .queues
            .lock()
            .map_err(|_| ScoreError::Internal("batcher registry poisoned".into()))?;
        if let Some(queue) = queues.get(&entry.model.digest)
            && !queue.is_closed()
        {
            return Ok(queue.clone());
        }
        let (sender, receiver) = mpsc::channel(self.settings.max_queue.max(1));
        queues.insert(entry.model.digest.clone(), sender.clone());
        tokio::spawn(collect(
            entry.clone(),
            self.executor.clone(),
            receiver,
            self.settings,
            self.queues.clone(),
        ));
        Ok(sender)
    }

    fn forget(&self, digest: &str) {
        if let Ok(mut queues) = self.queues.lock()
            && queues.get(digest).is_some_and(|q| q.is_closed())
        {
            queues.remove(digest);
        }
    }
}

async fn collect(
    entry: Arc<ModelEntry>,
    executor: Arc<Executor>,
    mut queue: mpsc::Receiver<Pending>,
    settings: DynamicBatching,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Pending>>>>,
) {
    loop {
        let first = match tokio::time::timeout(IDLE_TIMEOUT, queue.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(_idle) => {
                queue.close();
                // Serve what raced in between the timeout and the close.
                let mut late = Vec::new();
                while let Ok(p) = queue.try_recv() {
                    late.push(p);
                }
                if let Ok(mut q) = queues.lock()
                    && q.get(&entry.model.digest).is_some_and(|s| s.is_closed())
                {
                    q.remove(&entry.model.digest);
                }
                if !late.is_empty() {
                    if let Ok(slot) = entry.bulkhead.wait_for_slot().await {
                        run_batch(executor.clone(), entry.clone(), late, slot).await;
                    } else {
                        refuse(&entry, late);
                    }
                }
                return;
            }
        };
        if !settings.max_delay.is_zero() {
            tokio::time::sleep(settings.max_delay).await;
        }
        let slot = match entry.bulkhead.wait_for_slot().await {
            Ok(slot) => slot,
            Err(_) => {
                refuse(&entry, vec![first]);
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < settings.max_batch {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        tokio::spawn(run_batch(executor.clone(), entry.clone(), batch, slot));
    }
}

fn refuse(entry: &ModelEntry, batch: Vec<Pending>) {
    for p in batch {
        let _ = p.reply.send(Err(ScoreError::Overloaded {
            model: entry.model.name().to_owned(),
            source: Overloaded { queued: 0 },
        }));
    }
}

/// Runs a coalesced batch. A batch of one runs inside its request's span;
/// a larger one in a span of its own that follows from each request's.
async fn run_batch(
    executor: Arc<Executor>,
    entry: Arc<ModelEntry>,
    batch: Vec<Pending>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let span = match batch.as_slice() {
        [only] => {
            tracing::debug_span!(parent: &only.span, "dynamic_batch", model = entry.model.name(), requests = 1)
        }
        many => {
            let span = tracing::debug_span!(parent: None, "dynamic_batch", model = entry.model.name(), requests = many.len());
            for p in many {
                span.follows_from(&p.span);
            }
            span
        }
    };
    run_groups(executor, entry, batch, slot)
        .instrument(span)
        .await
}

async fn run_groups(
    executor: Arc<Executor>,
    entry: Arc<ModelEntry>,
    mut batch: Vec<Pending>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let model = entry.model.name().to_owned();
    let queue_delay =
        metrics::histogram!("riskhost_batch_queue_delay_seconds", "model" => model.clone());
    for p in &mut batch {
        // Running now: no longer waiting in the model's queue.
        p.admitted = None;
        queue_delay.record(p.enqueued.elapsed().as_secs_f64());
    }
    metrics::histogram!("riskhost_dynamic_batch_size", "model" => model).record(batch.len() as f64);
    // Almost every batch shares one pin; a stable sort of these large
    // records allocates scratch space each time (2 % of a miss's samples,
    // mostly the kernel zeroing fresh pages), so sort only when pins differ.
    if batch.iter().any(|p| p.pin != batch[0].pin) {
        batch.sort_by(|a, b| {
            (a.pin.as_of, &a.pin.snapshot.version).cmp(&(b.pin.as_of, &b.pin.snapshot.version))
        });
    }
    // One call per pin (as-of date and snapshot: jobs keyed on different
    // data never share a window); they share the slot one after the other.
    let slot = Arc::new(slot);
    while !batch.is_empty() {
        let pin = batch[0].pin.clone();
        let split = batch
            .iter()
            .position(|p| p.pin != pin)
            .unwrap_or(batch.len());
        let group: Vec<Pending> = batch.drain(..split).collect();
        let jobs: Vec<&PreparedJob> = group.iter().map(|p| &p.job).collect();
        let (window, errors) = executor.prefetch(&pin, &jobs).await;
        let mut runnable = Vec::new();
        let mut waiting = Vec::new();
        for (p, error) in group.into_iter().zip(errors) {
            match error {
                Some(e) => {
                    let _ = p.reply.send(Err(e));
                }
                None => {
                    runnable.push(p.job.clone());
                    waiting.push(p.reply);
                }
            }
        }
        let Some(window) = window else { continue };
        if runnable.is_empty() {
            continue;
        }
        let results = executor
            .run(entry.clone(), window, runnable, slot.clone(), Lane::Live)
            .await;
        for (reply, result) in waiting.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}
