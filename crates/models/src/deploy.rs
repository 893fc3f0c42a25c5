//! Deploying model versions: the one path by which a version becomes active,
//! whether it arrives as a file in the plugins directory, as an upload
//! through the admin API, by a rollback or from the store at start-up.
//!
//! A new version is compiled, linked, its `info()` checked and a warm-up
//! call made on a blocking thread; it is stored by digest; only then is it
//! swapped in with one atomic pointer swap ([`ModelRegistry::activate`]).
//! Requests that resolved the previous version hold an `Arc` to it and finish
//! on it. A version that fails any step never replaces a working one: the
//! error is logged, counted and listed in `GET /v1/models` failures.
//!
//! Activations are serialised (one at a time) so the active versions in
//! memory and in the store's `state.json` never disagree; compilation is not,
//! so two models can compile at once. Because resolving a version and
//! compiling it happen outside the change lock, everything that makes a
//! version live or loaded re-validates under the lock ([`ModelManager`]'s
//! `revalidate`): the version must still be stored (a purge may have landed
//! meanwhile) and, for a rollback, still be the target the caller named.
//! Otherwise nothing changes and the caller gets a conflict.
//!
//! Compiled code is cached per (digest, engine compatibility key) in the
//! store: a restart or a rollback to an evicted version deserializes instead
//! of compiling.
//!
//! Signatures (`signing.rs`): with `--require-signatures`, a version's
//! signature is checked against its digest before it is compiled, and again
//! whenever a stored version is loaded or made active (restore, rollback,
//! pins), so no unsigned byte runs. The signature is stored with the version.

use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use chrono::Utc;
use serde::Serialize;

use crate::compile::Compilation;
use crate::registry::{Bulkhead, BulkheadLimits, ModelEntry, ModelRegistry, VersionLoader};
use crate::signing::{DetachedSignature, SignatureError, SignaturePolicy};
use crate::store::{Activation, ModelStore, StoreError, VersionRecord};
use riskhost_engine::{LoadError, LoadedModel, ModelEngine};

/// Settings of deployment.
#[derive(Debug, Clone)]
pub struct DeploySettings {
    pub bulkhead: BulkheadLimits,
    /// How components are compiled: under a budget in a worker process
    /// (the server), or in this process (tests).
    pub compilation: Arc<Compilation>,
    /// Whether compiled code is cached in (and loaded from) the store.
    pub artifact_cache: bool,
    /// Whether versions must be signed, and by whom.
    pub signatures: Arc<SignaturePolicy>,
    /// Called on a loading thread when it is done with a version's
    /// component and compiled code (tens of MiB for a Python model): the
    /// process's allocator returns what they freed to the OS. Allocators
    /// keep freed memory for the thread that freed it, and a loading thread
    /// goes idle before it would reuse or purge any of it.
    pub release_freed_memory: Option<fn()>,
}

/// Why a version could not be deployed, rolled back or removed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("the component's info() names model `{actual}`, not `{expected}`")]
    NameMismatch { expected: String, actual: String },
    #[error("no version of model `{0}` is stored")]
    UnknownModel(String),
    #[error("model `{name}` has no stored version {pin}")]
    UnknownVersion { name: String, pin: String },
    #[error("model `{0}` has no other stored version that was active before; name one with `to`")]
    NoPrevious(String),
    #[error("model `{0}` is not loaded")]
    NotLoaded(String),
    #[error(
        "version {digest} of model `{name}` was removed while it was being made active or loaded; nothing was changed"
    )]
    VersionRemoved { name: String, digest: String },
    #[error(
        "the rollback target of model `{name}` changed while the rollback was prepared (it was {was}, now it is {now}); nothing was changed: roll back again"
    )]
    TargetChanged {
        name: String,
        was: String,
        now: String,
    },
    #[error("the bytes fetched for {expected} have digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("the shared model registry is unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("the model store failed: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A version, as answers name it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct VersionId {
    pub version: String,
    pub digest: String,
}

/// The outcome of a deployment or rollback.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Deployed {
    pub name: String,
    pub version: String,
    pub digest: String,
    /// False when this version was already the active one.
    pub changed: bool,
    /// The version it replaced, if any.
    pub previous: Option<VersionId>,
    /// The shared registry's revision of the model's pointer after the
    /// change (`--model-store postgres` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// A compiled and validated version, not yet stored or active.
pub(crate) struct Prepared {
    model: LoadedModel,
    bytes: Vec<u8>,
    source: String,
    signature: Option<String>,
    started: Instant,
}

impl Prepared {
    pub(crate) fn name(&self) -> &str {
        self.model.name()
    }
}

/// Every stored version of a model and which is active.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct VersionsView {
    pub name: String,
    pub active: Option<String>,
    pub versions: Vec<VersionView>,
    /// Changes of the active version, oldest first.
    pub history: Vec<Activation>,
}

/// A stored version.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct VersionView {
    pub digest: String,
    pub version: String,
    pub size_bytes: usize,
    pub source: String,
    pub stored_at: chrono::DateTime<Utc>,
    /// The key id named by the stored signature, if the version has one.
    pub signed_by: Option<String>,
    pub active: bool,
    /// Whether its compiled code is in memory (active or on standby).
    pub loaded: bool,
}

