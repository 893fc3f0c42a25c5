//! [`EmbeddedSource`]: a [`MarketDataSource`] over an in-memory
//! [`PriceTable`], with the sample portfolios of `examples/portfolios/`
//! compiled into the binary so `riskhost serve` works with no files at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;

use super::table::{PriceTable, PriceWindow, validate_instrument_id};
use super::{DataError, MarketDataSource, SnapshotId, StoredPortfolio, sample};

/// The sample portfolios, by file name.
const SAMPLE_PORTFOLIOS: [(&str, &str); 5] = [
    (
        "balanced.json",
        include_str!("../../../examples/portfolios/balanced.json"),
    ),
    (
        "tech.json",
        include_str!("../../../examples/portfolios/tech.json"),
    ),
    (
        "macro.json",
        include_str!("../../../examples/portfolios/macro.json"),
    ),
    (
        "single-spx.json",
        include_str!("../../../examples/portfolios/single-spx.json"),
    ),
    (
        "fifty.json",
        include_str!("../../../examples/portfolios/fifty.json"),
    ),
];

/// Parses the sample portfolios compiled into the binary.
pub fn sample_portfolios() -> Result<Vec<StoredPortfolio>, DataError> {
    SAMPLE_PORTFOLIOS
        .iter()
        .map(|(file, json)| {
            serde_json::from_str(json)
                .map_err(|e| DataError::Invalid(format!("sample portfolio {file}: {e}")))
        })
        .collect()
}

/// Serves a [`PriceTable`] held in memory and a fixed set of portfolios.
#[derive(Debug, Clone)]
pub struct EmbeddedSource {
    table: Arc<PriceTable>,
    portfolios: BTreeMap<String, StoredPortfolio>,
    source_name: String,
}

impl EmbeddedSource {
    /// The bundled sample data and sample portfolios; source name `embedded`.
    pub fn bundled() -> EmbeddedSource {
        let source = EmbeddedSource {
            table: Arc::new(sample::sample_table()),
            portfolios: BTreeMap::new(),
            source_name: "embedded".to_owned(),
        };
        // Both inputs are compiled in; `bundled_portfolios_are_valid` proves
        // they parse and only hold bundled instruments.
        sample_portfolios()
            .and_then(|portfolios| source.with_portfolios(portfolios))
            .expect("the bundled sample portfolios are valid")
    }

    /// A source over `table` (e.g. loaded from `--prices FILE.csv`), named
    /// `source_name` in its [`SnapshotId`].
    ///
    /// It carries the sample portfolios only if the table holds every
    /// instrument they use; otherwise it has no stored portfolios.
    pub fn from_table(
        table: impl Into<Arc<PriceTable>>,
        source_name: impl Into<String>,
    ) -> EmbeddedSource {
        let source = EmbeddedSource {
            table: table.into(),
            portfolios: BTreeMap::new(),
            source_name: source_name.into(),
        };
        match sample_portfolios().and_then(|p| source.clone().with_portfolios(p)) {
            Ok(with_samples) => with_samples,
            Err(e) => {
                tracing::info!(
                    source = %source.source_name,
                    "sample portfolios not available for this market data: {e}"
                );
                source
            }
        }
    }

    /// Replaces the stored portfolios. Every portfolio needs a valid,
    /// unique id, at least one position, finite non-zero quantities and
    /// only instruments the table holds.
    pub(crate) fn with_portfolios(
        mut self,
        portfolios: impl IntoIterator<Item = StoredPortfolio>,
    ) -> Result<EmbeddedSource, DataError> {
        let mut by_id = BTreeMap::new();
        for p in portfolios {
            validate_portfolio(&self.table, &p)?;
            if by_id.contains_key(&p.id) {
                return Err(DataError::Invalid(format!(
                    "portfolio id {:?} is used twice",
                    p.id
                )));
            }
            by_id.insert(p.id.clone(), p);
        }
        self.portfolios = by_id;
        Ok(self)
    }

    /// The table served.
    pub fn table(&self) -> &Arc<PriceTable> {
        &self.table
    }
}

fn validate_portfolio(table: &PriceTable, p: &StoredPortfolio) -> Result<(), DataError> {
    // Ids appear in URLs, so they follow the instrument id rules.
    validate_instrument_id(&p.id).map_err(|m| DataError::Invalid(format!("portfolio id: {m}")))?;
    if p.positions.is_empty() {
        return Err(DataError::Invalid(format!(
            "portfolio {:?} has no positions",
            p.id
        )));
    }
    if let Some(bad) = p
        .positions
        .iter()
        .find(|pos| !pos.quantity.is_finite() || pos.quantity == 0.0)
    {
        return Err(DataError::Invalid(format!(
            "portfolio {:?}: quantity {} of {} must be finite and non-zero",
            p.id, bad.quantity, bad.instrument
        )));
    }
    let mut unknown: Vec<String> = p
        .positions
        .iter()
        .filter(|pos| !table.contains(&pos.instrument))
        .map(|pos| pos.instrument.clone())
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        unknown.dedup();
        return Err(DataError::UnknownInstruments(unknown));
    }
    Ok(())
}

