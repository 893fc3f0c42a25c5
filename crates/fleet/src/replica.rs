//! [`SharedRegistry`]: one replica of a fleet that shares a model registry
//! in PostgreSQL (`--model-store postgres`).
//!
//! - Admin changes ([`ModelCatalog`]) are validated here first (an upload
//!   is compiled, warmed up and stored locally on standby), then written
//!   to the registry in one transaction, then applied here by a reconcile;
//!   the answer comes once this replica serves the change.
//! - Reconciling makes the local state follow the registry: every version
//!   the registry holds is mirrored into the local store by digest (sha256
//!   checked), each pointer whose revision moved is applied through
//!   [`ModelManager::apply`] (signature, compile or artifact, warm-up, swap:
//!   the local path), and what the registry no longer holds is removed.
//!   Reconciles run one at a time, triggered by `NOTIFY`, by a periodic
//!   poll (the safety net for lost notifications) and by this replica's
//!   own changes. They never hold up a request: requests read the
//!   registry's `ArcSwap`, which a reconcile only swaps.
//! - The local store is the replica's memory of the registry: a replica
//!   that starts while PostgreSQL is down serves what it last applied, and
//!   reports itself stale.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use riskhost_db::{DbError, Notice, PgPool};
use riskhost_models::{
    ChallengerHook, ChallengerSetting, ChangeBy, DeployError, Deployed, FleetView, ModelCatalog,
    ModelManager, ReplicaView, ServedVersion, VersionId, VersionRecord, VersionView, VersionsView,
};

use riskhost_models::signing::SignatureError;

use crate::registry::{
    Actor, Changed, NewVersion, PgRegistry, Refusal, RegistryState, RegistryVersion,
};

/// How a replica follows the registry.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// This replica's name in the registry (`--replica-id`).
    pub replica_id: String,
    /// The safety-net poll of the registry (`--registry-poll-ms`).
    pub poll: Duration,
    /// Whether to LISTEN for changes too (`--registry-listen`).
    pub listen: bool,
    /// How often the replica records it is alive (`--fleet-heartbeat-ms`);
    /// a replica is stale after three missed heartbeats.
    pub heartbeat: Duration,
}

impl FleetSettings {
    fn stale_after(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// Every `reason` of `riskhost_fleet_reconcile_failures_total`.
const FAILURE_REASONS: [&str; 6] = [
    "invalid_model",
    "signature",
    "digest_mismatch",
    "registry_unavailable",
    "store",
    "other",
];

/// Why a reconcile could not apply something, as the failure metric's
/// `reason` label names it.
fn reason_of(error: &DeployError) -> &'static str {
    match error {
        DeployError::Invalid(_) | DeployError::NameMismatch { .. } => "invalid_model",
        DeployError::Signature(_) => "signature",
        DeployError::DigestMismatch { .. } => "digest_mismatch",
        DeployError::RegistryUnavailable(_) => "registry_unavailable",
        DeployError::Store(_) => "store",
        _ => "other",
    }
}

fn unavailable(error: DbError) -> DeployError {
    DeployError::RegistryUnavailable(error.to_string())
}

fn failed(reason: &'static str) {
    metrics::counter!("riskhost_fleet_reconcile_failures_total", "reason" => reason).increment(1);
}

/// One replica of the shared registry.
pub struct SharedRegistry {
    manager: Arc<ModelManager>,
    registry: PgRegistry,
    settings: FleetSettings,
    started_at: DateTime<Utc>,
    /// One reconcile at a time; admin changes wait for theirs.
    reconciling: tokio::sync::Mutex<()>,
    /// When the registry was last read successfully.
    last_sync: Mutex<Option<Instant>>,
    /// When the last heartbeat was recorded.
    last_heartbeat: Mutex<Option<DateTime<Utc>>>,
    /// Why the last reconcile could not apply a model, per model.
    failures: Mutex<BTreeMap<String, String>>,
    /// Whether this process has applied the migrations (at the first
    /// reconcile that reaches PostgreSQL, so start-up never waits for it).
    migrated: std::sync::atomic::AtomicBool,
    /// Applies the fleet's challengers here ([`Self::on_challengers`]).
    challengers: std::sync::OnceLock<ChallengerHook>,
}

impl SharedRegistry {
    /// A replica of the registry in `pool`'s schema (migrated by the
    /// caller). Nothing runs until [`Self::start`].
    pub fn new(
        manager: Arc<ModelManager>,
        pool: PgPool,
        settings: FleetSettings,
    ) -> Result<Arc<SharedRegistry>, DbError> {
        // At 0 from start-up, so the first failure is an increase.
        for reason in FAILURE_REASONS {
            metrics::counter!("riskhost_fleet_reconcile_failures_total", "reason" => reason)
                .increment(0);
        }
        Ok(Arc::new(SharedRegistry {
            manager,
            registry: PgRegistry::new(pool)?,
            settings,
            started_at: Utc::now(),
            reconciling: tokio::sync::Mutex::new(()),
            last_sync: Mutex::new(None),
            last_heartbeat: Mutex::new(None),
            failures: Mutex::new(BTreeMap::new()),
            migrated: std::sync::atomic::AtomicBool::new(false),
            challengers: std::sync::OnceLock::new(),
        }))
    }

