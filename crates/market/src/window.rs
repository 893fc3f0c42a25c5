//! What the database-backed sources share: the cached [`MarketMeta`]
//! (content version, trading calendar, instrument ids) and the assembly of a
//! [`PriceWindow`] from sparse observations.
//!
//! A database holds observations only; the embedded [`super::PriceTable`]
//! fills them once at load time. To serve the very same windows, a database
//! source needs two more things per request: the calendar (the union of all
//! instruments' dates, not only the requested ones — a job's window must not
//! depend on its batch) and, per instrument, the last close before the window
//! (forward fill reaches back past the window's first date). The calendar is
//! cached per data version in [`MarketMeta`]; the last close before the
//! window comes with the window's own query. [`assemble_window`] then fills
//! exactly like the table: carry the previous close, NaN before the first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use chrono::NaiveDate;

use super::{DataError, PriceWindow, WindowSeries};

/// What a database source must know before it can cut a window, for one
/// version of its data.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MarketMeta {
    /// The content version, part of the [`super::SnapshotId`].
    pub(crate) version: String,
    /// Sorted, distinct trading dates: every date any instrument has a close.
    pub(crate) calendar: Vec<NaiveDate>,
    /// Known instrument ids.
    pub(crate) instruments: HashSet<String>,
}

/// A window's place in the calendar: indices of its first and last date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowSpan {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl MarketMeta {
    fn bounds(&self) -> Result<(NaiveDate, NaiveDate), DataError> {
        match (self.calendar.first(), self.calendar.last()) {
            (Some(first), Some(last)) => Ok((*first, *last)),
            _ => Err(DataError::Invalid(
                "the market data holds no prices; seed it with `riskhost db seed`".into(),
            )),
        }
    }

    /// Same rule as [`super::PriceTable::resolve_as_of`]: `None` is the last
    /// date, a date inside the range the trading date on or before it, a date
    /// outside the range a client error.
    pub(crate) fn resolve_as_of(&self, as_of: Option<NaiveDate>) -> Result<NaiveDate, DataError> {
        let (first, last) = self.bounds()?;
        let Some(as_of) = as_of else {
            return Ok(last);
        };
        if as_of < first || as_of > last {
            return Err(DataError::AsOfOutOfRange { as_of, first, last });
        }
        let n = self.calendar.partition_point(|d| *d <= as_of);
        Ok(self.calendar[n - 1])
    }

    /// Checks a window request exactly as [`super::PriceTable::window`] does
    /// (range, trading date, unknown instruments) and places it in the calendar.
    pub(crate) fn span(
        &self,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
    ) -> Result<WindowSpan, DataError> {
        let (first, last) = self.bounds()?;
        if as_of < first || as_of > last {
            return Err(DataError::AsOfOutOfRange { as_of, first, last });
        }
        let end = self
            .calendar
            .binary_search(&as_of)
            .map_err(|_| DataError::NotATradingDate(as_of))?;
        let mut unknown: Vec<String> = instruments
            .iter()
            .filter(|id| !self.instruments.contains(**id))
            .map(|id| (*id).to_owned())
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            return Err(DataError::UnknownInstruments(unknown));
        }
        Ok(WindowSpan {
            start: end.saturating_sub(lookback_returns),
            end,
        })
    }
}

/// One observation as a database returns it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observation {
    pub(crate) instrument: String,
    pub(crate) date: NaiveDate,
    pub(crate) close: f64,
}

/// Why observations do not fit the cached calendar: the data changed after
/// the calendar was read. The caller refreshes its [`MarketMeta`] and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CalendarMismatch(pub(crate) NaiveDate);

/// Per instrument: the last close before the window, and the closes inside it.
type Collected = (Option<(NaiveDate, f64)>, Vec<Option<f64>>);

