//! `--runs nats`: runs worked by every replica of a fleet through NATS
//! JetStream.
//!
//! - **State** is in PostgreSQL (`state.rs`): each run's spec, status and
//!   counters, each chunk's portfolios and state. It outlives any replica
//!   and NATS itself.
//! - **The queue** is a JetStream work-queue stream, file-backed, holding
//!   one message per chunk (`{prefix}.runs.chunks.<run>`, payload
//!   `{"run", "chunk"}`, message id `<run>.<chunk>` so a chunk published
//!   twice within the duplicate window is stored once). Every replica's
//!   workers pull from one durable consumer with explicit acks, an ack
//!   wait, and in-progress acks while a chunk is scored.
//! - **Results** go to ClickHouse (`results.rs`), keyed so a redelivered
//!   chunk never duplicates one.
//!
//! A chunk is acked only after its results are written and counted, so a
//! worker killed at any point leaves the chunk to be delivered again after
//! the ack wait. The consumer redelivers without limit; riskhost counts the
//! times a worker began a chunk (in PostgreSQL) and quarantines it once it
//! was begun `--run-max-deliveries` times without results, whether it
//! failed or its workers died, so no run hangs on it. A chunk that cannot
//! be worked because PostgreSQL or ClickHouse is away is negatively acked
//! with a backoff, and that delivery does not count.
//!
//! Submission needs NATS (503 `runs_unavailable` otherwise). A run is
//! planned into PostgreSQL first, then published; chunks not yet published
//! when NATS went away are published by the upkeep task of whichever
//! replica sees NATS again.

mod results;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use self::results::ResultStore;
use self::state::{ChunkWork, RunStore};
use super::chunk::{chunk_failure, parse_portfolios, plan_chunks, quarantined_cells, score_chunk};
use super::plan::pin;
use super::{CellCounts, ResultLines, RunError, RunStatus, RunView, Runs, Submission};
use riskhost_db::{PgPool, Warehouse};
use riskhost_scoring::ScoringService;

/// Settings of the NATS backend.
#[derive(Debug, Clone)]
pub struct NatsRunsSettings {
    /// `nats://host:4222`.
    pub url: String,
    /// Names the stream (`<PREFIX>_RUNS`), its subjects (`<prefix>.runs.…`)
    /// and the consumer (`<prefix>-run-workers`), so deployments (and
    /// tests) can share one NATS server; `[A-Za-z0-9_-]`.
    pub prefix: String,
    pub workers: usize,
    pub chunk_size: usize,
    pub max_portfolios: u64,
    pub max_deliveries: u32,
    /// Wait before a failed chunk's next delivery, times its deliveries.
    pub backoff: Duration,
    /// How long a delivered chunk may go without an ack or an in-progress
    /// ack before JetStream delivers it again (a dead worker's chunk waits
    /// this long).
    pub ack_wait: Duration,
}

/// The message of one chunk.
#[derive(Debug, Serialize, Deserialize)]
struct ChunkRef {
    run: String,
    chunk: u64,
}

/// What becomes of a delivered message.
enum Reply {
    Ack,
    /// Deliver again after the wait.
    Nak(Duration),
}

/// The longest wait before a chunk blocked by PostgreSQL or ClickHouse is
/// tried again.
const MAX_INFRA_BACKOFF: Duration = Duration::from_secs(30);

struct Names {
    stream: String,
    subjects: String,
    consumer: String,
}

impl Names {
    fn new(prefix: &str) -> Result<Names, RunError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(RunError::Invalid(format!(
                "invalid NATS prefix {prefix:?}: use 1-32 characters of [A-Za-z0-9_-]"
            )));
        }
        Ok(Names {
            stream: format!("{}_RUNS", prefix.to_ascii_uppercase()),
            subjects: format!("{prefix}.runs.chunks"),
            consumer: format!("{prefix}-run-workers"),
        })
    }

    fn subject(&self, run: &str) -> String {
        format!("{}.{run}", self.subjects)
    }
}

struct Shared {
    settings: NatsRunsSettings,
    scoring: Arc<ScoringService>,
    max_models: usize,
    store: RunStore,
    results: ResultStore,
    /// Set once `run_results` is known to exist.
    results_table: AtomicBool,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    names: Names,
    consumer: tokio::sync::Mutex<Option<jetstream::consumer::Consumer<pull::Config>>>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Whether the consumer had nothing pending at the last report.
    queue_idle: AtomicBool,
}

