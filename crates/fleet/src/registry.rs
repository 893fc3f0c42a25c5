//! [`PgRegistry`]: the shared registry's tables (migration
//! `0005_model_registry.sql`) and every statement riskhost runs on them.
//!
//! Each change is one transaction: the model's pointer row is locked
//! (`FOR UPDATE`), so concurrent changes through different replicas are
//! serialised by the database, each one moves the revision by one, appends
//! its audit row and notifies the replicas (`pg_notify`, delivered at
//! commit). A change either happens whole or not at all.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use riskhost_db::{DbError, PgPool};
use riskhost_models::ChallengerSetting;
use tokio_postgres::Client;

/// A model's active pointer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pointer {
    pub(crate) name: String,
    /// `None` once the model is deleted.
    pub(crate) digest: Option<String>,
    pub(crate) revision: i64,
    pub(crate) changed_at: DateTime<Utc>,
}

/// A version the registry holds, without its bytes.
#[derive(Debug, Clone)]
pub(crate) struct RegistryVersion {
    pub(crate) digest: String,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) size_bytes: i64,
    pub(crate) signature: Option<String>,
    pub(crate) uploaded_by: String,
    pub(crate) uploaded_via: String,
    pub(crate) source: String,
    pub(crate) uploaded_at: DateTime<Utc>,
}

/// Everything a replica follows: pointers and the versions that exist.
#[derive(Debug, Clone)]
pub(crate) struct RegistryState {
    pub(crate) pointers: Vec<Pointer>,
    pub(crate) versions: Vec<RegistryVersion>,
}

/// One row of the audit log.
#[derive(Debug, Clone)]
pub(crate) struct AuditEntry {
    pub(crate) at: DateTime<Utc>,
    pub(crate) key_id: String,
    pub(crate) action: String,
    pub(crate) digest: Option<String>,
    pub(crate) revision: Option<i64>,
    pub(crate) replica: String,
}

/// A version to publish.
pub(crate) struct NewVersion<'a> {
    pub(crate) digest: &'a str,
    pub(crate) name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) info: String,
    pub(crate) component: Vec<u8>,
    pub(crate) signature: Option<&'a str>,
    /// Where the bytes came from (`VersionRecord::source`).
    pub(crate) source: &'a str,
}

/// The outcome of a change of a pointer.
#[derive(Debug, Clone)]
pub(crate) struct Changed {
    /// The pointer before the change (digest and its semver).
    pub(crate) previous: Option<(String, String)>,
    /// The pointer's revision now.
    pub(crate) revision: i64,
    /// False when the pointer already said this.
    pub(crate) changed: bool,
    /// The version now active, when there is one (digest and its semver).
    pub(crate) active: Option<(String, String)>,
}

/// Why a change was refused by what the registry holds.
#[derive(Debug)]
pub(crate) enum Refusal {
    UnknownModel,
    UnknownVersion,
    NoPrevious,
    NotLoaded,
    /// The caller's check of the target (its signature) failed.
    Target(riskhost_models::signing::SignatureError),
}

/// A replica's heartbeat row.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaRow {
    pub(crate) id: String,
    pub(crate) last_seen: DateTime<Utc>,
    pub(crate) stale: bool,
    pub(crate) models: String,
}

/// Who made a change and through which replica.
pub(crate) struct Actor<'a> {
    pub(crate) key_id: &'a str,
    pub(crate) replica: &'a str,
}

/// The registry's tables under the pool's schema.
#[derive(Clone)]
pub(crate) struct PgRegistry {
    pool: PgPool,
    schema: String,
    channel: String,
}

type Tx<T, R> = Result<Result<T, R>, tokio_postgres::Error>;

