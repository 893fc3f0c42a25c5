//! riskhost-http: the HTTP trigger, the outermost layer of the server.
//!
//! - `api.rs`: the [`router`] and its layer stack, [`AppState`],
//!   [`ApiError`] (every error → status mapping lives here), the JSON
//!   extractors, and the scoring, cache and operations routes.
//! - `admin.rs`: the model-management routes.
//! - `challenger.rs`: a model's challenger (set, read, stop) and its
//!   promotion on evidence.
//! - `backtests.rs`: run a backtest, read it again, read its HTML report.
//! - `runs.rs`: submit a risk run (JSON or a streamed NDJSON upload),
//!   follow it, cancel it, read its results as NDJSON or CSV.
//! - `auth.rs`: the `Scorer`/`Admin` extractors over `riskhost_auth`.
//! - `limits.rs`: the global concurrency limit and request timeout layers
//!   ([`RequestLimits`]).
//! - `request_log.rs`: the request id, the per-request span and access
//!   line, and the score-history route.
//! - `replay.rs`: `POST /v1/replay`, a request's recorded scores re-run.
//! - `stats.rs`: the score-statistics routes (aggregates per day or hour).
//! - `openapi.rs`: the OpenAPI document's frame ([`openapi_document`]).
//!
//! The crate's API is what this file re-exports.
//!
//! Translates only: no scoring, caching or storage logic. Nothing below this
//! crate depends on axum, tower-http or utoipa (`tests/it/crate_graph.rs`).

mod admin;
mod api;
mod auth;
mod backtests;
mod challenger;
mod limits;
mod openapi;
mod replay;
mod request_log;
mod runs;
mod stats;

pub use self::api::{ApiError, AppState, HttpLimits, router};
pub use self::limits::RequestLimits;
pub use self::openapi::document as openapi_document;
pub use self::request_log::AccessLog;
