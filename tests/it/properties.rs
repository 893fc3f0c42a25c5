//! Property-based tests (proptest) of the input edges: the JSON bodies of
//! `POST /v1/score` and `POST /v1/score/batch` with their validation,
//! portfolio canonicalisation and the memo key derived from it, and the
//! `--prices` CSV loader. Arbitrary bytes never panic and end in a clear
//! 4xx or error; valid inputs round-trip.
//!
//! The last property runs against the real server: a batch cell always
//! equals the single request with the same portfolio input.
//!
//! Each property runs a bounded number of cases (`CASES`, `SERVER_CASES`
//! against the server, or `PROPTEST_CASES` from the environment) so the
//! suite stays a few seconds.

use crate::common;

use std::collections::BTreeMap;

use axum::Json;
use axum::response::IntoResponse as _;
use chrono::NaiveDate;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

use riskhost_cache::{CanonicalPosition, score_key};
use riskhost_http::ApiError;
use riskhost_market::{PriceTable, SnapshotId, load_prices_csv};
use riskhost_models::ModelRef;
use riskhost_scoring::{BatchRequest, PortfolioLimits, PositionInput, ScoreRequest, canonicalize};

const CASES: u32 = 512;
/// Each case against the server is a batch and one request per cell.
const SERVER_CASES: u32 = 128;

fn config() -> Config {
    config_with(CASES)
}

fn config_with(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        // A failure is reported with its minimal input; nothing is written
        // into the source tree unless a case is worth keeping by hand.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------- generators ----------

fn instrument() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:/-]{1,64}"
}

/// Finite quantities of every magnitude, zero and negative zero included.
fn quantity() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |q| q.is_finite()),
        (-1_000_000i64..1_000_000).prop_map(|n| n as f64 / 8.0),
        Just(0.0),
        Just(-0.0),
    ]
}

fn model_ref() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,30}",
        "[a-z][a-z0-9-]{0,30}@[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        "[a-z][a-z0-9-]{0,30}@sha256:[0-9a-f]{64}",
    ]
}

fn date() -> impl Strategy<Value = NaiveDate> {
    (0i32..20_000).prop_map(|d| NaiveDate::from_epoch_days(d + 3_000).unwrap_or_default())
}

fn positions() -> impl Strategy<Value = Vec<(String, f64)>> {
    prop::collection::vec((instrument(), quantity()), 0..20)
}

fn params() -> impl Strategy<Value = BTreeMap<String, f64>> {
    prop::collection::btree_map(
        "[a-z_]{1,16}",
        any::<f64>().prop_filter("finite", |q| q.is_finite()),
        0..5,
    )
}

fn portfolio_json(id: &Option<String>, positions: &Option<Vec<(String, f64)>>) -> Value {
    let mut portfolio = serde_json::Map::new();
    if let Some(id) = id {
        portfolio.insert("id".into(), json!(id));
    }
    if let Some(positions) = positions {
        portfolio.insert(
            "positions".into(),
            positions
                .iter()
                .map(|(i, q)| json!({"instrument": i, "quantity": q}))
                .collect(),
        );
    }
    Value::Object(portfolio)
}

type Portfolio = (Option<String>, Option<Vec<(String, f64)>>);

fn portfolio() -> impl Strategy<Value = Portfolio> {
    (
        proptest::option::of("[ -~]{0,40}"),
        proptest::option::of(positions()),
    )
}

fn score_body()
-> impl Strategy<Value = (String, Portfolio, BTreeMap<String, f64>, Option<NaiveDate>)> {
    (
        model_ref(),
        portfolio(),
        params(),
        proptest::option::of(date()),
    )
}

fn score_json(
    model: &str,
    (id, positions): &Portfolio,
    params: &BTreeMap<String, f64>,
    as_of: Option<NaiveDate>,
) -> Value {
    let mut body =
        json!({"model": model, "portfolio": portfolio_json(id, positions), "params": params});
    if let Some(as_of) = as_of {
        body["as_of"] = json!(as_of.to_string());
    }
    body
}

/// Valid JSON bodies with a few bytes changed, truncated or spliced: closer
/// to the decoder's edges than uniform random bytes.
fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        base,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            bytes
        })
}

// ---------- what the HTTP layer does with a body ----------

/// Decodes a body as the API's extractor does; a refusal must be a 4xx.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match Json::<T>::from_bytes(bytes) {
        Ok(Json(value)) => Some(value),
        Err(rejection) => {
            let status = ApiError::from(rejection).into_response().status();
            assert!(
                status.is_client_error(),
                "a bad body got {status} instead of a 4xx"
            );
            None
        }
    }
}

