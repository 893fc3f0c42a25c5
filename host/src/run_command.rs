//! `riskhost run submit|status|results|cancel|list`: the command-line client
//! of a server's risk runs (`/v1/runs`), for the nightly job that scores
//! every portfolio and the analyst who follows it.
//!
//! It uses reqwest's blocking client, off the async runtime: a blocking
//! `Body` streams any `Read` (a portfolios file of any size is uploaded as
//! it is read, never held whole) and a blocking `Response` is a `Read` that
//! `io::copy` streams into a file, which is all a client that waits needs.
//!
//! Exit codes: 0 when the command did what it was asked (for a command that
//! waited, the run `completed`); 1 for any error (the server's answer, the
//! network, a file); 2 for a usage error (clap); 3 when a run waited for
//! ended `completed_with_failures` and 4 when it ended `cancelled` (its
//! results are still downloaded first with `--out`).

use std::fmt;
use std::io::{IsTerminal as _, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use riskhost_runs::{RunStatus, RunView};
use serde_json::{Value, json};

/// How often a waiting command reads the run.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The timeout of a request that answers at once (status, list, cancel),
/// and of each read of a streamed answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a waiting command keeps retrying while the server is
/// unreachable or overloaded: a server restarted mid-run resumes its runs,
/// so the client should outlast a restart.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Subcommand)]
pub(crate) enum RunCommand {
    /// Submit a run (models × portfolios, one as-of date); prints its id.
    Submit(SubmitArgs),
    /// Show a run's status (`--wait`: follow it until it ends).
    Status(StatusArgs),
    /// Stream a run's results so far as NDJSON or CSV, to standard output or a file.
    Results(ResultsArgs),
    /// Cancel a run: no chunk of it starts afterwards; prints its status.
    Cancel(CancelArgs),
    /// List the runs this key submitted, newest first.
    List(ListArgs),
}

/// Where the server is and who is asking, as `riskhost model publish` takes them.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// The server (or any replica of the fleet).
    #[arg(long, env = "RISKHOST_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// An API token of scope `score` (none: the server must allow anonymous scoring).
    #[arg(long, env = "RISKHOST_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

/// The format of a run's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ResultsFormat {
    /// One JSON object per (portfolio, model) cell.
    Ndjson,
    /// A header, then one row per cell.
    Csv,
}

impl ResultsFormat {
    fn as_str(self) -> &'static str {
        match self {
            ResultsFormat::Ndjson => "ndjson",
            ResultsFormat::Csv => "csv",
        }
    }

    /// `--format`, else the extension of `--out` (`.csv` is CSV), else NDJSON.
    fn pick(format: Option<ResultsFormat>, out: Option<&Path>) -> ResultsFormat {
        format.unwrap_or_else(
            || match out.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
                Some(ext) if ext.eq_ignore_ascii_case("csv") => ResultsFormat::Csv,
                _ => ResultsFormat::Ndjson,
            },
        )
    }
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("selection").required(true).args(["all", "ids", "portfolios"])))]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// A model (`name`, `name@1.2.0`, `name@sha256:…`); repeat for several.
    /// Each is pinned to its digest at submission.
    #[arg(long = "model", required = true)]
    pub(crate) models: Vec<String>,
    /// A parameter for every model, as NAME=VALUE; repeat for several.
    #[arg(long = "param", value_parser = crate::config::parse_param)]
    pub(crate) params: Vec<(String, f64)>,
    /// Valuation date (YYYY-MM-DD); by default the latest in the server's data.
    #[arg(long, value_parser = riskhost_scoring::parse_date)]
    pub(crate) as_of: Option<chrono::NaiveDate>,
    /// Every portfolio the server stores.
    #[arg(long)]
    pub(crate) all: bool,
    /// Stored portfolios by id, comma-separated (or repeat the flag).
    #[arg(long, value_delimiter = ',')]
    pub(crate) ids: Vec<String>,
    /// Portfolios from a file: `.json` holds one portfolio or an array of
    /// them (sent inline); any other file, or `-` for standard input, is JSON
    /// Lines, one portfolio per line, streamed to the server as it is read.
    #[arg(long)]
    pub(crate) portfolios: Option<PathBuf>,
    /// Wait for the run to end, with a progress bar on a terminal; the exit
    /// code then says how it ended (0 completed, 3 with failures, 4 cancelled).
    #[arg(long)]
    pub(crate) wait: bool,
    /// With `--wait`: write the results to this file once the run ends.
    #[arg(long, requires = "wait")]
    pub(crate) out: Option<PathBuf>,
    /// The format of `--out` (by default CSV for a `.csv` file, else NDJSON).
    #[arg(long, value_enum, requires = "out")]
    pub(crate) format: Option<ResultsFormat>,
    /// Print the run as JSON (with `--wait`, as it ended) instead of its id.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The run's id.
    pub(crate) id: String,
    /// Follow the run until it ends; the exit code then says how (0
    /// completed, 3 with failures, 4 cancelled).
    #[arg(long)]
    pub(crate) wait: bool,
    /// Print the run as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ResultsArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The run's id.
    pub(crate) id: String,
    /// NDJSON or CSV (by default CSV for a `.csv` `--out`, else NDJSON).
    #[arg(long, value_enum)]
    pub(crate) format: Option<ResultsFormat>,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// The run's id.
    pub(crate) id: String,
    /// Print the run as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A run that was waited for and did not complete cleanly: the error
