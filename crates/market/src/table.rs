//! [`PriceTable`]: an immutable, validated in-memory table of daily closes.
//!
//! The table is dense: one close per instrument per calendar date, where the
//! calendar is the union of every instrument's dates. A date an instrument did
//! not trade carries its previous close and a date before its first close is
//! NaN, as `price-series.closes` in `wit/model.wit` requires. Filling once at
//! load time means a job's price window never depends on which other
//! instruments share its batch, and a window is a plain slice copy.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use chrono::NaiveDate;

use super::DataError;

/// Longest instrument id accepted; ids end up in URLs, logs and cache keys.
pub const MAX_INSTRUMENT_ID_LEN: usize = 64;

/// Domain separator of [`PriceTable::version`]; bump the suffix if the hashed
/// layout ever changes, so old and new versions can never collide.
const VERSION_DOMAIN: &[u8] = b"riskhost/price-table/v1\0";

/// Daily closes of a set of instruments. Immutable once built.
#[derive(Clone)]
pub struct PriceTable {
    /// Sorted, distinct trading dates: the union of every instrument's dates.
    calendar: Vec<NaiveDate>,
    /// Sorted, distinct instrument ids.
    instruments: Vec<String>,
    /// Position of each id in `instruments`, `closes` and `observed`.
    index: HashMap<String, u32>,
    /// Per instrument, one close per calendar date, forward-filled, NaN head.
    closes: Vec<Vec<f64>>,
    /// Per instrument, a bitset over the calendar of the actual observations,
    /// so `write_csv` and `version` see the data as loaded, not as filled.
    observed: Vec<Vec<u64>>,
    version: String,
}

/// The closes a batch needs: a run of trading dates ending at `as_of`.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceWindow {
    /// The valuation date; the last element of `dates`.
    pub as_of: NaiveDate,
    /// Ascending trading dates.
    pub dates: Vec<NaiveDate>,
    /// One series per requested instrument, in request order.
    pub series: Vec<WindowSeries>,
}

/// One instrument's closes in a [`PriceWindow`], aligned with its dates.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSeries {
    pub instrument: String,
    /// Forward-filled closes; NaN before the instrument's first close.
    pub closes: Vec<f64>,
}

impl PriceWindow {
    /// The dates as days since 1970-01-01, as `market-data.dates` wants them.
    pub fn epoch_days(&self) -> Vec<i32> {
        self.dates.iter().map(NaiveDate::to_epoch_days).collect()
    }
}

impl std::fmt::Debug for PriceTable {
    // Printing every close would flood logs; a summary identifies the table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriceTable")
            .field("version", &self.version)
            .field("instruments", &self.instruments.len())
            .field("dates", &self.calendar.len())
            .field("first_date", &self.calendar.first())
            .field("last_date", &self.calendar.last())
            .finish()
    }
}

/// Checks an instrument id: 1..=64 characters of `[A-Za-z0-9._:/-]`.
///
/// The message names the id, ready to be wrapped with a location.
pub fn validate_instrument_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty instrument id".to_owned());
    }
    if let Some(c) = id.chars().find(|c| !is_id_char(*c)) {
        return Err(format!(
            "invalid instrument id {id:?}: character {c:?} is not allowed \
             (allowed: A-Z a-z 0-9 . _ : / -)"
        ));
    }
    // Checked after the charset so that the length is in bytes = chars.
    if id.len() > MAX_INSTRUMENT_ID_LEN {
        return Err(format!(
            "invalid instrument id {id:?}: {} characters, at most {MAX_INSTRUMENT_ID_LEN} allowed",
            id.len()
        ));
    }
    Ok(())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')
}

/// Checks a close: finite and strictly positive (returns divide by it).
pub(crate) fn validate_close(close: f64) -> Result<(), String> {
    if close.is_finite() && close > 0.0 {
        Ok(())
    } else {
        Err(format!("close {close} must be a finite number > 0"))
    }
}

