//! Which model versions are being served, and how to reach them.
//!
//! The registry maps a model name to its active version. Reads are lock-free
//! (`ArcSwap` of an immutable map) because every request resolves a model;
//! writes (a load or an unload) replace the whole map. A request holds an
//! `Arc<ModelEntry>`, so a call in flight finishes on the version it started
//! with even if that version is replaced meanwhile. Files that failed to load
//! are kept with their error so operators can see them.
//!
//! Versions other than the active one (a replaced version, or one a client
//! pins) are kept in a bounded LRU "standby" set; a pinned version that is in
//! neither is loaded on first use from the model store through a
//! [`VersionLoader`], so any stored version is servable without keeping every
//! version's compiled code in memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use riskhost_engine::{LoadedModel, ModelLimits};

/// Per-model concurrency bounds: at most `max_concurrent` calls run and at
/// most `max_queued` wait; beyond that the caller is told to retry.
#[derive(Debug, Clone, Copy)]
pub struct BulkheadLimits {
    pub max_concurrent: usize,
    pub max_queued: usize,
}

impl BulkheadLimits {
    /// These limits with a model's own `max_concurrent`/`max_queued`, if any.
    pub fn for_model(self, limits: &ModelLimits) -> BulkheadLimits {
        BulkheadLimits {
            max_concurrent: limits.max_concurrent.unwrap_or(self.max_concurrent),
            max_queued: limits.max_queued.unwrap_or(self.max_queued),
        }
    }
}

/// A bulkhead keeps one slow or hostile model from taking every execution
/// slot: its callers queue here, not in front of other models.
pub struct Bulkhead {
    running: Arc<Semaphore>,
    queued: AtomicUsize,
    limits: BulkheadLimits,
}

/// The model's queue is full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the model's queue is full ({queued} calls waiting)")]
pub struct Overloaded {
    pub queued: usize,
}

impl Bulkhead {
    pub fn new(limits: BulkheadLimits) -> Self {
        Bulkhead {
            running: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            queued: AtomicUsize::new(0),
            limits,
        }
    }

    pub fn limits(&self) -> BulkheadLimits {
        self.limits
    }

    /// Admits a job into the waiting room of a batcher: only while fewer
    /// jobs wait than the queue bound plus the slots free right now, so a
    /// full model refuses at once instead of piling work up. Each admission
    /// must be paired with one [`Bulkhead::leave_queue`].
    pub fn try_admit(&self) -> Result<(), Overloaded> {
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.limits.max_queued + self.running.available_permits() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Overloaded { queued: waiting });
        }
        Ok(())
    }

    /// Ends an admission made by [`Bulkhead::try_admit`].
    pub fn leave_queue(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Waits for a slot without queue accounting: for a batcher, whose jobs
    /// were admitted already.
    pub async fn wait_for_slot(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        self.running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overloaded { queued: 0 })
    }

    /// Waits for a slot, or fails at once when too many callers wait
    /// already. The slot is held until the returned permit is dropped.
    pub async fn enter_owned(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave = scopeguard(|| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        });
        if queued >= self.limits.max_queued {
            return Err(Overloaded { queued });
        }
        // The semaphore is never closed, so acquire only fails if it were.
        self.running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overloaded { queued })
    }
}

struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

/// A served model version.
pub struct ModelEntry {
    pub model: LoadedModel,
    /// Where it came from, e.g. `file:plugins/dist/var-historical.wasm`.
    pub source: String,
    pub loaded_at: SystemTime,
    pub bulkhead: Bulkhead,
}

/// A file or upload that did not become a served model.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct LoadFailure {
    pub source: String,
    pub error: String,
    #[serde(serialize_with = "rfc3339")]
    #[cfg_attr(feature = "schema", schema(value_type = String, format = DateTime))]
    pub at: SystemTime,
}

/// Serializes a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let dt: chrono::DateTime<chrono::Utc> = (*t).into();
    s.serialize_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// How a client names a model: `name`, `name@1.2.0` or `name@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef<'a> {
    Active(&'a str),
    Version(&'a str, &'a str),
    Digest(&'a str, &'a str),
}