/// `main` turns into exit code 3 or 4.
#[derive(Debug)]
pub(crate) struct RunEnded {
    id: String,
    status: RunStatus,
}

impl fmt::Display for RunEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run {} ended {}", self.id, self.status.as_str())
    }
}

impl std::error::Error for RunEnded {}

/// The process exit code for `error`: 3 for a run that ended
/// `completed_with_failures` or a replay whose scores differ
/// (`riskhost replay`), 4 for a run `cancelled`, 1 for anything else.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error
        .chain()
        .any(|e| e.is::<crate::replay_command::NotIdentical>())
    {
        return 3;
    }
    let ended = error.chain().find_map(|e| e.downcast_ref::<RunEnded>());
    match ended.map(|e| e.status) {
        Some(RunStatus::CompletedWithFailures) => 3,
        Some(RunStatus::Cancelled) => 4,
        _ => 1,
    }
}

/// An error answer of the server: its status and, when the body is the
/// API's `{"error": {"code", "message"}}`, its code and message.
#[derive(Debug)]
pub(crate) struct ServerError {
    status: StatusCode,
    code: Option<String>,
    message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(
                f,
                "the server answered {} [{code}] {}",
                self.status, self.message
            ),
            None => write!(f, "the server answered {}: {}", self.status, self.message),
        }
    }
}

impl std::error::Error for ServerError {}

impl ServerError {
    /// Worth asking again: the server is overloaded, restarting or behind
    /// a proxy that lost it.
    fn is_transient(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error()
    }
}

/// Runs `riskhost run …`. Not on the async runtime: the blocking client
/// runs its own, and may not be used from inside another.
pub(crate) fn run(command: RunCommand) -> anyhow::Result<()> {
    match command {
        RunCommand::Submit(args) => submit(args),
        RunCommand::Status(args) => status(args),
        RunCommand::Results(args) => results(args),
        RunCommand::Cancel(args) => cancel(args),
        RunCommand::List(args) => list(args),
    }
}

/// A server's `/v1/runs` routes.
struct RunsClient {
    http: Client,
    base: Url,
    token: Option<String>,
}