/// Why already-validated rows could not form a table.
pub(crate) enum BuildError {
    Empty,
    /// Rows `first` and `second` (indices into the input) share a (date, instrument).
    Duplicate {
        first: usize,
        second: usize,
    },
}

impl PriceTable {
    /// Builds a table from `(date, instrument, close)` rows in any order.
    ///
    /// Fails if a close is not finite and > 0, an instrument id is not 1..=64
    /// characters of `[A-Za-z0-9._:/-]`, a (date, instrument) pair repeats, or
    /// there are no rows.
    pub fn from_rows(
        rows: impl IntoIterator<Item = (NaiveDate, String, f64)>,
    ) -> Result<PriceTable, DataError> {
        let rows: Vec<(NaiveDate, String, f64)> = rows.into_iter().collect();
        for (n, (date, instrument, close)) in rows.iter().enumerate() {
            validate_instrument_id(instrument)
                .map_err(|m| DataError::Invalid(format!("row {}: {m}", n + 1)))?;
            validate_close(*close).map_err(|m| {
                DataError::Invalid(format!("row {}: {instrument} on {date}: {m}", n + 1))
            })?;
        }
        Self::build(&rows).map_err(|e| match e {
            BuildError::Empty => DataError::Invalid("no price rows".to_owned()),
            BuildError::Duplicate { first, second } => {
                let (date, instrument, _) = &rows[second];
                DataError::Invalid(format!(
                    "duplicate close for {instrument} on {date} (rows {} and {})",
                    first + 1,
                    second + 1
                ))
            }
        })
    }

    /// Builds from rows whose ids and closes are already valid.
    pub(crate) fn build(rows: &[(NaiveDate, String, f64)]) -> Result<PriceTable, BuildError> {
        if rows.is_empty() {
            return Err(BuildError::Empty);
        }
        let mut calendar: Vec<NaiveDate> = rows.iter().map(|r| r.0).collect();
        calendar.sort_unstable();
        calendar.dedup();
        let instruments: Vec<String> = rows
            .iter()
            .map(|r| r.1.as_str())
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        // At most one id per row, and the row count fits memory: u32 suffices
        // unless someone loads four billion instruments.
        let index: HashMap<String, u32> = instruments
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();

        let n_dates = calendar.len();
        let words = n_dates.div_ceil(64);
        let mut closes = vec![vec![f64::NAN; n_dates]; instruments.len()];
        let mut observed = vec![vec![0u64; words]; instruments.len()];
        for (row, (date, instrument, close)) in rows.iter().enumerate() {
            // Both lookups succeed: calendar and index were built from these rows.
            let (Ok(d), Some(&i)) = (calendar.binary_search(date), index.get(instrument)) else {
                unreachable!("calendar and index hold every row's date and instrument");
            };
            let i = i as usize;
            let (word, bit) = (d / 64, 1u64 << (d % 64));
            if observed[i][word] & bit != 0 {
                // Error path only: find the earlier row to name both.
                let first = rows[..row]
                    .iter()
                    .position(|r| r.0 == *date && r.1 == *instrument)
                    .unwrap_or(row);
                return Err(BuildError::Duplicate { first, second: row });
            }
            observed[i][word] |= bit;
            closes[i][d] = *close;
        }
        for (series, seen) in closes.iter_mut().zip(&observed) {
            let mut last = f64::NAN;
            for (d, close) in series.iter_mut().enumerate() {
                if seen[d / 64] & (1u64 << (d % 64)) != 0 {
                    last = *close;
                } else {
                    *close = last;
                }
            }
        }

        let mut table = PriceTable {
            calendar,
            instruments,
            index,
            closes,
            observed,
            version: String::new(),
        };
        table.version = table.compute_version();
        Ok(table)
    }

