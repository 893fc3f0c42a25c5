//! Signed models end to end, against the real binary: `riskhost model
//! keygen`/`sign`/`verify`, and a server with `--require-signatures` that
//! loads signed models and refuses tampered, unsigned and untrusted ones
//! (from the plugins directory, the admin API, the store at restart and
//! rollbacks) while the previous version keeps serving.
//!
//! Versions are the `versioned` test model plus a custom section, so a
//! tampered copy (one byte of that section flipped) is still a valid
//! component: only its signature can tell.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::{
    Server, TempDir, active_digest, answer, assert_error, binary, digest, failure_of, put_model,
    rollback, wait_until, with_custom_section, workspace, write_file,
};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";

fn riskhost(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("cannot run riskhost")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A key pair made by `riskhost model keygen`: the secret key file and the
/// public key it printed.
pub(crate) struct Key {
    pub(crate) secret: PathBuf,
    pub(crate) public: String,
}

pub(crate) fn keygen(dir: &Path, name: &str) -> Key {
    let secret = dir.join(name);
    let out = riskhost(&[
        "model",
        "keygen",
        "--out",
        secret.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "keygen failed: {}", text(&out.stderr));
    let public = text(&out.stdout).trim().to_owned();
    assert!(public.starts_with("ed25519:"), "{public}");
    Key { secret, public }
}

/// Signs `file` with `key` through `riskhost model sign`; returns the `.sig` text.
pub(crate) fn sign(file: &Path, key: &Key, out: Option<&Path>) -> String {
    let mut args = vec![
        "model",
        "sign",
        file.to_str().unwrap_or_default(),
        "--key",
        key.secret.to_str().unwrap_or_default(),
    ];
    if let Some(out) = out {
        args.extend(["--out", out.to_str().unwrap_or_default()]);
    }
    let result = riskhost(&args);
    assert!(
        result.status.success(),
        "sign failed: {}",
        text(&result.stderr)
    );
    let sig = out.map(Path::to_path_buf).unwrap_or_else(|| sig_path(file));
    std::fs::read_to_string(sig).expect("signature file")
}

fn sig_path(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", file.display()))
}

/// Build `build` of the `versioned` test model plus a custom section
/// holding `tag`: a valid component of its own digest.
fn version(build: &str, tag: &str) -> Vec<u8> {
    let path = workspace().join(format!("tests/plugins/dist/versioned-{build}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run tests/plugins/build.sh (tests/run.sh does) before the tests",
            path.display()
        )
    });
    with_custom_section(&bytes, tag)
}

/// `bytes` with its last byte (inside the custom section's tag) changed.
fn tampered(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(last) = out.last_mut() {
        *last ^= 0x01;
    }
    out
}

fn spx() -> Value {
    json!({"id": "spx", "positions": [{"instrument": "SPX", "quantity": 10}]})
}

fn score(server: &Server, model: &str) -> (u16, Value) {
    server.post("/v1/score", &json!({"model": model, "portfolio": spx()}))
}

/// The header value of a signature: the base64 of its `.sig` file.
fn header(sig: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(sig)
}

/// Clients scoring `model` without pause until stopped: (status, digest) of each answer.
struct Load {
    stop: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<Vec<(u16, String)>>,
}

impl Load {
    fn start(base: &str, model: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{base}/v1/score");
        let flag = stop.clone();
        let worker = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let mut seen = Vec::new();
            // Bounded: stops when told, or after this many requests.
            for i in 0..200_000u32 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let body =
                    json!({"model": model, "portfolio": spx(), "params": {"offset": f64::from(i)}});
                let (status, body) = answer(client.post(&url).json(&body).send());
                seen.push((
                    status,
                    body["digest"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            seen
        });
        Load { stop, worker }
    }

    fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().expect("load thread panicked")
    }
}

#[test]
fn the_cli_signs_and_verifies_and_verify_fails_on_a_tampered_file() {
    let dir = TempDir::new("sign-cli");
    let key = keygen(dir.path(), "publisher.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key.secret)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is owner-only");
    }
    let secret = std::fs::read_to_string(&key.secret).expect("key");
    assert!(secret.contains("\ned25519-secret:"), "{secret}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("publisher.key.pub"))
            .expect("pub")
            .trim(),
        key.public
    );
    // An existing key is never overwritten by accident.
    let again = riskhost(&[
        "model",
        "keygen",
        "--out",
        key.secret.to_str().unwrap_or_default(),
    ]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&key.secret).expect("key"), secret);

    let model = dir.path().join("versioned.wasm");
    let bytes = version("a", "cli");
    write_file(&model, &bytes);
    let sig = sign(&model, &key, None);
    assert!(sig.contains(&digest(&bytes)), "{sig}");
    let model_arg = model.to_str().unwrap_or_default();
    let verify = |extra: &[&str]| {
        let mut args = vec!["model", "verify", model_arg];
        args.extend_from_slice(extra);
        riskhost(&args)
    };
    let ok = verify(&["--trusted-key", key.public.as_str()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("OK:"), "{}", text(&ok.stdout));

    // A key file works as well, with comments and several keys (rotation).
    let other = keygen(dir.path(), "other.key");
    let keys = dir.path().join("trusted.keys");
    std::fs::write(
        &keys,
        format!(
            "# our publishers\n{} old\n{} new\n",
            other.public, key.public
        ),
    )
    .expect("keys");
    let ok = verify(&["--trusted-keys-file", keys.to_str().unwrap_or_default()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    // Refusals exit 1 and say why.
    let refused = |out: Output, needle: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{stderr:?} does not mention {needle:?}"
        );
    };
    refused(
        verify(&["--trusted-key", other.public.as_str()]),
        "not a trusted publisher",
    );
    write_file(&model, &tampered(&bytes));
    refused(
        verify(&["--trusted-key", key.public.as_str()]),
        "changed after it was signed",
    );
    write_file(&model, &bytes);
    std::fs::write(
        sig_path(&model),
        sig.replace("signature: ", "signature: AAAA"),
    )
    .expect("sig");
    refused(
        verify(&["--trusted-key", key.public.as_str()]),
        "signature_invalid",
    );
    std::fs::remove_file(sig_path(&model)).expect("rm");
    refused(verify(&["--trusted-key", key.public.as_str()]), "unsigned");
    // --out and --sig name another place for the signature.
    let elsewhere = dir.path().join("elsewhere.sig");
    sign(&model, &key, Some(elsewhere.as_path()));
    let ok = verify(&[
        "--trusted-key",
        key.public.as_str(),
        "--sig",
        elsewhere.to_str().unwrap_or_default(),
    ]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}

#[test]
fn the_directory_refuses_tampered_unsigned_and_untrusted_models_while_the_previous_version_serves()
{
    let keys = TempDir::new("sign-keys");
    let key = keygen(keys.path(), "publisher.key");
    let stranger = keygen(keys.path(), "stranger.key");
    let dir = TempDir::new("sign-plugins");
    let file = dir.path().join("versioned.wasm");
    let a = version("a", "signed-a");
    write_file(&file, &a);
    let sig_a = sign(&file, &key, None);
    // The example models are unsigned here: refused at start-up, visibly.
    std::fs::copy(
        common::plugins_dir().join("var-historical.wasm"),
        dir.path().join("var-historical.wasm"),
    )
    .expect("copy");
    let server = Server::start_with(&[
        "--plugins",
        dir.path().to_str().unwrap_or_default(),
        "--cache-ttl-secs",
        "0",
        "--require-signatures",
        "--trusted-key",
        key.public.as_str(),
    ]);
    assert_eq!(active_digest(&server, "versioned"), Some(digest(&a)));
    let failure = failure_of(&server, "var-historical.wasm").unwrap_or_default();
    assert!(failure.contains("unsigned"), "{failure}");
    assert_eq!(active_digest(&server, "var-historical"), None);
    let (_, versions) = server.get("/v1/models/versioned/versions");
    let key_id = sig_a
        .lines()
        .find_map(|l| l.strip_prefix("key-id: "))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        versions["versions"][0]["signed_by"],
        key_id.as_str(),
        "{versions}"
    );

    // One byte flipped, the original signature beside it: refused, and the
    // signed version answers every request meanwhile.
    let load = Load::start(&server.base, "versioned");
    wait_until("the load to start", Duration::from_secs(30), || {
        score(&server, "versioned").0 == 200
    });
    let bad = tampered(&a);
    write_file(&file, &bad);
    wait_until(
        "the tampered file to be refused",
        Duration::from_secs(30),
        || failure_of(&server, "versioned.wasm").is_some(),
    );
    let failure = failure_of(&server, "versioned.wasm").unwrap_or_default();
    assert!(
        failure.contains(&format!("signature is for digest {}", digest(&a)))
            && failure.contains(&format!("model has digest {}", digest(&bad))),
        "{failure}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.finish();
    assert!(!answers.is_empty());
    let failed: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(status, d)| *status != 200 || *d != digest(&a))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed or were answered by another version: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    assert_eq!(active_digest(&server, "versioned"), Some(digest(&a)));
    let metrics = server.get_text("/metrics");
    let load_failures = metrics
        .lines()
        .find(|l| l.starts_with("riskhost_model_load_failures_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(load_failures >= 2.0, "{load_failures}");

    // A new version without a signature: refused after waiting for one.
    let b = version("b", "signed-b");
    write_file(&file, &b);
    std::fs::remove_file(sig_path(&file)).expect("rm sig");
    wait_until(
        "the unsigned file to be refused",
        Duration::from_secs(30),
        || failure_of(&server, "versioned.wasm").is_some_and(|f| f.contains("unsigned")),
    );
    // Signed by a key the server does not trust: refused.
    let staged = keys.path().join("versioned.wasm");
    write_file(&staged, &b);
    let by_stranger = sign(&staged, &stranger, None);
    std::fs::write(sig_path(&file), &by_stranger).expect("sig");
    wait_until(
        "the untrusted signature to be refused",
        Duration::from_secs(30),
        || {
            failure_of(&server, "versioned.wasm")
                .is_some_and(|f| f.contains("not a trusted publisher"))
        },
    );
    assert_eq!(active_digest(&server, "versioned"), Some(digest(&a)));
    assert_eq!(score(&server, "versioned").1["digest"], digest(&a).as_str());

    // The right signature landing after its component deploys the component.
    std::fs::write(
        sig_path(&file),
        sign(&staged, &key, Some(keys.path().join("b.sig").as_path())),
    )
    .expect("sig");
    wait_until(
        "the signed version to go live",
        Duration::from_secs(30),
        || active_digest(&server, "versioned") == Some(digest(&b)),
    );
    assert_eq!(failure_of(&server, "versioned.wasm"), None);

    // Published the other way round, signature first: deploys as well.
    let c = version("a", "signed-c");
    write_file(&staged, &c);
    let sig_c = sign(&staged, &key, Some(keys.path().join("c.sig").as_path()));
    std::fs::write(sig_path(&file), sig_c).expect("sig");
    write_file(&file, &c);
    wait_until(
        "the version signed beforehand to go live",
        Duration::from_secs(30),
        || active_digest(&server, "versioned") == Some(digest(&c)),
    );
}

#[test]
fn uploads_carry_their_signature_and_the_store_rechecks_it_at_restart_and_rollback() {
    let keys = TempDir::new("upload-keys");
    let key = keygen(keys.path(), "publisher.key");
    let stranger = keygen(keys.path(), "stranger.key");
    let staged = keys.path().join("versioned.wasm");
    let signed_by = |bytes: &[u8], key: &Key| {
        write_file(&staged, bytes);
        sign(&staged, key, Some(keys.path().join("upload.sig").as_path()))
    };
    let store = TempDir::new("upload-store");
    let plugins = TempDir::new("upload-plugins");
    let args = |enforce: bool| {
        let mut args = vec![
            "--plugins".to_owned(),
            plugins.path().display().to_string(),
            "--data-dir".to_owned(),
            store.path().display().to_string(),
            "--admin-token".to_owned(),
            TOKEN.to_owned(),
            "--trusted-key".to_owned(),
            key.public.clone(),
        ];
        if enforce {
            args.push("--require-signatures".to_owned());
        }
        args
    };
    let start = |enforce: bool| {
        let args = args(enforce);
        Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Enforcement off: unsigned uploads load; signed ones keep their signature.
    let (s, u) = (
        version("a", "upload-signed"),
        version("b", "upload-unsigned"),
    );
    let server = start(false);
    let sig_s = signed_by(&s, &key);
    assert_eq!(
        put_model(
            &server,
            TOKEN,
            "versioned",
            s.clone(),
            Some(&header(&sig_s))
        )
        .0,
        201
    );
    let (status, body) = put_model(&server, TOKEN, "versioned", u.clone(), None);
    assert_eq!(status, 201, "{body}");
    assert_eq!(score(&server, "versioned").1["digest"], digest(&u).as_str());
    drop(server);

    // Enforcement on after a restart: the active version is unsigned, so
    // it is not restored, and says why.
    let server = start(true);
    assert_eq!(active_digest(&server, "versioned"), None);
    let failure = failure_of(&server, "store:versioned").unwrap_or_default();
    assert!(failure.contains("unsigned"), "{failure}");
    // The signed version can be rolled back to; the unsigned one cannot.
    let (status, body) = rollback(
        &server,
        TOKEN,
        "versioned",
        Some(json!({"to": &digest(&s)})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(score(&server, "versioned").1["digest"], digest(&s).as_str());
    assert_error(
        &rollback(
            &server,
            TOKEN,
            "versioned",
            Some(json!({"to": &digest(&u)})),
        ),
        422,
        "signature_missing",
        "unsigned",
    );
    // A pin to the unsigned version does not load it either.
    assert_error(
        &score(&server, &format!("versioned@{}", digest(&u))),
        503,
        "model_unavailable",
        "unsigned",
    );
    assert_eq!(active_digest(&server, "versioned"), Some(digest(&s)));

    // Uploads: each refusal with its code; the live version stays.
    let n = version("b", "upload-new");
    let sig_n = signed_by(&n, &key);
    assert_error(
        &put_model(&server, TOKEN, "versioned", n.clone(), None),
        422,
        "signature_missing",
        "x-riskhost-signature",
    );
    assert_error(
        &put_model(&server, TOKEN, "versioned", n.clone(), Some("not base64!")),
        422,
        "signature_invalid",
        "base64",
    );
    assert_error(
        &put_model(
            &server,
            TOKEN,
            "versioned",
            tampered(&n),
            Some(&header(&sig_n)),
        ),
        422,
        "signature_invalid",
        "changed after it was signed",
    );
    assert_error(
        &put_model(
            &server,
            TOKEN,
            "versioned",
            n.clone(),
            Some(&header(&signed_by(&n, &stranger))),
        ),
        422,
        "untrusted_publisher",
        "not a trusted publisher",
    );
    assert_eq!(active_digest(&server, "versioned"), Some(digest(&s)));
    let (status, body) = put_model(
        &server,
        TOKEN,
        "versioned",
        n.clone(),
        Some(&header(&sig_n)),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["previous"]["digest"], digest(&s).as_str());
    assert_eq!(score(&server, "versioned").1["digest"], digest(&n).as_str());
    drop(server);

    // Another restart with enforcement: the signed active version restores.
    let server = start(true);
    assert_eq!(active_digest(&server, "versioned"), Some(digest(&n)));
    let (_, models) = server.get("/v1/models");
    assert_eq!(models["failures"], json!([]), "{models}");
}
