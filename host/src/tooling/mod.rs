//! The quant's local loop: `riskhost new`, `riskhost model inspect` and
//! `riskhost model test`; and the publisher's: `riskhost model keygen`,
//! `model sign`, `model verify` and `model publish`; `model push` and
//! `model pull` to and from OCI registries.
//!
//! These commands run the server's own code (the same `ModelEngine::load`,
//! the same sandbox limits, the same scoring path) on a developer's machine,
//! so a model that passes `riskhost model test` loads in production. They
//! live apart from the server modules: nothing on the request path depends
//! on them.

pub(crate) mod imports;
pub(crate) mod inspect;
pub(crate) mod new;
pub(crate) mod oci;
pub(crate) mod publish;
pub(crate) mod sign;
pub(crate) mod test;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::SandboxArgs;

/// Languages `riskhost new` can scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// A Rust crate on the riskhost SDK, built for wasm32-wasip2.
    Rust,
    /// A Python module built into a component with componentize-py.
    Python,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct NewArgs {
    /// Model name: lower-kebab-case, e.g. `my-var`; also the project folder's name.
    pub(crate) name: String,
    /// Language of the model.
    #[arg(long, value_enum)]
    pub(crate) lang: Lang,
    /// Folder to create (default: ./NAME); it must not exist or be empty.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// The riskhost SDK (`sdk/` of a riskhost checkout) a Rust project depends
    /// on; defaults to the checkout this binary was built from.
    #[arg(long)]
    pub(crate) sdk_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ModelCommand {
    /// Describe a component: info(), digest, size, imports and whether it loads.
    Inspect(InspectArgs),
    /// Load a component as the server does, score sample portfolios and time the calls.
    Test(TestArgs),
    /// Create a publisher signing key pair (secret key file 0600, public key printed).
    Keygen(sign::KeygenArgs),
    /// Sign a component: writes the detached signature `FILE.wasm.sig`.
    Sign(sign::SignArgs),
    /// Check a component's signature against trusted keys (exit code 0 or 1).
    Verify(sign::VerifyArgs),
    /// Ship a component to a server or fleet: load it here, then PUT it (with its signature).
    Publish(publish::PublishArgs),
    /// Push a component (and its signature) to an OCI registry; prints the digest reference.
    Push(oci::PushArgs),
    /// Pull a component (and its signature) from an OCI registry.
    Pull(oci::PullArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct InspectArgs {
    /// The component (`.wasm`).
    pub(crate) file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct TestArgs {
    /// The component (`.wasm`).
    pub(crate) file: PathBuf,
    /// A portfolio JSON file to score; repeat for several (default: the bundled sample portfolios).
    #[arg(long = "portfolio")]
    pub(crate) portfolios: Vec<PathBuf>,
    /// Daily closes as CSV (`date,instrument,close`) instead of the bundled sample data.
    #[arg(long, env = "RISKHOST_PRICES")]
    pub(crate) prices: Option<PathBuf>,
    /// A parameter, as NAME=VALUE; repeat for several.
    #[arg(long = "param", value_parser = crate::config::parse_param)]
    pub(crate) params: Vec<(String, f64)>,
    /// Valuation date (YYYY-MM-DD); the latest date in the data by default.
    #[arg(long, value_parser = riskhost_scoring::parse_date)]
    pub(crate) as_of: Option<chrono::NaiveDate>,
    /// Timed calls per portfolio (each in a fresh instance, as the server runs them).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) repeat: u32,
    /// Also time calls holding this many copies of each portfolio's job (batch cost).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) batch: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

/// Runs `riskhost model …`.
pub(crate) async fn run_model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Inspect(args) => inspect::run(args).await,
        ModelCommand::Test(args) => test::run(args).await,
        ModelCommand::Keygen(args) => sign::keygen(&args),
        ModelCommand::Sign(args) => sign::sign(&args),
        ModelCommand::Verify(args) => sign::verify(&args),
        ModelCommand::Publish(args) => publish::run(args).await,
        ModelCommand::Push(args) => oci::push(args).await,
        ModelCommand::Pull(args) => oci::pull(args).await,
    }
}

/// `1234567` → `1.2 MiB`, for human output.
pub(crate) fn human_bytes(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration in the unit that reads best: µs, ms or s.
pub(crate) fn human_duration(d: std::time::Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(18 << 20), "18.0 MiB");
        assert_eq!(human_duration(Duration::from_micros(42)), "42 µs");
        assert_eq!(human_duration(Duration::from_micros(1500)), "1.50 ms");
        assert_eq!(human_duration(Duration::from_millis(3500)), "3.50 s");
    }
}