/// Builds the window of `instruments` (request order, repeats allowed) over
/// `dates` from the observations inside it and, per instrument, the last one
/// before it (rows dated before `dates[0]`; the latest per instrument wins).
///
/// Filling matches [`super::PriceTable`]: a date without a close carries the
/// previous one, dates before the first close are NaN.
pub(crate) fn assemble_window(
    instruments: &[&str],
    dates: &[NaiveDate],
    as_of: NaiveDate,
    rows: Vec<Observation>,
) -> Result<PriceWindow, CalendarMismatch> {
    let Some(&first) = dates.first() else {
        return Err(CalendarMismatch(as_of));
    };
    // Per instrument: the close carried into the window, then one optional
    // close per window date.
    let mut by_id: HashMap<String, Collected> = HashMap::new();
    for row in rows {
        let entry = by_id
            .entry(row.instrument)
            .or_insert_with(|| (None, vec![None; dates.len()]));
        if row.date < first {
            if entry.0.is_none_or(|(d, _)| d < row.date) {
                entry.0 = Some((row.date, row.close));
            }
        } else {
            let i = dates
                .binary_search(&row.date)
                .map_err(|_| CalendarMismatch(row.date))?;
            entry.1[i] = Some(row.close);
        }
    }
    let series = instruments
        .iter()
        .map(|id| {
            let mut last = f64::NAN;
            let closes = match by_id.get(*id) {
                None => vec![f64::NAN; dates.len()],
                Some((before, observed)) => {
                    if let Some((_, close)) = before {
                        last = *close;
                    }
                    observed
                        .iter()
                        .map(|c| {
                            if let Some(c) = c {
                                last = *c;
                            }
                            last
                        })
                        .collect()
                }
            };
            WindowSeries {
                instrument: (*id).to_owned(),
                closes,
            }
        })
        .collect();
    Ok(PriceWindow {
        as_of,
        dates: dates.to_vec(),
        series,
    })
}

/// How a source reads its [`MarketMeta`]: a cheap version probe, and the
/// full load when the version moved.
#[async_trait::async_trait]
pub(crate) trait MetaLoader: Send + Sync {
    /// The current content version (one cheap query).
    async fn probe_version(&self) -> Result<String, DataError>;
    /// Version, calendar and instruments, read consistently.
    async fn load_meta(&self) -> Result<MarketMeta, DataError>;
}

/// The current [`MarketMeta`], re-checked at most once per `ttl`.
///
/// Requests inside the TTL use the cached meta without touching the
/// database; the first request after it probes the version (one query,
/// single-flight) and reloads the calendar only when the version moved.
pub(crate) struct MetaCache {
    current: ArcSwapOption<MarketMeta>,
    checked_at: Mutex<Option<Instant>>,
    refresh: tokio::sync::Mutex<()>,
    ttl: Duration,
}

