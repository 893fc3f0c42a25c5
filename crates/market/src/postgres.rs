//! [`PostgresSource`]: market data and stored portfolios in PostgreSQL,
//! through a deadpool connection pool.
//!
//! Tables live in one schema (`--postgres-schema`), created by the
//! migrations of `riskhost_db::migrate` that the host runs at start-up and
//! `riskhost db migrate` runs on demand. A window is one query (every
//! instrument of the batch, `instrument = ANY($1)`, over the window's dates,
//! plus the last close before it per instrument) filled by
//! [`super::window::assemble_window`], so windows are bit-identical to the
//! embedded table's on the same data.
//!
//! The snapshot version is `epoch.version` from the `data_version` row that
//! triggers bump on every statement that changes prices or instruments; it
//! is re-checked at most once per `--data-version-ttl-ms`.
//!
//! Every failure to reach the database is [`DataError::Unavailable`] (503
//! `data_unavailable`), bounded in time by [`PgPool`]'s timeouts.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use riskhost_db::PgPool;
use tokio_postgres::types::ToSql;

use super::window::{MarketMeta, MetaCache, MetaLoader, Observation, assemble_window};
use super::{
    DataChange, DataError, MarketDataSource, PriceTable, PriceWindow, SnapshotId, StoredPortfolio,
    StoredPosition,
};

/// What `riskhost db seed` writes, and how much of it changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub instruments: u64,
    pub prices: u64,
    pub portfolios: u64,
    pub positions: u64,
}

/// Upserts instruments, prices and portfolios; rows already equal are left
/// alone, so seeding twice keeps the data version (and every cached score).
/// Stored portfolios are replaced whole (their positions are rewritten).
pub async fn seed(
    pool: &PgPool,
    table: &PriceTable,
    instrument_info: &HashMap<String, (String, String)>,
    portfolios: &[StoredPortfolio],
) -> Result<SeedReport, DataError> {
    let schema = pool.schema();
    let ids: Vec<String> = table.instruments().to_vec();
    let names: Vec<Option<String>> = ids
        .iter()
        .map(|id| instrument_info.get(id).map(|(n, _)| n.clone()))
        .collect();
    let classes: Vec<Option<String>> = ids
        .iter()
        .map(|id| instrument_info.get(id).map(|(_, c)| c.clone()))
        .collect();
    let observations: Vec<(NaiveDate, String, f64)> = table
        .observations()
        .map(|(d, id, c)| (d, id.to_owned(), c))
        .collect();
    let portfolios = portfolios.to_vec();
    pool.run("seed", move |client| Box::pin(async move {
        let mut report = SeedReport::default();
        client.batch_execute("BEGIN").await?;
        let work = async {
            report.instruments = client
                .execute(
                    &format!(
                        "INSERT INTO {schema}.instruments (id, name, asset_class)
                         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                             asset_class = excluded.asset_class, updated_at = now()
                         WHERE (instruments.name, instruments.asset_class)
                               IS DISTINCT FROM (excluded.name, excluded.asset_class)"
                    ),
                    &[&ids, &names, &classes],
                )
                .await?;
            let upsert = format!(
                "INSERT INTO {schema}.prices (instrument, date, close)
                 SELECT * FROM unnest($1::text[], $2::date[], $3::float8[])
                 ON CONFLICT (instrument, date) DO UPDATE SET close = excluded.close
                 WHERE prices.close IS DISTINCT FROM excluded.close"
            );
            for chunk in observations.chunks(20_000) {
                let ids: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
                let dates: Vec<NaiveDate> = chunk.iter().map(|r| r.0).collect();
                let closes: Vec<f64> = chunk.iter().map(|r| r.2).collect();
                report.prices += client.execute(&upsert, &[&ids, &dates, &closes]).await?;
            }
            for p in &portfolios {
                report.portfolios += client
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.portfolios (id) VALUES ($1) ON CONFLICT (id) DO NOTHING"
                        ),
                        &[&p.id],
                    )
                    .await?;
                client
                    .execute(
                        &format!("DELETE FROM {schema}.positions WHERE portfolio_id = $1"),
                        &[&p.id],
                    )
                    .await?;
                let instruments: Vec<&str> =
                    p.positions.iter().map(|x| x.instrument.as_str()).collect();
                let quantities: Vec<f64> = p.positions.iter().map(|x| x.quantity).collect();
                report.positions += client
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.positions (portfolio_id, instrument, quantity)
                             SELECT $1, * FROM unnest($2::text[], $3::float8[])"
                        ),
                        &[&p.id, &instruments, &quantities],
                    )
                    .await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        match work.await {
            Ok(()) => client.batch_execute("COMMIT").await?,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
        Ok(report)
    }))
    .await
    .map_err(DataError::from)
}