/// The validation a decoded portfolio goes through before any lookup.
fn validate(positions: Option<&[PositionInput]>) {
    if let Some(positions) = positions {
        match canonicalize(positions, PortfolioLimits::default()) {
            Ok(canonical) => check_canonical(&canonical),
            Err(message) => assert!(!message.is_empty()),
        }
    }
}

fn check_canonical(canonical: &[CanonicalPosition]) {
    assert!(!canonical.is_empty());
    for pair in canonical.windows(2) {
        assert!(pair[0].instrument < pair[1].instrument, "sorted, merged");
    }
    for p in canonical {
        assert!(p.quantity.is_finite() && p.quantity != 0.0, "{p:?}");
    }
}

fn snapshot() -> SnapshotId {
    SnapshotId {
        source: "embedded".into(),
        version: "v1".into(),
    }
}

fn key_of(positions: &[PositionInput]) -> Option<[u8; 32]> {
    let canonical = canonicalize(positions, PortfolioLimits::default()).ok()?;
    let as_of = NaiveDate::from_ymd_opt(2018, 12, 31).unwrap_or_default();
    Some(score_key("sha256:00", &[0.99], &canonical, &snapshot(), as_of).0)
}

fn inputs(positions: &[(String, f64)]) -> Vec<PositionInput> {
    positions
        .iter()
        .map(|(instrument, quantity)| PositionInput {
            instrument: instrument.clone(),
            quantity: *quantity,
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn score_bodies_of_arbitrary_bytes_are_refused_or_validated(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            mutated(score_body().prop_map(|(m, p, q, d)| score_json(&m, &p, &q, d).to_string().into_bytes())),
        ]
    ) {
        if let Some(request) = decode::<ScoreRequest>(&bytes) {
            let _ = ModelRef::parse(&request.model).name();
            validate(request.portfolio.positions.as_deref());
        }
    }

    #[test]
    fn batch_bodies_of_arbitrary_bytes_are_refused_or_validated(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            mutated(
                (prop::collection::vec(model_ref(), 0..4), prop::collection::vec(portfolio(), 0..4))
                    .prop_map(|(models, portfolios)| {
                        let portfolios: Vec<Value> =
                            portfolios.iter().map(|(id, p)| portfolio_json(id, p)).collect();
                        json!({"models": models, "portfolios": portfolios}).to_string().into_bytes()
                    })
            ),
        ]
    ) {
        if let Some(request) = decode::<BatchRequest>(&bytes) {
            for model in &request.models {
                let _ = ModelRef::parse(model).name();
            }
            for portfolio in &request.portfolios {
                validate(portfolio.positions.as_deref());
            }
        }
    }

    #[test]
    fn valid_score_bodies_round_trip((model, portfolio, params, as_of) in score_body()) {
        let body = score_json(&model, &portfolio, &params, as_of).to_string();
        let request = decode::<ScoreRequest>(body.as_bytes());
        prop_assert!(request.is_some(), "a valid body was refused: {}", body);
        let Some(request) = request else { return Ok(()) };
        prop_assert_eq!(&request.model, &model);
        prop_assert_eq!(&request.portfolio.id, &portfolio.0);
        let want = portfolio.1.as_deref().map(inputs);
        prop_assert_eq!(request.portfolio.positions.as_ref().map(|p| p.len()), want.as_ref().map(Vec::len));
        for (got, want) in request.portfolio.positions.iter().flatten().zip(want.iter().flatten()) {
            prop_assert_eq!(&got.instrument, &want.instrument);
            // Bit for bit: the memo key hashes the bits of every quantity.
            prop_assert_eq!(got.quantity.to_bits(), want.quantity.to_bits(), "{} became {}", want.quantity, got.quantity);
        }
        prop_assert_eq!(request.params.len(), params.len());
        for ((got_name, got), (name, want)) in request.params.iter().zip(&params) {
            prop_assert_eq!(got_name, name);
            prop_assert_eq!(got.to_bits(), want.to_bits(), "{} became {}", want, got);
        }
        prop_assert_eq!(request.as_of, as_of);
    }

    #[test]
    fn valid_batch_bodies_round_trip(
        models in prop::collection::vec(model_ref(), 1..4),
        portfolios in prop::collection::vec(portfolio(), 1..6),
    ) {
        let json_portfolios: Vec<Value> =
            portfolios.iter().map(|(id, p)| portfolio_json(id, p)).collect();
        let body = json!({"models": models, "portfolios": json_portfolios}).to_string();
        let request = decode::<BatchRequest>(body.as_bytes());
        prop_assert!(request.is_some(), "a valid body was refused: {}", body);
        let Some(request) = request else { return Ok(()) };
        prop_assert_eq!(&request.models, &models);
        prop_assert_eq!(request.portfolios.len(), portfolios.len());
        for (got, (id, positions)) in request.portfolios.iter().zip(&portfolios) {
            prop_assert_eq!(&got.id, id);
            prop_assert_eq!(got.positions.clone(), positions.as_deref().map(inputs));
        }
    }

    /// Any order of the same positions is the same portfolio: the same
    /// canonical form and the same memo key.
    #[test]
    fn the_order_of_positions_does_not_change_the_key(
        positions in prop::collection::vec(
            (prop::sample::select(vec!["AAPL", "SPX", "TLT", "GC.F"]), quantity()), 1..12),
        seed in any::<u64>(),
    ) {
        let positions: Vec<(String, f64)> =
            positions.into_iter().map(|(i, q)| (i.to_owned(), q)).collect();
        let mut shuffled = positions.clone();
        // A deterministic shuffle from the seed (Fisher-Yates on an LCG).
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (x >> 33) as usize % (i + 1);
            shuffled.swap(i, j);
        }
        let (a, b) = (inputs(&positions), inputs(&shuffled));
        let (ca, cb) = (
            canonicalize(&a, PortfolioLimits::default()),
            canonicalize(&b, PortfolioLimits::default()),
        );
        prop_assert_eq!(&ca, &cb, "{:?} vs {:?}", positions, shuffled);
        prop_assert_eq!(key_of(&a), key_of(&b));
        if let Ok(canonical) = ca {
            check_canonical(&canonical);
            // Canonical is a fixed point.
            let again: Vec<PositionInput> = canonical
                .iter()
                .map(|p| PositionInput { instrument: p.instrument.clone(), quantity: p.quantity })
                .collect();
            prop_assert_eq!(canonicalize(&again, PortfolioLimits::default()), Ok(canonical));
        }
    }

    /// Two portfolios get the same key exactly when they hold the same net
    /// quantity of every instrument: splitting a holding into several
    /// positions (exact amounts) or adding offsetting zero positions keeps
    /// the key; any other difference changes it.
    #[test]
    fn keys_are_equal_iff_the_net_holdings_are(
        holdings in prop::collection::btree_map(instrument(), (-4_000i64..4_000).prop_filter("non-zero", |n| *n != 0), 1..6),
        other in prop::collection::btree_map(instrument(), (-4_000i64..4_000).prop_filter("non-zero", |n| *n != 0), 1..6),
        splits in prop::collection::vec(1i64..50, 6),
    ) {
        // Quantities in eighths: every split and sum below is exact.
        let split = |holdings: &BTreeMap<String, i64>| {
            let mut out = Vec::new();
            for ((instrument, n), k) in holdings.iter().zip(&splits) {
                let part = *k;
                out.push((instrument.clone(), part as f64 / 8.0));
                out.push((instrument.clone(), (*n - part) as f64 / 8.0));
                out.push((instrument.clone(), 0.0));
            }
            out.reverse();
            out
        };
        let whole: Vec<(String, f64)> =
            holdings.iter().map(|(i, n)| (i.clone(), *n as f64 / 8.0)).collect();
        let a = key_of(&inputs(&whole));
        prop_assert!(a.is_some());
        prop_assert_eq!(a, key_of(&inputs(&split(&holdings))));
        let b = key_of(&inputs(&split(&other)));
        prop_assert_eq!(a == b, holdings == other);
    }

    #[test]
    fn csv_of_arbitrary_bytes_loads_or_names_a_problem(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            prop::collection::vec(any::<u8>(), 0..256).prop_map(|tail| {
                let mut bytes = b"date,instrument,close\n2018-12-31,SPX,1.5\n".to_vec();
                bytes.extend(tail);
                bytes
            }),
            mutated(Just(b"date,instrument,close\n2018-12-28,SPX,2485.74\n2018-12-31,SPX,2506.85\n2018-12-31,TLT,121.51\n".to_vec())),
        ]
    ) {
        match load_prices_csv(bytes.as_slice()) {
            Ok(table) => prop_assert!(!table.instruments().is_empty()),
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    /// A valid table, written as CSV in any row order with the whitespace,
    /// line endings and blank lines the format allows, loads to the same
    /// observations; exporting and re-loading it changes nothing either.
    #[test]
    fn valid_price_tables_round_trip(
        rows in prop::collection::btree_map(
            (date(), prop::sample::select(vec!["SPX", "TLT", "AAPL", "BRK.B", "EUR/USD", "x_1:2-3"])),
            prop_oneof![
                (1u32..1_000_000).prop_map(|c| f64::from(c) / 100.0),
                any::<f64>().prop_filter("a close", |c| c.is_finite() && *c > 0.0),
            ],
            1..40,
        ),
        crlf in any::<bool>(),
        padding in prop::sample::select(vec!["", " ", "\t", "  "]),
        seed in any::<u64>(),
    ) {
        let mut list: Vec<(NaiveDate, String, f64)> =
            rows.iter().map(|((d, i), c)| (*d, (*i).to_owned(), *c)).collect();
        let mut x = seed | 1;
        for i in (1..list.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            list.swap(i, (x >> 33) as usize % (i + 1));
        }
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = format!("date,instrument,close{eol}");
        for (n, (d, i, c)) in list.iter().enumerate() {
            if n % 7 == 3 {
                text.push_str(eol);
            }
            text.push_str(&format!("{padding}{d}{padding},{i},{padding}{c}{eol}"));
        }
        let loaded = load_prices_csv(text.as_bytes());
        prop_assert!(loaded.is_ok(), "{:?}\n{}", loaded.err(), text);
        let Ok(loaded) = loaded else { return Ok(()) };
        let want: Vec<(NaiveDate, String, u64)> =
            rows.iter().map(|((d, i), c)| (*d, (*i).to_owned(), c.to_bits())).collect();
        let mut got: Vec<(NaiveDate, String, u64)> =
            loaded.observations().map(|(d, i, c)| (d, i.to_owned(), c.to_bits())).collect();
        got.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        prop_assert_eq!(&got, &want_sorted);
        let built = PriceTable::from_rows(list.clone());
        prop_assert!(built.is_ok());
        let Ok(built) = built else { return Ok(()) };
        prop_assert_eq!(built.version(), loaded.version());

        let mut exported = Vec::new();
        prop_assert!(loaded.write_csv(&mut exported).is_ok());
        let reloaded = load_prices_csv(exported.as_slice());
        prop_assert!(reloaded.is_ok());
        let Ok(reloaded) = reloaded else { return Ok(()) };
        prop_assert_eq!(reloaded.version(), loaded.version());
        prop_assert_eq!(reloaded.calendar(), loaded.calendar());
    }
}

// ---------- a batch cell is the single request with the same input ----------

/// Portfolio inputs of every kind the routes resolve: by id alone (stored,
/// or unknown), inline with an id (a stored one's, or not) or without,
/// and neither.
fn batch_portfolio() -> impl Strategy<Value = Value> {
    let stored = prop::sample::select(vec!["tech", "balanced", "macro", "single-spx", "fifty"]);
    let id = prop_oneof![stored.clone().prop_map(str::to_owned), "ghost-[a-z]{1,4}",];
    let positions = prop::collection::vec(
        (
            prop::sample::select(vec!["SPX", "AAPL", "TLT", "GOLD", "EURUSD", "NOPE"]),
            (-40i32..40).prop_map(|q| f64::from(q) * 25.0),
        ),
        0..4,
    )
    .prop_map(|positions| {
        positions
            .into_iter()
            .map(|(i, q)| (i.to_owned(), q))
            .collect::<Vec<_>>()
    });
    prop_oneof![
        3 => stored.prop_map(|id| json!({"id": id})),
        1 => id.clone().prop_map(|id| json!({"id": id})),
        3 => (proptest::option::of(id), positions)
            .prop_map(|(id, positions)| portfolio_json(&id, &Some(positions))),
        1 => Just(json!({})),
    ]
}

#[test]
fn a_batch_cell_equals_the_single_request_with_the_same_portfolio() {
    const MODELS: [&str; 2] = ["var-parametric", "es-historical"];
    let server = common::Server::start(&[]);
    proptest!(config_with(SERVER_CASES), |(portfolios in prop::collection::vec(batch_portfolio(), 1..6))| {
        let (status, batch) = server.post(
            "/v1/score/batch",
            &json!({"models": MODELS, "portfolios": portfolios}),
        );
        prop_assert_eq!(status, 200, "{}", batch);
        let cells = batch["results"].as_array().cloned().unwrap_or_default();
        prop_assert_eq!(cells.len(), portfolios.len() * MODELS.len());
        for (i, cell) in cells.iter().enumerate() {
            let (portfolio, model) = (&portfolios[i / MODELS.len()], MODELS[i % MODELS.len()]);
            let (status, single) = server.post(
                "/v1/score",
                &json!({"model": model, "portfolio": portfolio}),
            );
            if status == 200 {
                prop_assert!(cell["error"].is_null(), "cell {} of {} failed: {}; alone: {}", i, batch, cell, single);
                for field in ["value", "breakdown", "digest", "unit"] {
                    prop_assert_eq!(&cell[field], &single[field], "cell {} ({}) of {}: `{}` differs from the single request {}", i, portfolio, batch, field, single);
                }
            } else {
                prop_assert_eq!(&cell["error"]["code"], &single["error"]["code"], "cell {} ({}) of {}; alone: {} {}", i, portfolio, batch, status, single);
            }
        }
    });
}