impl PgRegistry {
    pub(crate) fn new(pool: PgPool) -> Result<PgRegistry, DbError> {
        let channel = riskhost_db::channel_name(&pool, "models")?;
        Ok(PgRegistry {
            schema: pool.schema(),
            pool,
            channel,
        })
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The channel every change is notified on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The fleet's challengers, by model.
    pub(crate) async fn challengers(&self) -> Result<BTreeMap<String, ChallengerSetting>, DbError> {
        let sql = format!(
            "SELECT name, digest, sample, tolerance_abs, tolerance_rel FROM {}.model_challengers",
            self.schema
        );
        let rows = self
            .pool
            .run("registry_challengers", move |client| {
                Box::pin(async move { client.query(&sql, &[]).await })
            })
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    ChallengerSetting {
                        digest: row.get(1),
                        sample: row.get(2),
                        tolerance_abs: row.get(3),
                        tolerance_rel: row.get(4),
                    },
                )
            })
            .collect())
    }

    /// Sets (or with `None` removes) `name`'s challenger and notifies the
    /// replicas.
    pub(crate) async fn set_challenger(
        &self,
        name: &str,
        setting: Option<ChallengerSetting>,
        key_id: &str,
    ) -> Result<(), DbError> {
        let schema = self.schema.clone();
        let (name, key_id, channel) = (name.to_owned(), key_id.to_owned(), self.channel.clone());
        self.pool
            .run("registry_set_challenger", move |client| {
                Box::pin(async move {
                    match setting {
                        Some(s) => {
                            client
                                .execute(
                                    &format!(
                                        "INSERT INTO {schema}.model_challengers (name, digest, sample, tolerance_abs, tolerance_rel, set_by)
                                         VALUES ($1, $2, $3, $4, $5, $6)
                                         ON CONFLICT (name) DO UPDATE SET digest = EXCLUDED.digest, sample = EXCLUDED.sample,
                                             tolerance_abs = EXCLUDED.tolerance_abs, tolerance_rel = EXCLUDED.tolerance_rel,
                                             set_by = EXCLUDED.set_by, set_at = clock_timestamp()"
                                    ),
                                    &[&name, &s.digest, &s.sample, &s.tolerance_abs, &s.tolerance_rel, &key_id],
                                )
                                .await?;
                        }
                        None => {
                            client
                                .execute(
                                    &format!("DELETE FROM {schema}.model_challengers WHERE name = $1"),
                                    &[&name],
                                )
                                .await?;
                        }
                    }
                    client
                        .execute("SELECT pg_notify($1, $2)", &[&channel, &name])
                        .await?;
                    Ok(())
                })
            })
            .await
    }

    /// The pointers and versions, read in one snapshot.
    pub(crate) async fn state(&self) -> Result<RegistryState, DbError> {
        let schema = self.schema.clone();
        self.pool
            .run("registry_state", move |client| {
                Box::pin(async move {
                    client
                        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        .await?;
                    let read = async {
                        let pointers = client
                            .query(
                                &format!(
                                    "SELECT name, digest, revision, changed_at FROM {schema}.model_active ORDER BY name"
                                ),
                                &[],
                            )
                            .await?
                            .iter()
                            .map(|row| Pointer {
                                name: row.get(0),
                                digest: row.get(1),
                                revision: row.get(2),
                                changed_at: row.get(3),
                            })
                            .collect();
                        let versions = client
                            .query(
                                &format!(
                                    "SELECT digest, name, version, size_bytes, signature, uploaded_by, uploaded_via, uploaded_at, source
                                     FROM {schema}.model_versions ORDER BY name, uploaded_at"
                                ),
                                &[],
                            )
                            .await?
                            .iter()
                            .map(version_of)
                            .collect();
                        Ok::<_, tokio_postgres::Error>(RegistryState { pointers, versions })
                    };
                    let state = read.await;
                    let _ = client.batch_execute("COMMIT").await;
                    state
                })
            })
            .await
    }

    /// The bytes of one version.
    pub(crate) async fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, DbError> {
        let (schema, digest) = (self.schema.clone(), digest.to_owned());
        self.pool
            .run("registry_component", move |client| {
                Box::pin(async move {
                    Ok(client
                        .query_opt(
                            &format!(
                                "SELECT component FROM {schema}.model_versions WHERE digest = $1"
                            ),
                            &[&digest],
                        )
                        .await?
                        .map(|row| row.get::<_, Vec<u8>>(0)))
                })
            })
            .await
    }

    /// Stores `new` (keeping a stored version's bytes, taking a newer
    /// signature) and points its model at it.
    pub(crate) async fn publish(
        &self,
        new: NewVersion<'_>,
        actor: Actor<'_>,
    ) -> Result<Changed, DbError> {
        let (schema, channel) = (self.schema.clone(), self.channel.clone());
        let (digest, name, version) = (
            new.digest.to_owned(),
            new.name.to_owned(),
            new.version.to_owned(),
        );
        let (info, component) = (new.info, new.component);
        let signature = new.signature.map(str::to_owned);
        let source = new.source.to_owned();
        let (key_id, replica) = (actor.key_id.to_owned(), actor.replica.to_owned());
        self.pool
            .run("registry_publish", move |client| {
                Box::pin(transaction(client, async move {
                    let size = component.len() as i64;
                    let inserted = client
                        .execute(
                            &format!(
                                "INSERT INTO {schema}.model_versions
                                   (digest, name, version, info, component, size_bytes, signature, uploaded_by, uploaded_via, source)
                                 VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9, $10)
                                 ON CONFLICT (digest) DO NOTHING"
                            ),
                            &[&digest, &name, &version, &info, &component, &size, &signature, &key_id, &replica, &source],
                        )
                        .await?
                        == 1;
                    if !inserted && signature.is_some() {
                        client
                            .execute(
                                &format!("UPDATE {schema}.model_versions SET signature = $2 WHERE digest = $1"),
                                &[&digest, &signature],
                            )
                            .await?;
                    }
                    let action = if inserted { "upload" } else { "activate" };
                    let changed = point(client, &schema, &channel, &name, Some(&digest), action, &key_id, &replica, false).await?;
                    Ok(Ok::<_, std::convert::Infallible>(changed))
                }))
            })
            .await
            .map(|outcome| match outcome {
                Ok(changed) => changed,
                Err(never) => match never {},
            })
    }

    /// Points `name` at the version `to` names (digest or semver), or at
    /// the previously active one. `check` vets the target (its signature)
    /// before anything changes.
    pub(crate) async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
        check: impl Fn(&RegistryVersion) -> Result<(), riskhost_models::signing::SignatureError>
        + Send
        + Sync
        + 'static,
        actor: Actor<'_>,
    ) -> Result<Result<Changed, Refusal>, DbError> {
        let (schema, channel) = (self.schema.clone(), self.channel.clone());
        let (name, to) = (name.to_owned(), to.map(str::to_owned));
        let (key_id, replica) = (actor.key_id.to_owned(), actor.replica.to_owned());
        self.pool
            .run("registry_rollback", move |client| {
                Box::pin(transaction(client, async move {
                    let current = lock_pointer(client, &schema, &name).await?;
                    let versions: Vec<RegistryVersion> = client
                        .query(
                            &format!(
                                "SELECT digest, name, version, size_bytes, signature, uploaded_by, uploaded_via, uploaded_at, source
                                 FROM {schema}.model_versions WHERE name = $1 ORDER BY uploaded_at DESC"
                            ),
                            &[&name],
                        )
                        .await?
                        .iter()
                        .map(version_of)
                        .collect();
                    if versions.is_empty() {
                        return Ok(Err(Refusal::UnknownModel));
                    }
                    let current_digest = current.and_then(|(digest, _)| digest);
                    let target = match &to {
                        Some(pin) => match versions.iter().find(|v| &v.digest == pin || &v.version == pin) {
                            Some(v) => v.clone(),
                            None => return Ok(Err(Refusal::UnknownVersion)),
                        },
                        None => {
                            let previous = client
                                .query_opt(
                                    &format!(
                                        "SELECT a.digest FROM {schema}.model_audit a
                                         JOIN {schema}.model_versions v ON v.digest = a.digest
                                         WHERE a.name = $1 AND a.digest IS DISTINCT FROM $2
                                           AND a.action IN ('upload', 'activate', 'rollback')
                                         ORDER BY a.id DESC LIMIT 1"
                                    ),
                                    &[&name, &current_digest],
                                )
                                .await?
                                .map(|row| row.get::<_, String>(0));
                            match previous.and_then(|d| versions.iter().find(|v| v.digest == d).cloned()) {
                                Some(v) => v,
                                None => return Ok(Err(Refusal::NoPrevious)),
                            }
                        }
                    };
                    if let Err(error) = check(&target) {
                        return Ok(Err(Refusal::Target(error)));
                    }
                    let changed = point(client, &schema, &channel, &name, Some(&target.digest), "rollback", &key_id, &replica, false).await?;
                    Ok(Ok(changed))
                }))
            })
            .await
    }

    /// Deletes `name`'s pointer (and, with `purge`, its versions).
    pub(crate) async fn remove(
        &self,
        name: &str,
        purge: bool,
        actor: Actor<'_>,
    ) -> Result<Result<Changed, Refusal>, DbError> {
        let (schema, channel) = (self.schema.clone(), self.channel.clone());
        let name = name.to_owned();
        let (key_id, replica) = (actor.key_id.to_owned(), actor.replica.to_owned());
        self.pool
            .run("registry_remove", move |client| {
                Box::pin(transaction(client, async move {
                    let current = lock_pointer(client, &schema, &name).await?;
                    let active = current.as_ref().and_then(|(digest, _)| digest.clone());
                    let stored: i64 = client
                        .query_one(
                            &format!(
                                "SELECT count(*) FROM {schema}.model_versions WHERE name = $1"
                            ),
                            &[&name],
                        )
                        .await?
                        .get(0);
                    if active.is_none() && !(purge && stored > 0) {
                        return Ok(Err(Refusal::NotLoaded));
                    }
                    let action = if purge { "purge" } else { "delete" };
                    // A purge changes what the registry holds even when nothing was
                    // active: it moves the revision so every replica drops its copies.
                    let changed = point(
                        client, &schema, &channel, &name, None, action, &key_id, &replica, purge,
                    )
                    .await?;
                    if purge {
                        client
                            .execute(
                                &format!("DELETE FROM {schema}.model_versions WHERE name = $1"),
                                &[&name],
                            )
                            .await?;
                    }
                    Ok(Ok(changed))
                }))
            })
            .await
    }

    /// The versions of `name`, its pointer and its last 100 changes
    /// (oldest first).
    pub(crate) async fn model(
        &self,
        name: &str,
    ) -> Result<(Option<Pointer>, Vec<RegistryVersion>, Vec<AuditEntry>), DbError> {
        let (schema, name) = (self.schema.clone(), name.to_owned());
        self.pool
            .run("registry_model", move |client| {
                Box::pin(async move {
                    let pointer = client
                        .query_opt(
                            &format!("SELECT name, digest, revision, changed_at FROM {schema}.model_active WHERE name = $1"),
                            &[&name],
                        )
                        .await?
                        .map(|row| Pointer {
                            name: row.get(0),
                            digest: row.get(1),
                            revision: row.get(2),
                            changed_at: row.get(3),
                        });
                    let versions = client
                        .query(
                            &format!(
                                "SELECT digest, name, version, size_bytes, signature, uploaded_by, uploaded_via, uploaded_at, source
                                 FROM {schema}.model_versions WHERE name = $1 ORDER BY uploaded_at"
                            ),
                            &[&name],
                        )
                        .await?
                        .iter()
                        .map(version_of)
                        .collect();
                    let mut audit: Vec<AuditEntry> = client
                        .query(
                            &format!(
                                "SELECT at, key_id, action, digest, revision, replica FROM {schema}.model_audit
                                 WHERE name = $1 ORDER BY id DESC LIMIT 100"
                            ),
                            &[&name],
                        )
                        .await?
                        .iter()
                        .map(|row| AuditEntry {
                            at: row.get(0),
                            key_id: row.get(1),
                            action: row.get(2),
                            digest: row.get(3),
                            revision: row.get(4),
                            replica: row.get(5),
                        })
                        .collect();
                    audit.reverse();
                    Ok((pointer, versions, audit))
                })
            })
            .await
    }

    /// Records that `replica` is alive and what it serves (`models` is
    /// JSON text).
    pub(crate) async fn heartbeat(
        &self,
        replica: &str,
        started_at: DateTime<Utc>,
        models: String,
    ) -> Result<(), DbError> {
        let (schema, replica) = (self.schema.clone(), replica.to_owned());
        self.pool
            .run("registry_heartbeat", move |client| {
                Box::pin(async move {
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {schema}.fleet_replicas (id, started_at, last_seen, models)
                                 VALUES ($1, $2, now(), $3::text::jsonb)
                                 ON CONFLICT (id) DO UPDATE
                                 SET started_at = EXCLUDED.started_at, last_seen = now(), models = EXCLUDED.models"
                            ),
                            &[&replica, &started_at, &models],
                        )
                        .await?;
                    Ok(())
                })
            })
            .await
    }

    /// Every replica that heartbeated within `forget_after_secs`, stale
    /// when its last heartbeat is older than `stale_after_secs` (both by
    /// the database's clock, so replicas' clocks do not matter).
    pub(crate) async fn replicas(
        &self,
        stale_after_secs: f64,
        forget_after_secs: f64,
    ) -> Result<Vec<ReplicaRow>, DbError> {
        let schema = self.schema.clone();
        self.pool
            .run("registry_replicas", move |client| {
                Box::pin(async move {
                    Ok(client
                        .query(
                            &format!(
                                "SELECT id, last_seen, now() - last_seen > make_interval(secs => $1), models::text
                                 FROM {schema}.fleet_replicas
                                 WHERE now() - last_seen <= make_interval(secs => $2)
                                 ORDER BY id"
                            ),
                            &[&stale_after_secs, &forget_after_secs],
                        )
                        .await?
                        .iter()
                        .map(|row| ReplicaRow {
                            id: row.get(0),
                            last_seen: row.get(1),
                            stale: row.get(2),
                            models: row.get(3),
                        })
                        .collect())
                })
            })
            .await
    }
}

