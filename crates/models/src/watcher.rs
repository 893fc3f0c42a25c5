//! The plugins directory as a way in: the start-up scan, then a watch
//! (notify, debounced) that loads new files, makes a changed file the new
//! active version of its model and unloads the model of a removed file.
//!
//! Half-written files are never served. A file whose writer may still be
//! writing (it was created or modified, but not yet closed or renamed into
//! place) must keep the same size, modification time and inode for the
//! settle time before it is read; a closed or renamed file is read at once.
//! Either way it must be unchanged after reading, and then it must pass the
//! same validation as any version (compile, link, `info()`, warm-up). A file
//! caught mid-write fails validation and is reported like any invalid file;
//! the complete file, once written, loads. The recommended way to publish is
//! still to write under a temporary name (a dotfile or another extension,
//! which are ignored) and rename it into place, which is atomic.
//!
//! The watcher remembers what each file last provided (digest and model), so
//! a touch or an event storm reloads nothing. A model is unloaded only when
//! the directory made its active version live (the removed file held it, or
//! the file that activated it is gone) and no file left in the directory
//! provides the model: renaming or copying a file keeps its model served,
//! whatever order the events come in, and so does a restart after a rename.
//! When the files left provide another version of the model, the active
//! version keeps serving: a removal never activates anything.
//!
//! A model's signature is the file `NAME.wasm.sig` beside `NAME.wasm`
//! (`signing.rs`). A change of either file re-evaluates the model, so the
//! two may land in any order. When signatures are required and a changed
//! component has no signature for its digest yet, the watcher waits up to
//! [`SIGNATURE_WAIT`] for one before refusing it, so publishing the `.wasm`
//! and then its `.sig` deploys without a spurious failure.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify_debouncer_full::notify::event::{AccessKind, AccessMode, ModifyKind};
use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;

use crate::deploy::{DeployError, ModelManager, load_parallelism};
use crate::loader::component_files;
use riskhost_engine::ModelEngine;

/// How the directory is watched.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Whether to watch at all (otherwise the directory is read at start-up only).
    pub enabled: bool,
    /// Debounce window of file events.
    pub debounce: Duration,
    /// How long a file must stay unchanged before it is read.
    pub settle: Duration,
    /// Whether removing a file unloads the model it provided.
    pub unload_on_delete: bool,
    /// Largest file read; larger ones fail without being read.
    pub max_component_bytes: usize,
}

/// Give up waiting for a file that never stops changing after this long and
/// try it anyway (validation still stands guard).
const MAX_SETTLE: Duration = Duration::from_secs(60);

/// How long a component without a matching signature waits for its `.sig`
/// to land when signatures are required.
pub(crate) const SIGNATURE_WAIT: Duration = Duration::from_secs(2);

/// What a file provided when last loaded.
#[derive(Debug, Clone)]
struct FileState {
    digest: String,
    /// The text of its `.sig` file then, if there was one.
    signature: Option<String>,
    /// The model it named, when it was valid.
    model: Option<String>,
}

/// Size, modification time and identity: a file being written changes one.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: u64,
}

async fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    if !meta.is_file() {
        return None;
    }
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    })
}

/// Whether a file name is one the directory serves: `*.wasm`, not hidden.
fn is_component_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden && path.extension().is_some_and(|e| e == "wasm")
}

/// The component a changed file is about, and whether the file is its
/// signature: `NAME.wasm` itself, or `NAME.wasm` for `NAME.wasm.sig`.
fn component_of(path: &Path) -> Option<(PathBuf, bool)> {
    if is_component_name(path) {
        return Some((path.to_owned(), false));
    }
    let name = path.file_name()?.to_str()?;
    let component = path.with_file_name(name.strip_suffix(".sig")?);
    is_component_name(&component).then_some((component, true))
}