/// What an activation must still hold under the change lock, beyond its
/// version being stored.
#[derive(Debug, Clone, Copy)]
enum Expect<'a> {
    /// Nothing more: the bytes name their version (deploys).
    Stored,
    /// A rollback: `to` (or, without it, the previous version) must still
    /// name this version.
    RollbackTarget(Option<&'a str>),
}

/// Deploys versions into the registry and the store.
pub struct ModelManager {
    engine: Arc<ModelEngine>,
    registry: Arc<ModelRegistry>,
    store: Arc<ModelStore>,
    settings: DeploySettings,
    engine_key: String,
    changes: tokio::sync::Mutex<()>,
}

impl ModelManager {
    pub fn new(
        engine: Arc<ModelEngine>,
        registry: Arc<ModelRegistry>,
        store: Arc<ModelStore>,
        settings: DeploySettings,
    ) -> Arc<Self> {
        let engine_key = engine.compatibility_key();
        let manager = Arc::new(ModelManager {
            engine,
            registry,
            store,
            settings,
            engine_key,
            changes: tokio::sync::Mutex::new(()),
        });
        manager
            .registry
            .set_version_loader(Arc::new(StoreLoader(Arc::downgrade(&manager))));
        manager
    }

    /// The largest component accepted (`--max-component-mib`).
    pub fn max_component_bytes(&self) -> usize {
        self.engine.limits().max_component_bytes
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub fn engine(&self) -> &Arc<ModelEngine> {
        &self.engine
    }

    pub fn store(&self) -> &Arc<ModelStore> {
        &self.store
    }

    /// The signature policy in force.
    pub(crate) fn signatures(&self) -> &SignaturePolicy {
        &self.settings.signatures
    }

    /// Checks a signature against `digest` under the policy; returns the
    /// signature to store with the version (one that names this digest),
    /// or the refusal.
    fn check_signature(
        &self,
        digest: &str,
        signature: Option<String>,
        source: &str,
    ) -> Result<Option<String>, SignatureError> {
        self.settings
            .signatures
            .check(digest, signature.as_deref(), source)?;
        Ok(signature.filter(|text| {
            DetachedSignature::parse(text).is_ok_and(|parsed| parsed.digest == digest)
        }))
    }

    /// Records a refused signature as a load failure of `source`.
    fn refuse(&self, source: &str, digest: &str, error: SignatureError) -> DeployError {
        tracing::error!(source = %source, %digest, %error, "model version refused: signature");
        self.registry.record_failure(source, error.to_string());
        DeployError::Signature(error)
    }

    /// Checks the signature of `bytes` (whose digest is `digest`), then
    /// compiles and validates them off the async runtime. A failure is
    /// recorded against `source`.
    pub(crate) async fn prepare(
        &self,
        bytes: Vec<u8>,
        digest: &str,
        source: String,
        signature: Option<String>,
    ) -> Result<Prepared, DeployError> {
        let signature = self
            .check_signature(digest, signature, &source)
            .map_err(|e| self.refuse(&source, digest, e))?;
        let started = Instant::now();
        let (engine, compilation) = (self.engine.clone(), self.settings.compilation.clone());
        let release = self.settings.release_freed_memory;
        let (bytes, loaded) = tokio::task::spawn_blocking(move || {
            let loaded = compilation.load(&engine, &bytes);
            release_freed_memory(release);
            (bytes, loaded)
        })
        .await
        .map_err(|e| DeployError::Internal(format!("loading panicked: {e}")))?;
        match loaded {
            Ok(model) => Ok(Prepared {
                model,
                bytes,
                source,
                signature,
                started,
            }),
            Err(error) => {
                tracing::error!(source = %source, %error, "model version rejected");
                self.registry.record_failure(&source, error.to_string());
                Err(DeployError::Invalid(error))
            }
        }
    }

    /// Deploys component bytes: the version becomes active once its
    /// signature is checked and it is validated and stored. `expected` is
    /// the model name the caller requires; `signature` the text of its
    /// `.sig` file, if it came with one.
    pub async fn install(
        &self,
        bytes: Vec<u8>,
        source: String,
        expected: Option<&str>,
        signature: Option<String>,
    ) -> Result<Deployed, DeployError> {
        let started = Instant::now();
        let (bytes, digest) = hash(bytes).await?;
        if let Some(record) = self.store.get(&digest) {
            // A stored version: no compilation, just make it active again.
            let record = self
                .recheck_stored(record, signature, &source, expected)
                .await?;
            return self
                .activate_stored(&record, &source, started, Expect::Stored)
                .await;
        }
        let prepared = self.prepare(bytes, &digest, source, signature).await?;
        self.check_name(expected, prepared.name(), &prepared.source)?;
        self.commit(prepared).await
    }

    /// A stored version arriving again: under the signature it came with
    /// now or the one stored with it, checked against the policy, with the
    /// name the caller requires.
    async fn recheck_stored(
        &self,
        record: VersionRecord,
        signature: Option<String>,
        source: &str,
        expected: Option<&str>,
    ) -> Result<VersionRecord, DeployError> {
        let record = match signature {
            Some(signature) => self.attach_signature(&record, signature, source).await?,
            None => record,
        };
        self.check_name(expected, &record.name, source)?;
        self.check_signature(&record.digest, record.signature.clone(), source)
            .map_err(|e| self.refuse(source, &record.digest, e))?;
        Ok(record)
    }

    /// Checks `signature` for a stored version and, when it is fit to keep,
    /// stores it with the version (the newest good signature wins, so a
    /// version re-signed after a key rotation loads under the new key).
    pub(crate) async fn attach_signature(
        &self,
        record: &VersionRecord,
        signature: String,
        source: &str,
    ) -> Result<VersionRecord, DeployError> {
        let keep = self
            .check_signature(&record.digest, Some(signature), source)
            .map_err(|e| self.refuse(source, &record.digest, e))?;
        let Some(signature) = keep else {
            return Ok(record.clone());
        };
        if record.signature.as_deref() == Some(signature.as_str()) {
            return Ok(record.clone());
        }
        let (store, digest) = (self.store.clone(), record.digest.clone());
        tokio::task::spawn_blocking(move || store.set_signature(&digest, &signature))
            .await
            .map_err(|e| DeployError::Internal(format!("storing panicked: {e}")))??;
        self.store
            .get(&record.digest)
            .ok_or_else(|| DeployError::Store(StoreError::Missing(record.digest.clone())))
    }

    fn check_name(
        &self,
        expected: Option<&str>,
        actual: &str,
        source: &str,
    ) -> Result<(), DeployError> {
        match expected {
            Some(expected) if expected != actual => {
                let error = DeployError::NameMismatch {
                    expected: expected.to_owned(),
                    actual: actual.to_owned(),
                };
                tracing::error!(source = %source, %error, "model version rejected");
                self.registry.record_failure(source, error.to_string());
                Err(error)
            }
            _ => Ok(()),
        }
    }

    /// Stores a prepared version and makes it active.
    pub(crate) async fn commit(&self, prepared: Prepared) -> Result<Deployed, DeployError> {
        let started = prepared.started;
        let (entry, _) = self.store_prepared(prepared).await?;
        let deployed = self
            .switch(entry.clone(), &entry.source, started, Expect::Stored)
            .await?;
        self.write_artifact_later(entry);
        Ok(deployed)
    }

    /// Writes a prepared version's bytes and record to the store; the
    /// loaded entry is not active or on standby yet.
    async fn store_prepared(
        &self,
        prepared: Prepared,
    ) -> Result<(Arc<ModelEntry>, VersionRecord), DeployError> {
        let Prepared {
            model,
            bytes,
            source,
            signature,
            ..
        } = prepared;
        let record = VersionRecord {
            digest: model.digest.clone(),
            name: model.name().to_owned(),
            version: model.version().to_owned(),
            size_bytes: model.size_bytes,
            source: source.clone(),
            stored_at: chrono::DateTime::<Utc>::from(SystemTime::now()),
            signature,
        };
        let store = self.store.clone();
        let record = tokio::task::spawn_blocking(move || store.put(&bytes, record))
            .await
            .map_err(|e| DeployError::Internal(format!("storing panicked: {e}")))??;
        Ok((Arc::new(self.entry(model, source)), record))
    }

    fn entry(&self, model: LoadedModel, source: String) -> ModelEntry {
        // Per-model overrides (`--model-limits`) bound this version's bulkhead.
        let bulkhead = Bulkhead::new(self.settings.bulkhead.for_model(&model.limits));
        ModelEntry {
            model,
            source,
            loaded_at: SystemTime::now(),
            bulkhead,
        }
    }

    /// Makes a stored version active, from memory when it is loaded.
    async fn activate_stored(
        &self,
        record: &VersionRecord,
        by: &str,
        started: Instant,
        expect: Expect<'_>,
    ) -> Result<Deployed, DeployError> {
        // Also for a version still in memory: a rollback to an unsigned
        // version is refused while signatures are required.
        self.check_signature(&record.digest, record.signature.clone(), by)?;
        let entry = match self.registry.loaded(&record.digest) {
            Some(entry) => entry,
            None => self.load_stored(&record.digest).await?,
        };
        self.switch(entry, by, started, expect).await
    }

    /// Whether `digest` may still become active or loaded. Called under the
    /// change lock, which every removal holds, so what it checks stays true
    /// until the caller's change is done.
    fn revalidate(&self, name: &str, digest: &str, expect: Expect<'_>) -> Result<(), DeployError> {
        if self.store.get(digest).is_none() {
            return Err(DeployError::VersionRemoved {
                name: name.to_owned(),
                digest: digest.to_owned(),
            });
        }
        if let Expect::RollbackTarget(to) = expect {
            let now = self.rollback_target(name, to)?;
            if now != digest {
                return Err(DeployError::TargetChanged {
                    name: name.to_owned(),
                    was: digest.to_owned(),
                    now,
                });
            }
        }
        Ok(())
    }

    /// Persists and performs one change of a model's active version.
    async fn switch(
        &self,
        entry: Arc<ModelEntry>,
        by: &str,
        started: Instant,
        expect: Expect<'_>,
    ) -> Result<Deployed, DeployError> {
        let name = entry.model.name().to_owned();
        let digest = entry.model.digest.clone();
        let _one_change_at_a_time = self.changes.lock().await;
        if let Err(error) = self.revalidate(&name, &digest, expect) {
            tracing::warn!(model = %name, %digest, by = %by, %error, "activation refused");
            return Err(error);
        }
        let current = self.registry.active().get(&name).cloned();
        let previous = current.as_ref().map(|c| VersionId {
            version: c.model.version().to_owned(),
            digest: c.model.digest.clone(),
        });
        let deployed = Deployed {
            name: name.clone(),
            version: entry.model.version().to_owned(),
            digest: digest.clone(),
            changed: previous.as_ref().is_none_or(|p| p.digest != digest),
            previous,
            revision: None,
        };
        if !deployed.changed {
            return Ok(deployed);
        }
        // Durable first: if the state cannot be written, nothing changes.
        let store = self.store.clone();
        let (n, d, b) = (name.clone(), digest.clone(), by.to_owned());
        tokio::task::spawn_blocking(move || store.set_active(&n, Some(&d), &b))
            .await
            .map_err(|e| DeployError::Internal(format!("persisting panicked: {e}")))??;
        // Whatever failed before at this source, or at start-up for this
        // model, is superseded by a version that works (cleared first, so
        // nobody sees the new version next to the old failure).
        self.registry.clear_failure(by);
        self.registry.clear_failure(&restore_source(&name));
        self.registry.activate(entry.clone());
        let elapsed = started.elapsed();
        record_active(&name, current.as_deref(), Some(&entry));
        if let Some(old) = &current {
            metrics::counter!("riskhost_model_swaps_total", "model" => name.clone()).increment(1);
            metrics::histogram!("riskhost_model_swap_duration_seconds")
                .record(elapsed.as_secs_f64());
            if old.model.version() == entry.model.version() {
                tracing::warn!(
                    model = %name, version = %entry.model.version(), old_digest = %old.model.digest, new_digest = %digest,
                    "the new version reports the same semver as the one it replaces; versions are told apart by digest"
                );
            }
        }
        tracing::info!(
            model = %name, version = %entry.model.version(), %digest, by = %by,
            replaced = current.as_ref().map(|c| c.model.digest.as_str()).unwrap_or("none"),
            ms = elapsed.as_millis() as u64, "model version active"
        );
        Ok(deployed)
    }

    /// Loads a stored version (from its compiled artifact when there is a
    /// usable one), validating it like a new one. It is not made active.
    pub(crate) async fn load_stored(&self, digest: &str) -> Result<Arc<ModelEntry>, DeployError> {
        let record = self
            .store
            .get(digest)
            .ok_or_else(|| StoreError::Missing(digest.to_owned()))?;
        // Before any byte of it (or its compiled artifact) is used.
        self.check_signature(digest, record.signature.clone(), &record.source)?;
        let (engine, store) = (self.engine.clone(), self.store.clone());
        let compilation = self.settings.compilation.clone();
        let (key, use_cache) = (self.engine_key.clone(), self.settings.artifact_cache);
        let digest = digest.to_owned();
        let size = record.size_bytes;
        let release = self.settings.release_freed_memory;
        let model = tokio::task::spawn_blocking(move || {
            let loaded = load_from_store(
                &engine,
                &store,
                &compilation,
                (&key, use_cache),
                &digest,
                size,
            );
            release_freed_memory(release);
            loaded
        })
        .await
        .map_err(|e| DeployError::Internal(format!("loading panicked: {e}")))??;
        Ok(Arc::new(self.entry(model, record.source)))
    }

    fn write_artifact_later(&self, entry: Arc<ModelEntry>) {
        if !self.settings.artifact_cache {
            return;
        }
        let (store, key) = (self.store.clone(), self.engine_key.clone());
        let release = self.settings.release_freed_memory;
        // Not on the swap path: the version is live already.
        tokio::task::spawn_blocking(move || {
            write_artifact(&store, &key, &entry.model);
            release_freed_memory(release);
        });
    }

    /// Makes every model's active version from the store active again.
    /// A version that no longer loads is recorded as a failure. Versions
    /// load concurrently (one per core), so one slow to compile delays no
    /// other; each is made active as soon as it is loaded.
    pub async fn restore(self: &Arc<Self>) {
        let started = Instant::now();
        let active = self.store.active_all();
        let slots = Arc::new(tokio::sync::Semaphore::new(load_parallelism()));
        let mut loads = tokio::task::JoinSet::new();
        for (name, digest) in active.clone() {
            let (manager, slots) = (self.clone(), slots.clone());
            loads.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let loaded = manager.load_stored(&digest).await;
                (name, digest, loaded)
            });
        }
        while let Some(joined) = loads.join_next().await {
            let Ok((name, digest, loaded)) = joined else {
                tracing::error!("a restore task panicked");
                continue;
            };
            let (name, digest) = (&name, &digest);
            // Admin calls are answered while this runs: one that changed the
            // model meanwhile wins over the state read before it.
            let _one_change_at_a_time = self.changes.lock().await;
            if self.store.active(name).as_deref() != Some(digest.as_str()) {
                tracing::info!(model = %name, %digest, "the model changed while it was restored; not restored");
                continue;
            }
            match loaded {
                Ok(entry) => {
                    record_active(name, None, Some(&entry));
                    self.registry.activate(entry);
                }
                Err(error) => {
                    tracing::error!(model = %name, %digest, %error, "cannot restore the active version");
                    self.registry.record_failure(
                        &restore_source(name),
                        format!("cannot restore the active version {digest}: {error}"),
                    );
                }
            }
        }
        if !active.is_empty() {
            tracing::info!(
                models = active.len(),
                ms = started.elapsed().as_millis() as u64,
                "restored the active versions from the store"
            );
        }
    }

    /// Rolls `name` back to the version `to` names (`sha256:…` or a
    /// semver), or without `to` to the previously active version.
    pub async fn rollback(&self, name: &str, to: Option<&str>) -> Result<Deployed, DeployError> {
        let started = Instant::now();
        let digest = self.rollback_target(name, to)?;
        let record = self
            .store
            .get(&digest)
            .ok_or_else(|| StoreError::Missing(digest.clone()))?;
        self.activate_stored(&record, "api:rollback", started, Expect::RollbackTarget(to))
            .await
    }

    /// The digest a rollback of `name` to `to` goes to now.
    fn rollback_target(&self, name: &str, to: Option<&str>) -> Result<String, DeployError> {
        if self.store.versions_of(name).is_empty() {
            return Err(DeployError::UnknownModel(name.to_owned()));
        }
        Ok(match to {
            Some(pin) => {
                self.store
                    .find(name, pin)
                    .ok_or_else(|| DeployError::UnknownVersion {
                        name: name.to_owned(),
                        pin: pin.to_owned(),
                    })?
                    .digest
            }
            None => self
                .store
                .previous(name)
                .ok_or_else(|| DeployError::NoPrevious(name.to_owned()))?,
        })
    }

    /// Loads a stored version for a pinned reference and keeps it on
    /// standby. The store check and the insertion happen under the change
    /// lock, which a purge holds while it deletes the versions and clears
    /// the standby set, so a purged version is never loaded again.
    async fn load_on_standby(&self, digest: &str) -> Result<Arc<ModelEntry>, DeployError> {
        let entry = self.load_stored(digest).await?;
        let _one_change_at_a_time = self.changes.lock().await;
        self.revalidate(entry.model.name(), digest, Expect::Stored)?;
        self.registry.keep_on_standby(entry.clone());
        Ok(entry)
    }

    /// Stops serving `name`. With `purge`, its stored versions and compiled
    /// artifacts are deleted too.
    pub async fn remove(
        &self,
        name: &str,
        purge: bool,
        by: &str,
    ) -> Result<Option<VersionId>, DeployError> {
        let _one_change_at_a_time = self.changes.lock().await;
        let current = self.registry.active().get(name).cloned();
        let stored = !self.store.versions_of(name).is_empty();
        // Purging a model that is stored but not loaded is still a purge.
        if current.is_none() && !(purge && stored) {
            return Err(DeployError::NotLoaded(name.to_owned()));
        }
        let store = self.store.clone();
        let (n, b) = (name.to_owned(), by.to_owned());
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            store.set_active(&n, None, &b)?;
            if purge {
                store.remove_model(&n)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| DeployError::Internal(format!("removing panicked: {e}")))??;
        self.registry.deactivate(name);
        record_active(name, current.as_deref(), None);
        tracing::info!(model = %name, purge, by = %by, "model unloaded");
        Ok(current.map(|c| VersionId {
            version: c.model.version().to_owned(),
            digest: c.model.digest.clone(),
        }))
    }

    /// Every stored version of `name`.
    pub fn versions(&self, name: &str) -> Result<VersionsView, DeployError> {
        let records = self.store.versions_of(name);
        if records.is_empty() {
            return Err(DeployError::UnknownModel(name.to_owned()));
        }
        let active = self
            .registry
            .active()
            .get(name)
            .map(|e| e.model.digest.clone());
        let versions = records
            .into_iter()
            .map(|r| VersionView {
                active: active.as_deref() == Some(r.digest.as_str()),
                loaded: self.registry.loaded(&r.digest).is_some(),
                digest: r.digest,
                version: r.version,
                size_bytes: r.size_bytes,
                source: r.source,
                stored_at: r.stored_at,
                signed_by: r
                    .signature
                    .as_deref()
                    .and_then(|s| DetachedSignature::parse(s).ok())
                    .map(|s| s.key_id),
            })
            .collect();
        Ok(VersionsView {
            name: name.to_owned(),
            active,
            versions,
            history: self.store.history(name),
        })
    }
}

