//! `riskhost score-file`: scores a large file of portfolios offline with the
//! same batch engine as `POST /v1/score/batch`, writing CSV or JSON Lines,
//! with a progress bar and a summary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::config::ScoreFileArgs;
use riskhost_cache::InProcessCache;

use riskhost_models::{BulkheadLimits, ModelRegistry, load_directory};
use riskhost_scoring::{BatchCell, BatchRequest, CellOutcome, PortfolioInput, ScoringSettings};

/// Output formats.
enum Format {
    Csv,
    JsonLines,
}

pub(crate) async fn run(args: ScoreFileArgs) -> anyhow::Result<()> {
    let market = crate::services::open_market(&args.sources).await?;
    let services = crate::services::Services::new(
        args.sources.sandbox.limits(),
        ModelRegistry::new(),
        market,
    )?;
    let registry = services.registry.clone();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let bulkhead = BulkheadLimits {
        max_concurrent: cores,
        max_queued: usize::MAX,
    };
    load_directory(&services.engine, &registry, &args.sources.plugins, bulkhead).await;
    let settings = ScoringSettings {
        batch: riskhost_scoring::BatchLimits {
            max_portfolios: args.batch.max(1),
            ..Default::default()
        },
        ..ScoringSettings::default()
    };
    let scoring = services.scoring(Arc::new(InProcessCache::new(64 << 20)), settings);
    for model in &args.models {
        if let Err(e) = registry.resolve(model).await {
            bail!("{e}");
        }
    }

    let input = std::fs::File::open(&args.input)
        .with_context(|| format!("cannot open {}", args.input.display()))?;
    let total_bytes = input.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    };
    let format = match args
        .out
        .as_ref()
        .and_then(|p| p.extension())
        .and_then(|e| e.to_str())
    {
        Some("csv") => Format::Csv,
        Some("jsonl") | Some("ndjson") | None => Format::JsonLines,
        Some(other) => bail!("unknown output format `.{other}`: use .csv or .jsonl"),
    };
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    if let Format::Csv = format {
        writeln!(
            out,
            "line,portfolio_id,model,version,value,unit,cached,error_code,error_message"
        )?;
    }

    let params: BTreeMap<String, f64> = args.params.iter().cloned().collect();
    let started = Instant::now();
    let (mut portfolios, mut scored, mut failed, mut read_bytes) = (0usize, 0usize, 0usize, 0u64);
    let mut lines = BufReader::new(input).lines().enumerate();
    loop {
        let mut batch = Vec::with_capacity(args.batch);
        let mut line_numbers = Vec::with_capacity(args.batch);
        for (index, line) in lines.by_ref() {
            let line = line.with_context(|| format!("cannot read line {}", index + 1))?;
            read_bytes += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            let portfolio: PortfolioInput = serde_json::from_str(&line).with_context(|| {
                format!("{}:{}: not a portfolio", args.input.display(), index + 1)
            })?;
            batch.push(portfolio);
            line_numbers.push(index + 1);
            if batch.len() == args.batch.max(1) {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        portfolios += batch.len();
        let request = BatchRequest {
            models: args.models.clone(),
            portfolios: batch,
            params: params.clone(),
            as_of: args.as_of,
            breakdown: true,
        };
        let response = scoring
            .score_batch(request)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for cell in &response.results {
            let line = line_numbers
                .get(cell.portfolio_index)
                .copied()
                .unwrap_or_default();
            match &cell.outcome {
                CellOutcome::Score(_) => scored += 1,
                CellOutcome::Error { .. } => failed += 1,
            }
            write_cell(&mut out, &format, line, cell)?;
        }
        progress.set_position(read_bytes.min(total_bytes));
        progress.set_message(format!("{portfolios} portfolios"));
    }
    out.flush()?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "scored {portfolios} portfolios × {} models: {scored} scores, {failed} errors in {seconds:.2} s ({:.0} evaluations/s)",
        args.models.len(),
        (scored + failed) as f64 / seconds.max(1e-9)
    );
    Ok(())
}

fn write_cell(
    out: &mut dyn Write,
    format: &Format,
    line: usize,
    cell: &BatchCell,
) -> anyhow::Result<()> {
    match format {
        Format::JsonLines => {
            let mut value = serde_json::to_value(cell)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("line".into(), line.into());
            }
            serde_json::to_writer(&mut *out, &value)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let id = csv_field(cell.portfolio_id.as_deref().unwrap_or_default());
            match &cell.outcome {
                CellOutcome::Score(s) => writeln!(
                    out,
                    "{line},{id},{},{},{},{},{},,",
                    cell.model, s.version, s.value, s.unit, s.cached
                )?,
                CellOutcome::Error { error } => writeln!(
                    out,
                    "{line},{id},{},,,,,{},{}",
                    cell.model,
                    error.code,
                    csv_field(&error.message)
                )?,
            }
        }
    }
    Ok(())
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
