//! [`ModelCatalog`]: the one trait the admin routes change models through,
//! with two backends chosen by `--model-store`: `local`, this replica's
//! [`ModelManager`] and its data dir, and `postgres`, the shared registry
//! of `riskhost-fleet` that every replica of a fleet follows.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::deploy::{DeployError, Deployed, ModelManager, VersionId, VersionsView};

/// A model's challenger as a fleet shares it (what `PUT
/// /v1/models/{name}/challenger` set; the evidence stays per replica).
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengerSetting {
    pub digest: String,
    pub sample: f64,
    pub tolerance_abs: f64,
    pub tolerance_rel: f64,
}

/// Applies the fleet's challengers, by model, on this replica; set by the
/// composition root, which owns the scoring service.
pub type ChallengerHook = std::sync::Arc<
    dyn Fn(BTreeMap<String, ChallengerSetting>) -> futures::future::BoxFuture<'static, ()>
        + Send
        + Sync,
>;

/// Who asked for a change, for the audit log.
#[derive(Debug, Clone)]
pub struct ChangeBy {
    /// The caller's API key id (`anonymous` without keys).
    pub key_id: String,
    /// Where the bytes of an upload came from, recorded as the version's
    /// source (`oci:REGISTRY/REPO@sha256:…`); `api:NAME` when absent.
    pub origin: Option<String>,
}

impl ChangeBy {
    /// The source recorded for an upload of `name`.
    pub fn source(&self, name: &str) -> String {
        self.origin.clone().unwrap_or_else(|| format!("api:{name}"))
    }
}

/// What one model's pointer says, or what a replica serves of it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ServedVersion {
    /// The registry's revision of the pointer (`null` with `--model-store local`).
    pub revision: Option<i64>,
    pub digest: String,
}

/// One replica, as its heartbeats describe it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ReplicaView {
    pub id: String,
    /// Its last heartbeat.
    pub last_seen: DateTime<Utc>,
    /// No heartbeat within three periods: it is gone, or cut off from the
    /// registry and serving what it last stored.
    pub stale: bool,
    /// What it serves, per model.
    pub models: BTreeMap<String, ServedVersion>,
}

/// `GET /v1/fleet`: what the registry says and what each replica serves,
/// so an operator can watch a change converge.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FleetView {
    /// `local` or `postgres`.
    pub model_store: String,
    /// The replica that answered.
    pub replica: String,
    /// Whether the registry could be read for this answer.
    pub registry_available: bool,
    /// Why not, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The registry's active pointers (`null` when it could not be read).
    pub models: Option<BTreeMap<String, ServedVersion>>,
    pub replicas: Vec<ReplicaView>,
}

/// Uploads, rollbacks, removals and the versions view of models.
#[async_trait]
pub trait ModelCatalog: Send + Sync {
    /// `local` or `postgres`, as `--model-store` names it.
    fn backend(&self) -> &'static str;

    /// Makes `bytes` the active version of `name` once validated; the
    /// answer's `changed` is false when it already was.
    async fn upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        signature: Option<String>,
        by: &ChangeBy,
    ) -> Result<Deployed, DeployError>;

    /// Makes a stored version active again (by default the previous one).
    async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
        by: &ChangeBy,
    ) -> Result<Deployed, DeployError>;

    /// Stops serving `name`; with `purge`, deletes its versions too.
    async fn remove(
        &self,
        name: &str,
        purge: bool,
        by: &ChangeBy,
    ) -> Result<Option<VersionId>, DeployError>;

    /// Every version of `name`, which is active, and the change history.
    async fn versions(&self, name: &str) -> Result<VersionsView, DeployError>;

    /// The fleet: the registry's pointers and every replica's.
    async fn fleet(&self) -> FleetView;

    /// Shares `name`'s challenger with every replica (`None`: stops it
    /// everywhere). This replica has set it already; a catalog of one
    /// replica has no one to tell.
    async fn share_challenger(
        &self,
        _name: &str,
        _setting: Option<ChallengerSetting>,
        _by: &ChangeBy,
    ) -> Result<(), DeployError> {
        Ok(())
    }
}

#[async_trait]
impl ModelCatalog for ModelManager {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        signature: Option<String>,
        by: &ChangeBy,
    ) -> Result<Deployed, DeployError> {
        self.install(bytes, by.source(name), Some(name), signature)
            .await
    }

    async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
        _by: &ChangeBy,
    ) -> Result<Deployed, DeployError> {
        ModelManager::rollback(self, name, to).await
    }

    async fn remove(
        &self,
        name: &str,
        purge: bool,
        _by: &ChangeBy,
    ) -> Result<Option<VersionId>, DeployError> {
        ModelManager::remove(self, name, purge, "api:delete").await
    }

    async fn versions(&self, name: &str) -> Result<VersionsView, DeployError> {
        ModelManager::versions(self, name)
    }

    /// A fleet of one: this replica is the registry.
    async fn fleet(&self) -> FleetView {
        let models = self.served();
        FleetView {
            model_store: "local".into(),
            replica: "local".into(),
            registry_available: true,
            error: None,
            models: Some(models.clone()),
            replicas: vec![ReplicaView {
                id: "local".into(),
                last_seen: Utc::now(),
                stale: false,
                models,
            }],
        }
    }
}

impl ModelManager {
    /// What this replica serves, per model, with the shared registry's
    /// revision it applied (none with `--model-store local`).
    pub fn served(&self) -> BTreeMap<String, ServedVersion> {
        let revisions = self.registry_revisions();
        self.registry()
            .active()
            .iter()
            .map(|(name, entry)| {
                (
                    name.clone(),
                    ServedVersion {
                        revision: revisions.get(name).copied(),
                        digest: entry.model.digest.clone(),
                    },
                )
            })
            .collect()
    }
}
