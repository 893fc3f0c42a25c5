//! `riskhost model test FILE.wasm`: the server's checks, run locally.
//!
//! 1. Load the component exactly as the server does (`ModelEngine::load`:
//!    compile, link against the sandbox, check `info()`, warm-up call) under
//!    the same limits.
//! 2. Score each portfolio through the server's scoring path
//!    (`ScoringService::score`: parameters resolved against `info()`,
//!    portfolio canonicalised, as-of resolved, prices windowed), so the
//!    result or error is what a client would get.
//! 3. Time `--repeat` calls of each job, each in a fresh instance as in
//!    production, and report the median and the instance's peak linear
//!    memory; with `--batch N`, also a call holding N copies of the job.
//! 4. Check what the server relies on but cannot check at load time: the
//!    same job gives the same score on every call (scores are memoized), and
//!    a job's score does not depend on the other jobs of its call (requests
//!    are batched).
//!
//! Any failure makes the command exit non-zero.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use chrono::NaiveDate;
use serde::Serialize;

use super::inspect::{self, Inspection};
use super::{TestArgs, human_bytes, human_duration};
use riskhost_cache::{InProcessCache, score_key};
use riskhost_engine::bindings::{Job, MarketData, ModelError, Score};
use riskhost_engine::{Determinism, ModelEngine, unit_name};
use riskhost_market::MarketDataSource;
use riskhost_models::{Bulkhead, BulkheadLimits, ModelEntry, ModelRegistry};
use riskhost_scoring::{
    DataPin, DynamicBatching, Executor, PortfolioInput, PortfolioLimits, PositionInput,
    PreparedJob, ScoreRequest, ScoreResponse, ScoringSettings, call_determinism, prepare_portfolio,
};

/// What `model test` found, as printed with `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct TestReport {
    pub(crate) model: Inspection,
    pub(crate) portfolios: Vec<PortfolioReport>,
    pub(crate) passed: usize,
    pub(crate) failed: usize,
}