    /// Has every reconcile hand the fleet's challengers to `hook` (the
    /// first hook set stays).
    pub fn on_challengers(&self, hook: ChallengerHook) {
        let _ = self.challengers.set(hook);
    }

    /// Hands the registry's challengers to the hook, if one is set.
    async fn apply_challengers(&self) {
        let Some(hook) = self.challengers.get() else {
            return;
        };
        match self.registry.challengers().await {
            Ok(challengers) => hook(challengers).await,
            Err(error) => tracing::debug!(%error, "cannot read the fleet's challengers"),
        }
    }

    /// Whether this replica has not confirmed the registry's state within
    /// three poll periods (it started, or stayed, cut off from PostgreSQL).
    pub fn is_stale(&self) -> bool {
        let last = *self.last_sync.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|at| at.elapsed() > self.settings.poll * 3)
    }

    /// Whether this replica is stale, and the registry revision of what it
    /// serves per model (its digest is `riskhost_model_active_info`).
    fn set_stale_gauge(&self) {
        metrics::gauge!("riskhost_fleet_stale").set(if self.is_stale() { 1.0 } else { 0.0 });
        for (name, served) in self.served() {
            if let Some(revision) = served.revision {
                metrics::gauge!("riskhost_fleet_model_revision", "model" => name)
                    .set(revision as f64);
            }
        }
    }

