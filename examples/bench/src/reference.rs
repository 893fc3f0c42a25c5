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

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

/// The reference server; stopped (its runtime shut down) on drop.
pub(crate) struct Reference {
    pub(crate) addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Reference {
    pub(crate) fn start() -> anyhow::Result<Reference> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the reference server's runtime")?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().route("/v1/score", post(score));
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

impl Drop for Reference {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