/// One portfolio's outcome.
#[derive(Debug, Serialize)]
pub(crate) struct PortfolioReport {
    /// The portfolio's id, or its file name when it has none.
    pub(crate) portfolio: String,
    /// Distinct instruments held, once the portfolio was resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) positions: Option<usize>,
    pub(crate) ok: bool,
    /// The score as the server would serve it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) score: Option<ScoreResponse>,
    /// The error as the server would answer it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timing: Option<Timing>,
    /// Broken promises (non-determinism, batch dependence).
    pub(crate) problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrorReport {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// The cost of calls of one job, each in a fresh instance.
#[derive(Debug, Serialize)]
pub(crate) struct Timing {
    pub(crate) calls: u32,
    pub(crate) median_us: f64,
    pub(crate) min_us: f64,
    pub(crate) max_us: f64,
    /// Peak linear memory of the instance over the calls.
    pub(crate) peak_memory_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<BatchTiming>,
}

/// The cost of calls holding `jobs` copies of the job.
#[derive(Debug, Serialize)]
pub(crate) struct BatchTiming {
    pub(crate) jobs: u32,
    pub(crate) calls: u32,
    pub(crate) median_us: f64,
    pub(crate) per_job_us: f64,
    pub(crate) peak_memory_bytes: usize,
}

/// A portfolio to score and what to call it in the report.
struct Case {
    label: String,
    input: PortfolioInput,
}

pub(crate) async fn run(args: TestArgs) -> anyhow::Result<()> {
    init_logging();
    let market = crate::services::market_source(args.prices.as_deref())?;
    let services = crate::services::Services::new(
        args.sandbox.limits(),
        ModelRegistry::new(),
        market.clone(),
    )?;
    let engine = services.engine.clone();
    let path = args.file.clone();
    let task_engine = engine.clone();
    let (inspection, model) =
        tokio::task::spawn_blocking(move || inspect::load(&task_engine, &path))
            .await
            .context("loading the component panicked")??;
    let Some(model) = model else {
        let error = inspection
            .error
            .clone()
            .unwrap_or_else(|| "unknown error".to_owned());
        if args.json {
            let report = TestReport {
                model: inspection,
                portfolios: Vec::new(),
                passed: 0,
                failed: 1,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", inspect::render(&inspection, engine.limits()));
        }
        bail!(
            "{} does not load, so the server would not serve it: {error}",
            args.file.display()
        );
    };

    let name = model.name().to_owned();
    let registry = services.registry.clone();
    registry.activate(Arc::new(ModelEntry {
        model,
        source: format!("file:{}", args.file.display()),
        loaded_at: SystemTime::now(),
        bulkhead: Bulkhead::new(BulkheadLimits {
            max_concurrent: 1,
            max_queued: 1024,
        }),
    }));
    let entry = registry
        .resolve(&name)
        .await
        .map_err(|e| anyhow::anyhow!("the loaded model vanished: {e}"))?;
    let scoring = services.scoring(
        Arc::new(InProcessCache::new(16 << 20)),
        ScoringSettings {
            // One request, one call: what is timed is the model alone.
            dynamic: DynamicBatching {
                max_batch: 1,
                ..DynamicBatching::default()
            },
            ..ScoringSettings::default()
        },
    );
    let executor = Executor::new(engine.clone(), market.clone());
    let params: BTreeMap<String, f64> = args.params.iter().cloned().collect();

    let mut reports = Vec::new();
    // Jobs that scored, for the batch-independence check at the end.
    let mut scored: Vec<(usize, PreparedJob)> = Vec::new();
    for case in cases(&args.portfolios)? {
        let request = ScoreRequest {
            model: name.clone(),
            portfolio: case.input.clone(),
            params: params.clone(),
            as_of: args.as_of,
            breakdown: true,
        };
        let mut report = PortfolioReport {
            portfolio: case.label.clone(),
            positions: None,
            ok: false,
            score: None,
            error: None,
            timing: None,
            problems: Vec::new(),
        };
        match scoring.score(request).await {
            Err(error) => {
                report.error = Some(ErrorReport {
                    code: error.code(),
                    message: error.to_string(),
                });
            }
            Ok(response) => {
                let job = prepare(&*market, &entry, &case.input, &params, response.as_of).await?;
                report.positions = Some(job.positions.len());
                let timing =
                    time_job(&executor, &entry, &job, &response, &args, &mut report).await?;
                report.timing = Some(timing);
                report.ok = report.problems.is_empty();
                report.score = Some(response);
                scored.push((reports.len(), job));
            }
        }
        reports.push(report);
    }
    check_batch_independence(&executor, &entry, &scored, &mut reports).await?;

    let failed = reports.iter().filter(|r| !r.ok).count();
    let report = TestReport {
        model: inspection,
        passed: reports.len() - failed,
        failed,
        portfolios: reports,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, &args, engine.limits().memory_bytes));
    }
    if failed > 0 {
        bail!(
            "{failed} of {} portfolios failed; the messages above say why",
            report.portfolios.len()
        );
    }
    Ok(())
}

/// What the model prints (print debugging) goes to stderr, once per
/// portfolio (the timed calls are silenced); host logs only with RUST_LOG.
/// Failures are in the report, so the host's warnings about them are not.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off,riskhost::model_output=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .try_init();
}