    /// The content hash: the first 16 hex digits of a blake3 hash of, in order,
    /// - the domain tag `riskhost/price-table/v1\0`;
    /// - the number of dates (u64 LE), then each date as days since
    ///   1970-01-01 (i32 LE), ascending;
    /// - the number of instruments (u64 LE), then each id, sorted, as its
    ///   byte length (u64 LE) and UTF-8 bytes;
    /// - per instrument in that order, per date ascending: `0x00` if the
    ///   instrument has no observation that date, else `0x01` and the close's
    ///   IEEE-754 bit pattern (u64 LE).
    ///
    /// Only observations are hashed (filling is derived from them), so a
    /// table written by `write_csv` and loaded back has the same version.
    fn compute_version(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(VERSION_DOMAIN);
        h.update(&(self.calendar.len() as u64).to_le_bytes());
        for date in &self.calendar {
            h.update(&date.to_epoch_days().to_le_bytes());
        }
        h.update(&(self.instruments.len() as u64).to_le_bytes());
        for id in &self.instruments {
            h.update(&(id.len() as u64).to_le_bytes());
            h.update(id.as_bytes());
        }
        // One update per instrument: per-cell updates cost more than hashing.
        let mut buf = Vec::with_capacity(self.calendar.len() * 9);
        for (series, seen) in self.closes.iter().zip(&self.observed) {
            buf.clear();
            for (d, close) in series.iter().enumerate() {
                if seen[d / 64] & (1u64 << (d % 64)) != 0 {
                    buf.push(1);
                    buf.extend_from_slice(&close.to_bits().to_le_bytes());
                } else {
                    buf.push(0);
                }
            }
            h.update(&buf);
        }
        h.finalize().to_hex()[..16].to_owned()
    }

    /// A content hash of the data as 16 hex digits: identical data gives an
    /// identical version, any change to a date, id or close a different one.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sorted instrument ids.
    pub fn instruments(&self) -> &[String] {
        &self.instruments
    }

    pub fn contains(&self, instrument: &str) -> bool {
        self.index.contains_key(instrument)
    }

    /// The first trading date.
    pub(crate) fn first_date(&self) -> NaiveDate {
        // The calendar is never empty: `build` rejects empty input.
        self.calendar[0]
    }

    /// The last trading date.
    pub fn last_date(&self) -> NaiveDate {
        self.calendar[self.calendar.len() - 1]
    }

    /// Number of trading dates.
    pub fn len_dates(&self) -> usize {
        self.calendar.len()
    }

    /// Sorted trading dates.
    pub fn calendar(&self) -> &[NaiveDate] {
        &self.calendar
    }

    /// The trading date `as_of` is valued at: `None` ⇒ the last date; a date
    /// within the covered range ⇒ the latest trading date on or before it.
    ///
    /// A date after the last one is an error rather than the last date, so a
    /// client asking about the future never silently gets stale data.
    pub fn resolve_as_of(&self, as_of: Option<NaiveDate>) -> Result<NaiveDate, DataError> {
        let Some(as_of) = as_of else {
            return Ok(self.last_date());
        };
        let (first, last) = (self.first_date(), self.last_date());
        if as_of < first || as_of > last {
            return Err(DataError::AsOfOutOfRange { as_of, first, last });
        }
        // as_of >= first, so at least one date is <= as_of.
        let n = self.calendar.partition_point(|d| *d <= as_of);
        Ok(self.calendar[n - 1])
    }

    /// The closes of `instruments` over the last `lookback_returns + 1`
    /// trading dates ending at `as_of` (fewer if the calendar starts later).
    ///
    /// `as_of` must be a trading date: resolve it with [`Self::resolve_as_of`].
    /// Series come in request order; a repeated id gets a repeated series.
    pub fn window(
        &self,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
    ) -> Result<PriceWindow, DataError> {
        let (first, last) = (self.first_date(), self.last_date());
        if as_of < first || as_of > last {
            return Err(DataError::AsOfOutOfRange { as_of, first, last });
        }
        let end = self
            .calendar
            .binary_search(&as_of)
            .map_err(|_| DataError::NotATradingDate(as_of))?;
        let start = end.saturating_sub(lookback_returns);

        let mut rows = Vec::with_capacity(instruments.len());
        let mut unknown = Vec::new();
        for id in instruments {
            match self.index.get(*id) {
                Some(&i) => rows.push(i as usize),
                None => unknown.push((*id).to_owned()),
            }
        }
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            return Err(DataError::UnknownInstruments(unknown));
        }