impl RunsClient {
    fn new(args: &ClientArgs) -> anyhow::Result<RunsClient> {
        let base = Url::parse(&args.server)
            .with_context(|| format!("--server `{}` is not a URL", args.server))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("--server `{}` is not an http(s) URL", args.server);
        }
        // No overall timeout: an upload or a download takes as long as its
        // size. Requests that answer at once set their own.
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None::<Duration>)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(RunsClient {
            http,
            base,
            token: args.token.clone(),
        })
    }

    /// `/v1/runs` followed by `segments`, each percent-encoded (an id is
    /// the user's text), under any path prefix of `--server`.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["v1", "runs"]).extend(segments);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; an answer other than 2xx is a [`ServerError`].
    fn send(&self, request: RequestBuilder, what: &str) -> anyhow::Result<Response> {
        let response = request
            .send()
            .with_context(|| format!("{what}: cannot reach {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(anyhow::Error::new(server_error(response)).context(what.to_owned()))
    }

    /// Sends `request` and reads its JSON answer.
    fn json(&self, request: RequestBuilder, what: &str) -> anyhow::Result<Value> {
        self.send(request, what)?
            .json()
            .with_context(|| format!("{what}: the answer is not JSON"))
    }

    /// `GET /v1/runs/{id}`: the raw answer and the run it describes.
    fn status(&self, id: &str) -> anyhow::Result<(Value, RunView)> {
        let request = self
            .request(reqwest::Method::GET, self.url(&[id]))
            .timeout(REQUEST_TIMEOUT);
        let raw = self.json(request, &format!("reading run {id}"))?;
        let view = parse_view(&raw)?;
        Ok((raw, view))
    }

    /// `GET /v1/runs/{id}/results?format=…`, streamed into `out`; answers the
    /// run's status when the results were read (`x-riskhost-run-status`).
    fn results(
        &self,
        id: &str,
        format: ResultsFormat,
        out: &mut dyn Write,
    ) -> anyhow::Result<Option<String>> {
        let mut url = self.url(&[id, "results"]);
        url.query_pairs_mut().append_pair("format", format.as_str());
        // Per request, so also the timeout of each read of the stream: a
        // server that stops sending is noticed, a long download is not cut.
        let request = self
            .request(reqwest::Method::GET, url)
            .timeout(REQUEST_TIMEOUT);
        let mut response = self.send(request, &format!("reading the results of run {id}"))?;
        let status = response
            .headers()
            .get("x-riskhost-run-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        std::io::copy(&mut response, out)
            .with_context(|| format!("the results of run {id} broke off"))?;
        out.flush()?;
        Ok(status)
    }
}

/// The error a non-2xx answer stands for.
pub(crate) fn server_error(response: Response) -> ServerError {
    let status = response.status();
    let body = response.text().unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    match error.and_then(|e| e["code"].as_str()) {
        Some(code) => ServerError {
            status,
            code: Some(code.to_owned()),
            message: error
                .and_then(|e| e["message"].as_str())
                .unwrap_or_default()
                .to_owned(),
        },
        None => {
            // Not the API's error body (a proxy's page, say): show its start.
            let mut message: String = body.trim().chars().take(300).collect();
            if message.is_empty() {
                message = "(no body)".to_owned();
            }
            ServerError {
                status,
                code: None,
                message,
            }
        }
    }
}

fn parse_view(raw: &Value) -> anyhow::Result<RunView> {
    serde_json::from_value(raw.clone()).context("the server's answer is not a run")
}

/// Prints `value` as pretty JSON on standard output.
fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `riskhost run submit`.
fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = RunsClient::new(&args.client)?;
    let mut run = json!({
        "models": args.models,
        "params": args
            .params
            .iter()
            .map(|(name, value)| (name.clone(), json!(value)))
            .collect::<serde_json::Map<_, _>>(),
    });
    if let Some(as_of) = args.as_of {
        run["as_of"] = json!(as_of.format("%Y-%m-%d").to_string());
    }
    let request = client
        .request(reqwest::Method::POST, client.url(&[]))
        .header("accept", "application/json");
    let (request, upload_bar) = if args.all {
        run["portfolios"] = json!({"all": true});
        (request.json(&run), None)
    } else if !args.ids.is_empty() {
        run["portfolios"] = json!({"ids": args.ids});
        (request.json(&run), None)
    } else if let Some(path) = &args.portfolios {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            run["portfolios"] = json!({"inline": read_json_portfolios(path)?});
            (request.json(&run), None)
        } else {
            let (body, bar) = ndjson_upload(&run, path)?;
            let request = request
                .header("content-type", "application/x-ndjson")
                .body(body);
            (request, Some(bar))
        }
    } else {
        // clap's group requires one of them.
        bail!("give --all, --ids or --portfolios");
    };
    let answer = client.json(request, "submitting the run");
    if let Some(bar) = upload_bar {
        bar.finish_and_clear();
    }
    let raw = match (answer, &args.portfolios) {
        (Err(error), Some(path)) => return Err(name_the_file_line(error, path)),
        (answer, _) => answer?,
    };
    let view = parse_view(&raw)?;
    eprintln!(
        "submitted run {}: {} portfolios × {} models in {} chunks, as of {}",
        view.id,
        view.portfolios,
        view.digests.len(),
        view.chunks.total,
        view.as_of
    );
    if !args.wait {
        return if args.json {
            print_json(&raw)
        } else {
            println!("{}", view.id);
            Ok(())
        };
    }
    // Printed before waiting, so a script has the id even if waiting fails.
    if !args.json {
        println!("{}", view.id);
        std::io::stdout().flush()?;
    }
    let (raw, view) = wait(&client, view)?;
    if args.json {
        print_json(&raw)?;
    }
    if let Some(path) = &args.out {
        let format = ResultsFormat::pick(args.format, Some(path));
        download(&client, &view.id, format, path)?;
    }
    ended(view)
}