impl<'a> ModelRef<'a> {
    pub fn parse(s: &'a str) -> ModelRef<'a> {
        match s.split_once('@') {
            None => ModelRef::Active(s),
            Some((name, pin)) if pin.starts_with("sha256:") => ModelRef::Digest(name, pin),
            Some((name, version)) => ModelRef::Version(name, version),
        }
    }

    pub fn name(&self) -> &'a str {
        match self {
            ModelRef::Active(n) | ModelRef::Version(n, _) | ModelRef::Digest(n, _) => n,
        }
    }
}

/// Why a model reference did not resolve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown model `{name}`; loaded models: {loaded}")]
    UnknownModel { name: String, loaded: String },
    #[error(
        "model `{name}` has no version {pin}; the active version is {active_version} ({active_digest})"
    )]
    UnknownVersion {
        name: String,
        pin: String,
        active_version: String,
        active_digest: String,
    },
    #[error("model `{name}` version {pin} is stored but could not be loaded: {error}")]
    VersionUnavailable {
        name: String,
        pin: String,
        error: String,
    },
}

/// Loads stored versions that are not in memory, for pinned references.
#[async_trait::async_trait]
pub(crate) trait VersionLoader: Send + Sync + 'static {
    /// The digest of the stored version of `name` that `pin` (`1.2.0` or
    /// `sha256:…`) names, if there is one.
    fn find(&self, name: &str, pin: &str) -> Option<String>;
    /// Loads and validates a stored version, off the async runtime, and
    /// keeps it on standby, atomically with respect to removals: a version
    /// purged meanwhile is an error and is not kept.
    async fn load_on_standby(&self, digest: &str) -> Result<Arc<ModelEntry>, String>;
}

/// Told of every version that becomes loaded (activated, or put on standby
/// for a pin), e.g. to create its labelled counters at 0: a series that
/// first appears at 1 is no increase to `rate()` or `increase()`.
pub type LoadObserver = Arc<dyn Fn(&ModelEntry) + Send + Sync>;

/// How many non-active versions stay loaded by default.
pub const DEFAULT_STANDBY_VERSIONS: u64 = 8;

pub struct ModelRegistry {
    active: ArcSwap<BTreeMap<String, Arc<ModelEntry>>>,
    failures: std::sync::Mutex<BTreeMap<String, LoadFailure>>,
    initial_load_done: AtomicBool,
    /// Loaded versions that are not active, by digest (bounded, LRU).
    standby: moka::sync::Cache<String, Arc<ModelEntry>>,
    loader: OnceLock<Arc<dyn VersionLoader>>,
    /// One lazy load at a time: concurrent requests for the same pinned
    /// version wait and then find it in `standby` instead of loading it twice.
    lazy_loads: tokio::sync::Mutex<()>,
    observers: std::sync::RwLock<Vec<LoadObserver>>,
}

impl Default for ModelRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelRegistry {
    pub fn new() -> Self {
        Self::with_standby_capacity(DEFAULT_STANDBY_VERSIONS)
    }