/// Market data and stored portfolios from PostgreSQL.
pub struct PostgresSource {
    pool: PgPool,
    meta: MetaCache,
    /// Queries with the schema interpolated once.
    sql: Queries,
}

struct Queries {
    version: String,
    calendar: String,
    instruments: String,
    window: String,
    portfolio: String,
    portfolios: String,
    portfolio_ids: String,
    changes: String,
}

impl Queries {
    fn new(s: &str) -> Queries {
        Queries {
            version: format!("SELECT epoch, version FROM {s}.data_version"),
            // A loose index scan on prices(date): one index probe per
            // distinct date instead of reading every row.
            calendar: format!(
                "WITH RECURSIVE d(date) AS (
                     (SELECT date FROM {s}.prices ORDER BY date LIMIT 1)
                     UNION ALL
                     SELECT (SELECT p.date FROM {s}.prices p WHERE p.date > d.date ORDER BY p.date LIMIT 1)
                     FROM d WHERE d.date IS NOT NULL)
                 SELECT date FROM d WHERE date IS NOT NULL"
            ),
            instruments: format!("SELECT id FROM {s}.instruments"),
            // One round trip for a whole batch: the data version (to detect
            // a change since the calendar was read), the closes inside the
            // window, and per instrument the last close before it.
            window: format!(
                "WITH v AS (SELECT version FROM {s}.data_version),
                 r AS (
                     SELECT instrument, date, close FROM {s}.prices
                     WHERE instrument = ANY($1) AND date >= $2 AND date <= $3
                     UNION ALL
                     SELECT i.id, b.date, b.close
                     FROM unnest($1::text[]) AS i(id)
                     CROSS JOIN LATERAL (
                         SELECT date, close FROM {s}.prices
                         WHERE instrument = i.id AND date < $2
                         ORDER BY date DESC LIMIT 1) b)
                 SELECT v.version, r.instrument, r.date, r.close FROM v LEFT JOIN r ON true"
            ),
            portfolio: format!(
                "SELECT pos.instrument, pos.quantity FROM {s}.portfolios p
                 LEFT JOIN {s}.positions pos ON pos.portfolio_id = p.id
                 WHERE p.id = $1 ORDER BY pos.instrument"
            ),
            portfolios: format!(
                "SELECT p.id, pos.instrument, pos.quantity FROM {s}.portfolios p
                 LEFT JOIN {s}.positions pos ON pos.portfolio_id = p.id
                 WHERE p.id = ANY($1) ORDER BY p.id, pos.instrument"
            ),
            portfolio_ids: format!("SELECT id FROM {s}.portfolios ORDER BY id"),
            changes: format!(
                "SELECT instrument, change, first_date, last_date, closes, old_close, new_close
                 FROM {s}.data_changes WHERE version > $1 AND version <= $2
                 ORDER BY version, instrument LIMIT $3"
            ),
        }
    }
}

/// A position as read with a LEFT JOIN: NULLs for a portfolio without any.
type PositionCells = (Option<String>, Option<f64>);

fn version_string(epoch: &str, version: i64) -> String {
    format!("{epoch}.{version}")
}

