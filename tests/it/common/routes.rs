//! The one authoritative list of the routes riskhost serves. `openapi.rs`
//! checks the document and the server against it; `auth.rs` checks that its
//! authorization matrix covers every protected route in it.

/// Every route riskhost serves, with the scope its key needs (`None`: open).
/// The one authoritative list: the document must hold exactly these, and
/// the server must answer each of them.
pub(crate) const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/v1/score", Some("score")),
    ("POST", "/v1/score/batch", Some("score")),
    ("GET", "/v1/models", Some("score")),
    ("GET", "/v1/models/{name}/versions", Some("score")),
    ("GET", "/v1/fleet", Some("score")),
    ("GET", "/v1/portfolios/{id}/scores", Some("score")),
    ("GET", "/v1/portfolios/{id}/stats", Some("score")),
    ("GET", "/v1/models/{name}/stats", Some("score")),
    ("POST", "/v1/backtests", Some("score")),
    ("GET", "/v1/backtests/{id}", Some("score")),
    ("GET", "/v1/backtests/{id}/report.html", Some("score")),
    ("POST", "/v1/runs", Some("score")),
    ("GET", "/v1/runs", Some("score")),
    ("GET", "/v1/runs/{id}", Some("score")),
    ("DELETE", "/v1/runs/{id}", Some("score")),
    ("GET", "/v1/runs/{id}/results", Some("score")),
    ("PUT", "/v1/models/{name}", Some("admin")),
    ("DELETE", "/v1/models/{name}", Some("admin")),
    ("POST", "/v1/models/{name}/rollback", Some("admin")),
    ("PUT", "/v1/models/{name}/challenger", Some("admin")),
    ("GET", "/v1/models/{name}/challenger", Some("admin")),
    ("DELETE", "/v1/models/{name}/challenger", Some("admin")),
    ("POST", "/v1/models/{name}/promote", Some("admin")),
    ("DELETE", "/v1/cache", Some("admin")),
    ("DELETE", "/v1/cache/{model}", Some("admin")),
    ("POST", "/v1/replay", Some("admin")),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
];

/// Whether a concrete request path is an instance of the route `template`
/// (`{name}` matches one segment).
pub(crate) fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}
