//! Market data: where the closes handed to models come from.
//!
//! Models never do I/O (see `wit/model.wit`): the host fetches one
//! [`PriceWindow`] per batch from a [`MarketDataSource`] and converts it to
//! the WIT `market-data` record. Every source identifies the data it serves
//! with a [`SnapshotId`], which is part of every cache key, so a score is
//! never served from a cache filled with other data.
//!
//! - `table.rs`: [`PriceTable`], the validated, forward-filled in-memory
//!   table, and [`validate_instrument_id`].
//! - `csv.rs`: the loader for `--prices FILE.csv`.
//! - `sample.rs`: the deterministic generator of the bundled sample data.
//! - `embedded.rs`: [`EmbeddedSource`], a source over an in-memory table.
//! - `postgres.rs`: [`PostgresSource`], pooled PostgreSQL, and
//!   [`seed_postgres`].
//! - `clickhouse.rs`: [`ClickHouseSource`], ClickHouse over HTTP, its
//!   tables ([`create_clickhouse_tables`]) and [`seed_clickhouse`].
//! - `window.rs`: what the database sources share (cached calendar and
//!   version, window assembly with the table's fill rules).
//!
//! The crate's API is what this file re-exports.

mod clickhouse;
mod csv;
mod embedded;
mod postgres;
mod sample;
mod table;
mod window;

use chrono::NaiveDate;

pub use self::clickhouse::{
    ClickHouseSource, create_tables as create_clickhouse_tables, seed as seed_clickhouse,
};
pub use self::csv::{load_prices_csv, load_prices_csv_file};
pub use self::embedded::{EmbeddedSource, sample_portfolios};
pub use self::postgres::{PostgresSource, SeedReport, seed as seed_postgres};
pub use self::sample::{sample_instrument_info, sample_table};
pub use self::table::{
    MAX_INSTRUMENT_ID_LEN, PriceTable, PriceWindow, WindowSeries, validate_instrument_id,
};

/// A provider of daily closes and stored portfolios.
///
/// Methods are async so that a future database-backed source fits the same
/// interface; the in-memory [`EmbeddedSource`] answers immediately.
#[async_trait::async_trait]
pub trait MarketDataSource: Send + Sync + 'static {
    /// Identity of the data served now; part of every cache key.
    fn snapshot(&self) -> SnapshotId;

    /// The trading date a request for `as_of` is valued at: `None` means the
    /// latest date; a non-trading date means the trading date before it.
    async fn resolve_as_of(&self, as_of: Option<NaiveDate>) -> Result<NaiveDate, DataError>;

    /// One fetch for a whole batch: every instrument the batch holds, the longest lookback.
    ///
    /// `as_of` must be a trading date (from [`MarketDataSource::resolve_as_of`]);
    /// the window holds up to `lookback_returns + 1` dates ending at it.
    ///
    /// The window is cut from exactly the data of `snapshot`, the snapshot
    /// the caller read with [`MarketDataSource::snapshot`] and put in its
    /// memo keys. A source whose data has moved on answers
    /// [`DataError::SnapshotMoved`] instead of a window of newer data, so a
    /// score is never stored under the key of a snapshot it was not computed
    /// on; the caller pins the new snapshot and asks again.
    async fn price_window(
        &self,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
        snapshot: &SnapshotId,
    ) -> Result<PriceWindow, DataError>;

    /// Every trading date of `snapshot`, ascending: the calendar a backtest
    /// walks day by day. A source whose data has moved on answers
    /// [`DataError::SnapshotMoved`], as [`MarketDataSource::price_window`] does.
    async fn calendar(&self, snapshot: &SnapshotId) -> Result<Vec<NaiveDate>, DataError>;

    /// A stored portfolio's positions by id (None if unknown).
    async fn portfolio(&self, id: &str) -> Result<Option<StoredPortfolio>, DataError>;

    /// Many stored portfolios by id, the unknown ones left out. Database
    /// sources answer in one query; the default asks one by one.
    async fn portfolios(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, StoredPortfolio>, DataError> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = self.portfolio(id).await? {
                found.insert((*id).to_owned(), p);
            }
        }
        Ok(found)
    }

    /// Ids of the stored portfolios (for listing / seeding).
    async fn portfolio_ids(&self) -> Result<Vec<String>, DataError>;

    /// Whether an instrument exists (for early, clear 4xx errors).
    async fn has_instrument(&self, instrument: &str) -> Result<bool, DataError>;

    /// What changed in the prices between two snapshots of this source,
    /// oldest first and at most `limit` entries, as far as the source
    /// records it. Sources that keep no log of changes answer nothing.
    async fn changes_between(
        &self,
        _from: &SnapshotId,
        _to: &SnapshotId,
        _limit: usize,
    ) -> Result<Vec<DataChange>, DataError> {
        Ok(Vec::new())
    }
}

/// One statement's change to one instrument's closes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DataChange {
    /// `None` when the change was to every instrument (a truncation).
    pub instrument: Option<String>,
    /// `restated`, `inserted`, `deleted` or `truncated`.
    pub change: String,
    pub first_date: Option<NaiveDate>,
    pub last_date: Option<NaiveDate>,
    /// How many closes the statement changed for the instrument.
    pub closes: u64,
    /// For a single restated close: its value before and after.
    pub old_close: Option<f64>,
    pub new_close: Option<f64>,
}