impl PostgresSource {
    /// A source over `pool`, trusting a read data version for `version_ttl`
    /// before it checks it again; the schema must be migrated (see [`migrate`]).
    pub fn new(pool: PgPool, version_ttl: std::time::Duration) -> PostgresSource {
        let sql = Queries::new(&pool.schema());
        PostgresSource {
            pool,
            meta: MetaCache::new(version_ttl),
            sql,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Fetches the window; `Ok(None)` when the data changed since `meta` was
    /// read (the caller reloads the meta and asks again).
    async fn fetch_window(
        &self,
        meta: &MarketMeta,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
    ) -> Result<Option<PriceWindow>, DataError> {
        let span = meta.span(instruments, as_of, lookback_returns)?;
        let dates = &meta.calendar[span.start..=span.end];
        let (first, last) = (dates[0], dates[dates.len() - 1]);
        let mut ids: Vec<&str> = instruments.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
        let sql = self.sql.window.clone();
        let rows = self
            .pool
            .run("price_window", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    let params: [&(dyn ToSql + Sync); 3] = [&ids, &first, &last];
                    client.query(&statement, &params).await
                })
            })
            .await?;
        let mut seen_version = None;
        let mut observations = Vec::with_capacity(rows.len());
        for row in rows {
            seen_version = Some(row.try_get::<_, i64>(0).map_err(|e| self.row_error(&e))?);
            let instrument: Option<String> = row.try_get(1).map_err(|e| self.row_error(&e))?;
            if let Some(instrument) = instrument {
                observations.push(Observation {
                    instrument,
                    date: row.try_get(2).map_err(|e| self.row_error(&e))?,
                    close: row.try_get(3).map_err(|e| self.row_error(&e))?,
                });
            }
        }
        // `meta.version` is "epoch.version"; compare the counter part.
        let current = meta.version.rsplit('.').next().and_then(|v| v.parse().ok());
        if seen_version.is_none() || seen_version != current {
            return Ok(None);
        }
        Ok(assemble_window(instruments, dates, as_of, observations).ok())
    }

    fn row_error(&self, e: &tokio_postgres::Error) -> DataError {
        DataError::Invalid(format!(
            "unexpected row from PostgreSQL schema {}: {e}",
            self.pool.settings().schema
        ))
    }

    fn portfolio_from_rows(
        id: &str,
        rows: impl Iterator<Item = (Option<String>, Option<f64>)>,
    ) -> StoredPortfolio {
        StoredPortfolio {
            id: id.to_owned(),
            positions: rows
                .filter_map(|(instrument, quantity)| {
                    Some(StoredPosition {
                        instrument: instrument?,
                        quantity: quantity?,
                    })
                })
                .collect(),
        }
    }

    /// Many stored portfolios in one query (for batches given ids only).
    pub async fn portfolios(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, StoredPortfolio>, DataError> {
        let sql = self.sql.portfolios.clone();
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let rows = self
            .pool
            .run("portfolios", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &[&ids]).await
                })
            })
            .await?;
        let mut by_id: HashMap<String, Vec<PositionCells>> = HashMap::new();
        for row in rows {
            let id: String = row.try_get(0).map_err(|e| self.row_error(&e))?;
            let position = (
                row.try_get(1).map_err(|e| self.row_error(&e))?,
                row.try_get(2).map_err(|e| self.row_error(&e))?,
            );
            by_id.entry(id).or_default().push(position);
        }
        Ok(by_id
            .into_iter()
            .map(|(id, rows)| {
                let p = Self::portfolio_from_rows(&id, rows.into_iter());
                (id, p)
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl MetaLoader for PostgresSource {
    async fn probe_version(&self) -> Result<String, DataError> {
        let sql = self.sql.version.clone();
        let row = self
            .pool
            .run("data_version", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query_one(&statement, &[]).await
                })
            })
            .await?;
        let epoch: String = row.try_get(0).map_err(|e| self.row_error(&e))?;
        let version: i64 = row.try_get(1).map_err(|e| self.row_error(&e))?;
        Ok(version_string(&epoch, version))
    }

    async fn load_meta(&self) -> Result<MarketMeta, DataError> {
        let (q_version, q_calendar, q_instruments) = (
            self.sql.version.clone(),
            self.sql.calendar.clone(),
            self.sql.instruments.clone(),
        );
        let (version, calendar, instruments) = self
            .pool
            .run("meta", move |client| {
                Box::pin(async move {
                    // One snapshot for the three reads, so they describe one version.
                    client
                        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        .await?;
                    let read = async {
                        let v = client.query_one(&q_version, &[]).await?;
                        let calendar = client.query(&q_calendar, &[]).await?;
                        let instruments = client.query(&q_instruments, &[]).await?;
                        Ok::<_, tokio_postgres::Error>((v, calendar, instruments))
                    };
                    let out = read.await;
                    let _ = client.batch_execute("COMMIT").await;
                    out
                })
            })
            .await?;
        let epoch: String = version.try_get(0).map_err(|e| self.row_error(&e))?;
        let counter: i64 = version.try_get(1).map_err(|e| self.row_error(&e))?;
        let calendar = calendar
            .iter()
            .map(|r| r.try_get::<_, NaiveDate>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.row_error(&e))?;
        let instruments = instruments
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|e| self.row_error(&e))?;
        Ok(MarketMeta {
            version: version_string(&epoch, counter),
            calendar,
            instruments,
        })
    }
}

