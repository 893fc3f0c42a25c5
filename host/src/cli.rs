//! Subcommands other than the server itself, and the dispatch of all of them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::{Cli, Command, ScoreArgs};
use riskhost_cache::InProcessCache;
use riskhost_models::{BulkheadLimits, ModelRegistry, load_directory, load_file};
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
        Command::ScoreFile(args) => {
            crate::telemetry::init_logging(args.sources.log_format);
            runtime.block_on(crate::score_file::run(args))
        }
        Command::New(args) => crate::tooling::new::run(&args),
        Command::Model(command) => runtime.block_on(crate::tooling::run_model(command)),
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

/// `riskhost score`: the same path as the server's, in one process.
async fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let market = crate::services::open_market(&args.sources).await?;
    let services = Services::new(args.sources.sandbox.limits(), ModelRegistry::new(), market)?;
    let (engine, registry) = (&services.engine, &services.registry);
    let bulkhead = BulkheadLimits {
        max_concurrent: 1,
        max_queued: 1,
    };
    let model_path = Path::new(&args.model);
    let model_name = if model_path.extension().is_some_and(|e| e == "wasm") || model_path.is_file()
    {
        load_file(engine, registry, model_path, bulkhead)
            .await
            .map_err(|e| anyhow::anyhow!("{} did not load: {e}", model_path.display()))?
    } else {
        load_directory(engine, registry, &args.sources.plugins, bulkhead).await;
        if registry.active().get(&args.model).is_none() {
            let failures: Vec<String> = registry
                .failures()
                .iter()
                .map(|f| format!("{}: {}", f.source, f.error))
                .collect();
            bail!(
                "no model `{}` in {} (loaded: {}){}",
                args.model,
                args.sources.plugins.display(),
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
        args.model.clone()
    };
    let portfolio_text = std::fs::read_to_string(&args.portfolio)
        .with_context(|| format!("cannot read {}", args.portfolio.display()))?;
    let portfolio: PortfolioInput = serde_json::from_str(&portfolio_text)
        .with_context(|| format!("{} is not a portfolio", args.portfolio.display()))?;
    let scoring = services.scoring(
        Arc::new(InProcessCache::new(1 << 20)),
        ScoringSettings::default(),
    );
    let request = ScoreRequest {
        model: model_name,
        portfolio,
        params: args.params.into_iter().collect::<BTreeMap<_, _>>(),
        as_of: args.as_of,
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