    /// A registry keeping up to `standby` non-active versions loaded.
    pub fn with_standby_capacity(standby: u64) -> Self {
        // At 0 from start-up, so the first failure is an increase.
        metrics::counter!("riskhost_model_load_failures_total").increment(0);
        ModelRegistry {
            active: ArcSwap::from_pointee(BTreeMap::new()),
            failures: std::sync::Mutex::new(BTreeMap::new()),
            initial_load_done: AtomicBool::new(false),
            standby: moka::sync::Cache::builder()
                .max_capacity(standby)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            loader: OnceLock::new(),
            lazy_loads: tokio::sync::Mutex::new(()),
            observers: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// Calls `observer` with every version loaded now and every version
    /// loaded from now on (a version may be seen more than once).
    pub fn on_load(&self, observer: LoadObserver) {
        // Registered first, so a version loaded meanwhile is not missed.
        if let Ok(mut observers) = self.observers.write() {
            observers.push(observer.clone());
        }
        for entry in self.active.load().values() {
            observer(entry);
        }
        for (_, entry) in self.standby.iter() {
            observer(&entry);
        }
    }

    fn loaded_now(&self, entry: &ModelEntry) {
        // The swaps counter `deploy` increments: at 0 from the model's
        // first load, and again after a delete and a re-upload.
        metrics::counter!("riskhost_model_swaps_total", "model" => entry.model.name().to_owned())
            .increment(0);
        if let Ok(observers) = self.observers.read() {
            for observer in observers.iter() {
                observer(entry);
            }
        }
    }

    /// Lets pinned references reach stored versions that are not loaded.
    /// Set once, at start-up; later calls are ignored.
    pub(crate) fn set_version_loader(&self, loader: Arc<dyn VersionLoader>) {
        let _ = self.loader.set(loader);
    }

    /// Makes `entry` the active version of its model; returns the one it
    /// replaced, which stays loaded on standby (for pins and rollbacks).
    pub fn activate(&self, entry: Arc<ModelEntry>) -> Option<Arc<ModelEntry>> {
        let name = entry.model.name().to_owned();
        self.loaded_now(&entry);
        self.clear_failure(&entry.source);
        let mut replaced = None;
        self.active.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            replaced = next.insert(name.clone(), entry.clone());
            next
        });
        self.standby.invalidate(&entry.model.digest);
        if let Some(old) = &replaced
            && old.model.digest != entry.model.digest
        {
            self.standby.insert(old.model.digest.clone(), old.clone());
        }
        metrics::gauge!("riskhost_models_loaded").set(self.active.load().len() as f64);
        replaced
    }

