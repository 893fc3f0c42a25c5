//! [`ClickHouseSource`]: market data and stored portfolios in ClickHouse.
//!
//! Tables (in `--clickhouse-database`) are `ReplacingMergeTree`s keyed like
//! the PostgreSQL ones and read with `FINAL`, so re-inserting a row replaces
//! it. ClickHouse has no triggers, so the data version is a content hash
//! (row count, sum and xor of `cityHash64(instrument, date, close)`), and it
//! is recomputed only when the tables' active parts changed.
//!
//! A window is one query (`has([...], instrument)` over the window's dates,
//! `UNION ALL` the last close before it per instrument), filled by
//! [`super::window::assemble_window`] with the embedded table's rules.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::window::{MarketMeta, MetaCache, MetaLoader, Observation, assemble_window};
use super::{
    DataError, MarketDataSource, PriceTable, PriceWindow, SnapshotId, StoredPortfolio,
    StoredPosition,
};
use riskhost_db::Warehouse;

/// Days between 1970-01-01 and `date`, as ClickHouse's `Date` (UInt16).
fn ch_date(date: NaiveDate) -> u16 {
    u16::try_from(date.to_epoch_days().max(0)).unwrap_or(u16::MAX)
}

fn from_ch_date(days: u16) -> NaiveDate {
    NaiveDate::from_epoch_days(i32::from(days)).unwrap_or(NaiveDate::MIN)
}

#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
struct PriceRow {
    instrument: String,
    date: u16,
    close: f64,
}

#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
struct InstrumentRow {
    id: String,
    name: String,
    asset_class: String,
}

#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
struct PositionRow {
    portfolio_id: String,
    instrument: String,
    quantity: f64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ContentRow {
    rows: u64,
    sum: u64,
    xor: u64,
    instruments: u64,
    instruments_hash: u64,
}

/// Creates the database and the market tables if missing.
pub async fn create_tables(wh: &Warehouse) -> Result<(), DataError> {
    let db = wh.database();
    wh.execute(
        "create_database",
        &format!("CREATE DATABASE IF NOT EXISTS {db}"),
    )
    .await?;
    // `updated` orders replacements: the latest insert of a key wins.
    for (what, ddl) in [
        (
            "create_instruments",
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.instruments (id String, name String, asset_class String, updated DateTime DEFAULT now())
                 ENGINE = ReplacingMergeTree(updated) ORDER BY id"
            ),
        ),
        (
            "create_prices",
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.prices (instrument String, date Date, close Float64, updated DateTime DEFAULT now())
                 ENGINE = ReplacingMergeTree(updated) PARTITION BY toYear(date) ORDER BY (instrument, date)"
            ),
        ),
        (
            "create_positions",
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.positions (portfolio_id String, instrument String, quantity Float64, updated DateTime DEFAULT now())
                 ENGINE = ReplacingMergeTree(updated) ORDER BY (portfolio_id, instrument)"
            ),
        ),
    ] {
        wh.execute(what, &ddl).await?;
    }
    Ok(())
}

/// Inserts the instruments, observations and portfolios (a position with
/// quantity 0 removes one, as rows cannot be deleted cheaply). Returns the
/// number of price rows written.
pub async fn seed(
    wh: &Warehouse,
    table: &PriceTable,
    instrument_info: &HashMap<String, (String, String)>,
    portfolios: &[StoredPortfolio],
) -> Result<u64, DataError> {
    create_tables(wh).await?;
    let client = wh.client();
    let mut insert = wh
        .timed("seed", client.insert::<InstrumentRow>("instruments"))
        .await?;
    for id in table.instruments() {
        let (name, class) = instrument_info.get(id).cloned().unwrap_or_default();
        let row = InstrumentRow {
            id: id.clone(),
            name,
            asset_class: class,
        };
        wh.timed("seed", insert.write(&row)).await?;
    }
    wh.timed("seed", insert.end()).await?;

    let mut insert = wh
        .timed("seed", client.insert::<PriceRow>("prices"))
        .await?;
    let mut count = 0u64;
    for (date, id, close) in table.observations() {
        let row = PriceRow {
            instrument: id.to_owned(),
            date: ch_date(date),
            close,
        };
        wh.timed("seed", insert.write(&row)).await?;
        count += 1;
    }
    wh.timed("seed", insert.end()).await?;

    let mut insert = wh
        .timed("seed", client.insert::<PositionRow>("positions"))
        .await?;
    for p in portfolios {
        for pos in &p.positions {
            let row = PositionRow {
                portfolio_id: p.id.clone(),
                instrument: pos.instrument.clone(),
                quantity: pos.quantity,
            };
            wh.timed("seed", insert.write(&row)).await?;
        }
    }
    wh.timed("seed", insert.end()).await?;
    Ok(count)
}