/// A version validated and stored in this replica's store, loaded on
/// standby, but not active: what a replica of a shared registry
/// ([`ModelManager::stage`]) has checked before it writes the registry.
#[derive(Debug, Clone)]
pub struct Staged {
    pub record: VersionRecord,
    /// What the component's `info()` says.
    pub description: riskhost_engine::ModelDescription,
}

/// The operations a replica of a shared model registry needs: stage and
/// mirror versions into the local store, and make the local state follow
/// the registry's pointers. Every activation still goes through `switch`,
/// so the invariants of a local deploy hold on every replica.
impl ModelManager {
    /// Checks, compiles, validates and stores `bytes` like [`Self::install`],
    /// but leaves the version on standby instead of making it active.
    pub async fn stage(
        &self,
        bytes: Vec<u8>,
        source: String,
        expected: Option<&str>,
        signature: Option<String>,
    ) -> Result<Staged, DeployError> {
        let (bytes, digest) = hash(bytes).await?;
        if let Some(record) = self.store.get(&digest) {
            let record = self
                .recheck_stored(record, signature, &source, expected)
                .await?;
            let entry = match self.registry.loaded(&digest) {
                Some(entry) => entry,
                None => self.load_on_standby(&digest).await?,
            };
            return Ok(Staged {
                record,
                description: entry.model.description.clone(),
            });
        }
        let prepared = self.prepare(bytes, &digest, source, signature).await?;
        self.check_name(expected, prepared.name(), &prepared.source)?;
        let (entry, record) = self.store_prepared(prepared).await?;
        let description = entry.model.description.clone();
        {
            let _one_change_at_a_time = self.changes.lock().await;
            self.revalidate(&record.name, &record.digest, Expect::Stored)?;
            self.registry.keep_on_standby(entry.clone());
        }
        self.write_artifact_later(entry);
        Ok(Staged {
            record,
            description,
        })
    }