    /// Publishes each component in `dir` whose model the registry has never
    /// held, so a new fleet starts with the plugins directory's models; a
    /// model the registry knows is never changed by a file (ship changes
    /// with `riskhost model publish`). Needs the registry: without it,
    /// nothing is seeded.
    pub async fn seed(&self, dir: &Path) {
        let files = match component_files(dir) {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot read the plugins directory to seed the registry");
                return;
            }
        };
        let (known, held): (BTreeSet<String>, BTreeSet<String>) = match self.read_state().await {
            Ok(state) => (
                state.pointers.into_iter().map(|p| p.name).collect(),
                state.versions.into_iter().map(|v| v.digest).collect(),
            ),
            Err(error) => {
                tracing::warn!(%error, "the model registry is unavailable; the plugins directory is not seeded");
                return;
            }
        };
        let _one_at_a_time = self.reconciling.lock().await;
        for path in files {
            let source = format!("file:{}", path.display());
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            // A file the registry already holds is the common case (every
            // pod of an image after the first): skip it without compiling.
            let Ok((bytes, digest)) = tokio::task::spawn_blocking(move || {
                let digest = riskhost_engine::ModelEngine::digest(&bytes);
                (bytes, digest)
            })
            .await
            else {
                continue;
            };
            if held.contains(&digest) {
                continue;
            }
            let signature = tokio::fs::read_to_string(path.with_extension("wasm.sig"))
                .await
                .ok();
            let staged = match self
                .manager
                .stage(bytes, source.clone(), None, signature)
                .await
            {
                Ok(staged) => staged,
                Err(error) => {
                    tracing::error!(%source, %error, "not seeding the registry with a file that does not load");
                    continue;
                }
            };
            if known.contains(&staged.record.name) {
                continue;
            }
            let by = ChangeBy {
                key_id: "plugins-dir".into(),
                origin: None,
            };
            match self.write_version(&staged, &by).await {
                Ok(changed) => tracing::info!(
                    model = %staged.record.name, digest = %staged.record.digest, revision = changed.revision,
                    %source, "seeded the model registry"
                ),
                Err(error) => tracing::warn!(%source, %error, "cannot seed the model registry"),
            }
        }
    }

    async fn write_version(
        &self,
        staged: &riskhost_models::Staged,
        by: &ChangeBy,
    ) -> Result<Changed, DeployError> {
        let record = &staged.record;
        let component = self.manager.read_stored_bytes(&record.digest).await?;
        let info = serde_json::to_string(&staged.description)
            .map_err(|e| DeployError::Internal(e.to_string()))?;
        self.registry
            .publish(
                NewVersion {
                    digest: &record.digest,
                    name: &record.name,
                    version: &record.version,
                    info,
                    component,
                    signature: record.signature.as_deref(),
                    source: &record.source,
                },
                Actor {
                    key_id: &by.key_id,
                    replica: &self.settings.replica_id,
                },
            )
            .await
            .map_err(unavailable)
    }

    /// Makes the local state follow the registry once; an error only when
    /// the registry cannot be read (what cannot be applied is counted,
    /// logged and retried by the next reconcile).
    pub async fn reconcile(&self) -> Result<(), DbError> {
        let _one_at_a_time = self.reconciling.lock().await;
        self.reconcile_locked().await
    }

    /// [`Self::reconcile`], for a caller that holds `reconciling`.
    async fn reconcile_locked(&self) -> Result<(), DbError> {
        let state = match self.read_state().await {
            Ok(state) => state,
            Err(error) => {
                failed("registry_unavailable");
                self.set_stale_gauge();
                return Err(error);
            }
        };
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.set_stale_gauge();
        self.follow(&state).await;
        // After the versions: a challenger is a version this replica holds.
        self.apply_challengers().await;
        Ok(())
    }

    async fn read_state(&self) -> Result<RegistryState, DbError> {
        use std::sync::atomic::Ordering;
        if !self.migrated.load(Ordering::Acquire) {
            riskhost_db::migrate(self.registry.pool()).await?;
            self.migrated.store(true, Ordering::Release);
        }
        self.registry.state().await
    }

    async fn follow(&self, state: &RegistryState) {
        let mut failures = BTreeMap::new();
        // Active versions first: they are what must be served soonest.
        let active: BTreeSet<&str> = state
            .pointers
            .iter()
            .filter_map(|p| p.digest.as_deref())
            .collect();
        let mut wanted: Vec<_> = state.versions.iter().collect();
        wanted.sort_by_key(|v| !active.contains(v.digest.as_str()));
        for version in wanted {
            if self.manager.stored(&version.digest).is_some() {
                continue;
            }
            if let Err(error) = self.mirror(version).await {
                failed(reason_of(&error));
                tracing::error!(model = %version.name, digest = %version.digest, %error, "cannot mirror a registry version");
                failures.insert(version.name.clone(), error.to_string());
            }
        }
        let revisions = self.manager.registry_revisions();
        let served: BTreeMap<String, String> = self
            .manager
            .registry()
            .active()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.model.digest.clone()))
            .collect();
        for pointer in &state.pointers {
            let behind = revisions
                .get(&pointer.name)
                .is_none_or(|r| *r < pointer.revision);
            let differs =
                served.get(&pointer.name).map(String::as_str) != pointer.digest.as_deref();
            // A pointer at a version that could not be mirrored waits for
            // the next reconcile; the model's other versions do not matter.
            let unmirrored = pointer
                .digest
                .as_deref()
                .is_some_and(|d| self.manager.stored(d).is_none());
            if !(behind || differs) || unmirrored {
                continue;
            }
            let by = format!("registry:{}@{}", pointer.name, pointer.revision);
            let applied = self
                .manager
                .apply(
                    &pointer.name,
                    pointer.digest.as_deref(),
                    pointer.revision,
                    &by,
                )
                .await;
            match applied {
                Ok(()) => {
                    if differs && pointer.changed_at > self.started_at {
                        let lag = (Utc::now() - pointer.changed_at)
                            .to_std()
                            .unwrap_or_default();
                        metrics::histogram!("riskhost_fleet_reconcile_lag_seconds")
                            .record(lag.as_secs_f64());
                    }
                    metrics::gauge!("riskhost_fleet_model_revision", "model" => pointer.name.clone())
                        .set(pointer.revision as f64);
                }
                Err(error) => {
                    failed(reason_of(&error));
                    tracing::error!(model = %pointer.name, revision = pointer.revision, %error, "cannot apply the registry's version; serving what was served");
                    failures.insert(pointer.name.clone(), error.to_string());
                }
            }
        }
        self.forget_what_the_registry_lacks(state).await;
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()) = failures;
    }

    async fn mirror(&self, version: &RegistryVersion) -> Result<(), DeployError> {
        let bytes = self
            .registry
            .component(&version.digest)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                // Purged between the state read and this fetch: the next
                // reconcile sees the purge.
                DeployError::RegistryUnavailable(format!(
                    "{} was deleted meanwhile",
                    version.digest
                ))
            })?;
        let record = VersionRecord {
            digest: version.digest.clone(),
            name: version.name.clone(),
            version: version.version.clone(),
            size_bytes: usize::try_from(version.size_bytes).unwrap_or(usize::MAX),
            source: version.source.clone(),
            stored_at: version.uploaded_at,
            signature: version.signature.clone(),
        };
        self.manager.mirror(bytes, record).await
    }

    /// A replica never serves what the registry does not hold: models it
    /// has no pointer for are unloaded and their versions deleted, and so
    /// are versions deleted from it.
    async fn forget_what_the_registry_lacks(&self, state: &RegistryState) {
        let pointed: BTreeSet<&str> = state.pointers.iter().map(|p| p.name.as_str()).collect();
        let held: BTreeSet<&str> = state.versions.iter().map(|v| v.digest.as_str()).collect();
        let unknown: Vec<String> = self
            .manager
            .registry()
            .active()
            .keys()
            .filter(|name| !pointed.contains(name.as_str()))
            .cloned()
            .collect();
        for name in unknown {
            tracing::warn!(model = %name, "the registry has no such model; unloading it");
            if let Err(error) = self.manager.remove(&name, true, "registry:unknown").await {
                tracing::error!(model = %name, %error, "cannot unload a model the registry lacks");
            }
        }
        let stray: Vec<String> = self
            .manager
            .stored_versions()
            .into_iter()
            .map(|r| r.digest)
            .filter(|d| !held.contains(d.as_str()))
            .collect();
        if !stray.is_empty()
            && let Err(error) = self.manager.forget_versions(stray).await
        {
            tracing::error!(%error, "cannot delete versions the registry no longer holds");
        }
    }

    /// Reconciles, then checks that this replica serves `name` at
    /// `revision` or later. The caller holds `reconciling`.
    async fn converge(&self, name: &str, revision: i64) -> Result<(), DeployError> {
        self.reconcile_locked().await.map_err(unavailable)?;
        let now = self.manager.registry_revisions().get(name).copied();
        if now.is_some_and(|r| r >= revision) {
            return Ok(());
        }
        let why = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(|| "it was not applied".into());
        Err(DeployError::Internal(format!(
            "the registry holds revision {revision} of `{name}`, but this replica could not serve it: {why}"
        )))
    }

    fn served(&self) -> BTreeMap<String, ServedVersion> {
        self.manager.served()
    }

    async fn heartbeat(&self) -> Result<(), DbError> {
        let models = serde_json::to_string(&self.served()).unwrap_or_else(|_| "{}".into());
        self.registry
            .heartbeat(&self.settings.replica_id, self.started_at, models)
            .await?;
        *self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Utc::now());
        Ok(())
    }

    /// Starts following the registry: the listener, the poll and the
    /// heartbeat. They stop when the returned [`FleetTasks`] is dropped.
    pub fn start(self: &Arc<Self>) -> Result<FleetTasks, DbError> {
        let mut notices = if self.settings.listen {
            Some(riskhost_db::listen(
                self.registry.pool(),
                &format!("riskhost-registry {}", self.settings.replica_id),
                vec![self.registry.channel().to_owned()],
            )?)
        } else {
            None
        };
        let follower = {
            let replica = self.clone();
            tokio::spawn(async move {
                let mut poll = tokio::time::interval(replica.settings.poll);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        notice = next_notice(&mut notices) => {
                            let Some(notice) = notice else { return };
                            if let Notice::Resync = notice {
                                tracing::info!("registry listener connected; reconciling");
                            }
                            // A burst of changes is one reconcile.
                            if let Some(notices) = &mut notices {
                                while notices.try_recv().is_ok() {}
                            }
                        }
                        _ = poll.tick() => {}
                    }
                    if let Err(error) = replica.reconcile().await {
                        tracing::warn!(%error, "cannot read the model registry; serving what was last applied");
                    }
                }
            })
        };
        let heartbeat = {
            let replica = self.clone();
            tokio::spawn(async move {
                let mut beat = tokio::time::interval(replica.settings.heartbeat);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    beat.tick().await;
                    replica.set_stale_gauge();
                    if let Err(error) = replica.heartbeat().await {
                        tracing::debug!(%error, "cannot record the heartbeat");
                    }
                }
            })
        };
        Ok(FleetTasks(vec![follower, heartbeat]))
    }

    /// With `--require-signatures`, a rollback's target must be signed by
    /// a trusted key before the registry points at it.
    fn check_target(
        &self,
    ) -> impl Fn(&RegistryVersion) -> Result<(), SignatureError> + Send + Sync + 'static {
        let policy = self.manager.signature_policy();
        move |target| {
            policy
                .check(
                    &target.digest,
                    target.signature.as_deref(),
                    &format!("registry:{}", target.name),
                )
                .map(|_| ())
        }
    }

    fn actor<'a>(&'a self, by: &'a ChangeBy) -> Actor<'a> {
        Actor {
            key_id: &by.key_id,
            replica: &self.settings.replica_id,
        }
    }
}

