//! riskhost-http: the HTTP trigger, the outermost layer of the server.
//!
//! - [`api`]: the router and its layer stack, [`api::AppState`],
//!   [`api::ApiError`] (every error → status mapping lives here), the JSON
//!   extractors, and the scoring, cache and operations routes.
//! - [`admin`]: the model-management routes.
//! - [`backtests`]: run a backtest, read it again, read its HTML report.
//! - [`auth`]: the `Scorer`/`Admin` extractors over `riskhost_auth`.
//! - [`limits`]: the global concurrency limit and request timeout layers.
//! - [`request_log`]: the request id, the per-request span and access
//!   line, and the score-history route.
//! - [`openapi`]: the OpenAPI document's frame.
//!
//! Translates only: no scoring, caching or storage logic. Nothing below this
//! crate depends on axum, tower-http or utoipa (`tests/it/crate_graph.rs`).

pub mod admin;
pub mod api;
pub mod auth;
pub mod backtests;
pub mod limits;
pub mod openapi;
pub mod request_log;