    /// Stores a version fetched from a shared registry, after checking that
    /// the bytes are the digest the record names. Nothing is compiled: the
    /// signature and the component are checked when it is loaded.
    pub async fn mirror(&self, bytes: Vec<u8>, record: VersionRecord) -> Result<(), DeployError> {
        if self.store.get(&record.digest).is_some() {
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let actual = ModelEngine::digest(&bytes);
            if actual != record.digest {
                return Err(DeployError::DigestMismatch {
                    expected: record.digest,
                    actual,
                });
            }
            store.put(&bytes, record)?;
            Ok(())
        })
        .await
        .map_err(|e| DeployError::Internal(format!("storing panicked: {e}")))?
    }

    /// Makes `digest` (or nothing) the active version of `name`, as the
    /// shared registry's pointer at `revision` says, and records the
    /// revision. The version must be in the local store ([`Self::mirror`]).
    pub async fn apply(
        &self,
        name: &str,
        digest: Option<&str>,
        revision: i64,
        by: &str,
    ) -> Result<(), DeployError> {
        let active = self
            .registry
            .active()
            .get(name)
            .map(|e| e.model.digest.clone());
        match digest {
            Some(digest) if active.as_deref() != Some(digest) => {
                let record = self
                    .store
                    .get(digest)
                    .ok_or_else(|| StoreError::Missing(digest.to_owned()))?;
                self.activate_stored(&record, by, Instant::now(), Expect::Stored)
                    .await?;
            }
            None if active.is_some() => {
                self.remove(name, false, by).await?;
            }
            _ => {}
        }
        let store = self.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.set_registry_revision(&name, revision))
            .await
            .map_err(|e| DeployError::Internal(format!("persisting panicked: {e}")))??;
        Ok(())
    }

    /// Deletes stored versions a shared registry no longer holds, so no
    /// pin can load them; an active one is kept (its model's pointer moves
    /// first, and the next reconcile removes it).
    pub async fn forget_versions(&self, digests: Vec<String>) -> Result<(), DeployError> {
        let _one_change_at_a_time = self.changes.lock().await;
        let active: Vec<String> = self
            .registry
            .active()
            .values()
            .map(|e| e.model.digest.clone())
            .collect();
        let digests: Vec<String> = digests
            .into_iter()
            .filter(|d| !active.contains(d))
            .collect();
        for digest in &digests {
            self.registry.drop_standby(digest);
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.remove_versions(&digests))
            .await
            .map_err(|e| DeployError::Internal(format!("removing panicked: {e}")))??;
        Ok(())
    }

    /// The component bytes of a stored version, checked against its digest.
    pub async fn read_stored_bytes(&self, digest: &str) -> Result<Vec<u8>, DeployError> {
        let (store, digest) = (self.store.clone(), digest.to_owned());
        tokio::task::spawn_blocking(move || store.read_bytes(&digest))
            .await
            .map_err(|e| DeployError::Internal(format!("reading panicked: {e}")))?
            .map_err(DeployError::Store)
    }

    /// The signature policy in force, for checks made elsewhere (a shared
    /// registry's rollback target).
    pub fn signature_policy(&self) -> Arc<SignaturePolicy> {
        self.settings.signatures.clone()
    }

    /// The registry revision each model's local state came from.
    pub fn registry_revisions(&self) -> std::collections::BTreeMap<String, i64> {
        self.store.registry_revisions()
    }

    /// Every version in the local store.
    pub fn stored_versions(&self) -> Vec<VersionRecord> {
        self.store.all_versions()
    }

    /// One version of the local store.
    pub fn stored(&self, digest: &str) -> Option<VersionRecord> {
        self.store.get(digest)
    }
}