fn version_of(row: &tokio_postgres::Row) -> RegistryVersion {
    RegistryVersion {
        digest: row.get(0),
        name: row.get(1),
        version: row.get(2),
        size_bytes: row.get(3),
        signature: row.get(4),
        uploaded_by: row.get(5),
        uploaded_via: row.get(6),
        uploaded_at: row.get(7),
        source: row.get(8),
    }
}

/// Runs `body` in a transaction: committed when it answers `Ok(Ok(_))`,
/// rolled back otherwise, so a pooled connection never goes back to the
/// pool inside a transaction.
async fn transaction<T, R>(
    client: &Client,
    body: impl std::future::Future<Output = Tx<T, R>>,
) -> Tx<T, R> {
    client.batch_execute("BEGIN").await?;
    match body.await {
        Ok(Ok(value)) => {
            client.batch_execute("COMMIT").await?;
            Ok(Ok(value))
        }
        other => {
            let _ = client.batch_execute("ROLLBACK").await;
            other
        }
    }
}

/// Locks `name`'s pointer row for the rest of the transaction; its digest
/// and revision, if the row exists.
async fn lock_pointer(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Option<(Option<String>, i64)>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            &format!(
                "SELECT digest, revision FROM {schema}.model_active WHERE name = $1 FOR UPDATE"
            ),
            &[&name],
        )
        .await?
        .map(|row| (row.get(0), row.get(1))))
}