/// The next notification; never, without a listener (`--registry-listen
/// false`), so only the poll wakes the follower.
async fn next_notice(notices: &mut Option<tokio::sync::mpsc::Receiver<Notice>>) -> Option<Notice> {
    match notices {
        Some(notices) => notices.recv().await,
        None => std::future::pending().await,
    }
}

/// The background tasks of a replica; dropping this stops them.
pub struct FleetTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for FleetTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn component_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "wasm")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn refused(name: &str, to: Option<&str>, refusal: Refusal) -> DeployError {
    match refusal {
        Refusal::UnknownModel => DeployError::UnknownModel(name.to_owned()),
        Refusal::UnknownVersion => DeployError::UnknownVersion {
            name: name.to_owned(),
            pin: to.unwrap_or_default().to_owned(),
        },
        Refusal::NoPrevious => DeployError::NoPrevious(name.to_owned()),
        Refusal::NotLoaded => DeployError::NotLoaded(name.to_owned()),
        Refusal::Target(error) => DeployError::Signature(error),
    }
}

fn deployed(name: &str, changed: Changed) -> Result<Deployed, DeployError> {
    let (digest, version) = changed
        .active
        .ok_or_else(|| DeployError::Internal("the registry points at no version".into()))?;
    Ok(Deployed {
        name: name.to_owned(),
        version,
        digest,
        changed: changed.changed,
        previous: changed
            .previous
            .map(|(digest, version)| VersionId { version, digest }),
        revision: Some(changed.revision),
    })
}