/// The digest of `bytes`, off the async runtime (hashing 64 MiB takes a
/// while).
async fn hash(bytes: Vec<u8>) -> Result<(Vec<u8>, String), DeployError> {
    tokio::task::spawn_blocking(move || {
        let digest = ModelEngine::digest(&bytes);
        (bytes, digest)
    })
    .await
    .map_err(|e| DeployError::Internal(format!("hashing panicked: {e}")))
}

/// How many components load at once at start-up: one per core, since
/// compiling is CPU-bound.
pub(crate) fn load_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The source a failed restore of `name` is recorded under.
fn restore_source(name: &str) -> String {
    format!("store:{name}")
}

/// Loads a stored version on a blocking thread: from its compiled
/// artifact when `cache` allows and a verified one exists, else compiled
/// (and its artifact written when `cache` allows).
fn load_from_store(
    engine: &ModelEngine,
    store: &ModelStore,
    compilation: &Compilation,
    (key, cache): (&str, bool),
    digest: &str,
    size: usize,
) -> Result<LoadedModel, DeployError> {
    if cache && let Some(path) = store.verified_artifact(key, digest) {
        // SAFETY: verified_artifact only returns files this process
        // family wrote with write_artifact into the private data dir,
        // matching the checksum written with them (see store.rs).
        match unsafe { engine.load_precompiled(&path, digest.to_owned(), size) } {
            Ok(model) => return Ok(model),
            Err(error) => {
                tracing::warn!(%digest, %error, "compiled artifact unusable; compiling");
                store.discard_artifact(key, digest);
            }
        }
    }
    let bytes = store.read_bytes(digest)?;
    let model = compilation.load(engine, &bytes)?;
    if cache {
        write_artifact(store, key, &model);
    }
    Ok(model)
}