/// The signature file of a component: `NAME.wasm.sig`.
fn signature_path(component: &Path) -> PathBuf {
    let mut name = component.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The text of a component's signature file, if it has one. A file too
/// large to be a signature is returned cut, so it fails to parse.
async fn read_signature(component: &Path) -> Option<String> {
    let bytes = tokio::fs::read(signature_path(component)).await.ok()?;
    let end = bytes.len().min(crate::signing::MAX_SIGNATURE_BYTES + 1);
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Whether `signature` is a signature file naming `digest`.
fn signs(signature: Option<&str>, digest: &str) -> bool {
    signature
        .and_then(|s| crate::signing::DetachedSignature::parse(s).ok())
        .is_some_and(|s| s.digest == digest)
}

fn source_of(path: &Path) -> String {
    format!("file:{}", path.display())
}

enum Signal {
    /// Components that changed, each with whether its writer is done with
    /// it (closed it after writing, or renamed it into place); `None` when
    /// only its signature file changed.
    Paths(Vec<(PathBuf, Option<bool>)>),
    Rescan,
}

/// Runs the directory side of riskhost: scans `dir` once, then (if
/// enabled) watches it until the process ends. `on_scanned` runs after the
/// scan, before watching, so readiness can be signalled.
pub async fn run(
    manager: Arc<ModelManager>,
    dir: PathBuf,
    settings: WatchSettings,
    on_scanned: impl FnOnce(),
) {
    // Absolute paths, so sources and events name files the same way.
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mut watcher = Watcher {
        manager,
        dir,
        settings,
        files: HashMap::new(),
    };
    // Watch before scanning so nothing written during the scan is missed;
    // what the scan already saw is recognised by digest afterwards.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let debouncer = if settings.enabled {
        match watcher.watch(tx) {
            Ok(d) => Some(d),
            Err(error) => {
                tracing::error!(dir = %watcher.dir.display(), %error, "cannot watch the plugins directory; changes need a restart");
                None
            }
        }
    } else {
        None
    };
    watcher.scan().await;
    on_scanned();
    let Some(_debouncer) = debouncer else {
        return;
    };
    tracing::info!(dir = %watcher.dir.display(), "watching the plugins directory");
    while let Some(signal) = rx.recv().await {
        // Coalesce everything already queued into one pass.
        let mut paths: BTreeMap<PathBuf, Option<bool>> = BTreeMap::new();
        let mut rescan = false;
        let mut take = |signal| match signal {
            Signal::Paths(changed) => {
                for (path, complete) in changed {
                    let entry = paths.entry(path).or_default();
                    if let Some(complete) = complete {
                        *entry = Some(entry.unwrap_or(false) | complete);
                    }
                }
            }
            Signal::Rescan => rescan = true,
        };
        take(signal);
        while let Ok(signal) = rx.try_recv() {
            take(signal);
        }
        if rescan {
            let known = watcher.files.keys().cloned();
            for path in known.chain(watcher.component_files().unwrap_or_default()) {
                // Not known to be complete: settle before reading.
                paths.entry(path).or_insert(Some(false));
            }
        }
        for (path, complete) in paths {
            // A component not written itself (only its signature, or a
            // rescan) is read at once.
            watcher.on_change(&path, complete.unwrap_or(true)).await;
        }
    }
}

struct Watcher {
    manager: Arc<ModelManager>,
    dir: PathBuf,
    settings: WatchSettings,
    files: HashMap<PathBuf, FileState>,
}

impl Watcher {
    /// The files the directory serves, by name.
    fn component_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files = component_files(&self.dir)?;
        files.retain(|p| is_component_name(p));
        Ok(files)
    }

    fn watch(
        &self,
        tx: mpsc::UnboundedSender<Signal>,
    ) -> notify_debouncer_full::notify::Result<
        notify_debouncer_full::Debouncer<
            notify_debouncer_full::notify::RecommendedWatcher,
            notify_debouncer_full::RecommendedCache,
        >,
    > {
        let mut debouncer = new_debouncer(
            self.settings.debounce,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) => {
                    let mut paths = Vec::new();
                    for event in events {
                        if event.need_rescan() {
                            let _ = tx.send(Signal::Rescan);
                        }
                        if is_relevant(&event.kind) {
                            let complete = is_complete(&event.kind);
                            paths.extend(event.paths.iter().filter_map(|p| {
                                let (component, is_signature) = component_of(p)?;
                                Some((component, (!is_signature).then_some(complete)))
                            }));
                        }
                    }
                    if !paths.is_empty() {
                        let _ = tx.send(Signal::Paths(paths));
                    }
                }
                Err(errors) => {
                    for error in errors {
                        tracing::warn!(%error, "file watch error; rescanning the plugins directory");
                    }
                    let _ = tx.send(Signal::Rescan);
                }
            },
        )?;
        debouncer.watch(&self.dir, RecursiveMode::NonRecursive)?;
        Ok(debouncer)
    }

    /// The start-up pass. A file whose digest is already stored is not
    /// re-activated: the store's state (which may come from later uploads,
    /// rollbacks or deletes) wins. New files compile concurrently, one per
    /// core ([`load_parallelism`]), and each is made active as soon as it
    /// is ready, so a file slow to compile (bounded by the compile budget)
    /// delays no other. Two new files naming the same model is a clash: the
    /// first by file name is served whatever order they finish in, the
    /// other is reported as failed.
    async fn scan(&mut self) {
        let files = match self.component_files() {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the plugins directory");
                self.manager.registry().record_failure(
                    &format!("dir:{}", self.dir.display()),
                    format!("cannot read directory: {e}"),
                );
                return;
            }
        };
        if files.is_empty() {
            tracing::warn!(dir = %self.dir.display(), "the plugins directory holds no .wasm files");
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(load_parallelism()));
        let mut loads = tokio::task::JoinSet::new();
        for path in files {
            // No settling: a file still being written now changes again
            // later, and the watch (already running) loads it then.
            let Some((bytes, digest)) = self.read(&path, true).await else {
                continue;
            };
            let signature = read_signature(&path).await;
            if let Some(record) = self.manager.store().get(&digest) {
                self.scan_stored(&path, record, bytes, signature).await;
                continue;
            }
            let (manager, slots) = (self.manager.clone(), slots.clone());
            loads.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let prepared = manager
                    .prepare(bytes, &digest, source_of(&path), signature.clone())
                    .await;
                (path, digest, signature, prepared)
            });
        }
        // Which file provides each model deployed by this scan.
        let mut provided: HashMap<String, PathBuf> = HashMap::new();
        while let Some(joined) = loads.join_next().await {
            let Ok((path, digest, signature, prepared)) = joined else {
                tracing::error!("a start-up load panicked");
                continue;
            };
            let model = match prepared {
                Err(_) => None,
                Ok(prepared) => {
                    let name = prepared.name().to_owned();
                    self.deploy_scanned(&mut provided, &path, prepared).await;
                    Some(name)
                }
            };
            self.files.insert(
                path,
                FileState {
                    digest,
                    signature,
                    model,
                },
            );
        }
        // After every file is known, so a renamed file counts, whatever its name.
        if self.settings.unload_on_delete {
            self.unload_models_of_files_removed_while_stopped().await;
        }
    }

    /// Deploys a file the start-up pass prepared, unless a file earlier by
    /// name provides its model; a later one that was deployed first (it
    /// compiled sooner) gives way and is reported as the clash.
    async fn deploy_scanned(
        &self,
        provided: &mut HashMap<String, PathBuf>,
        path: &Path,
        prepared: crate::deploy::Prepared,
    ) {
        let name = prepared.name().to_owned();
        let source = source_of(path);
        let clash = |winner: &Path| {
            format!(
                "model `{name}` is already provided by {}; rename one of them",
                source_of(winner)
            )
        };
        let registry = self.manager.registry();
        let earlier = provided.get(&name).cloned();
        if let Some(first) = earlier.as_ref().filter(|first| first.as_path() < path) {
            registry.record_failure(&source, clash(first));
            return;
        }
        if let Err(error) = self.manager.commit(prepared).await {
            tracing::error!(%source, %error, "cannot deploy");
            registry.record_failure(&source, error.to_string());
            return;
        }
        if let Some(later) = earlier {
            registry.record_failure(&source_of(&later), clash(path));
        }
        provided.insert(name, path.to_owned());
    }

    /// The start-up pass over a file whose version is stored already: the
    /// store's state wins, but a signature beside the file is stored with
    /// the version, and a version the store still names as active that
    /// could not be restored for want of a signature is activated with it.
    async fn scan_stored(
        &mut self,
        path: &Path,
        record: crate::store::VersionRecord,
        bytes: Vec<u8>,
        signature: Option<String>,
    ) {
        let source = source_of(path);
        let name = record.name.clone();
        let digest = record.digest.clone();
        if let Some(signature) = signature.clone() {
            let store = self.manager.store();
            let registry = self.manager.registry();
            let active_in_store = store.active(&name).as_deref() == Some(digest.as_str());
            let serving = registry
                .active()
                .get(&name)
                .is_some_and(|e| e.model.digest == digest);
            if active_in_store && !serving {
                if let Err(error) = self
                    .manager
                    .install(bytes, source.clone(), None, Some(signature))
                    .await
                {
                    tracing::error!(%source, %error, "cannot activate the stored version");
                }
            } else if let Err(error) = self
                .manager
                .attach_signature(&record, signature, &source)
                .await
            {
                tracing::warn!(%source, %error, "the signature beside a stored version was not kept");
            }
        }
        self.files.insert(
            path.to_owned(),
            FileState {
                digest,
                signature,
                model: Some(name),
            },
        );
    }

    /// A model made active by a file that is gone now is unloaded, as if the
    /// removal had been seen, unless another file provides it (a rename
    /// while stopped).
    async fn unload_models_of_files_removed_while_stopped(&mut self) {
        let active = self.manager.store().active_all();
        for name in active.keys() {
            self.unload_if_unprovided(name, None).await;
        }
    }

    /// The file of this directory that made `model`'s active version live,
    /// if that file is gone.
    fn activated_by_a_gone_file(&self, model: &str) -> Option<PathBuf> {
        let by = self.manager.store().history(model).last()?.by.clone();
        let path = PathBuf::from(by.strip_prefix("file:")?);
        (path.parent() == Some(self.dir.as_path()) && !path.exists()).then_some(path)
    }

    /// A file in the directory that still provides `model`: one known to
    /// hold a version of it, or one not handled yet (the new name of a
    /// rename whose event is still queued) holding `active`, its active
    /// version, or another stored version of it.
    async fn provider_of(&mut self, model: &str, active: &str) -> Option<PathBuf> {
        let known: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, state)| state.model.as_deref() == Some(model))
            .map(|(path, _)| path.clone())
            .collect();
        for path in known {
            if fingerprint(&path).await.is_some() {
                return Some(path);
            }
        }
        let unknown: Vec<PathBuf> = self
            .component_files()
            .unwrap_or_default()
            .into_iter()
            .filter(|path| !self.files.contains_key(path))
            .collect();
        for path in unknown {
            let Some((_, digest)) = self.read(&path, true).await else {
                continue;
            };
            if digest == active {
                // Known from now on, so its own event changes nothing.
                let signature = read_signature(&path).await;
                self.files.insert(
                    path.clone(),
                    FileState {
                        digest,
                        signature,
                        model: Some(model.to_owned()),
                    },
                );
                return Some(path);
            }
            if self
                .manager
                .store()
                .get(&digest)
                .is_some_and(|record| record.name == model)
            {
                return Some(path);
            }
        }
        None
    }

    /// Unloads `model` when the directory made its active version live (the
    /// file just `removed` held it, with that digest, or the file that
    /// activated it is gone) and no file in the directory provides the model
    /// any more. A version made live since by an upload or a rollback is not
    /// the directory's to unload.
    async fn unload_if_unprovided(&mut self, model: &str, removed: Option<(&Path, &str)>) {
        let registry = self.manager.registry().clone();
        let Some(active) = registry.active().get(model).map(|e| e.model.digest.clone()) else {
            return;
        };
        let held_by_removed = removed.is_some_and(|(_, digest)| digest == active);
        let by_gone_file = self.activated_by_a_gone_file(model);
        let Some(file) = removed
            .filter(|_| held_by_removed)
            .map(|(path, _)| path.to_owned())
            .or(by_gone_file)
        else {
            if let Some((path, _)) = removed {
                tracing::info!(file = %path.display(), %model, "file removed; the model keeps its active version, which came from elsewhere");
            }
            return;
        };
        if let Some(other) = self.provider_of(model, &active).await {
            tracing::info!(file = %file.display(), %model, provider = %other.display(),
                "the model's file is gone, but another file provides the model; it keeps its active version");
            return;
        }
        tracing::info!(file = %file.display(), %model, "the model's file is gone and no other file provides it; unloading");
        if let Err(error) = self
            .manager
            .remove(model, false, &format!("file-removed:{}", file.display()))
            .await
        {
            tracing::warn!(%model, %error, "cannot unload the model of a removed file");
        }
    }

    /// Waits for `path` to settle (unless its writer is `complete`) and
    /// reads it with its digest; `None` when it vanished or cannot be read
    /// (recorded as a failure).
    async fn read(&self, path: &Path, complete: bool) -> Option<(Vec<u8>, String)> {
        let source = source_of(path);
        let registry = self.manager.registry();
        let started = Instant::now();
        let mut last = fingerprint(path).await?;
        let mut settle = if complete {
            Duration::ZERO
        } else {
            self.settings.settle
        };
        loop {
            tokio::time::sleep(settle).await;
            let now = fingerprint(path).await?;
            if now != last && started.elapsed() < MAX_SETTLE {
                last = now;
                settle = self.settings.settle;
                continue;
            }
            if now.len > self.settings.max_component_bytes as u64 {
                let error = format!(
                    "the file is {} bytes; the limit is {} bytes",
                    now.len, self.settings.max_component_bytes
                );
                registry.record_failure(&source, error);
                return None;
            }
            let bytes = match tokio::fs::read(path).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => {
                    registry
                        .record_failure(&source, format!("cannot read {}: {e}", path.display()));
                    return None;
                }
            };
            // Changed while being read: someone is writing; wait for it to settle.
            if fingerprint(path).await.as_ref() != Some(&now) || bytes.len() as u64 != now.len {
                last = fingerprint(path).await?;
                settle = self.settings.settle;
                continue;
            }
            let (bytes, digest) = tokio::task::spawn_blocking(move || {
                let digest = ModelEngine::digest(&bytes);
                (bytes, digest)
            })
            .await
            .ok()?;
            return Some((bytes, digest));
        }
    }

    /// Something happened to `path`: load it, or unload what it provided.
    async fn on_change(&mut self, path: &Path, complete: bool) {
        let source = source_of(path);
        let registry = self.manager.registry().clone();
        if fingerprint(path).await.is_none() {
            self.on_removed(path).await;
            return;
        }
        let Some((bytes, digest)) = self.read(path, complete).await else {
            if fingerprint(path).await.is_none() {
                self.on_removed(path).await;
            }
            return;
        };
        let mut signature = read_signature(path).await;
        // Same content as last time: a touch, a duplicate event or a rescan.
        // Acting on it would undo uploads or rollbacks made since.
        let known = self.files.get(path).cloned();
        if let Some(known) = &known
            && known.digest == digest
        {
            if known.signature == signature {
                return;
            }
            // Only the signature changed. While the file's model serves some
            // version, this one is not re-activated (that would undo
            // rollbacks made since); its new signature is stored with it.
            // A model serving nothing (e.g. refused for want of this very
            // signature) is deployed below.
            let serving = known
                .model
                .as_ref()
                .filter(|m| self.manager.registry().active().contains_key(*m));
            if let (Some(model), Some(text), Some(record)) = (
                serving,
                signature.clone(),
                self.manager.store().get(&digest),
            ) {
                // A signature for another digest is the first half of a new
                // version (`.sig` before `.wasm`): the component's change deploys it.
                if signs(Some(text.as_str()), &digest)
                    && let Err(error) = self.manager.attach_signature(&record, text, &source).await
                {
                    tracing::warn!(%source, %model, %error, "the new signature was not kept");
                }
                self.files.insert(
                    path.to_owned(),
                    FileState {
                        signature,
                        ..known.clone()
                    },
                );
                return;
            }
        }
        if self.manager.signatures().required && !signs(signature.as_deref(), &digest) {
            // Published as `.wasm` then `.sig`: give the signature time to land.
            let waited = Instant::now();
            while waited.elapsed() < SIGNATURE_WAIT && !signs(signature.as_deref(), &digest) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                signature = read_signature(path).await;
            }
        }
        let previous = self.files.get(path).and_then(|s| s.model.clone());
        let outcome = self
            .manager
            .install(bytes, source.clone(), None, signature.clone())
            .await;
        let model = match &outcome {
            Ok(deployed) => {
                // The version may have come from elsewhere first (a rollback
                // target, another file): this file is fine now either way.
                registry.clear_failure(&source);
                Some(deployed.name.clone())
            }
            // Recorded as failures of this file already.
            Err(DeployError::Invalid(_))
            | Err(DeployError::NameMismatch { .. })
            | Err(DeployError::Signature(_)) => None,
            Err(error) => {
                tracing::error!(%source, %error, "cannot deploy");
                registry.record_failure(&source, error.to_string());
                None
            }
        };
        if let (Some(new), Some(old)) = (&model, &previous)
            && new != old
        {
            tracing::warn!(file = %path.display(), old = %old, new = %new,
                "the file now holds another model; it is loaded as that model and `{old}` keeps its active version");
        }
        self.files.insert(
            path.to_owned(),
            FileState {
                digest,
                signature,
                model,
            },
        );
    }

    async fn on_removed(&mut self, path: &Path) {
        self.manager.registry().clear_failure(&source_of(path));
        let Some(state) = self.files.remove(path) else {
            return;
        };
        let Some(model) = state.model else {
            return;
        };
        if !self.settings.unload_on_delete {
            tracing::info!(file = %path.display(), %model, "file removed; the model keeps its active version");
            return;
        }
        self.unload_if_unprovided(&model, Some((path, &state.digest)))
            .await;
    }
}

