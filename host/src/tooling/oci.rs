//! `riskhost model push FILE oci://…` and `riskhost model pull oci://…
//! --out FILE`: a component (and its detached signature) to and from an OCI
//! registry, in the layout the WebAssembly tooling uses (`docs/oci.md`).
//! `push` loads the component first, as the server does (one that does not
//! load is never pushed), and prints the digest reference to deploy by.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use riskhost_engine::ModelEngine;
use riskhost_oci::OciClient;

use crate::config::{OciArgs, SandboxArgs};

#[derive(Debug, Clone, Args)]
pub(crate) struct PushArgs {
    /// The component (`.wasm`); `FILE.wasm.sig` is pushed with it when present.
    pub(crate) file: PathBuf,
    /// Where to: `oci://REGISTRY/REPOSITORY:TAG`.
    pub(crate) reference: String,
    /// A signature file other than `FILE.wasm.sig`.
    #[arg(long)]
    pub(crate) signature: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) oci: OciArgs,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct PullArgs {
    /// What: `oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:…`.
    pub(crate) reference: String,
    /// Where to write the component; its signature, if the artifact has
    /// one, goes to `FILE.sig`.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The largest component accepted, in MiB.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_component_mib: usize,
    #[command(flatten)]
    pub(crate) oci: OciArgs,
}

fn signature_path(file: &std::path::Path) -> PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(".sig");
    path.into()
}

pub(crate) async fn push(args: PushArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let signature_file = args
        .signature
        .clone()
        .unwrap_or_else(|| signature_path(&args.file));
    let signature = match std::fs::read_to_string(&signature_file) {
        Ok(text) => Some(text),
        Err(_) if args.signature.is_none() => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", signature_file.display()));
        }
    };
    // Loaded here as the server loads it: a component that does not load is
    // never pushed, and the config names what it imports and exports.
    let engine = ModelEngine::new(args.sandbox.limits())?;
    let checked = bytes.clone();
    let (engine, loaded) = tokio::task::spawn_blocking(move || {
        let loaded = engine.load(&checked);
        (engine, loaded)
    })
    .await?;
    let model = loaded
        .with_context(|| format!("{} does not load, so it is not pushed", args.file.display()))?;
    let wasmtime = engine.wasmtime_engine();
    let mut described = serde_json::Map::new();
    described.insert(
        "component".into(),
        serde_json::json!({
            "name": model.name(),
            "version": model.version(),
            "imports": super::imports::imports(wasmtime, model.component())
                .into_iter()
                .map(|i| i.name)
                .collect::<Vec<_>>(),
            "exports": super::imports::exports(wasmtime, model.component()),
        }),
    );
    let client = OciClient::new(args.oci.settings(bytes.len().max(1))?);
    let pushed = client
        .push(&args.reference, bytes, signature, described)
        .await?;
    println!("oci://{}", pushed.reference);
    eprintln!(
        "pushed {} (component {}){}",
        args.file.display(),
        pushed.component_digest,
        pushed
            .signature_tag
            .map(|t| format!(", signature as tag {t}"))
            .unwrap_or_default()
    );
    Ok(())
}

pub(crate) async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let client = OciClient::new(args.oci.settings(args.max_component_mib << 20)?);
    let pulled = client.pull(&args.reference).await?;
    std::fs::write(&args.out, &pulled.bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if let Some(signature) = &pulled.signature {
        let path = signature_path(&args.out);
        std::fs::write(&path, signature)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("oci://{}", pulled.reference);
    eprintln!(
        "pulled component {} into {}{}",
        pulled.component_digest,
        args.out.display(),
        if pulled.signature.is_some() {
            " with its signature"
        } else {
            ""
        }
    );
    Ok(())
}
