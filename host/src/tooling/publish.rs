//! `riskhost model publish FILE`: how a quant or a CI job ships a model to
//! a fleet. The component is loaded here first, as the server loads it (a
//! model that does not load is never sent), then `PUT` to one replica's
//! `/v1/models/{name}` with its signature; with `--model-store postgres`
//! that replica writes the shared registry and every replica follows.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use riskhost_engine::ModelEngine;

use crate::config::SandboxArgs;

#[derive(Debug, Clone, Args)]
pub(crate) struct PublishArgs {
    /// The component (`.wasm`); its detached signature `FILE.wasm.sig` is
    /// sent with it when present.
    pub(crate) file: PathBuf,
    /// Any replica of the fleet (or the single server).
    #[arg(long, env = "RISKHOST_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// An API token of scope `admin`.
    #[arg(long, env = "RISKHOST_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// A signature file other than `FILE.wasm.sig`.
    #[arg(long)]
    pub(crate) signature: Option<PathBuf>,
    /// How long to wait for the server to validate and serve it, in seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout_secs: u64,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let engine = ModelEngine::new(args.sandbox.limits())?;
    let checked = bytes.clone();
    let model = tokio::task::spawn_blocking(move || engine.load(&checked))
        .await?
        .with_context(|| {
            format!(
                "{} does not load, so it is not published",
                args.file.display()
            )
        })?;
    let name = model.name().to_owned();
    let signature_path = args.signature.clone().unwrap_or_else(|| {
        let mut path = args.file.clone().into_os_string();
        path.push(".sig");
        path.into()
    });
    let signature = match std::fs::read(&signature_path) {
        Ok(text) => Some(base64::engine::general_purpose::STANDARD.encode(text)),
        Err(_) if args.signature.is_none() => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", signature_path.display()));
        }
    };
    let url = format!("{}/v1/models/{name}", args.server.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(args.timeout_secs))
        .build()?;
    let mut request = client
        .put(&url)
        .header("content-type", "application/wasm")
        .body(bytes);
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    if let Some(signature) = signature {
        request = request.header(riskhost_models::signing::SIGNATURE_HEADER, signature);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {body}");
    }
    println!("{body}");
    eprintln!(
        "published {name} {} ({}) through {}",
        model.version(),
        model.digest,
        args.server
    );
    Ok(())
}