#[async_trait::async_trait]
impl MarketDataSource for EmbeddedSource {
    fn snapshot(&self) -> SnapshotId {
        SnapshotId {
            source: self.source_name.clone(),
            version: self.table.version().to_owned(),
        }
    }

    async fn resolve_as_of(&self, as_of: Option<NaiveDate>) -> Result<NaiveDate, DataError> {
        self.table.resolve_as_of(as_of)
    }

    async fn price_window(
        &self,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
        snapshot: &SnapshotId,
    ) -> Result<PriceWindow, DataError> {
        // The table never changes, but a snapshot of another source must
        // not be served from it either.
        let own = self.snapshot();
        if *snapshot != own {
            return Err(DataError::moved(snapshot, &own.version));
        }
        self.table.window(instruments, as_of, lookback_returns)
    }

    async fn calendar(&self, snapshot: &SnapshotId) -> Result<Vec<NaiveDate>, DataError> {
        let own = self.snapshot();
        if *snapshot != own {
            return Err(DataError::moved(snapshot, &own.version));
        }
        Ok(self.table.calendar().to_vec())
    }

    async fn portfolio(&self, id: &str) -> Result<Option<StoredPortfolio>, DataError> {
        Ok(self.portfolios.get(id).cloned())
    }

    async fn portfolio_ids(&self) -> Result<Vec<String>, DataError> {
        Ok(self.portfolios.keys().cloned().collect())
    }