#[async_trait::async_trait]
impl MarketDataSource for PostgresSource {
    fn snapshot(&self) -> SnapshotId {
        SnapshotId {
            source: "postgres".into(),
            version: self
                .meta
                .cached()
                .map(|m| m.version.clone())
                .unwrap_or_else(|| "unloaded".into()),
        }
    }

    async fn resolve_as_of(&self, as_of: Option<NaiveDate>) -> Result<NaiveDate, DataError> {
        self.meta.get(self).await?.resolve_as_of(as_of)
    }

    async fn price_window(
        &self,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
        snapshot: &SnapshotId,
    ) -> Result<PriceWindow, DataError> {
        let meta = self.meta.get(self).await?;
        if meta.version != snapshot.version {
            return Err(DataError::moved(snapshot, &meta.version));
        }
        // The window query reports the version it read in the same
        // statement, so a change between the calendar and the window is
        // seen: the cached calendar is reloaded for the caller's next pin.
        match self
            .fetch_window(&meta, instruments, as_of, lookback_returns)
            .await?
        {
            Some(window) => Ok(window),
            None => {
                let now = self.meta.reload(self, true).await?;
                Err(DataError::moved(snapshot, &now.version))
            }
        }
    }

    async fn calendar(&self, snapshot: &SnapshotId) -> Result<Vec<NaiveDate>, DataError> {
        let meta = self.meta.get(self).await?;
        if meta.version != snapshot.version {
            return Err(DataError::moved(snapshot, &meta.version));
        }
        Ok(meta.calendar.clone())
    }

    async fn portfolio(&self, id: &str) -> Result<Option<StoredPortfolio>, DataError> {
        let sql = self.sql.portfolio.clone();
        let owned_id = id.to_owned();
        let rows = self
            .pool
            .run("portfolio", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &[&owned_id]).await
                })
            })
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut positions = Vec::with_capacity(rows.len());
        for row in rows {
            positions.push((
                row.try_get(0).map_err(|e| self.row_error(&e))?,
                row.try_get(1).map_err(|e| self.row_error(&e))?,
            ));
        }
        Ok(Some(Self::portfolio_from_rows(id, positions.into_iter())))
    }

    async fn portfolios(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, StoredPortfolio>, DataError> {
        PostgresSource::portfolios(self, ids).await
    }

    async fn portfolio_ids(&self) -> Result<Vec<String>, DataError> {
        let sql = self.sql.portfolio_ids.clone();
        let rows = self
            .pool
            .run("portfolio_ids", move |client| {
                Box::pin(async move { client.query(&sql, &[]).await })
            })
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| self.row_error(&e)))
            .collect()
    }

    async fn has_instrument(&self, instrument: &str) -> Result<bool, DataError> {
        Ok(self.meta.get(self).await?.instruments.contains(instrument))
    }

    /// From `data_changes` (migration 0008), between two versions of one
    /// epoch; nothing for snapshots of another source or database.
    async fn changes_between(
        &self,
        from: &SnapshotId,
        to: &SnapshotId,
        limit: usize,
    ) -> Result<Vec<DataChange>, DataError> {
        let counter = |s: &SnapshotId| -> Option<(String, i64)> {
            let (epoch, n) = s.version.rsplit_once('.')?;
            Some((epoch.to_owned(), n.parse().ok()?))
        };
        let (Some((from_epoch, from)), Some((to_epoch, to))) = (counter(from), counter(to)) else {
            return Ok(Vec::new());
        };
        if from_epoch != to_epoch {
            return Ok(Vec::new());
        }
        let sql = self.sql.changes.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pool
            .run("data_changes", move |client| {
                Box::pin(async move { client.query(&sql, &[&from, &to, &limit]).await })
            })
            .await?;
        rows.iter()
            .map(|r| -> Result<DataChange, tokio_postgres::Error> {
                Ok(DataChange {
                    instrument: r.try_get(0)?,
                    change: r.try_get(1)?,
                    first_date: r.try_get(2)?,
                    last_date: r.try_get(3)?,
                    closes: u64::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
                    old_close: r.try_get(5)?,
                    new_close: r.try_get(6)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| self.row_error(&e))
    }
}