/// Runs the allocator's release hook, if the process set one.
fn release_freed_memory(release: Option<fn()>) {
    if let Some(release) = release {
        release();
    }
}

fn write_artifact(store: &ModelStore, key: &str, model: &LoadedModel) {
    let result = model
        .serialize_compiled()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            store
                .write_artifact(key, &model.digest, &bytes)
                .map_err(|e| e.to_string())
        });
    if let Err(error) = result {
        // Only start-up and rollbacks get slower; serving is unaffected.
        tracing::warn!(digest = %model.digest, %error, "cannot cache the compiled artifact");
    }
}

/// `riskhost_model_active_info{model,version,digest}`: 1 for the active
/// version, 0 for versions that were active earlier in this process.
fn record_active(name: &str, old: Option<&ModelEntry>, new: Option<&ModelEntry>) {
    let series = |e: &ModelEntry| {
        metrics::gauge!(
            "riskhost_model_active_info",
            "model" => name.to_owned(),
            "version" => e.model.version().to_owned(),
            "digest" => e.model.digest.clone()
        )
    };
    if let Some(old) = old {
        series(old).set(0.0);
    }
    if let Some(new) = new {
        series(new).set(1.0);
    }
}

/// The registry's way to reach stored versions; weak, so the manager and
/// the registry do not keep each other alive.
struct StoreLoader(Weak<ModelManager>);