    async fn has_instrument(&self, instrument: &str) -> Result<bool, DataError> {
        Ok(self.table.contains(instrument))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::StoredPosition;
    use crate::sample::{AssetClass, INSTRUMENTS};

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn by_id() -> BTreeMap<String, StoredPortfolio> {
        sample_portfolios()
            .unwrap()
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect()
    }

    fn class_of(id: &str) -> AssetClass {
        INSTRUMENTS.iter().find(|s| s.id == id).unwrap().class
    }

    #[test]
    fn bundled_portfolios_are_valid() {
        let table = sample::sample_table();
        let portfolios = sample_portfolios().unwrap();
        assert_eq!(portfolios.len(), SAMPLE_PORTFOLIOS.len());
        for ((file, _), p) in SAMPLE_PORTFOLIOS.iter().zip(&portfolios) {
            assert_eq!(format!("{}.json", p.id), *file);
            validate_portfolio(&table, p).unwrap();
            let distinct: HashSet<&str> =
                p.positions.iter().map(|x| x.instrument.as_str()).collect();
            assert_eq!(
                distinct.len(),
                p.positions.len(),
                "{file}: repeated instrument"
            );
        }
    }

    #[test]
    fn sample_portfolios_have_their_documented_shape() {
        let p = by_id();
        assert_eq!(
            p["single-spx"].positions,
            [StoredPosition {
                instrument: "SPX".into(),
                quantity: 100.0
            }]
        );

        let tech = &p["tech"].positions;
        assert_eq!(tech.len(), 6);
        assert!(tech.iter().any(|x| x.instrument == "NDX"));
        assert_eq!(
            tech.iter()
                .filter(|x| class_of(&x.instrument) == AssetClass::Stock)
                .count(),
            5
        );

        let mac = &p["macro"].positions;
        assert!(mac.iter().any(|x| x.quantity < 0.0), "macro has shorts");
        for class in [AssetClass::Fx, AssetClass::Bond, AssetClass::Commodity] {
            assert!(mac.iter().any(|x| class_of(&x.instrument) == class));
        }
        assert!(mac.iter().all(|x| matches!(
            class_of(&x.instrument),
            AssetClass::Fx | AssetClass::Bond | AssetClass::Commodity
        )));

        let balanced = &p["balanced"].positions;
        assert!((7..=10).contains(&balanced.len()));
        let classes: HashSet<_> = balanced
            .iter()
            .map(|x| format!("{:?}", class_of(&x.instrument)))
            .collect();
        assert!(classes.len() >= 4, "balanced spans {classes:?}");
    }

    #[test]
    fn fifty_holds_every_instrument_once_with_sized_positions() {
        let table = sample::sample_table();
        let fifty = &by_id()["fifty"];
        let held: HashSet<&str> = fifty
            .positions
            .iter()
            .map(|x| x.instrument.as_str())
            .collect();
        let all: HashSet<&str> = table.instruments().iter().map(String::as_str).collect();
        assert_eq!(fifty.positions.len(), 24);
        assert_eq!(held, all);
        assert!(fifty.positions.iter().any(|x| x.quantity < 0.0));
        assert!(fifty.positions.iter().any(|x| x.quantity > 0.0));
        let ids: Vec<&str> = fifty
            .positions
            .iter()
            .map(|x| x.instrument.as_str())
            .collect();
        let w = table.window(&ids, d(2018, 12, 31), 0).unwrap();
        for (pos, series) in fifty.positions.iter().zip(&w.series) {
            let value = (pos.quantity * series.closes[0]).abs();
            assert!(
                (10_000.0..=1_000_000.0).contains(&value),
                "{}: {} × {} = {value}",
                pos.instrument,
                pos.quantity,
                series.closes[0]
            );
        }
    }

    #[tokio::test]
    async fn bundled_serves_the_sample_data() {
        let s = EmbeddedSource::bundled();
        let snap = s.snapshot();
        assert_eq!(snap.source, "embedded");
        assert_eq!(snap.version, sample::sample_table().version());
        assert_eq!(s.resolve_as_of(None).await.unwrap(), d(2018, 12, 31));
        assert_eq!(
            s.resolve_as_of(Some(d(2018, 12, 29))).await.unwrap(),
            d(2018, 12, 28)
        );
        assert!(
            s.resolve_as_of(Some(d(2019, 1, 2)))
                .await
                .unwrap_err()
                .is_client_error()
        );
        let w = s
            .price_window(&["TLT", "SPX"], d(2018, 12, 31), 250, &s.snapshot())
            .await
            .unwrap();
        assert_eq!(w.dates.len(), 251);
        assert_eq!(w.series[0].instrument, "TLT");
        assert_eq!(w.series[1].closes.len(), 251);
        assert!(
            s.price_window(&["NOPE"], d(2018, 12, 31), 5, &s.snapshot())
                .await
                .unwrap_err()
                .is_client_error()
        );
        assert!(s.has_instrument("GOLD").await.unwrap());
        assert!(!s.has_instrument("GC=F").await.unwrap());
        assert_eq!(
            s.portfolio_ids().await.unwrap(),
            ["balanced", "fifty", "macro", "single-spx", "tech"]
        );
        assert_eq!(s.portfolio("tech").await.unwrap().unwrap().id, "tech");
        assert_eq!(s.portfolio("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn from_table_keeps_samples_only_when_their_instruments_exist() {
        let full = EmbeddedSource::from_table(sample::sample_table(), "csv");
        assert_eq!(full.snapshot().source, "csv");
        assert_eq!(full.portfolio_ids().await.unwrap().len(), 5);

        let spx_only = PriceTable::from_rows([
            (d(2018, 12, 28), "SPX".to_owned(), 2485.74),
            (d(2018, 12, 31), "SPX".to_owned(), 2506.85),
        ])
        .unwrap();
        let version = spx_only.version().to_owned();
        let s = EmbeddedSource::from_table(Arc::new(spx_only), "csv");
        assert_eq!(
            s.snapshot(),
            SnapshotId {
                source: "csv".into(),
                version
            }
        );
        assert!(s.portfolio_ids().await.unwrap().is_empty());
        assert_eq!(s.portfolio("single-spx").await.unwrap(), None);
    }

    #[test]
    fn with_portfolios_validates() {
        let s = EmbeddedSource::from_table(sample::sample_table(), "test");
        let p = |id: &str, instrument: &str, quantity: f64| StoredPortfolio {
            id: id.into(),
            positions: vec![StoredPosition {
                instrument: instrument.into(),
                quantity,
            }],
        };
        let unknown = s
            .clone()
            .with_portfolios([p("x", "NOPE", 1.0)])
            .unwrap_err();
        assert!(matches!(unknown, DataError::UnknownInstruments(ref ids) if ids == &["NOPE"]));
        for bad in [
            p("x", "SPX", 0.0),
            p("x", "SPX", f64::NAN),
            p("", "SPX", 1.0),
            p("a b", "SPX", 1.0),
        ] {
            let e = s.clone().with_portfolios([bad]).unwrap_err();
            assert!(matches!(e, DataError::Invalid(_)), "{e}");
        }
        let empty = StoredPortfolio {
            id: "e".into(),
            positions: vec![],
        };
        assert!(s.clone().with_portfolios([empty]).is_err());
        let twice = s
            .clone()
            .with_portfolios([p("x", "SPX", 1.0), p("x", "TLT", 1.0)]);
        assert!(twice.unwrap_err().to_string().contains("used twice"));
        let ok = s.with_portfolios([p("mine", "SPX", -2.0)]).unwrap();
        assert_eq!(ok.portfolios.keys().collect::<Vec<_>>(), ["mine"]);
    }
}