/// The NATS backend; its workers and upkeep end when it is dropped.
pub struct NatsRuns {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NatsRuns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl NatsRuns {
    /// Connects to NATS (in the background: the server starts while NATS
    /// is down), and starts the workers and the upkeep. `pool` has had its
    /// migrations applied.
    pub async fn open(
        settings: NatsRunsSettings,
        scoring: Arc<ScoringService>,
        max_models: usize,
        pool: PgPool,
        warehouse: Warehouse,
    ) -> Result<NatsRuns, RunError> {
        let names = Names::new(&settings.prefix)?;
        let client = async_nats::ConnectOptions::new()
            .name("riskhost")
            .retry_on_initial_connect()
            .connect(settings.url.as_str())
            .await
            .map_err(|e| RunError::Invalid(format!("cannot use NATS at {}: {e}", settings.url)))?;
        let jetstream = jetstream::new(client.clone());
        let shared = Arc::new(Shared {
            scoring,
            max_models,
            store: RunStore::new(pool),
            results: ResultStore::new(warehouse),
            results_table: AtomicBool::new(false),
            client,
            jetstream,
            names,
            consumer: tokio::sync::Mutex::new(None),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            queue_idle: AtomicBool::new(false),
            settings,
        });
        let mut tasks = Vec::new();
        for _ in 0..shared.settings.workers.max(1) {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move { shared.pull().await }));
        }
        let upkeep = shared.clone();
        tasks.push(tokio::spawn(async move { upkeep.upkeep().await }));
        tracing::info!(url = %shared.settings.url, stream = %shared.names.stream, consumer = %shared.names.consumer, workers = shared.settings.workers, "runs on NATS JetStream");
        Ok(NatsRuns { shared, tasks })
    }
}

impl Shared {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn unavailable(&self, what: &str, error: impl std::fmt::Display) -> RunError {
        RunError::Unavailable(format!("NATS at {} {what}: {error}", self.settings.url))
    }

    /// The work-queue stream, created if missing.
    async fn stream(&self) -> Result<stream::Stream, RunError> {
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: self.names.stream.clone(),
                subjects: vec![format!("{}.>", self.names.subjects)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| self.unavailable("refused the run stream", e))
    }