/// Market data and stored portfolios from ClickHouse.
pub struct ClickHouseSource {
    wh: Warehouse,
    meta: MetaCache,
    /// The parts signature the content version was last computed for.
    content: Mutex<Option<(String, String)>>,
}

impl ClickHouseSource {
    /// A source over `wh`; [`create_tables`] must have run.
    pub fn new(wh: Warehouse, version_ttl: std::time::Duration) -> ClickHouseSource {
        ClickHouseSource {
            wh,
            meta: MetaCache::new(version_ttl),
            content: Mutex::new(None),
        }
    }

    async fn parts_signature(&self) -> Result<String, DataError> {
        let sql = format!(
            "SELECT toString(count()) || ':' || toString(sum(rows)) || ':' || toString(max(modification_time))
             FROM system.parts WHERE database = '{}' AND table IN ('prices', 'instruments') AND active",
            self.wh.database()
        );
        self.wh
            .timed("parts", self.wh.client().query(&sql).fetch_one::<String>())
            .await
            .map_err(DataError::from)
    }

    async fn content_version(&self) -> Result<String, DataError> {
        let db = self.wh.database();
        let sql = format!(
            "SELECT p.rows, p.sum, p.xor, i.instruments, i.instruments_hash FROM
               (SELECT count() AS rows, sum(cityHash64(instrument, date, close)) AS sum,
                       groupBitXor(cityHash64(instrument, date, close)) AS xor, 1 AS k
                FROM {db}.prices FINAL) AS p
             ALL INNER JOIN
               (SELECT count() AS instruments, sum(cityHash64(id)) AS instruments_hash, 1 AS k
                FROM {db}.instruments FINAL) AS i USING k"
        );
        let row: ContentRow = self
            .wh
            .timed("data_version", self.wh.client().query(&sql).fetch_one())
            .await?;
        let mut h = blake3::Hasher::new();
        h.update(b"riskhost/clickhouse-content/v1\0");
        for v in [
            row.rows,
            row.sum,
            row.xor,
            row.instruments,
            row.instruments_hash,
        ] {
            h.update(&v.to_le_bytes());
        }
        Ok(h.finalize().to_hex()[..16].to_owned())
    }
}

#[async_trait::async_trait]
impl MetaLoader for ClickHouseSource {
    async fn probe_version(&self) -> Result<String, DataError> {
        let parts = self.parts_signature().await?;
        if let Ok(guard) = self.content.lock()
            && let Some((seen, version)) = guard.as_ref()
            && *seen == parts
        {
            return Ok(version.clone());
        }
        let version = self.content_version().await?;
        if let Ok(mut guard) = self.content.lock() {
            *guard = Some((parts, version.clone()));
        }
        Ok(version)
    }

    async fn load_meta(&self) -> Result<MarketMeta, DataError> {
        let db = self.wh.database();
        let version = self.probe_version().await?;
        let client = self.wh.client();
        let dates: Vec<u16> = self
            .wh
            .timed(
                "calendar",
                client
                    .query(&format!(
                        "SELECT DISTINCT date FROM {db}.prices FINAL ORDER BY date"
                    ))
                    .fetch_all(),
            )
            .await?;
        let instruments: Vec<String> = self
            .wh
            .timed(
                "instruments",
                client
                    .query(&format!("SELECT id FROM {db}.instruments FINAL"))
                    .fetch_all(),
            )
            .await?;
        Ok(MarketMeta {
            version,
            calendar: dates.into_iter().map(from_ch_date).collect(),
            instruments: instruments.into_iter().collect::<HashSet<_>>(),
        })
    }
}

