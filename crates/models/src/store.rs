//! The content-addressed model store: every version riskhost has served,
//! kept on disk by digest, and which version of each model is active.
//!
//! Layout under the data dir (`--data-dir`):
//!
//! ```text
//! lock                                  held by the one riskhost using the dir
//! models/<hex>.wasm                     component bytes; <hex> is their sha256
//! models/<hex>.json                     VersionRecord: name, semver, size, source, time,
//!                                       the publisher's signature when there is one
//! state.json                            per model: active digest + activation log
//! artifacts/<engine-key>/<hex>.cwasm    compiled machine code of that component
//! artifacts/<engine-key>/<hex>.sha256   checksum of the .cwasm
//! ```
//!
//! Every file is written to a temporary name, synced and renamed over its
//! target, so a crash leaves the old file or the new one, never a torn one;
//! component bytes are checked against their digest when read back.
//!
//! Trust: artifacts are native code that wasmtime maps and runs without
//! checking (`ModelEngine::load_precompiled`). They are only ever files this
//! process wrote, in a directory created `0700`; the checksum catches
//! accidental corruption, not an attacker who can write the data dir (such an
//! attacker can replace the binary too). A data dir writable by group or
//! others is refused for artifacts (they are recompiled instead).
//!
//! All methods block on file I/O: call them from blocking threads, except
//! the in-memory lookups (`get`, `find`, `versions_of`, `active`, …), which
//! only take a short lock.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How many activations per model `state.json` remembers.
const HISTORY_LIMIT: usize = 100;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the data dir {} is in use by another riskhost process; give each process its own --data-dir",
        .0.display()
    )]
    Locked(PathBuf),
    #[error("`{0}` is not a sha256:<64 hex digits> digest")]
    BadDigest(String),
    #[error("version {0} is not in the store")]
    Missing(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One stored version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// `sha256:<hex>` of the component bytes: the version's identity.
    pub digest: String,
    /// The model name from `info()`.
    pub name: String,
    /// The semver from `info()` (metadata).
    pub version: String,
    pub size_bytes: usize,
    /// Where it first came from: `file:<path>` or `api:<name>`.
    pub source: String,
    /// When it was first stored (first loaded).
    pub stored_at: DateTime<Utc>,
    /// The publisher's detached signature (`.sig` file text), if one came
    /// with the version; re-checked whenever the version is loaded while
    /// signatures are required (`signing.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// One change of a model's active version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Activation {
    /// The version made active; `None` when the model was unloaded.
    pub digest: Option<String>,
    pub at: DateTime<Utc>,
    /// What caused it: `file:<path>`, `api:put`, `api:rollback`, `api:delete`, …
    pub by: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ModelState {
    active: Option<String>,
    history: Vec<Activation>,
    /// The shared registry's revision of the pointer `active` came from
    /// (`--model-store postgres`); what a replica reports while the
    /// registry is out of reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry_revision: Option<i64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    models: BTreeMap<String, ModelState>,
}

struct Inner {
    versions: BTreeMap<String, VersionRecord>,
    state: State,
}

/// The store. One per data dir and process (enforced by a file lock).
pub struct ModelStore {
    root: PathBuf,
    inner: Mutex<Inner>,
    /// Serialises writes of `state.json` so the newest state is written last.
    persist: Mutex<()>,
    artifacts_trusted: bool,
    _lock: File,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("root", &self.root)
            .finish()
    }
}

/// The hex part of a `sha256:<hex>` digest, checked, so it is safe in a path.
pub(crate) fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(StoreError::BadDigest(digest.to_owned())),
    }
}