    /// Stops serving `name` (neither by name nor pinned); returns the version
    /// that was active. Calls in flight finish on it.
    pub(crate) fn deactivate(&self, name: &str) -> Option<Arc<ModelEntry>> {
        let mut removed = None;
        self.active.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            removed = next.remove(name);
            next
        });
        let versions: Vec<Arc<String>> = self
            .standby
            .iter()
            .filter(|(_, e)| e.model.name() == name)
            .map(|(digest, _)| digest)
            .collect();
        for digest in versions {
            self.standby.invalidate(digest.as_str());
        }
        metrics::gauge!("riskhost_models_loaded").set(self.active.load().len() as f64);
        removed
    }

    /// A loaded version (active or on standby) by digest.
    pub fn loaded(&self, digest: &str) -> Option<Arc<ModelEntry>> {
        self.active
            .load()
            .values()
            .find(|e| e.model.digest == digest)
            .cloned()
            .or_else(|| self.standby.get(digest))
    }

    /// Drops a version from standby (it is no longer stored).
    pub(crate) fn drop_standby(&self, digest: &str) {
        self.standby.invalidate(digest);
    }

    /// Keeps a loaded, non-active version on standby.
    pub(crate) fn keep_on_standby(&self, entry: Arc<ModelEntry>) {
        self.loaded_now(&entry);
        self.standby.insert(entry.model.digest.clone(), entry);
    }

    pub fn record_failure(&self, source: &str, error: String) {
        metrics::counter!("riskhost_model_load_failures_total").increment(1);
        let failure = LoadFailure {
            source: source.to_owned(),
            error,
            at: SystemTime::now(),
        };
        if let Ok(mut failures) = self.failures.lock() {
            failures.insert(source.to_owned(), failure);
        }
    }

    /// Forgets the failure recorded for `source` (e.g. its file was removed).
    pub(crate) fn clear_failure(&self, source: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(source);
        }
    }

    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures
            .lock()
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The version a reference names. The active version resolves without
    /// waiting; a pinned version that is not loaded is loaded from the store
    /// on first use (once, even under concurrent requests).
    pub async fn resolve(&self, reference: &str) -> Result<Arc<ModelEntry>, ResolveError> {
        let parsed = ModelRef::parse(reference);
        let name = parsed.name();
        let models = self.active.load();
        let Some(active) = models.get(name) else {
            return Err(ResolveError::UnknownModel {
                name: name.to_owned(),
                loaded: if models.is_empty() {
                    "none".to_owned()
                } else {
                    models.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        };
        let pin = match parsed {
            ModelRef::Active(_) => return Ok(active.clone()),
            ModelRef::Version(_, v) if active.model.version() == v => return Ok(active.clone()),
            ModelRef::Digest(_, d) if active.model.digest == d => return Ok(active.clone()),
            ModelRef::Version(_, pin) | ModelRef::Digest(_, pin) => pin,
        };
        let unknown = || ResolveError::UnknownVersion {
            name: name.to_owned(),
            pin: pin.to_owned(),
            active_version: active.model.version().to_owned(),
            active_digest: active.model.digest.clone(),
        };
        let on_standby = |digest: &str| self.standby.get(digest).filter(|e| e.model.name() == name);
        if let Some(entry) = on_standby(pin) {
            return Ok(entry);
        }
        let Some(loader) = self.loader.get() else {
            return Err(unknown());
        };
        let Some(digest) = loader.find(name, pin) else {
            return Err(unknown());
        };
        if let Some(entry) = on_standby(&digest) {
            return Ok(entry);
        }
        let _one_at_a_time = self.lazy_loads.lock().await;
        if let Some(entry) = on_standby(&digest) {
            return Ok(entry);
        }
        // The loader puts it on standby itself: inserting here, after its
        // check, would let a purge slip in between.
        let entry = loader.load_on_standby(&digest).await.map_err(|error| {
            ResolveError::VersionUnavailable {
                name: name.to_owned(),
                pin: pin.to_owned(),
                error,
            }
        })?;
        tracing::info!(model = %name, digest = %digest, "loaded a pinned version from the store");
        Ok(entry)
    }

    /// The version of `name` with `digest`, whether or not the model is
    /// active (replay re-runs recorded scores on the version that computed
    /// them): loaded already, or loaded from the store as a pinned version
    /// is. `Ok(None)` when no version of `name` with that digest is stored
    /// any more (the model was purged).
    pub async fn resolve_recorded(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<Option<Arc<ModelEntry>>, ResolveError> {
        let loaded = || self.loaded(digest).filter(|e| e.model.name() == name);
        if let Some(entry) = loaded() {
            return Ok(Some(entry));
        }
        let Some(loader) = self.loader.get() else {
            return Ok(None);
        };
        let Some(digest) = loader.find(name, digest) else {
            return Ok(None);
        };
        let _one_at_a_time = self.lazy_loads.lock().await;
        if let Some(entry) = loaded() {
            return Ok(Some(entry));
        }
        let entry = loader.load_on_standby(&digest).await.map_err(|error| {
            ResolveError::VersionUnavailable {
                name: name.to_owned(),
                pin: digest.clone(),
                error,
            }
        })?;
        tracing::info!(model = %name, digest = %digest, "loaded a recorded version from the store");
        Ok(Some(entry))
    }

    /// Every active model, by name.
    pub fn active(&self) -> Arc<BTreeMap<String, Arc<ModelEntry>>> {
        self.active.load_full()
    }

    /// Marks the start-up load as finished (successful or not).
    pub fn mark_initial_load_done(&self) {
        self.initial_load_done.store(true, Ordering::Release);
    }

    pub fn initial_load_done(&self) -> bool {
        self.initial_load_done.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs_parse_pins() {
        assert_eq!(ModelRef::parse("var"), ModelRef::Active("var"));
        assert_eq!(
            ModelRef::parse("var@1.2.0"),
            ModelRef::Version("var", "1.2.0")
        );
        assert_eq!(
            ModelRef::parse("var@sha256:ab"),
            ModelRef::Digest("var", "sha256:ab")
        );
    }

    #[tokio::test]
    async fn bulkhead_queues_up_to_its_bound_then_refuses() {
        let bulkhead = Arc::new(Bulkhead::new(BulkheadLimits {
            max_concurrent: 1,
            max_queued: 1,
        }));
        let first = bulkhead.enter_owned().await.map_err(|e| e.to_string());
        assert!(first.is_ok());
        let waiter = {
            let b = bulkhead.clone();
            tokio::spawn(async move { b.enter_owned().await.map(|_| ()).map_err(|e| e.queued) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(matches!(
            bulkhead.enter_owned().await,
            Err(Overloaded { queued: 1 })
        ));
        drop(first);
        assert_eq!(waiter.await.ok(), Some(Ok(())));
    }
}