impl MetaCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        MetaCache {
            current: ArcSwapOption::empty(),
            checked_at: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            ttl,
        }
    }

    /// The meta last loaded, however old (for [`super::MarketDataSource::snapshot`]).
    pub(crate) fn cached(&self) -> Option<Arc<MarketMeta>> {
        self.current.load_full()
    }

    fn fresh(&self) -> bool {
        match self.checked_at.lock() {
            Ok(at) => at.is_some_and(|at| at.elapsed() < self.ttl),
            Err(_) => false,
        }
    }

    fn mark_checked(&self) {
        if let Ok(mut at) = self.checked_at.lock() {
            *at = Some(Instant::now());
        }
    }

    /// The meta, re-checked against the database if older than the TTL.
    pub(crate) async fn get(&self, loader: &dyn MetaLoader) -> Result<Arc<MarketMeta>, DataError> {
        if self.fresh()
            && let Some(meta) = self.current.load_full()
        {
            return Ok(meta);
        }
        let _single_flight = self.refresh.lock().await;
        // Another request may have refreshed while this one waited.
        if self.fresh()
            && let Some(meta) = self.current.load_full()
        {
            return Ok(meta);
        }
        self.reload(loader, false).await
    }

    /// Re-reads the meta now: after a query saw a newer version than the
    /// cached one. `force` skips the cheap probe.
    pub(crate) async fn reload(
        &self,
        loader: &dyn MetaLoader,
        force: bool,
    ) -> Result<Arc<MarketMeta>, DataError> {
        if !force
            && let Some(meta) = self.current.load_full()
            && loader.probe_version().await? == meta.version
        {
            self.mark_checked();
            return Ok(meta);
        }
        let meta = Arc::new(loader.load_meta().await?);
        if self
            .current
            .load()
            .as_ref()
            .is_none_or(|old| old.version != meta.version)
        {
            tracing::info!(
                version = %meta.version,
                dates = meta.calendar.len(),
                instruments = meta.instruments.len(),
                "market data version loaded"
            );
        }
        self.current.store(Some(meta.clone()));
        self.mark_checked();
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PriceTable;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn obs(id: &str, date: NaiveDate, close: f64) -> Observation {
        Observation {
            instrument: id.into(),
            date,
            close,
        }
    }

    /// The table of `table.rs`'s tests: B starts late and misses a day.
    fn rows() -> Vec<(NaiveDate, String, f64)> {
        vec![
            (d(2018, 1, 4), "A".into(), 10.0),
            (d(2018, 1, 5), "A".into(), 11.0),
            (d(2018, 1, 8), "A".into(), 12.0),
            (d(2018, 1, 9), "A".into(), 13.0),
            (d(2018, 1, 5), "B".into(), 100.0),
            (d(2018, 1, 9), "B".into(), 102.0),
        ]
    }

    fn meta_of(table: &PriceTable) -> MarketMeta {
        MarketMeta {
            version: "v".into(),
            calendar: table.calendar().to_vec(),
            instruments: table.instruments().iter().cloned().collect(),
        }
    }

    /// What a database answers for a window: the rows inside it plus the
    /// latest row before it per instrument.
    fn db_rows(
        all: &[(NaiveDate, String, f64)],
        ids: &[&str],
        first: NaiveDate,
        last: NaiveDate,
    ) -> Vec<Observation> {
        let mut out: Vec<Observation> = all
            .iter()
            .filter(|(date, id, _)| ids.contains(&id.as_str()) && *date >= first && *date <= last)
            .map(|(date, id, c)| obs(id, *date, *c))
            .collect();
        for id in ids {
            if let Some((date, _, c)) = all
                .iter()
                .filter(|(date, i, _)| i == id && *date < first)
                .max_by_key(|(date, _, _)| *date)
            {
                out.push(obs(id, *date, *c));
            }
        }
        out
    }

    #[test]
    fn assembled_windows_equal_the_table_windows() {
        let all = rows();
        let table = PriceTable::from_rows(all.clone()).unwrap();
        let meta = meta_of(&table);
        for as_of in table.calendar().to_vec() {
            for lookback in 0..5 {
                for ids in [vec!["A"], vec!["B"], vec!["B", "A", "B"]] {
                    let want = table.window(&ids, as_of, lookback).unwrap();
                    let span = meta.span(&ids, as_of, lookback).unwrap();
                    let dates = &meta.calendar[span.start..=span.end];
                    let got =
                        assemble_window(&ids, dates, as_of, db_rows(&all, &ids, dates[0], as_of))
                            .unwrap();
                    // Bit for bit, NaNs included.
                    assert_eq!(got.dates, want.dates);
                    assert_eq!(got.series.len(), want.series.len());
                    for (g, w) in got.series.iter().zip(&want.series) {
                        assert_eq!(g.instrument, w.instrument);
                        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&g.closes),
                            bits(&w.closes),
                            "{ids:?} {as_of} {lookback}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn forward_fill_reaches_back_past_the_window() {
        // B's last close before the window (Jan 5) fills Jan 8 inside it.
        let dates = [d(2018, 1, 8), d(2018, 1, 9)];
        let w = assemble_window(
            &["B"],
            &dates,
            d(2018, 1, 9),
            vec![
                obs("B", d(2018, 1, 4), 99.0),
                obs("B", d(2018, 1, 5), 100.0),
                obs("B", d(2018, 1, 9), 102.0),
            ],
        )
        .unwrap();
        assert_eq!(w.series[0].closes, [100.0, 102.0]);
    }

    #[test]
    fn a_row_off_the_calendar_is_a_mismatch() {
        let dates = [d(2018, 1, 8), d(2018, 1, 9)];
        let e = assemble_window(
            &["A"],
            &dates,
            d(2018, 1, 9),
            vec![obs("A", d(2018, 1, 7), 1.0), obs("A", d(2018, 1, 10), 1.0)],
        );
        assert_eq!(e.unwrap_err(), CalendarMismatch(d(2018, 1, 10)));
    }

    #[test]
    fn span_checks_like_the_table() {
        let table = PriceTable::from_rows(rows()).unwrap();
        let meta = meta_of(&table);
        assert!(matches!(
            meta.span(&["A", "Z", "Y", "Z"], d(2018, 1, 9), 1),
            Err(DataError::UnknownInstruments(ids)) if ids == ["Y", "Z"]
        ));
        assert!(matches!(
            meta.span(&["A"], d(2018, 1, 6), 1),
            Err(DataError::NotATradingDate(_))
        ));
        assert!(matches!(
            meta.span(&["A"], d(2019, 1, 1), 1),
            Err(DataError::AsOfOutOfRange { .. })
        ));
        assert_eq!(
            meta.span(&["A"], d(2018, 1, 9), 99).unwrap(),
            WindowSpan { start: 0, end: 3 }
        );
        for q in [None, Some(d(2018, 1, 6)), Some(d(2018, 1, 4))] {
            assert_eq!(
                meta.resolve_as_of(q).unwrap(),
                table.resolve_as_of(q).unwrap()
            );
        }
        let empty = MarketMeta {
            version: "v".into(),
            calendar: vec![],
            instruments: HashSet::new(),
        };
        assert!(
            empty
                .resolve_as_of(None)
                .unwrap_err()
                .to_string()
                .contains("db seed")
        );
    }
}