#[async_trait::async_trait]
impl MarketDataSource for ClickHouseSource {
    fn snapshot(&self) -> SnapshotId {
        SnapshotId {
            source: "clickhouse".into(),
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
        let db = self.wh.database();
        {
            let span = meta.span(instruments, as_of, lookback_returns)?;
            let dates = &meta.calendar[span.start..=span.end];
            let (first, last) = (ch_date(dates[0]), ch_date(dates[dates.len() - 1]));
            let mut ids: Vec<&str> = instruments.to_vec();
            ids.sort_unstable();
            ids.dedup();
            let sql = format!(
                "SELECT instrument, date, close FROM {db}.prices FINAL
                 WHERE has(?, instrument) AND date >= toDate(?) AND date <= toDate(?)
                 UNION ALL
                 SELECT instrument, max(date) AS last_date, argMax(close, date) AS last_close FROM {db}.prices FINAL
                 WHERE has(?, instrument) AND date < toDate(?) GROUP BY instrument"
            );
            let rows: Vec<PriceRow> = self
                .wh
                .timed(
                    "price_window",
                    self.wh
                        .client()
                        .query(&sql)
                        .bind(&ids)
                        .bind(first)
                        .bind(last)
                        .bind(&ids)
                        .bind(first)
                        .fetch_all(),
                )
                .await?;
            let observations = rows
                .into_iter()
                .map(|r| Observation {
                    instrument: r.instrument,
                    date: from_ch_date(r.date),
                    close: r.close,
                })
                .collect();
            // ClickHouse has no transaction spanning the calendar and the
            // window, so the version is probed again after the read: a
            // window is served only if the data did not move under it (one
            // `system.parts` query while nothing changed).
            let assembled = assemble_window(instruments, dates, as_of, observations);
            let now = self.probe_version().await?;
            match assembled {
                Ok(window) if now == meta.version => Ok(window),
                _ => {
                    let now = self.meta.reload(self, true).await?;
                    Err(DataError::moved(snapshot, &now.version))
                }
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
        Ok(self.portfolios(&[id]).await?.remove(id))
    }

    async fn portfolios(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, StoredPortfolio>, DataError> {
        let db = self.wh.database();
        let rows: Vec<PositionRow> = self
            .wh
            .timed(
                "portfolios",
                self.wh
                    .client()
                    .query(&format!(
                        "SELECT portfolio_id, instrument, quantity FROM {db}.positions FINAL
                         WHERE has(?, portfolio_id) AND quantity != 0 ORDER BY portfolio_id, instrument"
                    ))
                    .bind(ids)
                    .fetch_all(),
            )
            .await?;
        let mut out: HashMap<String, StoredPortfolio> = HashMap::new();
        for r in rows {
            out.entry(r.portfolio_id.clone())
                .or_insert_with(|| StoredPortfolio {
                    id: r.portfolio_id.clone(),
                    positions: Vec::new(),
                })
                .positions
                .push(StoredPosition {
                    instrument: r.instrument,
                    quantity: r.quantity,
                });
        }
        Ok(out)
    }

    async fn portfolio_ids(&self) -> Result<Vec<String>, DataError> {
        let db = self.wh.database();
        self.wh
            .timed(
                "portfolio_ids",
                self.wh
                    .client()
                    .query(&format!(
                        "SELECT DISTINCT portfolio_id FROM {db}.positions FINAL WHERE quantity != 0 ORDER BY portfolio_id"
                    ))
                    .fetch_all(),
            )
            .await
            .map_err(DataError::from)
    }

    async fn has_instrument(&self, instrument: &str) -> Result<bool, DataError> {
        Ok(self.meta.get(self).await?.instruments.contains(instrument))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_as_days() {
        let d = NaiveDate::from_ymd_opt(2018, 12, 31).unwrap();
        assert_eq!(ch_date(d), 17896);
        assert_eq!(from_ch_date(ch_date(d)), d);
    }
}
