//! The benchmark scenarios, one module each.
//!
//! A scenario is a function from the shared [`Context`] to result [`Row`]s.
//! To add one, write `scenarios/<name>.rs` with a
//! `pub fn run(ctx: &Context) -> anyhow::Result<Vec<Row>>` and list it in
//! [`ALL`]; the runner, the table and BENCHMARKS.md need no change.
//!
//! The first three run the engine in this process; the others start the real
//! `riskhost serve` (release build) on loopback ([`crate::service`]) and load
//! it with [`crate::loadgen`]; `platform` loads a Python reference service
//! (`examples/bench/reference-fastapi/`) the same way.

pub(crate) mod analytics;
pub(crate) mod backtest;
pub(crate) mod batch;
pub(crate) mod batching;
pub(crate) mod challenger;
pub(crate) mod compute;
pub(crate) mod events;
pub(crate) mod fleet;
pub(crate) mod hotswap;
pub(crate) mod http;
pub(crate) mod memory;
pub(crate) mod overhead;
pub(crate) mod platform;
pub(crate) mod runs;
pub(crate) mod sizes;
pub(crate) mod startup;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use riskhost_engine::{LoadedModel, ModelEngine, SandboxLimits};

use crate::harness::Sampling;
use crate::loadgen::{Outcome, Plan, Stop};
use crate::report::{Row, number};
use crate::service::Host;

/// A scenario: its key (for `--only`), its name (for progress output) and
/// what runs it.
pub(crate) struct Scenario {
    pub(crate) key: &'static str,
    pub(crate) name: &'static str,
    pub(crate) run: fn(&Context) -> anyhow::Result<Vec<Row>>,
}

/// Every scenario, in the order of the table (the issue's numbering).
pub(crate) const ALL: &[Scenario] = &[
    Scenario {
        key: "compute",
        name: "1. model compute, wasm vs native",
        run: compute::run,
    },
    Scenario {
        key: "overhead",
        name: "2. instantiate + call overhead",
        run: overhead::run,
    },
    Scenario {
        key: "http",
        name: "3. HTTP single score vs a trivial axum endpoint",
        run: http::run,
    },
    Scenario {
        key: "batch",
        name: "4. batch API vs single requests, embedded and PostgreSQL",
        run: batch::run,
    },
    Scenario {
        key: "batching",
        name: "5. dynamic batching on vs off",
        run: batching::run,
    },
    Scenario {
        key: "hotswap",
        name: "6. hot swap under load",
        run: hotswap::run,
    },
    Scenario {
        key: "startup",
        name: "7. start-up to ready",
        run: startup::run,
    },
    Scenario {
        key: "memory",
        name: "8. resident memory",
        run: memory::run,
    },
    Scenario {
        key: "events",
        name: "9. score events: in memory vs durable",
        run: events::run,
    },
    Scenario {
        key: "backtest",
        name: "10. backtests vs single requests as of each day",
        run: backtest::run,
    },
    Scenario {
        key: "fleet",
        name: "11. a fleet of three replicas sharing a PostgreSQL registry",
        run: fleet::run,
    },
    Scenario {
        key: "analytics",
        name: "12. score analytics: aggregates vs raw events, 10M events",
        run: analytics::run,
    },
    Scenario {
        key: "runs",
        name: "13. a risk run of every stored portfolio vs the batch API",
        run: runs::run,
    },
    Scenario {
        key: "challenger",
        name: "14. live scores with a challenger in their shadow",
        run: challenger::run,
    },
    Scenario {
        key: "platform",
        name: "15. riskhost vs the platform it replaces (FastAPI + NumPy + Redis)",
        run: platform::run,
    },
    Scenario {
        key: "sizes",
        name: "component sizes",
        run: sizes::run,
    },
];

/// How long and how often the service scenarios load a server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadSampling {
    /// Load before the measured repetitions (connections opened, memo and
    /// instance pool warm); not recorded.
    pub(crate) warm_up: Duration,
    /// Measured repetitions; throughput is reported as their median and
    /// min–max, latency percentiles over all their requests.
    pub(crate) reps: usize,
    pub(crate) rep_time: Duration,
    /// Repetitions of the one-off measurements (batches, start-ups, swaps).
    pub(crate) runs: usize,
}

impl LoadSampling {
    pub(crate) fn full() -> LoadSampling {
        LoadSampling {
            warm_up: Duration::from_secs(1),
            reps: 3,
            rep_time: Duration::from_secs(4),
            runs: 5,
        }
    }

    pub(crate) fn quick() -> LoadSampling {
        LoadSampling {
            warm_up: Duration::from_millis(500),
            reps: 2,
            rep_time: Duration::from_secs(1),
            runs: 2,
        }
    }

    /// A closed loop at `connections` for the usual warm-up and repetitions.
    pub(crate) fn closed(self, connections: usize) -> Plan {
        Plan {
            connections,
            warm_up: self.warm_up,
            rep: Stop::After(self.rep_time),
            reps: self.reps,
            rate: None,
        }
    }