#[async_trait]
impl ModelCatalog for SharedRegistry {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn share_challenger(
        &self,
        name: &str,
        setting: Option<ChallengerSetting>,
        by: &ChangeBy,
    ) -> Result<(), DeployError> {
        self.registry
            .set_challenger(name, setting, &by.key_id)
            .await
            .map_err(unavailable)
    }

    async fn upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        signature: Option<String>,
        by: &ChangeBy,
    ) -> Result<Deployed, DeployError> {
        // Held from staging to serving, so no reconcile in between takes
        // the staged version for a stray one the registry lacks.
        let _one_at_a_time = self.reconciling.lock().await;
        let staged = self
            .manager
            .stage(bytes, by.source(name), Some(name), signature)
            .await?;
        let changed = self.write_version(&staged, by).await?;
        self.converge(name, changed.revision).await?;
        deployed(name, changed)
    }

    async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
        by: &ChangeBy,
    ) -> Result<Deployed, DeployError> {
        let _one_at_a_time = self.reconciling.lock().await;
        let changed = self
            .registry
            .rollback(name, to, self.check_target(), self.actor(by))
            .await
            .map_err(unavailable)?
            .map_err(|refusal| refused(name, to, refusal))?;
        self.converge(name, changed.revision).await?;
        deployed(name, changed)
    }

    async fn remove(
        &self,
        name: &str,
        purge: bool,
        by: &ChangeBy,
    ) -> Result<Option<VersionId>, DeployError> {
        let _one_at_a_time = self.reconciling.lock().await;
        let changed = self
            .registry
            .remove(name, purge, self.actor(by))
            .await
            .map_err(unavailable)?
            .map_err(|refusal| refused(name, None, refusal))?;
        self.converge(name, changed.revision).await?;
        Ok(changed
            .previous
            .map(|(digest, version)| VersionId { version, digest }))
    }

    async fn versions(&self, name: &str) -> Result<VersionsView, DeployError> {
        let (pointer, versions, audit) = self.registry.model(name).await.map_err(unavailable)?;
        if versions.is_empty() {
            return Err(DeployError::UnknownModel(name.to_owned()));
        }
        let active = pointer.and_then(|p| p.digest);
        let registry = self.manager.registry();
        Ok(VersionsView {
            name: name.to_owned(),
            active: active.clone(),
            versions: versions
                .into_iter()
                .map(|v| VersionView {
                    active: active.as_deref() == Some(v.digest.as_str()),
                    loaded: registry.loaded(&v.digest).is_some(),
                    size_bytes: usize::try_from(v.size_bytes).unwrap_or(usize::MAX),
                    source: format!(
                        "{} (uploaded by {} via {})",
                        v.source, v.uploaded_by, v.uploaded_via
                    ),
                    stored_at: v.uploaded_at,
                    signed_by: v
                        .signature
                        .as_deref()
                        .and_then(|s| riskhost_models::signing::DetachedSignature::parse(s).ok())
                        .map(|s| s.key_id),
                    digest: v.digest,
                    version: v.version,
                })
                .collect(),
            history: audit
                .into_iter()
                .map(|a| riskhost_models::Activation {
                    digest: a.digest,
                    at: a.at,
                    by: format!(
                        "{} by {} via {}{}",
                        a.action,
                        a.key_id,
                        a.replica,
                        a.revision
                            .map(|r| format!(" (revision {r})"))
                            .unwrap_or_default()
                    ),
                })
                .collect(),
        })
    }

    async fn fleet(&self) -> FleetView {
        let stale_after = self.settings.stale_after().as_secs_f64();
        let registry = async {
            let state = self.registry.state().await?;
            let replicas = self.registry.replicas(stale_after, 3600.0).await?;
            Ok::<_, DbError>((state, replicas))
        };
        match registry.await {
            Ok((state, rows)) => FleetView {
                model_store: "postgres".into(),
                replica: self.settings.replica_id.clone(),
                registry_available: true,
                error: None,
                models: Some(
                    state
                        .pointers
                        .into_iter()
                        .filter_map(|p| {
                            let digest = p.digest?;
                            Some((
                                p.name,
                                ServedVersion {
                                    revision: Some(p.revision),
                                    digest,
                                },
                            ))
                        })
                        .collect(),
                ),
                replicas: rows
                    .into_iter()
                    .map(|row| ReplicaView {
                        models: serde_json::from_str(&row.models).unwrap_or_default(),
                        id: row.id,
                        last_seen: row.last_seen,
                        stale: row.stale,
                    })
                    .collect(),
            },
            Err(error) => FleetView {
                model_store: "postgres".into(),
                replica: self.settings.replica_id.clone(),
                registry_available: false,
                error: Some(error.to_string()),
                models: None,
                replicas: vec![ReplicaView {
                    id: self.settings.replica_id.clone(),
                    last_seen: self
                        .last_heartbeat
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .unwrap_or(self.started_at),
                    stale: true,
                    models: self.served(),
                }],
            },
        }
    }
}