    /// The workers' durable consumer, created if missing.
    async fn consumer(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, RunError> {
        let mut cached = self.consumer.lock().await;
        if let Some(consumer) = cached.as_ref() {
            return Ok(consumer.clone());
        }
        let consumer = self
            .stream()
            .await?
            .get_or_create_consumer(
                &self.names.consumer,
                pull::Config {
                    durable_name: Some(self.names.consumer.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    // riskhost counts deliveries and quarantines (see the
                    // module doc): JetStream never gives up on a chunk.
                    max_deliver: -1,
                    filter_subject: format!("{}.>", self.names.subjects),
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.unavailable("refused the run consumer", e))?;
        *cached = Some(consumer.clone());
        Ok(consumer)
    }

    async fn ensure_results_table(&self) -> Result<(), RunError> {
        if !self.results_table.load(Ordering::Acquire) {
            self.results.create_table().await?;
            self.results_table.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Publishes chunks `from..to` of run `id`, recording progress in
    /// PostgreSQL every few hundred acknowledged publishes.
    async fn publish(&self, id: &str, from: u64, to: u64) -> Result<(), RunError> {
        const WINDOW: u64 = 256;
        let mut start = from;
        while start < to {
            let end = (start + WINDOW).min(to);
            self.publish_chunks(id, start..end).await?;
            self.store.mark_published(id, end).await?;
            start = end;
        }
        Ok(())
    }

    /// Publishes `chunks` of run `id` and waits until the stream holds them.
    async fn publish_chunks(
        &self,
        id: &str,
        chunks: impl IntoIterator<Item = u64>,
    ) -> Result<(), RunError> {
        let subject = self.names.subject(id);
        {
            let mut acks = Vec::new();
            for chunk in chunks {
                let payload = serde_json::to_vec(&ChunkRef {
                    run: id.to_owned(),
                    chunk,
                })
                .map_err(|e| RunError::store("encode", e))?;
                let ack = self
                    .jetstream
                    .send_publish(
                        subject.clone(),
                        jetstream::message::PublishMessage::build()
                            .payload(payload.into())
                            .message_id(format!("{id}.{chunk}")),
                    )
                    .await
                    .map_err(|e| self.unavailable("did not take a chunk", e))?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await
                    .map_err(|e| self.unavailable("did not store a chunk", e))?;
            }
        }
        Ok(())
    }

    /// Pulls chunks one at a time until shutdown; waits and tries again
    /// while NATS is away.
    async fn pull(self: Arc<Self>) {
        let mut warned = false;
        while !self.draining.load(Ordering::Acquire) {
            let batch = match self.consumer().await {
                Ok(consumer) => consumer
                    .batch()
                    .max_messages(1)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                    .map_err(|e| self.unavailable("refused a pull", e)),
                Err(e) => Err(e),
            };
            let mut messages = match batch {
                Ok(messages) => {
                    warned = false;
                    messages
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(%error, "run workers cannot pull chunks; retrying every second");
                        warned = true;
                    }
                    // The stream may have been deleted: look it up again.
                    *self.consumer.lock().await = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(message) = messages.next().await {
                match message {
                    Ok(message) => self.handle(message).await,
                    Err(error) => {
                        tracing::debug!(%error, "a pull ended");
                        // The consumer may be gone with NATS's data.
                        *self.consumer.lock().await = None;
                        break;
                    }
                }
            }
        }
    }

    /// Works one delivered chunk and acks or naks it.
    async fn handle(&self, message: jetstream::Message) {
        let Ok(reference) = serde_json::from_slice::<ChunkRef>(&message.payload) else {
            tracing::error!(subject = %message.subject, "a run chunk message is unreadable; it is dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        if self.draining.load(Ordering::Acquire) {
            // Another replica takes it now.
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return;
        }
        let deliveries = message
            .info()
            .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("riskhost_run_chunks_in_flight").increment(1.0);
        let reply = match self.work(&message, &reference, deliveries).await {
            Ok(reply) => reply,
            Err(error) => {
                let wait = (self.settings.backoff * deliveries).min(MAX_INFRA_BACKOFF);
                tracing::warn!(run = %reference.run, chunk = reference.chunk, %error, ?wait, "a run chunk cannot be worked now; it will be delivered again");
                Reply::Nak(wait)
            }
        };
        let sent = match reply {
            Reply::Ack => message.ack().await,
            Reply::Nak(wait) => message.ack_with(AckKind::Nak(Some(wait))).await,
        };
        if let Err(error) = sent {
            // The chunk is delivered again after the ack wait; its results
            // are keyed, so that only costs time.
            tracing::warn!(run = %reference.run, chunk = reference.chunk, %error, "cannot acknowledge a run chunk");
        }
        metrics::gauge!("riskhost_run_chunks_in_flight").decrement(1.0);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Scores a chunk, writes and counts its results; an `Err` is
    /// PostgreSQL, ClickHouse or NATS away, never the chunk's fault.
    async fn work(
        &self,
        message: &jetstream::Message,
        reference: &ChunkRef,
        deliveries: u32,
    ) -> Result<Reply, RunError> {
        let (run, chunk) = (reference.run.as_str(), reference.chunk);
        let Some(work) = self.store.chunk_work(run, chunk).await? else {
            tracing::warn!(run, chunk, "a chunk of an unknown run; it is dropped");
            return Ok(Reply::Ack);
        };
        if work.status.is_final() || !work.pending {
            return Ok(Reply::Ack);
        }
        let max = self.settings.max_deliveries;
        if work.starts >= max {
            // Begun `max` times and never finished: its workers died.
            let reason = work.last_error.clone().unwrap_or_else(|| {
                format!(
                    "its worker stopped before finishing it {} times (killed, or silent past the ack wait of {:?})",
                    work.starts, self.settings.ack_wait
                )
            });
            self.quarantine(reference, &work, reason, work.starts)
                .await?;
            return Ok(Reply::Ack);
        }
        self.ensure_results_table().await?;
        let Some(starts) = self.store.begin_chunk(run, chunk).await? else {
            return Ok(Reply::Ack);
        };
        let scored = match parse_portfolios(&work.input, &format!("chunk {chunk}")) {
            Ok(portfolios) => {
                let scoring =
                    score_chunk(&self.scoring, run, &work.spec, portfolios, work.first_index);
                self.with_progress_acks(message, scoring).await
            }
            Err(reason) => Err(reason),
        };
        match scored {
            Ok(scored) => {
                let stored = async {
                    self.results
                        .write(run, work.submitted_at, &scored.cells)
                        .await?;
                    self.store.complete_chunk(run, chunk, &scored.counts).await
                };
                match stored.await {
                    Ok(counted) => {
                        if counted {
                            count_cells(&scored.counts);
                        }
                        Ok(Reply::Ack)
                    }
                    Err(error) => {
                        self.store.unbegin_chunk(run, chunk).await;
                        Err(error)
                    }
                }
            }
            Err(reason) if starts < max => {
                tracing::warn!(run, chunk, starts, deliveries, %reason, "a run chunk failed; it will be delivered again");
                self.store.record_attempt(run, chunk, &reason).await?;
                Ok(Reply::Nak(self.settings.backoff * starts))
            }
            Err(reason) => {
                self.quarantine(reference, &work, reason, starts).await?;
                Ok(Reply::Ack)
            }
        }
    }

    /// Awaits `work`, telling JetStream every third of the ack wait that
    /// the chunk is still being scored.
    async fn with_progress_acks<T>(
        &self,
        message: &jetstream::Message,
        work: impl Future<Output = T>,
    ) -> T {
        let mut ticker = tokio::time::interval(self.settings.ack_wait / 3);
        ticker.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticker.tick() => {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(%error, "an in-progress ack failed");
                    }
                }
            }
        }
    }

    /// After its last delivery: `chunk_failed` cells for the chunk's
    /// portfolios × models, and the failure in the run's status.
    async fn quarantine(
        &self,
        reference: &ChunkRef,
        work: &ChunkWork,
        reason: String,
        deliveries: u32,
    ) -> Result<(), RunError> {
        tracing::error!(run = %reference.run, chunk = reference.chunk, deliveries, %reason, "a run chunk is quarantined");
        self.ensure_results_table().await?;
        let portfolios = parse_portfolios(&work.input, "chunk").unwrap_or_default();
        let failure = chunk_failure(
            reference.chunk,
            work.first_index,
            &portfolios,
            reason,
            deliveries,
        );
        let cells = quarantined_cells(&work.spec, &portfolios, work.first_index, &failure);
        self.results
            .write(&reference.run, work.submitted_at, &cells)
            .await?;
        let failed_cells = cells.len() as u64;
        if self
            .store
            .quarantine_chunk(&reference.run, &failure, failed_cells)
            .await?
        {
            metrics::counter!("riskhost_run_chunks_quarantined_total").increment(1);
            count_cells(&CellCounts {
                ok: 0,
                failed: failed_cells,
            });
        }
        Ok(())
    }

    /// Every 2 s: publishes what NATS did not take; every 10 s: the gauges
    /// of runs by status and of the queue's lag, and deletes runs whose
    /// planner died.
    async fn upkeep(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            ticker.tick().await;
            if self.connected() {
                self.publish_unpublished().await;
            }
            if round % 5 == 0 {
                self.report().await;
            }
        }
    }

    async fn publish_unpublished(&self) {
        let runs = match self.store.unpublished().await {
            Ok(runs) => runs,
            Err(error) => {
                tracing::debug!(%error, "cannot look for unpublished chunks");
                return;
            }
        };
        for run in runs {
            match self.publish(&run.id, run.from, run.to).await {
                Ok(()) => {
                    tracing::info!(run = %run.id, chunks = run.to - run.from, "published the chunks NATS had not taken")
                }
                Err(error) => {
                    tracing::debug!(run = %run.id, %error, "cannot publish chunks yet");
                    return;
                }
            }
        }
    }

    async fn republish_lost(&self) {
        let lost = match self.store.published_pending().await {
            Ok(lost) => lost,
            Err(error) => {
                tracing::debug!(%error, "cannot look for lost chunks");
                return;
            }
        };
        for (id, chunks) in lost {
            let n = chunks.len();
            match self.publish_chunks(&id, chunks).await {
                Ok(()) => {
                    tracing::warn!(run = %id, chunks = n, "NATS had lost chunks of an unfinished run; published them again")
                }
                Err(error) => {
                    tracing::debug!(run = %id, %error, "cannot publish lost chunks yet");
                    return;
                }
            }
        }
    }

    async fn report(&self) {
        if let Ok(counts) = self.store.status_counts().await {
            for status in RunStatus::ALL {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("riskhost_runs", "status" => status.as_str()).set(n as f64);
            }
        }
        let info = match self.consumer().await {
            Ok(mut consumer) if self.connected() => consumer.info().await.cloned().ok(),
            _ => None,
        };
        if info.is_none() {
            // NATS may be back without the stream: make it again next time.
            *self.consumer.lock().await = None;
            self.queue_idle.store(false, Ordering::Release);
        }
        if let Some(info) = info {
            metrics::gauge!("riskhost_run_chunks_pending").set(info.num_pending as f64);
            let idle = info.num_pending == 0 && info.num_ack_pending == 0;
            // Idle twice in a row (10 s apart) while PostgreSQL holds
            // published chunks still pending: NATS lost them (its store
            // was wiped, or the stream deleted). Publish them again.
            let was_idle = self.queue_idle.swap(idle, Ordering::AcqRel);
            if idle && was_idle {
                self.republish_lost().await;
            }
        }
        match self.store.delete_abandoned(Duration::from_secs(3600)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => tracing::warn!(runs = n, "deleted runs whose planning never finished"),
        }
    }
}

fn count_cells(cells: &CellCounts) {
    metrics::counter!("riskhost_run_cells_total", "outcome" => "ok").increment(cells.ok);
    metrics::counter!("riskhost_run_cells_total", "outcome" => "failed").increment(cells.failed);
}

#[async_trait::async_trait]
impl Runs for NatsRuns {
    fn backend(&self) -> &'static str {
        "nats"
    }

    async fn submit(&self, submission: Submission) -> Result<RunView, RunError> {
        let shared = &self.shared;
        if !shared.connected() {
            return Err(RunError::Unavailable(format!(
                "NATS at {} is not connected",
                shared.settings.url
            )));
        }
        shared.stream().await?;
        let spec = pin(&submission.request, &shared.scoring, shared.max_models).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let store = &shared.store;
        store.create(&id, &submission.key_id, &spec).await?;
        let planned = plan_chunks(
            submission.portfolios,
            shared.settings.chunk_size,
            shared.settings.max_portfolios,
            |chunk| {
                let id = id.clone();
                async move { store.add_chunk(&id, chunk).await }
            },
        )
        .await;
        let (portfolios, chunks) = match planned {
            Ok(planned) => planned,
            Err(error) => {
                // Nothing of a refused run stays behind.
                store.discard(&id).await;
                return Err(error);
            }
        };
        let view = store.accept(&id, portfolios, chunks).await?;
        metrics::counter!("riskhost_run_portfolios_total").increment(portfolios);
        if let Err(error) = shared.publish(&id, 0, chunks).await {
            // Planned and accepted: the upkeep publishes the rest.
            tracing::warn!(run = %id, %error, "the run is planned but NATS did not take all its chunks yet");
        }
        tracing::info!(run = %id, portfolios, chunks, "run submitted");
        Ok(view)
    }

    async fn status(&self, key_id: &str, id: &str) -> Result<RunView, RunError> {
        self.shared.store.view(key_id, id).await
    }

    async fn list(&self, key_id: &str) -> Result<Vec<RunView>, RunError> {
        self.shared.store.list(key_id, 1000).await
    }

    async fn cancel(&self, key_id: &str, id: &str) -> Result<RunView, RunError> {
        let shared = &self.shared;
        if shared.store.cancel(key_id, id).await? {
            // Workers skip a cancelled run's chunks anyway; purging them
            // empties the queue of them now.
            let purged = match shared.stream().await {
                Ok(stream) => stream
                    .purge()
                    .filter(shared.names.subject(id))
                    .await
                    .map(|response| response.purged)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match purged {
                Ok(purged) => tracing::info!(run = %id, purged, "run cancelled"),
                Err(error) => {
                    tracing::warn!(run = %id, %error, "run cancelled; its queued chunks are skipped as they are delivered")
                }
            }
        }
        shared.store.view(key_id, id).await
    }

    async fn results(&self, key_id: &str, id: &str) -> Result<ResultLines, RunError> {
        let view = self.shared.store.view(key_id, id).await?;
        self.shared.ensure_results_table().await?;
        self.shared.results.lines(id, view.submitted_at).await
    }

    fn stop_pulling(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    async fn drained(&self, deadline: tokio::time::Instant) -> usize {
        let in_flight = super::wait_drained(&self.shared.in_flight, deadline).await;
        // Acks are buffered: send them before the process exits.
        let _ = tokio::time::timeout_at(deadline, self.shared.client.flush()).await;
        in_flight
    }
}