/// The server numbers the lines of an NDJSON upload, whose first line is
/// the run itself: a refused portfolio's line is restated as the file's.
fn name_the_file_line(error: anyhow::Error, path: &Path) -> anyhow::Error {
    let line = error
        .chain()
        .filter_map(|e| e.downcast_ref::<ServerError>())
        .filter(|e| e.code.as_deref() == Some("invalid_body"))
        .find_map(|e| {
            let rest = e.message.strip_prefix("portfolio line ")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        });
    match line {
        Some(line) if line > 1 && path.as_os_str() != "-" => error.context(format!(
            "line {} of {} (the upload's line {line}: its first line is the run)",
            line - 1,
            path.display()
        )),
        Some(line) if line > 1 => error.context(format!(
            "line {} of standard input (the upload's line {line}: its first line is the run)",
            line - 1
        )),
        _ => error,
    }
}

/// Reads a `.json` file of one portfolio or an array of them.
fn read_json_portfolios(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the portfolios file {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON (a file of one portfolio per line is read as JSON Lines unless it is named .json)",
            path.display()
        )
    })?;
    match value {
        Value::Array(portfolios) => Ok(portfolios),
        Value::Object(_) => Ok(vec![value]),
        _ => bail!(
            "{} holds neither a portfolio nor an array of them",
            path.display()
        ),
    }
}