impl ModelStore {
    /// Opens (creating if needed) the store under `root` and reads its index.
    pub fn open(root: &Path) -> Result<ModelStore, StoreError> {
        create_private_dir(root)?;
        create_private_dir(&root.join("models"))?;
        create_private_dir(&root.join("artifacts"))?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(root.to_owned()));
        }

        let models = root.join("models");
        let mut versions = BTreeMap::new();
        for entry in std::fs::read_dir(&models).map_err(io(&models))? {
            let path = entry.map_err(io(&models))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record: VersionRecord = match read_json(&path) {
                Ok(r) => r,
                Err(error) => {
                    // One bad record must not take the other versions down.
                    tracing::warn!(%error, "skipping an unreadable version record");
                    continue;
                }
            };
            let blob = path.with_extension("wasm");
            if digest_hex(&record.digest).is_err() || !blob.is_file() {
                tracing::warn!(record = %path.display(), "skipping a version record without its component");
                continue;
            }
            versions.insert(record.digest.clone(), record);
        }

        let state_path = root.join("state.json");
        let mut state: State = if state_path.exists() {
            read_json(&state_path)?
        } else {
            State::default()
        };
        // An active digest whose component is gone cannot be served.
        for (name, model) in &mut state.models {
            if let Some(active) = &model.active
                && !versions.contains_key(active)
            {
                tracing::warn!(model = %name, digest = %active, "the active version is missing from the store");
                model.active = None;
            }
        }
        let artifacts_trusted = is_private(root) && is_private(&root.join("artifacts"));
        if !artifacts_trusted {
            tracing::warn!(dir = %root.display(), "the data dir is writable by group or others: compiled artifacts are not used");
        }
        Ok(ModelStore {
            root: root.to_owned(),
            inner: Mutex::new(Inner { versions, state }),
            persist: Mutex::new(()),
            artifacts_trusted,
            _lock: lock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single insert/assignment), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self
            .root
            .join("models")
            .join(format!("{}.wasm", digest_hex(digest)?)))
    }

    /// The record of one version.
    pub(crate) fn get(&self, digest: &str) -> Option<VersionRecord> {
        self.lock().versions.get(digest).cloned()
    }

    /// Every stored version of `name`, oldest first.
    pub(crate) fn versions_of(&self, name: &str) -> Vec<VersionRecord> {
        let mut out: Vec<VersionRecord> = self
            .lock()
            .versions
            .values()
            .filter(|r| r.name == name)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.stored_at.cmp(&b.stored_at).then(a.digest.cmp(&b.digest)));
        out
    }

    /// The stored version a pin names: `sha256:…` exactly, or a semver, for
    /// which the active version wins, then the most recently stored one.
    pub(crate) fn find(&self, name: &str, pin: &str) -> Option<VersionRecord> {
        let inner = self.lock();
        if pin.starts_with("sha256:") {
            return inner.versions.get(pin).filter(|r| r.name == name).cloned();
        }
        let active = inner.state.models.get(name).and_then(|m| m.active.as_ref());
        let mut matching: Vec<&VersionRecord> = inner
            .versions
            .values()
            .filter(|r| r.name == name && r.version == pin)
            .collect();
        if let Some(r) = matching.iter().find(|r| Some(&r.digest) == active) {
            return Some((*r).clone());
        }
        matching.sort_by_key(|r| r.stored_at);
        matching.last().map(|r| (*r).clone())
    }

    /// Stores a component and its record (no-op for a digest already stored;
    /// the first record is kept). Returns the record in the store.
    pub(crate) fn put(
        &self,
        bytes: &[u8],
        record: VersionRecord,
    ) -> Result<VersionRecord, StoreError> {
        if let Some(existing) = self.get(&record.digest) {
            return Ok(existing);
        }
        let blob = self.blob_path(&record.digest)?;
        write_atomic(&blob, bytes)?;
        let meta = blob.with_extension("json");
        let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Corrupt {
            path: meta.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&meta, &json)?;
        let mut inner = self.lock();
        Ok(inner
            .versions
            .entry(record.digest.clone())
            .or_insert(record)
            .clone())
    }

    /// Records `signature` as the publisher's signature of a stored version
    /// (replacing an earlier one: the newest valid signature is kept, so a
    /// version re-signed with a rotated key stays loadable).
    pub(crate) fn set_signature(&self, digest: &str, signature: &str) -> Result<(), StoreError> {
        let mut record = self
            .get(digest)
            .ok_or_else(|| StoreError::Missing(digest.to_owned()))?;
        if record.signature.as_deref() == Some(signature) {
            return Ok(());
        }
        record.signature = Some(signature.to_owned());
        let meta = self.blob_path(digest)?.with_extension("json");
        let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Corrupt {
            path: meta.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&meta, &json)?;
        self.lock().versions.insert(digest.to_owned(), record);
        Ok(())
    }

    /// The component bytes of a version, checked against the digest.
    pub(crate) fn read_bytes(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        if self.get(digest).is_none() {
            return Err(StoreError::Missing(digest.to_owned()));
        }
        let path = self.blob_path(digest)?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("its content has digest {actual}"),
            });
        }
        Ok(bytes)
    }

    /// The active digest of every model that has one.
    pub(crate) fn active_all(&self) -> BTreeMap<String, String> {
        self.lock()
            .state
            .models
            .iter()
            .filter_map(|(name, m)| m.active.clone().map(|d| (name.clone(), d)))
            .collect()
    }

    pub(crate) fn active(&self, name: &str) -> Option<String> {
        self.lock()
            .state
            .models
            .get(name)
            .and_then(|m| m.active.clone())
    }

    /// The activation log of a model, oldest first.
    pub(crate) fn history(&self, name: &str) -> Vec<Activation> {
        self.lock()
            .state
            .models
            .get(name)
            .map(|m| m.history.clone())
            .unwrap_or_default()
    }

    /// The version a rollback without a target goes to: the most recent
    /// activation of another stored version. Two rollbacks in a row
    /// therefore toggle between the last two versions.
    pub(crate) fn previous(&self, name: &str) -> Option<String> {
        let inner = self.lock();
        let model = inner.state.models.get(name)?;
        model
            .history
            .iter()
            .rev()
            .filter_map(|a| a.digest.as_ref())
            .find(|d| Some(*d) != model.active.as_ref() && inner.versions.contains_key(*d))
            .cloned()
    }

    /// Records `digest` (or nothing) as the active version of `name` and
    /// persists the state.
    pub(crate) fn set_active(
        &self,
        name: &str,
        digest: Option<&str>,
        by: &str,
    ) -> Result<(), StoreError> {
        {
            let mut inner = self.lock();
            let model = inner.state.models.entry(name.to_owned()).or_default();
            if model.active.as_deref() == digest {
                return Ok(());
            }
            model.active = digest.map(str::to_owned);
            model.history.push(Activation {
                digest: digest.map(str::to_owned),
                at: DateTime::<Utc>::from(std::time::SystemTime::now()),
                by: by.to_owned(),
            });
            let excess = model.history.len().saturating_sub(HISTORY_LIMIT);
            model.history.drain(..excess);
        }
        self.persist_state()
    }

    /// The registry revisions recorded with the active versions.
    pub(crate) fn registry_revisions(&self) -> BTreeMap<String, i64> {
        self.lock()
            .state
            .models
            .iter()
            .filter_map(|(name, m)| m.registry_revision.map(|r| (name.clone(), r)))
            .collect()
    }

    /// Records the registry revision `name` is at, and persists it.
    pub(crate) fn set_registry_revision(
        &self,
        name: &str,
        revision: i64,
    ) -> Result<(), StoreError> {
        {
            let mut inner = self.lock();
            let model = inner.state.models.entry(name.to_owned()).or_default();
            if model.registry_revision == Some(revision) {
                return Ok(());
            }
            model.registry_revision = Some(revision);
        }
        self.persist_state()
    }

    /// Every stored version.
    pub(crate) fn all_versions(&self) -> Vec<VersionRecord> {
        self.lock().versions.values().cloned().collect()
    }

    /// Deletes every version of `name`, its artifacts and its state.
    /// Returns the digests removed.
    pub(crate) fn remove_model(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let removed: Vec<String> = {
            let mut inner = self.lock();
            inner.state.models.remove(name);
            let digests: Vec<String> = inner
                .versions
                .values()
                .filter(|r| r.name == name)
                .map(|r| r.digest.clone())
                .collect();
            for d in &digests {
                inner.versions.remove(d);
            }
            digests
        };
        self.persist_state()?;
        self.delete_files(&removed)?;
        Ok(removed)
    }

    /// Deletes the versions `digests` (none of them active), their
    /// artifacts and records.
    pub(crate) fn remove_versions(&self, digests: &[String]) -> Result<(), StoreError> {
        {
            let mut inner = self.lock();
            for d in digests {
                inner.versions.remove(d);
            }
        }
        self.delete_files(digests)
    }

    fn delete_files(&self, removed: &[String]) -> Result<(), StoreError> {
        let artifact_dirs: Vec<PathBuf> = std::fs::read_dir(self.root.join("artifacts"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        for digest in removed {
            let hex = digest_hex(digest)?;
            let blob = self.blob_path(digest)?;
            // The record goes first: a blob without a record is ignored on open.
            remove_if_exists(&blob.with_extension("json"))?;
            remove_if_exists(&blob)?;
            for dir in &artifact_dirs {
                remove_if_exists(&dir.join(format!("{hex}.cwasm")))?;
                remove_if_exists(&dir.join(format!("{hex}.sha256")))?;
            }
        }
        Ok(())
    }

    fn persist_state(&self) -> Result<(), StoreError> {
        let _writing = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        // Snapshot inside the write lock, so the last writer writes the newest state.
        let state = self.lock().state.clone();
        let path = self.root.join("state.json");
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &json)
    }

    fn artifact_paths(
        &self,
        engine_key: &str,
        digest: &str,
    ) -> Result<(PathBuf, PathBuf), StoreError> {
        let hex = digest_hex(digest)?;
        let dir = self.root.join("artifacts").join(engine_key);
        Ok((
            dir.join(format!("{hex}.cwasm")),
            dir.join(format!("{hex}.sha256")),
        ))
    }

    /// Writes the compiled artifact of `digest` for engine `engine_key`.
    pub(crate) fn write_artifact(
        &self,
        engine_key: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let (artifact, checksum) = self.artifact_paths(engine_key, digest)?;
        if let Some(dir) = artifact.parent() {
            create_private_dir(dir)?;
        }
        // The checksum is written after the artifact: an artifact without a
        // matching checksum is never used.
        write_atomic(&artifact, bytes)?;
        write_atomic(&checksum, hex::encode(Sha256::digest(bytes)).as_bytes())
    }

    /// The artifact of `digest` for `engine_key`, if one exists and matches
    /// its checksum. A mismatching one is deleted.
    pub(crate) fn verified_artifact(&self, engine_key: &str, digest: &str) -> Option<PathBuf> {
        if !self.artifacts_trusted {
            return None;
        }
        let (artifact, checksum) = self.artifact_paths(engine_key, digest).ok()?;
        let expected = std::fs::read_to_string(&checksum).ok()?;
        if file_sha256_hex(&artifact).ok()? == expected.trim() {
            Some(artifact)
        } else {
            tracing::warn!(artifact = %artifact.display(), "discarding an artifact that does not match its checksum");
            let _ = std::fs::remove_file(&artifact);
            let _ = std::fs::remove_file(&checksum);
            None
        }
    }

    /// Deletes an artifact that failed to load (e.g. from an incompatible build).
    pub(crate) fn discard_artifact(&self, engine_key: &str, digest: &str) {
        if let Ok((artifact, checksum)) = self.artifact_paths(engine_key, digest) {
            let _ = std::fs::remove_file(artifact);
            let _ = std::fs::remove_file(checksum);
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// The SHA-256 of a file's contents, read in pieces: a compiled artifact
/// is tens of MiB, and a whole-file buffer would stay with the allocator
/// after the check.
fn file_sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut options = File::options();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            // Owner only: artifacts are code this process will map and run.
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; not all platforms can sync a directory.
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io(dir))
}

/// Whether only the owner can write `dir`.
fn is_private(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o022 == 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "riskhost-store-{tag}-{}-{}",
            std::process::id(),
            DateTime::<Utc>::from(std::time::SystemTime::now())
                .timestamp_nanos_opt()
                .unwrap_or_default()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(bytes: &[u8], name: &str, version: &str) -> VersionRecord {
        VersionRecord {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
            name: name.into(),
            version: version.into(),
            size_bytes: bytes.len(),
            source: "test".into(),
            stored_at: DateTime::<Utc>::from(std::time::SystemTime::now()),
            signature: None,
        }
    }

    #[test]
    fn versions_and_the_active_one_survive_a_reopen() {
        let root = temp_root("reopen");
        let (a, b) = (record(b"aaa", "m", "1.0.0"), record(b"bbb", "m", "1.1.0"));
        {
            let store = ModelStore::open(&root).expect("open");
            store.put(b"aaa", a.clone()).expect("put a");
            store.put(b"bbb", b.clone()).expect("put b");
            store
                .set_active("m", Some(&a.digest), "test")
                .expect("activate a");
            store
                .set_active("m", Some(&b.digest), "test")
                .expect("activate b");
            assert!(matches!(
                ModelStore::open(&root),
                Err(StoreError::Locked(_))
            ));
        }
        let store = ModelStore::open(&root).expect("reopen");
        assert_eq!(store.active("m"), Some(b.digest.clone()));
        assert_eq!(store.previous("m"), Some(a.digest.clone()));
        assert_eq!(store.versions_of("m").len(), 2);
        assert_eq!(store.read_bytes(&a.digest).expect("read"), b"aaa");
        store.set_signature(&a.digest, "sig text").expect("sign");
        assert_eq!(
            store.get(&a.digest).and_then(|r| r.signature).as_deref(),
            Some("sig text")
        );
        assert_eq!(
            store.find("m", "1.0.0").map(|r| r.digest),
            Some(a.digest.clone())
        );
        assert_eq!(
            store.find("m", &b.digest).map(|r| r.version),
            Some("1.1.0".into())
        );
        assert_eq!(store.find("other", &b.digest), None);
        // Rolling back twice toggles between the last two versions.
        store
            .set_active("m", Some(&a.digest), "rollback")
            .expect("rollback");
        assert_eq!(store.previous("m"), Some(b.digest.clone()));
        // After an unload, the previous version is the last active one.
        store.set_active("m", None, "delete").expect("delete");
        assert_eq!(store.previous("m"), Some(a.digest.clone()));
        assert_eq!(store.remove_model("m").expect("purge").len(), 2);
        assert!(store.versions_of("m").is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn corrupt_blobs_and_artifacts_are_detected() {
        let root = temp_root("corrupt");
        let store = ModelStore::open(&root).expect("open");
        let a = record(b"aaa", "m", "1.0.0");
        store.put(b"aaa", a.clone()).expect("put");
        let hex = digest_hex(&a.digest).expect("hex").to_owned();
        std::fs::write(root.join("models").join(format!("{hex}.wasm")), b"aab").expect("tamper");
        assert!(matches!(
            store.read_bytes(&a.digest),
            Err(StoreError::Corrupt { .. })
        ));

        store
            .write_artifact("k", &a.digest, b"code")
            .expect("artifact");
        assert!(store.verified_artifact("k", &a.digest).is_some());
        assert!(store.verified_artifact("other-engine", &a.digest).is_none());
        std::fs::write(
            root.join("artifacts/k").join(format!("{hex}.cwasm")),
            b"c0de",
        )
        .expect("tamper");
        assert!(store.verified_artifact("k", &a.digest).is_none());
        assert!(
            !root
                .join("artifacts/k")
                .join(format!("{hex}.cwasm"))
                .exists()
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn digests_are_checked_before_they_become_paths() {
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