/// Events after which the file is whole as far as its writer is concerned:
/// closed after writing, or renamed into place.
fn is_complete(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
    )
}

/// File events that can change what a file holds. Opens and reads (our own
/// included) and metadata-only changes are not.
fn is_relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_wasm_files_are_components() {
        assert!(is_component_name(Path::new("/p/var.wasm")));
        assert!(!is_component_name(Path::new("/p/.var.wasm")));
        assert!(!is_component_name(Path::new("/p/.var.wasm.tmp")));
        assert!(!is_component_name(Path::new("/p/var.wasm.part")));
        assert!(!is_component_name(Path::new("/p/var")));
    }

    #[test]
    fn a_signature_file_stands_for_its_component() {
        let wasm = PathBuf::from("/p/var.wasm");
        assert_eq!(component_of(&wasm), Some((wasm.clone(), false)));
        assert_eq!(
            component_of(Path::new("/p/var.wasm.sig")),
            Some((wasm.clone(), true))
        );
        assert_eq!(signature_path(&wasm), PathBuf::from("/p/var.wasm.sig"));
        assert_eq!(component_of(Path::new("/p/.var.wasm.sig")), None);
        assert_eq!(component_of(Path::new("/p/var.sig")), None);
        assert_eq!(component_of(Path::new("/p/var.wasm.sig.tmp")), None);
    }

    #[test]
    fn our_own_reads_are_not_changes() {
        use notify_debouncer_full::notify::event::{CreateKind, DataChange, MetadataKind};
        assert!(!is_relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_relevant(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::AccessTime
        ))));
        assert!(is_relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_relevant(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(is_relevant(&EventKind::Create(CreateKind::File)));
    }
}
