//! `riskhost model keygen`, `model sign` and `model verify`: the publisher's
//! side of signed models (`signing.rs`, `docs/signing.md`). They run the
//! server's own parsing and verification, so a file `model verify` accepts
//! is accepted by a server trusting the same keys.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

use riskhost_engine::ModelEngine;
use riskhost_models::signing::{self, DetachedSignature, TrustedKeys};

#[derive(Debug, Clone, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the secret key (created owner-only, 0600); the public
    /// key goes to `FILE.pub` and standard output.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Replace an existing key file.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SignArgs {
    /// The component (`.wasm`) to sign.
    pub(crate) file: PathBuf,
    /// The secret key file written by `riskhost model keygen`.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Where to write the signature (default: `FILE.sig`, beside the component).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct VerifyArgs {
    /// The component (`.wasm`) to check.
    pub(crate) file: PathBuf,
    /// A trusted public key (`ed25519:…`); repeat for several.
    #[arg(long = "trusted-key")]
    pub(crate) trusted_keys: Vec<String>,
    /// A file of trusted public keys, one per line; repeat for several.
    #[arg(long = "trusted-keys-file")]
    pub(crate) trusted_keys_files: Vec<PathBuf>,
    /// The signature file (default: `FILE.sig`, beside the component).
    #[arg(long)]
    pub(crate) sig: Option<PathBuf>,
}

fn sig_path_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// `riskhost model keygen`.
pub(crate) fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let key = signing::generate_key()?;
    let mut options = std::fs::File::options();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&args.out).with_context(|| {
        format!(
            "cannot create {} (an existing key is kept unless --force)",
            args.out.display()
        )
    })?;
    #[cfg(unix)]
    {
        // `mode` applies only to new files; a replaced one is narrowed too.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(signing::secret_key_text(&key).as_bytes())?;
    file.sync_all()?;
    let public = signing::public_key_text(&key.verifying_key());
    let pub_path = sig_pub_path(&args.out);
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    println!("{public}");
    eprintln!(
        "secret key written to {} (0600): keep it secret, e.g. in your CI's secret store\n\
         public key (key id {}) written to {}: give it to servers with --trusted-key or --trusted-keys-file",
        args.out.display(),
        signing::key_id(&key.verifying_key()),
        pub_path.display()
    );
    Ok(())
}

fn sig_pub_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// `riskhost model sign`.
pub(crate) fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read the key file {}", args.key.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(&args.key)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by others; `chmod 600` it",
                args.key.display()
            );
        }
    }
    let key = signing::parse_secret_key(&text)
        .with_context(|| format!("{} is not a secret key", args.key.display()))?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let digest = ModelEngine::digest(&bytes);
    let signature = DetachedSignature::sign(&key, &digest)?;
    let out = args.out.clone().unwrap_or_else(|| sig_path_of(&args.file));
    std::fs::write(&out, signature.to_text())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "signed {} ({digest}) with key {} -> {}",
        args.file.display(),
        signature.key_id,
        out.display()
    );
    Ok(())
}

/// `riskhost model verify`: exit code 0 when the component carries a valid
/// signature by a trusted key, 1 (with the reason) otherwise.
pub(crate) fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let trusted = TrustedKeys::load(&args.trusted_keys, &args.trusted_keys_files)?;
    if trusted.is_empty() {
        bail!("no trusted key: give --trusted-key or --trusted-keys-file");
    }
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let digest = ModelEngine::digest(&bytes);
    let sig_path = args.sig.clone().unwrap_or_else(|| sig_path_of(&args.file));
    let signature = match std::fs::read(&sig_path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {e}", sig_path.display()),
    };
    match trusted.verify(&digest, signature.as_deref()) {
        Ok(key_id) => {
            println!(
                "OK: {} ({digest}) is signed by trusted key {key_id}",
                args.file.display()
            );
            Ok(())
        }
        Err(error) => bail!(
            "REFUSED [{}]: {} ({digest}, signature {}): {error}",
            error.code(),
            args.file.display(),
            sig_path.display()
        ),
    }
}