impl std::fmt::Display for DataChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(instrument) = &self.instrument else {
            return write!(f, "every close was {}", self.change);
        };
        let plural = if self.closes == 1 { "" } else { "s" };
        write!(
            f,
            "{instrument}: {} close{plural} {}",
            self.closes, self.change
        )?;
        match (self.first_date, self.last_date) {
            (Some(first), Some(last)) if first == last => write!(f, " on {first}")?,
            (Some(first), Some(last)) => write!(f, " from {first} to {last}")?,
            _ => {}
        }
        if let (Some(old), Some(new)) = (self.old_close, self.new_close) {
            write!(f, " ({old} → {new})")?;
        }
        Ok(())
    }
}

/// Which data a source serves: the source's name and a content version.
///
/// Two snapshots are equal only if they serve identical data, so the pair is
/// safe to put in cache keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SnapshotId {
    /// The kind of source, e.g. `embedded` or `csv`.
    pub source: String,
    /// A content hash of the data, e.g. [`PriceTable::version`].
    pub version: String,
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.source, self.version)
    }
}

/// A portfolio kept by the source, addressed by id.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredPortfolio {
    pub id: String,
    pub positions: Vec<StoredPosition>,
}

/// One holding of a [`StoredPortfolio`]; negative quantities are short.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredPosition {
    pub instrument: String,
    pub quantity: f64,
}

/// Why market data could not be loaded or served.
///
/// Messages may reach API clients, so each names the instrument, date or line
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Requested instruments the data does not hold; sorted and deduplicated.
    #[error("unknown instrument(s): {}", .0.join(", "))]
    UnknownInstruments(Vec<String>),

    /// A valuation date outside the dates the data covers.
    #[error("as_of {as_of} is outside the market data range {first} to {last}")]
    AsOfOutOfRange {
        as_of: NaiveDate,
        first: NaiveDate,
        last: NaiveDate,
    },

    /// A window was requested for a date that is not a trading date of the
    /// data. Callers resolve dates first, so this means the data changed in
    /// between or the caller skipped resolution.
    #[error("{0} is not a trading date of the market data; resolve as_of first")]
    NotATradingDate(NaiveDate),

    /// A malformed line in a prices CSV file.
    #[error("line {line}: {message}")]
    Csv { line: u64, message: String },

    /// Rows that fail validation (bad close, bad instrument id, duplicates).
    #[error("invalid market data: {0}")]
    Invalid(String),

    #[error("market data I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// A backend that is down (e.g. a database source).
    #[error("market data unavailable: {0}")]
    Unavailable(String),

    /// The data changed after the caller pinned its snapshot: a window of
    /// the pinned snapshot can no longer be read.
    #[error("the market data moved from snapshot {pinned} to {now} while it was read")]
    SnapshotMoved { pinned: String, now: String },
}

impl DataError {
    /// The error for a window asked of `pinned` when the data is at `now`.
    pub(crate) fn moved(pinned: &SnapshotId, now: &str) -> DataError {
        DataError::SnapshotMoved {
            pinned: pinned.to_string(),
            now: format!("{}@{now}", pinned.source),
        }
    }
}

impl From<riskhost_db::DbError> for DataError {
    fn from(e: riskhost_db::DbError) -> Self {
        match e {
            riskhost_db::DbError::Invalid(m) => DataError::Invalid(m),
            riskhost_db::DbError::Unavailable(m) => DataError::Unavailable(m),
        }
    }
}

impl DataError {
    /// Whether the request was at fault (a 4xx), rather than the data or the
    /// backend (a 5xx).
    pub fn is_client_error(&self) -> bool {
        match self {
            DataError::UnknownInstruments(_) | DataError::AsOfOutOfRange { .. } => true,
            DataError::NotATradingDate(_)
            | DataError::Csv { .. }
            | DataError::Invalid(_)
            | DataError::Io(_)
            | DataError::Unavailable(_)
            | DataError::SnapshotMoved { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn client_errors_are_the_request_faults() {
        assert!(DataError::UnknownInstruments(vec!["X".into()]).is_client_error());
        assert!(
            DataError::AsOfOutOfRange {
                as_of: d(2030, 1, 1),
                first: d(2015, 1, 2),
                last: d(2018, 12, 31)
            }
            .is_client_error()
        );
        assert!(!DataError::Unavailable("db down".into()).is_client_error());
        assert!(!DataError::Io(std::io::Error::other("disk")).is_client_error());
        assert!(!DataError::NotATradingDate(d(2018, 1, 6)).is_client_error());
        assert!(!DataError::Invalid("x".into()).is_client_error());
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let e = DataError::UnknownInstruments(vec!["FOO".into(), "BAR".into()]);
        assert_eq!(e.to_string(), "unknown instrument(s): FOO, BAR");
        let e = DataError::AsOfOutOfRange {
            as_of: d(2030, 1, 1),
            first: d(2015, 1, 2),
            last: d(2018, 12, 31),
        };
        assert_eq!(
            e.to_string(),
            "as_of 2030-01-01 is outside the market data range 2015-01-02 to 2018-12-31"
        );
        let e = DataError::Csv {
            line: 7,
            message: "bad date".into(),
        };
        assert_eq!(e.to_string(), "line 7: bad date");
    }

    #[test]
    fn snapshot_displays_source_and_version() {
        let s = SnapshotId {
            source: "csv".into(),
            version: "0123456789abcdef".into(),
        };
        assert_eq!(s.to_string(), "csv@0123456789abcdef");
    }
}
