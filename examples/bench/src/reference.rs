//! The ceiling of the HTTP scenarios: a trivial axum JSON endpoint, served
//! from this process on its own tokio runtime built like `riskhost serve`'s
//! (multi-threaded, one worker per core, same axum and hyper versions and
//! features). `POST /v1/score` parses the same JSON body a score request
//! carries and answers a small JSON object, so the reference pays for
//! HTTP, body parsing and serialisation but for nothing riskhost adds.
//!
//! It runs in the benchmark process rather than as a route in the product:
//! the product must not grow a fake route, and `/healthz` neither reads a
//! body nor parses JSON.
//!
//! The ceiling of a miss is [`Reference::native`]: the same `var-historical`
//! crate compiled natively and called inline in an axum handler, on the same
//! price window a request gets (the server's embedded table, the model's
//! default parameters), answering the score and its breakdown as JSON. It is
//! what a host that did no sandboxing, no memo and no accounting would cost.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use riskhost_market::PriceTable;
use riskhost_sdk::Model as _;
use serde::Deserialize;
use serde_json::{Value, json};

/// The reference server; stopped (its runtime shut down) on drop.
pub(crate) struct Reference {
    pub(crate) addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Reference {
    /// The trivial endpoint: parses the body, answers a constant.
    pub(crate) fn start() -> anyhow::Result<Reference> {
        Reference::serve(axum::Router::new().route("/v1/score", post(score)))
    }

    /// `var-historical` compiled natively, on `table` (the server's).
    pub(crate) fn native(table: Arc<PriceTable>) -> anyhow::Result<Reference> {
        let info = var_historical::VarHistorical::info();
        let params: Vec<f64> = info.params.iter().map(|p| p.default_value).collect();
        let lookback = info
            .params
            .iter()
            .find(|p| p.name == riskhost_sdk::risk::PARAM_LOOKBACK)
            .context("var-historical has no lookback_days parameter")?
            .default_value as usize;
        let state = Arc::new(NativeModel {
            table,
            params,
            lookback,
        });
        Reference::serve(
            axum::Router::new()
                .route("/v1/score", post(native_score))
                .with_state(state),
        )
    }

    fn serve(app: axum::Router) -> anyhow::Result<Reference> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the reference server's runtime")?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Reference { addr, rt: Some(rt) })
    }
}

async fn score(Json(request): Json<Value>) -> Json<Value> {
    Json(json!({
        "model": request.get("model").cloned().unwrap_or(Value::Null),
        "value": 1.0,
        "unit": "currency",
        "cached": false,
    }))
}

struct NativeModel {
    table: Arc<PriceTable>,
    /// `var-historical`'s default parameters, in `info()` order.
    params: Vec<f64>,
    /// Its default `lookback_days`: the returns the window must hold.
    lookback: usize,
}

#[derive(Deserialize)]
struct NativeRequest {
    model: String,
    portfolio: NativePortfolio,
}

#[derive(Deserialize)]
struct NativePortfolio {
    positions: Vec<NativePosition>,
}

#[derive(Deserialize)]
struct NativePosition {
    instrument: String,
    quantity: f64,
}

async fn native_score(
    State(model): State<Arc<NativeModel>>,
    Json(request): Json<NativeRequest>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let refused = |e: String| (StatusCode::UNPROCESSABLE_ENTITY, e);
    if request.model != "var-historical" {
        return Err(refused(format!("no native model {}", request.model)));
    }
    let positions = &request.portfolio.positions;
    let instruments: Vec<&str> = positions.iter().map(|p| p.instrument.as_str()).collect();
    let as_of = model.table.last_date();
    let window = model
        .table
        .window(&instruments, as_of, model.lookback)
        .map_err(|e| refused(e.to_string()))?;
    let market = riskhost_sdk::MarketData {
        as_of: as_of.format("%Y-%m-%d").to_string(),
        dates: window.epoch_days(),
        series: window
            .series
            .into_iter()
            .map(|s| riskhost_sdk::PriceSeries {
                instrument: s.instrument,
                closes: s.closes,
            })
            .collect(),
    };
    let job = riskhost_sdk::Job {
        portfolio: riskhost_sdk::Portfolio {
            id: String::new(),
            positions: positions
                .iter()
                .zip(0u32..)
                .map(|(p, series)| riskhost_sdk::Position {
                    series,
                    quantity: p.quantity,
                })
                .collect(),
        },
        params: model.params.clone(),
        seed: 0,
    };
    let score = var_historical::VarHistorical::score_batch(&market, &[job])
        .pop()
        .ok_or_else(|| refused("no result".to_owned()))?
        .map_err(|e| refused(format!("{e:?}")))?;
    Ok(Json(json!({
        "model": request.model,
        "as_of": market.as_of,
        "value": score.value,
        "unit": "currency_amount",
        "breakdown": score.breakdown.iter()
            .map(|c| json!({"name": c.name, "value": c.value}))
            .collect::<Vec<_>>(),
        "params": model.params,
    })))
}

impl Drop for Reference {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