        let series = rows
            .into_iter()
            .map(|i| WindowSeries {
                instrument: self.instruments[i].clone(),
                closes: self.closes[i][start..=end].to_vec(),
            })
            .collect();
        Ok(PriceWindow {
            as_of,
            dates: self.calendar[start..=end].to_vec(),
            series,
        })
    }

    /// The observations (not the filled cells), by date then instrument id:
    /// what a database seeded from this table must hold to serve the same
    /// windows.
    pub fn observations(&self) -> impl Iterator<Item = (NaiveDate, &str, f64)> + '_ {
        self.calendar.iter().enumerate().flat_map(move |(d, date)| {
            let (word, bit) = (d / 64, 1u64 << (d % 64));
            self.instruments
                .iter()
                .enumerate()
                .filter(move |(i, _)| self.observed[*i][word] & bit != 0)
                .map(move |(i, id)| (*date, id.as_str(), self.closes[i][d]))
        })
    }

    /// Writes the observations (not the filled cells) as the long CSV format
    /// `date,instrument,close` that `load_prices_csv` reads, by date then id.
    ///
    /// Closes are written in Rust's shortest round-trip form, so loading the
    /// output reproduces the same [`Self::version`].
    pub fn write_csv(&self, w: impl Write) -> Result<(), DataError> {
        let mut w = std::io::BufWriter::new(w);
        w.write_all(b"date,instrument,close\n")?;
        for (d, date) in self.calendar.iter().enumerate() {
            let (word, bit) = (d / 64, 1u64 << (d % 64));
            for (i, id) in self.instruments.iter().enumerate() {
                if self.observed[i][word] & bit != 0 {
                    // Ids are restricted to a charset with no CSV specials,
                    // so no quoting is needed.
                    writeln!(w, "{date},{id},{}", self.closes[i][d])?;
                }
            }
        }
        w.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn row(date: NaiveDate, id: &str, close: f64) -> (NaiveDate, String, f64) {
        (date, id.to_owned(), close)
    }

    /// Thu 2018-01-04 .. Tue 2018-01-09; B starts late and misses Monday.
    fn small() -> PriceTable {
        PriceTable::from_rows(vec![
            row(d(2018, 1, 4), "A", 10.0),
            row(d(2018, 1, 5), "A", 11.0),
            row(d(2018, 1, 8), "A", 12.0),
            row(d(2018, 1, 9), "A", 13.0),
            row(d(2018, 1, 5), "B", 100.0),
            row(d(2018, 1, 9), "B", 102.0),
        ])
        .unwrap()
    }

    #[test]
    fn calendar_is_the_union_and_gaps_are_forward_filled() {
        let t = small();
        assert_eq!(t.instruments(), ["A", "B"]);
        assert_eq!(t.len_dates(), 4);
        assert_eq!(t.first_date(), d(2018, 1, 4));
        assert_eq!(t.last_date(), d(2018, 1, 9));
        let w = t.window(&["B", "A"], d(2018, 1, 9), 10).unwrap();
        assert_eq!(
            w.dates,
            [d(2018, 1, 4), d(2018, 1, 5), d(2018, 1, 8), d(2018, 1, 9)]
        );
        assert_eq!(w.series[0].instrument, "B");
        let b = &w.series[0].closes;
        assert!(b[0].is_nan(), "before B's first close: NaN, got {}", b[0]);
        assert_eq!(b[1..], [100.0, 100.0, 102.0]);
        assert_eq!(w.series[1].closes, [10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn window_takes_lookback_plus_one_dates_ending_at_as_of() {
        let t = small();
        let w = t.window(&["A"], d(2018, 1, 8), 1).unwrap();
        assert_eq!(w.as_of, d(2018, 1, 8));
        assert_eq!(w.dates, [d(2018, 1, 5), d(2018, 1, 8)]);
        assert_eq!(w.series[0].closes, [11.0, 12.0]);
        assert_eq!(w.epoch_days(), [17536, 17539]);
        let w = t.window(&["A"], d(2018, 1, 8), 0).unwrap();
        assert_eq!(w.dates, [d(2018, 1, 8)]);
        // A huge lookback must not overflow; it is capped by the calendar.
        let w = t.window(&["A"], d(2018, 1, 9), usize::MAX).unwrap();
        assert_eq!(w.dates.len(), 4);
    }

    #[test]
    fn window_does_not_depend_on_batch_company() {
        let t = small();
        let alone = t.window(&["A"], d(2018, 1, 9), 3).unwrap();
        let with_b = t.window(&["A", "B"], d(2018, 1, 9), 3).unwrap();
        assert_eq!(alone.dates, with_b.dates);
        assert_eq!(alone.series[0], with_b.series[0]);
    }

    #[test]
    fn window_lists_every_unknown_instrument_sorted_and_deduped() {
        let t = small();
        match t.window(&["Z", "A", "C", "Z"], d(2018, 1, 9), 1) {
            Err(DataError::UnknownInstruments(ids)) => assert_eq!(ids, ["C", "Z"]),
            other => panic!("expected UnknownInstruments, got {other:?}"),
        }
    }

    #[test]
    fn window_rejects_non_trading_and_out_of_range_dates() {
        let t = small();
        assert!(matches!(
            t.window(&["A"], d(2018, 1, 6), 1),
            Err(DataError::NotATradingDate(x)) if x == d(2018, 1, 6)
        ));
        assert!(matches!(
            t.window(&["A"], d(2018, 1, 10), 1),
            Err(DataError::AsOfOutOfRange { .. })
        ));
    }

    #[test]
    fn resolve_as_of_rolls_back_to_a_trading_date_within_range() {
        let t = small();
        assert_eq!(t.resolve_as_of(None).unwrap(), d(2018, 1, 9));
        assert_eq!(t.resolve_as_of(Some(d(2018, 1, 4))).unwrap(), d(2018, 1, 4));
        assert_eq!(t.resolve_as_of(Some(d(2018, 1, 8))).unwrap(), d(2018, 1, 8));
        // Saturday and Sunday resolve to Friday.
        assert_eq!(t.resolve_as_of(Some(d(2018, 1, 6))).unwrap(), d(2018, 1, 5));
        assert_eq!(t.resolve_as_of(Some(d(2018, 1, 7))).unwrap(), d(2018, 1, 5));
        for bad in [d(2018, 1, 3), d(2018, 1, 10), d(2030, 1, 1)] {
            match t.resolve_as_of(Some(bad)) {
                Err(DataError::AsOfOutOfRange { as_of, first, last }) => {
                    assert_eq!((as_of, first, last), (bad, d(2018, 1, 4), d(2018, 1, 9)));
                }
                other => panic!("{bad}: expected AsOfOutOfRange, got {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_invalid_rows_naming_the_problem() {
        let bad_close = [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        for close in bad_close {
            let e = PriceTable::from_rows([row(d(2018, 1, 4), "SPX", close)]).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, DataError::Invalid(_)), "{msg}");
            assert!(msg.contains("SPX") && msg.contains("2018-01-04"), "{msg}");
        }
        let long = "X".repeat(65);
        for id in ["", "GC=F", "A B", "é", long.as_str()] {
            let e = PriceTable::from_rows([row(d(2018, 1, 4), id, 1.0)]).unwrap_err();
            assert!(matches!(e, DataError::Invalid(_)), "{id:?}: {e}");
            if !id.is_empty() {
                assert!(e.to_string().contains(id), "{e}");
            }
        }
        let ok = "X".repeat(64);
        for id in ["a.b_c:d/e-F9", ok.as_str()] {
            PriceTable::from_rows([row(d(2018, 1, 4), id, 1.0)]).unwrap();
        }
        let e = PriceTable::from_rows(Vec::new()).unwrap_err();
        assert!(matches!(e, DataError::Invalid(_)), "{e}");
    }

    #[test]
    fn rejects_duplicates_naming_both_rows() {
        let e = PriceTable::from_rows([
            row(d(2018, 1, 4), "A", 1.0),
            row(d(2018, 1, 5), "A", 2.0),
            row(d(2018, 1, 4), "A", 3.0),
        ])
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("rows 1 and 3") && msg.contains("A on 2018-01-04"),
            "{msg}"
        );
    }

    #[test]
    fn version_is_a_content_hash() {
        let a = small();
        assert_eq!(a.version().len(), 16);
        assert!(a.version().bytes().all(|b| b.is_ascii_hexdigit()));
        // Row order does not matter.
        let rows = vec![
            row(d(2018, 1, 9), "B", 102.0),
            row(d(2018, 1, 5), "B", 100.0),
            row(d(2018, 1, 9), "A", 13.0),
            row(d(2018, 1, 8), "A", 12.0),
            row(d(2018, 1, 5), "A", 11.0),
            row(d(2018, 1, 4), "A", 10.0),
        ];
        assert_eq!(
            PriceTable::from_rows(rows.clone()).unwrap().version(),
            a.version()
        );
        // Any change changes it: a close by one ulp, an id, a date, a
        // forward-filled cell becoming an observation of the same value.
        type Rows = Vec<(NaiveDate, String, f64)>;
        let variants: [fn(&mut Rows); 5] = [
            |r| r[0].2 = f64::from_bits(102f64.to_bits() + 1),
            |r| r[0].1 = "C".into(),
            |r| r[0].0 = d(2018, 1, 10),
            |r| r.push(row(d(2018, 1, 8), "B", 100.0)),
            |r| {
                r.pop();
            },
        ];
        let mut seen = std::collections::HashSet::from([a.version().to_owned()]);
        for change in variants {
            let mut changed = rows.clone();
            change(&mut changed);
            let v = PriceTable::from_rows(changed).unwrap().version().to_owned();
            assert!(seen.insert(v.clone()), "version {v} repeated");
        }
    }

    #[test]
    fn write_csv_writes_observations_only_and_round_trips() {
        let t = small();
        let mut out = Vec::new();
        t.write_csv(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "date,instrument,close\n\
             2018-01-04,A,10\n\
             2018-01-05,A,11\n\
             2018-01-05,B,100\n\
             2018-01-08,A,12\n\
             2018-01-09,A,13\n\
             2018-01-09,B,102\n"
        );
        let back = crate::load_prices_csv(text.as_bytes()).unwrap();
        assert_eq!(back.version(), t.version());

        // Awkward closes survive the text round trip bit for bit.
        let awkward = [
            0.1 + 0.2,
            1e-300,
            1.7976931348623157e308,
            2506.85,
            1.0 / 3.0,
        ];
        let rows = awkward
            .iter()
            .enumerate()
            .map(|(k, c)| row(d(2018, 1, 1 + k as u32), "X", *c));
        let t = PriceTable::from_rows(rows).unwrap();
        let mut out = Vec::new();
        t.write_csv(&mut out).unwrap();
        let back = crate::load_prices_csv(out.as_slice()).unwrap();
        assert_eq!(back.version(), t.version());
    }

    #[test]
    fn debug_is_a_summary() {
        let s = format!("{:?}", small());
        assert!(
            s.contains("instruments: 2") && s.contains("dates: 4"),
            "{s}"
        );
    }
}