    pub(crate) fn describe(self) -> String {
        format!(
            "warm-up {} ms, {} repetitions of {} ms; one-off measurements {} runs",
            self.warm_up.as_millis(),
            self.reps,
            self.rep_time.as_millis(),
            self.runs
        )
    }
}

/// The example models: file stem in `plugins/dist/` = model name.
pub(crate) const MODELS: [&str; 3] = ["var-historical", "var-parametric", "es-historical"];

/// A model as the product runs it, with where it came from.
pub(crate) struct Model {
    pub(crate) name: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) size_bytes: usize,
    pub(crate) loaded: LoadedModel,
}

/// What every scenario shares: options, the engine and the loaded models,
/// and for the service scenarios the `riskhost` binary and a tokio runtime
/// for the load generator.
pub(crate) struct Context {
    pub(crate) root: PathBuf,
    pub(crate) quick: bool,
    pub(crate) sampling: Sampling,
    pub(crate) load: LoadSampling,
    pub(crate) engine: ModelEngine,
    pub(crate) models: Vec<Model>,
    /// The directory the example models were loaded from.
    pub(crate) dist: PathBuf,
    pub(crate) host: Host,
    /// Runs the load generator and the reference server's clients.
    pub(crate) rt: tokio::runtime::Runtime,
}

impl Context {
    /// Creates the engine with the default (production) limits and loads the
    /// example models from `dist` (normally `plugins/dist/`) through
    /// `ModelEngine::load`.
    /// `quick` selects [`Sampling::quick`] over [`Sampling::full`].
    pub(crate) fn new(
        root: &Path,
        dist: &Path,
        bin: &Path,
        quick: bool,
    ) -> anyhow::Result<Context> {
        let engine = ModelEngine::new(SandboxLimits::default())?;
        let mut models = Vec::new();
        for name in MODELS {
            let path = dist.join(format!("{name}.wasm"));
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let loaded = engine
                .load(&bytes)
                .with_context(|| format!("cannot load {}", path.display()))?;
            models.push(Model {
                name,
                path,
                size_bytes: bytes.len(),
                loaded,
            });
        }
        // The same runtime settings as `riskhost serve` (cli.rs).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the load generator's runtime")?;
        let host = Host::new(bin.to_owned(), rt.handle().clone())?;
        Ok(Context {
            root: root.to_owned(),
            quick,
            sampling: if quick {
                Sampling::quick()
            } else {
                Sampling::full()
            },
            load: if quick {
                LoadSampling::quick()
            } else {
                LoadSampling::full()
            },
            engine,
            models,
            dist: dist.to_owned(),
            host,
            rt,
        })
    }

    /// `--plugins` for a server that loads the example models.
    pub(crate) fn dist_arg(&self) -> String {
        self.dist.display().to_string()
    }
}

/// The score request of the HTTP scenarios: a 5-position portfolio on the
/// bundled instruments, the first position's quantity set to `quantity`
/// (a distinct quantity is a distinct memo key, so a cache miss).
pub(crate) fn score_body(model: &str, quantity: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"{model}","portfolio":{{"positions":[{{"instrument":"SPX","quantity":{quantity}}},{{"instrument":"TLT","quantity":-200}},{{"instrument":"AAPL","quantity":50}},{{"instrument":"GOLD","quantity":30}},{{"instrument":"EURUSD","quantity":10000}}]}}}}"#
    ))
}

/// The row of a load measurement: median and min–max throughput over the
/// repetitions, the latency percentiles in the note, zero errors as the goal.
pub(crate) fn load_row(scenario: &str, variant: String, outcome: &Outcome) -> Row {
    let note = format!(
        "p50 {} ms · p99 {} ms · p99.9 {} ms · {} requests, {} errors",
        number(outcome.ms(0.5)),
        number(outcome.ms(0.99)),
        number(outcome.ms(0.999)),
        outcome.ok + outcome.errors,
        outcome.errors,
    );
    let note = match &outcome.first_error {
        Some(e) => format!(
            "{note} (first: {})",
            e.chars().take(120).collect::<String>()
        ),
        None => note,
    };
    Row::sampled(scenario, variant, &outcome.throughput, "req/s")
        .goal("0 errors", outcome.errors == 0)
        .note(note)
}

/// `a / b` as a ratio for the reference column, e.g. `0.52× reference`.
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".to_owned()
    }
}

/// A model's `score_batch`, compiled natively.
pub(crate) type NativeScoreBatch = fn(
    &riskhost_sdk::MarketData,
    &[riskhost_sdk::Job],
)
    -> Vec<Result<riskhost_sdk::Score, riskhost_sdk::ModelError>>;

/// The native `score_batch` of a model, by name.
pub(crate) fn native(name: &str) -> anyhow::Result<NativeScoreBatch> {
    use riskhost_sdk::Model as _;
    Ok(match name {
        "var-historical" => var_historical::VarHistorical::score_batch,
        "var-parametric" => var_parametric::VarParametric::score_batch,
        "es-historical" => es_historical::EsHistorical::score_batch,
        other => anyhow::bail!("no native build of model {other}"),
    })
}