#[async_trait::async_trait]
impl VersionLoader for StoreLoader {
    fn find(&self, name: &str, pin: &str) -> Option<String> {
        let manager = self.0.upgrade()?;
        manager.store.find(name, pin).map(|r| r.digest)
    }

    async fn load_on_standby(&self, digest: &str) -> Result<Arc<ModelEntry>, String> {
        let manager = self
            .0
            .upgrade()
            .ok_or_else(|| "the server is shutting down".to_owned())?;
        manager
            .load_on_standby(digest)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    //! Activations racing removals, in a fixed order: on the current-thread
    //! runtime of `#[tokio::test]`, spawned tasks first run in spawn order,
    //! so the task spawned first has resolved its version and is loading it
    //! on a blocking thread when the purge spawned after it takes the change
    //! lock. No sleeps, no timing.

    use std::path::{Path, PathBuf};

    use super::*;
    use riskhost_engine::SandboxLimits;

    /// A build of the `versioned` test model (`tests/plugins/build.sh`).
    fn test_model(build: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/plugins/dist")
            .join(format!("versioned-{build}.wasm"));
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run tests/plugins/build.sh (tests/run.sh does) first",
                path.display()
            )
        })
    }

    /// A scratch data dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            Scratch(std::env::temp_dir().join(format!(
                "riskhost-deploy-{tag}-{}-{nanos}",
                std::process::id()
            )))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn manager(engine: &Arc<ModelEngine>, store: &Arc<ModelStore>) -> Arc<ModelManager> {
        manager_releasing(engine, store, None)
    }

    fn manager_releasing(
        engine: &Arc<ModelEngine>,
        store: &Arc<ModelStore>,
        release_freed_memory: Option<fn()>,
    ) -> Arc<ModelManager> {
        ModelManager::new(
            engine.clone(),
            Arc::new(ModelRegistry::new()),
            store.clone(),
            DeploySettings {
                bulkhead: BulkheadLimits {
                    max_concurrent: 1,
                    max_queued: 1,
                },
                // Every load compiles: the window the races need.
                artifact_cache: false,
                compilation: Arc::new(Compilation::InProcess),
                signatures: Arc::new(SignaturePolicy::default()),
                release_freed_memory,
            },
        )
    }

    static RELEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn count_release() {
        RELEASES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    #[tokio::test]
    async fn every_load_runs_the_release_hook_on_its_thread() {
        let root = Scratch::new("release");
        let engine = Arc::new(ModelEngine::new(SandboxLimits::default()).expect("engine"));
        let store = Arc::new(ModelStore::open(&root.0).expect("store"));
        let with_hook = || manager_releasing(&engine, &store, Some(count_release));
        let count = || RELEASES.load(std::sync::atomic::Ordering::SeqCst);
        let first = with_hook();
        let before = count();
        first
            .install(test_model("a"), "test:a".into(), Some("versioned"), None)
            .await
            .expect("install");
        assert_eq!(count(), before + 1, "a compiled upload releases once");
        drop(first);
        let restarted = with_hook();
        let before = count();
        restarted.restore().await;
        assert_eq!(count(), before + 1, "a restored version releases once");
    }

    /// A store holding versions A (1.0.0) and B (2.0.0, active) of
    /// `versioned`, and a manager over it that, as after a restart, has
    /// only B in memory. Returns the manager and A's digest.
    async fn two_versions(root: &Path) -> (Arc<ModelManager>, String) {
        let engine = Arc::new(ModelEngine::new(SandboxLimits::default()).expect("engine"));
        let store = Arc::new(ModelStore::open(root).expect("store"));
        let first = manager(&engine, &store);
        let a = first
            .install(test_model("a"), "test:a".into(), Some("versioned"), None)
            .await
            .expect("install A")
            .digest;
        first
            .install(test_model("b"), "test:b".into(), Some("versioned"), None)
            .await
            .expect("install B");
        drop(first);
        let manager = manager(&engine, &store);
        manager.restore().await;
        assert!(manager.registry().loaded(&a).is_none(), "A is not loaded");
        (manager, a)
    }

    fn purge(manager: &Arc<ModelManager>) -> tokio::task::JoinHandle<Result<(), String>> {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .remove("versioned", true, "test:purge")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    #[tokio::test]
    async fn a_rollback_racing_a_purge_activates_nothing() {
        let root = Scratch::new("rollback-purge");
        let (manager, a) = two_versions(&root.0).await;
        let rollback = {
            let (manager, a) = (manager.clone(), a.clone());
            tokio::spawn(async move { manager.rollback("versioned", Some(&a)).await })
        };
        let purged = purge(&manager).await.expect("purge task");
        assert_eq!(purged, Ok(()), "the purge succeeds");
        let rolled_back = rollback.await.expect("rollback task");

        let serving = manager
            .registry()
            .active()
            .get("versioned")
            .map(|e| e.model.digest.clone());
        assert_eq!(
            serving, None,
            "a purged version is served; the rollback answered {rolled_back:?}"
        );
        assert!(manager.store().versions_of("versioned").is_empty());
        assert_eq!(manager.store().active("versioned"), None);
        assert!(manager.store().history("versioned").is_empty());
        let error = rolled_back.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains(&a) && error.contains("removed"),
            "the rollback fails naming the removed version: {error:?}"
        );
    }

    #[tokio::test]
    async fn a_rollback_whose_target_changed_meanwhile_activates_nothing() {
        let root = Scratch::new("rollback-delete");
        let (manager, a) = two_versions(&root.0).await;
        // "The previous version" is A now; after the delete it is B.
        let rollback = {
            let manager = manager.clone();
            tokio::spawn(async move { manager.rollback("versioned", None).await })
        };
        let delete = {
            let manager = manager.clone();
            tokio::spawn(async move { manager.remove("versioned", false, "test:delete").await })
        };
        assert!(
            delete.await.expect("delete task").is_ok(),
            "the delete succeeds"
        );
        let rolled_back = rollback.await.expect("rollback task");

        let serving = manager
            .registry()
            .active()
            .get("versioned")
            .map(|e| e.model.digest.clone());
        assert_eq!(
            serving, None,
            "the rollback went to A after all: {rolled_back:?}"
        );
        assert_eq!(manager.store().active("versioned"), None);
        assert!(
            matches!(&rolled_back, Err(DeployError::TargetChanged { was, .. }) if *was == a),
            "{rolled_back:?}"
        );
    }

    #[tokio::test]
    async fn a_pinned_load_racing_a_purge_keeps_nothing_loaded() {
        let root = Scratch::new("pin-purge");
        let (manager, a) = two_versions(&root.0).await;
        let pinned = {
            let (registry, pin) = (manager.registry().clone(), format!("versioned@{a}"));
            tokio::spawn(async move {
                registry
                    .resolve(&pin)
                    .await
                    .map(|e| e.model.digest.clone())
                    .map_err(|e| e.to_string())
            })
        };
        let purged = purge(&manager).await.expect("purge task");
        assert_eq!(purged, Ok(()), "the purge succeeds");
        let pinned = pinned.await.expect("pin task");

        assert!(
            manager.registry().loaded(&a).is_none(),
            "the purged version {a} is loaded again; the pin answered {pinned:?}"
        );
        let error = pinned.err().unwrap_or_default();
        assert!(
            error.contains("removed"),
            "the pin fails naming the removal: {error:?}"
        );
    }
}