/// The portfolios to score: the given files, or the bundled samples.
fn cases(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<Case>> {
    if files.is_empty() {
        let samples = riskhost_market::sample_portfolios()
            .map_err(|e| anyhow::anyhow!("the bundled sample portfolios are broken: {e}"))?;
        return Ok(samples
            .into_iter()
            .map(|p| Case {
                label: p.id.clone(),
                input: PortfolioInput {
                    id: Some(p.id),
                    positions: Some(
                        p.positions
                            .into_iter()
                            .map(|p| PositionInput {
                                instrument: p.instrument,
                                quantity: p.quantity,
                            })
                            .collect(),
                    ),
                },
            })
            .collect());
    }
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let input: PortfolioInput = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a portfolio: expected {{\"id\": \"...\", \"positions\": [{{\"instrument\": \"SPX\", \"quantity\": 10}}]}}",
                    path.display()
                )
            })?;
            let label = input.id.clone().unwrap_or_else(|| file_label(path));
            Ok(Case { label, input })
        })
        .collect()
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The job the server ran for a portfolio that scored, rebuilt so it can be
/// called again directly (same parameters, positions, as-of and seed).
async fn prepare(
    market: &dyn MarketDataSource,
    entry: &ModelEntry,
    input: &PortfolioInput,
    given: &BTreeMap<String, f64>,
    as_of: NaiveDate,
) -> anyhow::Result<PreparedJob> {
    let description = &entry.model.description;
    let params = description.resolve_params(given)?;
    // The portfolio as the server resolved it (`scoring::prepare_portfolio`).
    let portfolio = prepare_portfolio(
        market,
        input.clone(),
        &Default::default(),
        PortfolioLimits::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = score_key(
        &entry.model.digest,
        &params,
        &portfolio.positions,
        &market.snapshot(),
        as_of,
    );
    Ok(PreparedJob {
        key,
        portfolio_id: portfolio.id,
        lookback: description.lookback_for(&params),
        positions: portfolio.positions,
        params,
    })
}

/// The inputs of one call holding `jobs`, as the server builds them.
async fn call_inputs(
    executor: &Executor,
    jobs: &[&PreparedJob],
    as_of: NaiveDate,
) -> anyhow::Result<(MarketData, Vec<Job>, Determinism)> {
    let pin = DataPin {
        as_of,
        snapshot: executor.market.snapshot(),
    };
    let (window, errors) = executor.prefetch(&pin, jobs).await;
    if let Some(error) = errors.into_iter().flatten().next() {
        bail!("cannot fetch prices again: {error}");
    }
    let window = window.context("no price window")?;
    let (market, call_jobs) = window.call_inputs(jobs)?;
    Ok((market, call_jobs, call_determinism(jobs, as_of)))
}

/// Calls the job `--repeat` times (and `--batch` copies of it), checking
/// every answer equals the served one.
async fn time_job(
    executor: &Executor,
    entry: &Arc<ModelEntry>,
    job: &PreparedJob,
    served: &ScoreResponse,
    args: &TestArgs,
    report: &mut PortfolioReport,
) -> anyhow::Result<Timing> {
    let (market, jobs, determinism) = call_inputs(executor, &[job], served.as_of).await?;
    let batch_size = args.batch.unwrap_or(0) as usize;
    let batch_jobs: Vec<Job> = std::iter::repeat_n(jobs[0].clone(), batch_size).collect();
    let (engine, entry, repeat) = (executor.engine.clone(), entry.clone(), args.repeat);
    let served = served.clone();
    let (timing, problems) = tokio::task::spawn_blocking(move || {
        // The served call already showed what the model prints.
        let _silence =
            tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
        let mut problems = Vec::new();
        let single = timed_calls(
            &engine,
            &entry,
            &market,
            &jobs,
            determinism,
            repeat,
            &served,
            &mut problems,
        );
        let batch = (batch_size > 0).then(|| {
            // A batch call costs about `batch` single ones: keep the total
            // time of the test near that of the single calls.
            let calls = (repeat / 4).max(3);
            let t = timed_calls(
                &engine,
                &entry,
                &market,
                &batch_jobs,
                determinism,
                calls,
                &served,
                &mut problems,
            );
            BatchTiming {
                jobs: batch_size as u32,
                calls,
                median_us: t.median_us,
                per_job_us: t.median_us / batch_size as f64,
                peak_memory_bytes: t.peak_memory_bytes,
            }
        });
        (Timing { batch, ..single }, problems)
    })
    .await
    .context("a timed call panicked")?;
    report.problems.extend(problems);
    Ok(timing)
}

/// `calls` calls of `jobs`, each in a fresh instance; every result must
/// equal `served`, bit for bit.
#[allow(clippy::too_many_arguments)]
fn timed_calls(
    engine: &ModelEngine,
    entry: &ModelEntry,
    market: &MarketData,
    jobs: &[Job],
    determinism: Determinism,
    calls: u32,
    served: &ScoreResponse,
    problems: &mut Vec<String>,
) -> Timing {
    let mut durations = Vec::with_capacity(calls as usize);
    let mut peak = 0;
    for _ in 0..calls {
        let started = Instant::now();
        match engine.call(&entry.model, market, jobs, determinism) {
            Ok(outcome) => {
                durations.push(started.elapsed());
                peak = peak.max(outcome.peak_memory_bytes);
                if let Some(problem) = outcome.results.iter().find_map(|r| differs(r, served)) {
                    let what = if jobs.len() > 1 {
                        format!("in a call holding {} copies of the job", jobs.len())
                    } else {
                        "when called again".to_owned()
                    };
                    push_once(
                        problems,
                        format!(
                            "not reproducible: {what}, {problem}; the server memoizes and batches scores, so a model must be a pure function of its inputs (use job.seed for randomness)"
                        ),
                    );
                }
            }
            Err(error) => push_once(
                problems,
                format!(
                    "a call of {} job(s) failed although the first one succeeded: {error}",
                    jobs.len()
                ),
            ),
        }
    }
    stats(&mut durations, peak, calls)
}

fn push_once(problems: &mut Vec<String>, problem: String) {
    if !problems.contains(&problem) {
        problems.push(problem);
    }
}

fn stats(durations: &mut [Duration], peak: usize, calls: u32) -> Timing {
    durations.sort();
    let us = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    Timing {
        calls,
        median_us: us(durations.get(durations.len() / 2)),
        min_us: us(durations.first()),
        max_us: us(durations.last()),
        peak_memory_bytes: peak,
        batch: None,
    }
}

/// How a call's result differs from the served score, if it does.
fn differs(result: &Result<Score, ModelError>, served: &ScoreResponse) -> Option<String> {
    match result {
        Err(e) => Some(format!("it returned an error: {e:?}")),
        Ok(score) => {
            if score.value.to_bits() != served.value.to_bits() {
                return Some(format!(
                    "the value was {} and then {}",
                    served.value, score.value
                ));
            }
            if unit_name(score.unit) != served.unit {
                return Some(format!(
                    "the unit was {} and then {}",
                    served.unit,
                    unit_name(score.unit)
                ));
            }
            let same_breakdown = score.breakdown.len() == served.breakdown.len()
                && score
                    .breakdown
                    .iter()
                    .zip(&served.breakdown)
                    .all(|(a, b)| a.name == b.name && a.value.to_bits() == b.value.to_bits());
            (!same_breakdown).then(|| "the breakdown changed".to_owned())
        }
    }
}

/// Scores every portfolio that scored alone in one call together, and
/// checks each gets the score it got alone.
async fn check_batch_independence(
    executor: &Executor,
    entry: &Arc<ModelEntry>,
    scored: &[(usize, PreparedJob)],
    reports: &mut [PortfolioReport],
) -> anyhow::Result<()> {
    if scored.len() < 2 {
        return Ok(());
    }
    // Portfolios may have been scored at different as-of dates only if the
    // data says so; the server batches per as-of, so group the same way.
    let mut by_as_of: BTreeMap<NaiveDate, Vec<(usize, &PreparedJob)>> = BTreeMap::new();
    for (index, job) in scored {
        if let Some(score) = &reports[*index].score {
            by_as_of.entry(score.as_of).or_default().push((*index, job));
        }
    }
    for (as_of, group) in by_as_of {
        if group.len() < 2 {
            continue;
        }
        let jobs: Vec<&PreparedJob> = group.iter().map(|(_, j)| *j).collect();
        let (market, call_jobs, determinism) = call_inputs(executor, &jobs, as_of).await?;
        let (engine, entry_) = (executor.engine.clone(), entry.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let _silence =
                tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
            engine.call(&entry_.model, &market, &call_jobs, determinism)
        })
        .await
        .context("the batch call panicked")?;
        match outcome {
            Err(error) => {
                for (index, _) in &group {
                    let report = &mut reports[*index];
                    report.problems.push(format!(
                        "a call scoring all {} portfolios together failed ({error}) although each scores alone; the server batches requests",
                        jobs.len()
                    ));
                    report.ok = false;
                }
            }
            Ok(outcome) => {
                for ((index, _), result) in group.iter().zip(&outcome.results) {
                    let report = &mut reports[*index];
                    if let Some(served) = &report.score
                        && let Some(problem) = differs(result, served)
                    {
                        report.problems.push(format!(
                            "depends on its company: scored together with the other portfolios, {problem}; a job's score must not depend on the other jobs of its call"
                        ));
                        report.ok = false;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The human-readable report.
fn render(report: &TestReport, args: &TestArgs, memory_limit: usize) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let m = &report.model;
    if let Some(info) = &m.info {
        line(format!(
            "{} {}  {}  {}",
            info.name,
            info.version,
            m.digest,
            human_bytes(m.size_bytes)
        ));
    }
    line(format!(
        "  loads: yes, in {} (compile, link against the sandbox, info(), warm-up call)",
        human_duration(Duration::from_millis(m.load_ms))
    ));
    let data = match &args.prices {
        Some(p) => format!("prices from {}", p.display()),
        None => "bundled sample prices".to_owned(),
    };
    let params = if args.params.is_empty() {
        "default parameters".to_owned()
    } else {
        args.params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    line(format!(
        "  {data}; {params}; {} timed calls per portfolio, each in a fresh instance (memory limit {})",
        args.repeat,
        human_bytes(memory_limit)
    ));
    line(String::new());
    for r in &report.portfolios {
        let status = if r.ok { "ok  " } else { "FAIL" };
        match (&r.score, &r.error) {
            (Some(score), _) => {
                line(format!(
                    "{status} {:<16} {} {} at {} ({})",
                    r.portfolio,
                    score.value,
                    score.unit,
                    score.as_of,
                    plural(r.positions.unwrap_or_default(), "position")
                ));
                if let Some(t) = &r.timing {
                    let mut timing = format!(
                        "       per call {} (median of {}; min {}), peak memory {}",
                        human_duration(Duration::from_secs_f64(t.median_us / 1e6)),
                        t.calls,
                        human_duration(Duration::from_secs_f64(t.min_us / 1e6)),
                        human_bytes(t.peak_memory_bytes)
                    );
                    if let Some(b) = &t.batch {
                        timing.push_str(&format!(
                            "; batch of {}: {} per call, {} per job, peak memory {}",
                            b.jobs,
                            human_duration(Duration::from_secs_f64(b.median_us / 1e6)),
                            human_duration(Duration::from_secs_f64(b.per_job_us / 1e6)),
                            human_bytes(b.peak_memory_bytes)
                        ));
                    }
                    line(timing);
                }
            }
            (None, Some(error)) => line(format!(
                "{status} {:<16} [{}] {}",
                r.portfolio, error.code, error.message
            )),
            (None, None) => line(format!("{status} {}", r.portfolio)),
        }
        for problem in &r.problems {
            line(format!("       problem: {problem}"));
        }
    }
    line(String::new());
    line(format!(
        "{} passed, {} failed",
        plural(report.passed, "portfolio"),
        report.failed
    ));
    out
}

/// `1 position`, `2 positions`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