/// The NDJSON upload: the run on the first line, then the file (or standard
/// input) as it is read, through a progress bar of bytes sent.
fn ndjson_upload(run: &Value, path: &Path) -> anyhow::Result<(Body, ProgressBar)> {
    let mut first = serde_json::to_vec(run)?;
    first.push(b'\n');
    let head = std::io::Cursor::new(first);
    if path.as_os_str() == "-" {
        let bar = progress_bar(None, "{spinner} uploading {bytes} ({bytes_per_sec})");
        let reader = bar.wrap_read(head.chain(std::io::stdin()));
        return Ok((Body::new(reader), bar));
    }
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the portfolios file {}", path.display()))?;
    let metadata = file
        .metadata()
        .with_context(|| format!("cannot read the portfolios file {}", path.display()))?;
    if metadata.is_dir() {
        bail!("the portfolios file {} is a directory", path.display());
    }
    let len = head.get_ref().len() as u64 + metadata.len();
    let bar = progress_bar(
        Some(len),
        "uploading [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    );
    let reader = bar.wrap_read(head.chain(file));
    // Sized: a Content-Length the server can check the upload against.
    Ok((Body::sized(reader, len), bar))
}

/// A progress bar on standard error when it is a terminal, else hidden
/// (piped output and tests see only the summary lines).
fn progress_bar(len: Option<u64>, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Polls the run until its status is final, with a bar of chunks done or
/// failed and the cells scored per second; prints a summary line.
fn wait(client: &RunsClient, view: RunView) -> anyhow::Result<(Value, RunView)> {
    let id = view.id.clone();
    let bar = progress_bar(
        Some(view.chunks.total),
        "{spinner} {prefix} [{bar:30}] {pos}/{len} chunks  {msg}  {elapsed}",
    );
    // An id is 32 characters; its start is enough to tell runs apart.
    bar.set_prefix(id.chars().take(8).collect::<String>());
    let started = Instant::now();
    let cells_at_start = view.cells.ok + view.cells.failed;
    let mut failing_since: Option<Instant> = None;
    loop {
        match client.status(&id) {
            Ok((raw, view)) => {
                failing_since = None;
                let cells = view.cells.ok + view.cells.failed;
                let seconds = started.elapsed().as_secs_f64();
                let rate = if seconds > 0.0 {
                    cells.saturating_sub(cells_at_start) as f64 / seconds
                } else {
                    0.0
                };
                bar.set_length(view.chunks.total);
                bar.set_position(view.chunks.done + view.chunks.failed);
                let failed = if view.cells.failed > 0 {
                    format!(", {} failed", view.cells.failed)
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "{} {cells} cells{failed}, {rate:.0} cells/s",
                    view.status.as_str()
                ));
                if view.status.is_final() {
                    bar.finish_and_clear();
                    eprintln!("{}", summary(&view));
                    return Ok((raw, view));
                }
            }
            Err(error) => {
                let transient = error.chain().any(|e| {
                    e.downcast_ref::<ServerError>()
                        .map_or_else(|| e.is::<reqwest::Error>(), ServerError::is_transient)
                });
                if !transient {
                    bar.abandon();
                    return Err(error);
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > GIVE_UP_AFTER {
                    bar.abandon();
                    return Err(error.context(format!(
                        "gave up waiting for run {id} (it may still be running: `riskhost run status {id} --wait`)"
                    )));
                }
                bar.set_message(format!("retrying: {error:#}"));
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// One line saying how a run ended (or where it is).
fn summary(view: &RunView) -> String {
    let took = match (view.started_at, view.finished_at) {
        (Some(start), Some(end)) => (end - start)
            .to_std()
            .map(|d| format!(" in {}", crate::tooling::human_duration(d)))
            .unwrap_or_default(),
        _ => String::new(),
    };
    format!(
        "run {} {}: {} cells ok, {} failed; {}/{} chunks done, {} failed{took}",
        view.id,
        view.status.as_str(),
        view.cells.ok,
        view.cells.failed,
        view.chunks.done,
        view.chunks.total,
        view.chunks.failed,
    )
}

/// Ok for a run that completed, else the [`RunEnded`] error its exit code
/// comes from (after naming its quarantined chunks).
fn ended(view: RunView) -> anyhow::Result<()> {
    for failure in &view.failures {
        let ids = if failure.portfolio_ids.is_empty() {
            String::new()
        } else {
            format!(" ({})", failure.portfolio_ids.join(", "))
        };
        eprintln!(
            "chunk {} failed after {} deliveries: portfolios {}..{}{ids}: {}",
            failure.chunk,
            failure.deliveries,
            failure.first_portfolio_index,
            failure.first_portfolio_index + failure.portfolios,
            failure.reason
        );
    }
    match view.status {
        RunStatus::Completed | RunStatus::Planned | RunStatus::Running => Ok(()),
        status @ (RunStatus::CompletedWithFailures | RunStatus::Cancelled) => Err(RunEnded {
            id: view.id,
            status,
        }
        .into()),
    }
}

/// Streams the results into `path`, through a temporary file beside it, so
/// a download that breaks off never leaves a truncated file behind.
fn download(
    client: &RunsClient,
    id: &str,
    format: ResultsFormat,
    path: &Path,
) -> anyhow::Result<()> {
    let partial = partial_path(path);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let fetched = client.results(id, format, &mut out);
    drop(out);
    let status = match fetched {
        Ok(status) => status,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    note_partial(id, status.as_deref());
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote the results of run {id} to {} ({})",
        path.display(),
        crate::tooling::human_bytes(bytes as usize)
    );
    Ok(())
}

/// `dir/.name.partial` for `dir/name`.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "results".to_owned());
    path.with_file_name(format!(".{name}.partial"))
}

/// Says so when results were read before the run ended.
fn note_partial(id: &str, status: Option<&str>) {
    if let Some(status) = status
        && !matches!(
            status,
            "completed" | "completed_with_failures" | "cancelled"
        )
    {
        eprintln!("run {id} is {status}: these are its results so far");
    }
}

/// `riskhost run status`.
fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = RunsClient::new(&args.client)?;
    let (raw, view) = client.status(&args.id)?;
    if !args.wait {
        return if args.json {
            print_json(&raw)
        } else {
            print_view(&view)
        };
    }
    let (raw, view) = wait(&client, view)?;
    if args.json {
        print_json(&raw)?;
    } else {
        print_view(&view)?;
    }
    ended(view)
}

/// A run, for people.
fn print_view(view: &RunView) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "run {}: {}", view.id, view.status.as_str())?;
    for (model, digest) in &view.digests {
        writeln!(out, "  model       {model} ({digest})")?;
    }
    writeln!(out, "  as of       {}", view.as_of)?;
    if !view.params.is_empty() {
        let params: Vec<String> = view
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(out, "  params      {}", params.join(", "))?;
    }
    writeln!(out, "  portfolios  {}", view.portfolios)?;
    writeln!(
        out,
        "  chunks      {}/{} done, {} failed",
        view.chunks.done, view.chunks.total, view.chunks.failed
    )?;
    writeln!(
        out,
        "  cells       {} ok, {} failed",
        view.cells.ok, view.cells.failed
    )?;
    writeln!(out, "  submitted   {}", view.submitted_at.to_rfc3339())?;
    if let Some(at) = view.started_at {
        writeln!(out, "  started     {}", at.to_rfc3339())?;
    }
    if let Some(at) = view.finished_at {
        writeln!(out, "  finished    {}", at.to_rfc3339())?;
    }
    for failure in &view.failures {
        writeln!(
            out,
            "  failed      chunk {} (portfolios {}..{}) after {} deliveries: {}",
            failure.chunk,
            failure.first_portfolio_index,
            failure.first_portfolio_index + failure.portfolios,
            failure.deliveries,
            failure.reason
        )?;
    }
    Ok(())
}

/// `riskhost run results`.
fn results(args: ResultsArgs) -> anyhow::Result<()> {
    let client = RunsClient::new(&args.client)?;
    let format = ResultsFormat::pick(args.format, args.out.as_deref());
    if let Some(path) = &args.out {
        return download(&client, &args.id, format, path);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match client.results(&args.id, format, &mut out) {
        Ok(status) => {
            note_partial(&args.id, status.as_deref());
            Ok(())
        }
        // `riskhost run results ID | head`: the reader had enough.
        Err(error)
            if error.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// `riskhost run cancel`.
fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let client = RunsClient::new(&args.client)?;
    let request = client
        .request(reqwest::Method::DELETE, client.url(&[&args.id]))
        .timeout(REQUEST_TIMEOUT);
    let raw = client.json(request, &format!("cancelling run {}", args.id))?;
    let view = parse_view(&raw)?;
    if args.json {
        return print_json(&raw);
    }
    match view.status {
        RunStatus::Cancelled => println!("run {}: cancelled", view.id),
        status => println!(
            "run {}: {} (it had ended; nothing to cancel)",
            view.id,
            status.as_str()
        ),
    }
    Ok(())
}

/// `riskhost run list`.
fn list(args: ListArgs) -> anyhow::Result<()> {
    let client = RunsClient::new(&args.client)?;
    let request = client
        .request(reqwest::Method::GET, client.url(&[]))
        .timeout(REQUEST_TIMEOUT);
    let raw = client.json(request, "listing runs")?;
    if args.json {
        return print_json(&raw);
    }
    let runs: Vec<RunView> = serde_json::from_value(raw["runs"].clone())
        .context("the server's answer is not a list of runs")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32} {:<23} {:>10} {:>13} {:>10} {:>8}  SUBMITTED",
        "ID", "STATUS", "PORTFOLIOS", "CHUNKS", "CELLS OK", "FAILED"
    )?;
    for run in &runs {
        writeln!(
            out,
            "{:<32} {:<23} {:>10} {:>13} {:>10} {:>8}  {}",
            run.id,
            run.status.as_str(),
            run.portfolios,
            format!(
                "{}/{}",
                run.chunks.done + run.chunks.failed,
                run.chunks.total
            ),
            run.cells.ok,
            run.cells.failed,
            run.submitted_at.format("%Y-%m-%d %H:%M:%S"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<RunCommand, clap::Error> {
        let mut argv = vec!["riskhost", "run"];
        argv.extend_from_slice(args);
        crate::config::Cli::try_parse_from(argv).map(|cli| match cli.command {
            crate::config::Command::Run(command) => command,
            other => panic!("not a run command: {other:?}"),
        })
    }

    #[test]
    fn submit_needs_models_and_exactly_one_selection() {
        assert!(parse(&["submit", "--all"]).is_err());
        assert!(parse(&["submit", "--model", "m"]).is_err());
        assert!(parse(&["submit", "--model", "m", "--all", "--ids", "a"]).is_err());
        let Ok(RunCommand::Submit(args)) =
            parse(&["submit", "--model", "m", "--ids", "a,b", "--ids", "c"])
        else {
            panic!("submit did not parse");
        };
        assert_eq!(args.ids, ["a", "b", "c"]);
    }

    #[test]
    fn out_needs_wait_and_format_needs_out() {
        assert!(parse(&["submit", "--model", "m", "--all", "--out", "r.csv"]).is_err());
        assert!(
            parse(&[
                "submit", "--model", "m", "--all", "--wait", "--format", "csv"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "submit", "--model", "m", "--all", "--wait", "--out", "r", "--format", "csv"
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_format_follows_the_file_name_unless_given() {
        let pick = |format, out: &str| ResultsFormat::pick(format, Some(Path::new(out)));
        assert_eq!(pick(None, "r.csv"), ResultsFormat::Csv);
        assert_eq!(pick(None, "r.CSV"), ResultsFormat::Csv);
        assert_eq!(pick(None, "r.ndjson"), ResultsFormat::Ndjson);
        assert_eq!(
            pick(Some(ResultsFormat::Ndjson), "r.csv"),
            ResultsFormat::Ndjson
        );
        assert_eq!(ResultsFormat::pick(None, None), ResultsFormat::Ndjson);
    }

    #[test]
    fn ids_are_percent_encoded_under_the_server_path() -> anyhow::Result<()> {
        let client = RunsClient::new(&ClientArgs {
            server: "http://h:1/prefix/".to_owned(),
            token: None,
        })?;
        assert_eq!(client.url(&[]).as_str(), "http://h:1/prefix/v1/runs");
        assert_eq!(
            client.url(&["a/b?c", "results"]).as_str(),
            "http://h:1/prefix/v1/runs/a%2Fb%3Fc/results"
        );
        assert!(
            RunsClient::new(&ClientArgs {
                server: "mailto:x@y".to_owned(),
                token: None,
            })
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn exit_codes_name_how_a_run_ended() {
        let ended = |status| {
            anyhow::Error::new(RunEnded {
                id: "r".to_owned(),
                status,
            })
        };
        assert_eq!(exit_code(&ended(RunStatus::CompletedWithFailures)), 3);
        assert_eq!(exit_code(&ended(RunStatus::Cancelled)), 4);
        assert_eq!(
            exit_code(&ended(RunStatus::Cancelled).context("waiting")),
            4
        );
        assert_eq!(exit_code(&anyhow::anyhow!("no server")), 1);
    }
}
