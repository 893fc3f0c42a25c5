//! `riskhost replay REQUEST_ID`: the command-line client of a server's
//! `POST /v1/replay` (`docs/replay.md`), which re-runs a request's
//! recorded scores and compares each with what was served.
//!
//! Prints one line per recorded score (or the server's JSON answer with
//! `--json`). Exit codes, in the style of `riskhost run`: 0 when every
//! score replayed bit-identical; 1 for any error (the server's answer, such
//! as 404 `unknown_request`, 409 `snapshot_unavailable` or 410
//! `version_gone`, or the network); 2 for a usage error (clap); 3 when the
//! replay ran but a score differs or could not be computed again.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use reqwest::Url;
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// `riskhost replay`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReplayArgs {
    /// The request id (`x-request-id`) whose recorded scores to replay.
    pub(crate) request_id: String,
    /// The server (or any replica of the fleet).
    #[arg(long, env = "RISKHOST_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// An API token of scope `admin`.
    #[arg(long, env = "RISKHOST_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Print the server's answer as JSON instead of one line per score.
    #[arg(long)]
    pub(crate) json: bool,
    /// How long to wait for the answer, in seconds (a replay re-runs every
    /// score of the request).
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout_secs: u64,
}

/// A replay that ran but did not reproduce every score: exit code 3.
#[derive(Debug)]
pub(crate) struct NotIdentical {
    pub(crate) differing: usize,
    pub(crate) total: usize,
}

impl fmt::Display for NotIdentical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} recorded scores did not replay bit-identical",
            self.differing, self.total
        )
    }
}

impl std::error::Error for NotIdentical {}

/// Runs `riskhost replay`. Not on the async runtime (reqwest's blocking
/// client runs its own).
pub(crate) fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let base = Url::parse(&args.server)
        .with_context(|| format!("--server `{}` is not a URL", args.server))?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        bail!("--server `{}` is not an http(s) URL", args.server);
    }
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(["v1", "replay"]);
    }
    let http = Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()
        .context("cannot build the HTTP client")?;
    let mut request = http.post(url).json(&json!({"request_id": args.request_id}));
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let what = format!("replaying request {}", args.request_id);
    let response = request
        .send()
        .with_context(|| format!("{what}: cannot reach {base}"))?;
    if !response.status().is_success() {
        return Err(anyhow::Error::new(crate::run_command::server_error(response)).context(what));
    }
    let answer: Value = response
        .json()
        .with_context(|| format!("{what}: the answer is not JSON"))?;
    let cells = answer["cells"]
        .as_array()
        .with_context(|| format!("{what}: the answer has no `cells`"))?;
    let differing = cells
        .iter()
        .filter(|c| c["identical"].as_bool() != Some(true))
        .count();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &answer)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &args.request_id, cells, differing)?;
    }
    out.flush()?;
    if differing > 0 {
        return Err(NotIdentical {
            differing,
            total: cells.len(),
        }
        .into());
    }
    Ok(())
}

/// One line per recorded score, then a summary.
fn print_table(
    out: &mut impl std::io::Write,
    request_id: &str,
    cells: &[Value],
    differing: usize,
) -> std::io::Result<()> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    // serde_json prints the shortest text that reads back as the same f64.
    let number = |v: &Value| match v {
        Value::Number(n) => n.to_string(),
        _ => "-".to_owned(),
    };
    writeln!(
        out,
        "{:<20} {:<16} {:<10} {:<10} {:<24} {:<24} {:<24} IDENTICAL",
        "MODEL", "PORTFOLIO", "PATH", "AS_OF", "RECORDED", "REPLAYED", "SNAPSHOT"
    )?;
    for c in cells {
        let verdict = match (c["identical"].as_bool(), c["error"]["code"].as_str()) {
            (Some(true), _) => "yes".to_owned(),
            (_, Some(code)) => format!("no ({code}: {})", text(&c["error"]["message"])),
            _ => "no".to_owned(),
        };
        writeln!(
            out,
            "{:<20} {:<16} {:<10} {:<10} {:<24} {:<24} {:<24} {verdict}",
            text(&c["model"]),
            text(&c["portfolio_id"]),
            text(&c["path"]),
            text(&c["as_of"]),
            number(&c["recorded"]),
            number(&c["replayed"]),
            text(&c["snapshot"]),
        )?;
    }
    writeln!(
        out,
        "request {request_id}: {} recorded score{}, {} identical",
        cells.len(),
        if cells.len() == 1 { "" } else { "s" },
        cells.len() - differing
    )
}