/// Moves `name`'s pointer to `digest` (the next revision), appends the
/// audit row and notifies; nothing when the pointer already says `digest`,
/// unless `always`.
#[allow(clippy::too_many_arguments)]
async fn point(
    client: &Client,
    schema: &str,
    channel: &str,
    name: &str,
    digest: Option<&str>,
    action: &str,
    key_id: &str,
    replica: &str,
    always: bool,
) -> Result<Changed, tokio_postgres::Error> {
    let current = lock_pointer(client, schema, name).await?;
    let semver = |digest: Option<String>| async move {
        match digest {
            None => Ok::<_, tokio_postgres::Error>(None),
            Some(d) => Ok(client
                .query_opt(
                    &format!("SELECT version FROM {schema}.model_versions WHERE digest = $1"),
                    &[&d],
                )
                .await?
                .map(|row| (d, row.get::<_, String>(0)))),
        }
    };
    let previous = semver(current.as_ref().and_then(|(d, _)| d.clone())).await?;
    let active = semver(digest.map(str::to_owned)).await?;
    if let Some((current_digest, revision)) = &current
        && current_digest.as_deref() == digest
        && !always
    {
        return Ok(Changed {
            previous: previous.clone(),
            revision: *revision,
            changed: false,
            active,
        });
    }
    let revision: i64 = client
        .query_one(
            &format!(
                "INSERT INTO {schema}.model_active (name, digest, revision) VALUES ($1, $2, 1)
                 ON CONFLICT (name) DO UPDATE
                 SET digest = EXCLUDED.digest, revision = {schema}.model_active.revision + 1, changed_at = clock_timestamp()
                 RETURNING revision"
            ),
            &[&name, &digest],
        )
        .await?
        .get(0);
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.model_audit (key_id, action, name, digest, revision, replica)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            &[&key_id, &action, &name, &digest, &revision, &replica],
        )
        .await?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &name])
        .await?;
    Ok(Changed {
        previous,
        revision,
        changed: true,
        active,
    })
}
