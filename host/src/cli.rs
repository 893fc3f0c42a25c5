//! Subcommands other than the server itself, and the dispatch of all of them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::{BacktestCommandArgs, Cli, Command, ScoreArgs};
use riskhost_backtest::PortfolioOutcome;
use riskhost_cache::InProcessCache;
use riskhost_models::{BulkheadLimits, ModelRegistry, load_directory, load_file};
use riskhost_scoring::{BacktestError, BacktestRequest};
use riskhost_scoring::{PortfolioInput, ScoreRequest, ScoringSettings};

use crate::services::Services;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // No runtime, no logging: the worker is a filter the server drives.
    if let Command::CompileWorker(args) = &cli.command {
        let code = riskhost_models::run_compile_worker(
            &args.settings,
            args.memory_mib,
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        );
        std::process::exit(code);
    }
    let runtime = crate::services::runtime()?;
    match cli.command {
        Command::CompileWorker(_) => Ok(()),
        Command::Config(_) => Ok(()),
        Command::Serve(args) => {
            crate::telemetry::init_logging(args.sources.log_format);
            runtime.block_on(crate::server::serve(args))
        }
        Command::Score(args) => {
            crate::telemetry::init_logging(args.sources.log_format);
            runtime.block_on(score(args))
        }
        Command::Backtest(args) => {
            crate::telemetry::init_logging(args.sources.log_format);
            runtime.block_on(backtest(args))
        }
        Command::ScoreFile(args) => {
            crate::telemetry::init_logging(args.sources.log_format);
            runtime.block_on(crate::score_file::run(args))
        }
        Command::New(args) => crate::tooling::new::run(&args),
        Command::Model(command) => runtime.block_on(crate::tooling::run_model(command)),
        // Off the runtime: its HTTP client is reqwest's blocking one.
        Command::Run(command) => crate::run_command::run(command),
        Command::Replay(args) => crate::replay_command::run(args),
        Command::Key(command) => {
            crate::telemetry::init_logging(crate::telemetry::LogFormat::Pretty);
            runtime.block_on(crate::key_command::run(command))
        }
        Command::Db(command) => {
            crate::telemetry::init_logging(crate::telemetry::LogFormat::Pretty);
            runtime.block_on(crate::db::run(command))
        }
        Command::ExportSampleData { out } => {
            let table = riskhost_market::sample_table();
            match out {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    table.write_csv(std::io::BufWriter::new(file))?;
                }
                None => table.write_csv(std::io::stdout().lock())?,
            }
            Ok(())
        }
        Command::Openapi => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &riskhost_http::openapi_document())?;
            writeln!(out)?;
            Ok(())
        }
    }
}

/// Loads `model` for a one-shot command: a `.wasm` file, or the model of
/// that name in the plugins directory, behind `bulkhead`. Answers the
/// model's name.
async fn load_one_model(
    services: &Services,
    model: &str,
    plugins: &Path,
    bulkhead: BulkheadLimits,
) -> anyhow::Result<String> {
    let (engine, registry) = (&services.engine, &services.registry);
    let model_path = Path::new(model);
    if model_path.extension().is_some_and(|e| e == "wasm") || model_path.is_file() {
        return load_file(engine, registry, model_path, bulkhead)
            .await
            .map_err(|e| anyhow::anyhow!("{} did not load: {e}", model_path.display()));
    }
    load_directory(engine, registry, plugins, bulkhead).await;
    if registry.active().get(model).is_none() {
        let failures: Vec<String> = registry
            .failures()
            .iter()
            .map(|f| format!("{}: {}", f.source, f.error))
            .collect();
        bail!(
            "no model `{model}` in {} (loaded: {}){}",
            plugins.display(),
            registry
                .active()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if failures.is_empty() {
                String::new()
            } else {
                format!("; failures: {}", failures.join("; "))
            }
        );
    }
    Ok(model.to_owned())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not {what}", path.display()))
}

/// `riskhost score`: the same path as the server's, in one process.
async fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let market = crate::services::open_market(&args.sources).await?;
    let services = Services::new(args.sources.sandbox.limits(), ModelRegistry::new(), market)?;
    // One request: one call at a time.
    let bulkhead = BulkheadLimits {
        max_concurrent: 1,
        max_queued: 1,
    };
    let model = load_one_model(&services, &args.model, &args.sources.plugins, bulkhead).await?;
    let portfolio: PortfolioInput = read_json(&args.portfolio, "a portfolio")?;
    let scoring = services.scoring(
        Arc::new(InProcessCache::new(1 << 20)),
        ScoringSettings::default(),
    );
    let request = ScoreRequest {
        model,
        portfolio,
        params: args.params.into_iter().collect::<BTreeMap<_, _>>(),
        as_of: args.as_of,
        breakdown: true,
    };
    let response = scoring
        .score(request)
        .await
        .map_err(|e| anyhow::anyhow!("[{}] {e}", e.code()))?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &response)?;
    writeln!(out)?;
    Ok(())
}

/// One portfolio or an array of them, as `--portfolio` files hold them.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum PortfolioFile {
    Many(Vec<PortfolioInput>),
    One(PortfolioInput),
}

/// `riskhost backtest`: the server's backtest, in one process; the JSON
/// answer on standard output (or `--json`), the report in `--out`, and one
/// verdict line per portfolio on standard error.
async fn backtest(args: BacktestCommandArgs) -> anyhow::Result<()> {
    let mut portfolios = Vec::new();
    for path in &args.portfolios {
        match read_json(path, "a portfolio or an array of portfolios")? {
            PortfolioFile::Many(many) => portfolios.extend(many),
            PortfolioFile::One(one) => portfolios.push(one),
        }
    }
    let market = crate::services::open_market(&args.sources).await?;
    let services = Services::new(args.sources.sandbox.limits(), ModelRegistry::new(), market)?;
    // The backtest keeps several days' calls in flight, on every core.
    let bulkhead = BulkheadLimits {
        max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
        max_queued: riskhost_scoring::BACKTEST_DAYS_IN_FLIGHT,
    };
    let model = load_one_model(&services, &args.model, &args.sources.plugins, bulkhead).await?;
    let scoring = services.scoring(
        Arc::new(InProcessCache::new(64 << 20)),
        ScoringSettings::default(),
    );
    let request = BacktestRequest {
        model,
        portfolios,
        from: args.from,
        to: args.to,
        params: args.params.into_iter().collect(),
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = format!("bt-cli-{}", started.as_secs());
    let result = scoring
        .backtest(request, args.limits.limits(), id)
        .await
        .map_err(|e| match &e {
            BacktestError::Score(score) => anyhow::anyhow!("[{}] {e}", score.code()),
            _ => anyhow::anyhow!("{e}"),
        })?;
    for portfolio in &result.portfolios {
        let name = portfolio
            .id
            .clone()
            .unwrap_or_else(|| format!("portfolio {}", portfolio.portfolio_index));
        match &portfolio.outcome {
            PortfolioOutcome::Tested(tested) => eprintln!(
                "{name}: {} — {}",
                tested.traffic_light.as_str(),
                riskhost_backtest::verdict(tested, result.confidence)
            ),
            PortfolioOutcome::Failed { error } => {
                eprintln!("{name}: not tested [{}] {}", error.code, error.message)
            }
        }
    }
    if let Some(path) = &args.out {
        std::fs::write(path, riskhost_backtest::report_html(&result))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    match &args.json {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            serde_json::to_writer_pretty(std::io::BufWriter::new(file), &result)?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &result)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
