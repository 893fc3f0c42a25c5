//! Models through OCI registries (`docs/oci.md`): a real registry on
//! loopback (Debian's docker-registry, distribution 2.8) per test, riskhost's
//! `model push`/`model pull` against an independent client (oras), deploys
//! by digest and by tag, signatures, and every refusal leaving the live
//! version serving.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::oci::{Registry, oras};
use common::{
    Server, TempDir, active_digest, admin_request, answer, assert_error, digest,
    with_custom_section, workspace,
};
use serde_json::{Value, json};

const TOKEN: &str = "oci-admin-token";

fn test_model(build: &str) -> Vec<u8> {
    let path = workspace().join(format!("tests/plugins/dist/versioned-{build}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run tests/plugins/build.sh", path.display()))
}

/// `riskhost ARGS` with the registry allowed over plain HTTP.
fn riskhost(registry: &Registry, args: &[&str]) -> std::process::Output {
    Command::new(common::binary())
        .args(args)
        .args(["--oci-insecure-registries", &registry.host])
        .output()
        .expect("riskhost")
}

/// `riskhost model push FILE REFERENCE`; the digest reference it printed.
fn push(registry: &Registry, file: &std::path::Path, reference: &str) -> String {
    let out = riskhost(
        registry,
        &[
            "model",
            "push",
            file.to_str().unwrap_or_default(),
            reference,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn server(registry: &Registry, extra: &[&str]) -> Server {
    let empty = TempDir::new("oci-plugins");
    let mut args = vec![
        "--plugins",
        empty.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
        "--oci-insecure-registries",
        registry.host.as_str(),
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// `PUT /v1/models/versioned` with `{"oci": reference}`.
fn deploy(server: &Server, reference: &str) -> (u16, Value) {
    answer(
        admin_request(server, TOKEN, reqwest::Method::PUT, "/v1/models/versioned")
            .json(&json!({ "oci": reference }))
            .send(),
    )
}

fn score(server: &Server) -> (u16, Value) {
    server.post(
        "/v1/score",
        &json!({"model": "versioned", "portfolio": {"id": "spx", "positions": [{"instrument": "SPX", "quantity": 10}]}}),
    )
}

#[test]
fn riskhost_and_oras_read_each_others_artifacts() {
    let registry = Registry::start();
    let dir = TempDir::new("oci-files");
    let file = dir.path().join("versioned.wasm");
    let bytes = with_custom_section(&test_model("a"), "oci-push");
    std::fs::write(&file, &bytes).expect("write");

    // Pushed by riskhost, read by oras: same bytes, the Wasm media types.
    let pushed = push(
        &registry,
        &file,
        &registry.reference("models/versioned", ":1.0"),
    );
    assert!(
        pushed.starts_with(&format!("oci://{}/models/versioned@sha256:", registry.host)),
        "{pushed}"
    );
    let tag = format!("{}/models/versioned:1.0", registry.host);
    let manifest = oras(&["manifest", &tag]);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"][0]["digest"], digest(&bytes).as_str());
    let config: Value = reqwest::blocking::get(format!(
        "http://{}/v2/models/versioned/blobs/{}",
        registry.host,
        manifest["config"]["digest"].as_str().unwrap_or_default()
    ))
    .and_then(|r| r.json())
    .expect("the config blob");
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["component"]["name"], "versioned");
    assert!(
        config["component"]["exports"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{config}"
    );
    assert!(config["component"]["imports"].is_array(), "{config}");
    let out = TempDir::new("oras-out");
    let pulled = oras(&["pull", &tag, out.path().to_str().unwrap_or_default()]);
    let path = pulled["files"][0].as_str().expect("a pulled file");
    assert_eq!(std::fs::read(path).expect("read"), bytes);

    // Pushed by oras, deployed by riskhost by digest, scored, pulled back.
    let other = with_custom_section(&test_model("b"), "oras-push");
    let other_file = dir.path().join("other.wasm");
    std::fs::write(&other_file, &other).expect("write");
    let oras_tag = format!("{}/models/versioned:oras", registry.host);
    oras(&[
        "push",
        &oras_tag,
        other_file.to_str().unwrap_or_default(),
        "application/wasm",
        "application/vnd.wasm.config.v0+json",
    ]);
    let pinned = riskhost(
        &registry,
        &[
            "model",
            "pull",
            &format!("oci://{oras_tag}"),
            "--out",
            dir.path().join("pulled.wasm").to_str().unwrap_or_default(),
        ],
    );
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("pulled.wasm")).expect("read"),
        other
    );
    let by_digest = String::from_utf8_lossy(&pinned.stdout).trim().to_owned();
    assert!(by_digest.contains("@sha256:"), "{by_digest}");

    let server = server(&registry, &[]);
    let (status, body) = deploy(&server, &by_digest);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["digest"], digest(&other).as_str());
    let (status, scored) = score(&server);
    assert_eq!(status, 200, "{scored}");
    assert_eq!(scored["digest"], digest(&other).as_str());
    let (_, versions) = server.get("/v1/models/versioned/versions");
    assert_eq!(
        versions["versions"][0]["source"].as_str(),
        Some(format!("oci:{}", by_digest.trim_start_matches("oci://")).as_str()),
        "the version records the digest reference it came from: {versions}"
    );
}

#[test]
fn a_tag_is_resolved_once_and_a_moved_tag_changes_nothing_until_redeployed() {
    let registry = Registry::start();
    let dir = TempDir::new("oci-files");
    let (one, two) = (
        with_custom_section(&test_model("a"), "tag-1"),
        with_custom_section(&test_model("b"), "tag-2"),
    );
    let file = dir.path().join("versioned.wasm");
    let latest = registry.reference("models/versioned", ":latest");
    std::fs::write(&file, &one).expect("write");
    push(&registry, &file, &latest);
    let server = server(&registry, &[]);
    assert_eq!(deploy(&server, &latest).0, 201);
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(digest(&one).as_str())
    );

    std::fs::write(&file, &two).expect("write");
    push(&registry, &file, &latest);
    assert_eq!(
        score(&server).1["digest"],
        digest(&one).as_str(),
        "the tag moved; the served digest did not"
    );
    let (status, body) = deploy(&server, &latest);
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(digest(&two).as_str())
    );
}

#[test]
fn signatures_travel_with_the_artifact_and_are_required_when_configured() {
    let registry = Registry::start();
    let dir = TempDir::new("oci-files");
    let key = crate::signing::keygen(dir.path(), "publisher.key");
    let file = dir.path().join("versioned.wasm");
    let signed = with_custom_section(&test_model("a"), "signed");
    std::fs::write(&file, &signed).expect("write");
    crate::signing::sign(&file, &key, None);
    let signed_ref = push(
        &registry,
        &file,
        &registry.reference("models/versioned", ":signed"),
    );
    let unsigned_file = dir.path().join("unsigned.wasm");
    std::fs::write(
        &unsigned_file,
        with_custom_section(&test_model("b"), "unsigned"),
    )
    .expect("write");
    let unsigned_ref = push(
        &registry,
        &unsigned_file,
        &registry.reference("models/versioned", ":unsigned"),
    );

    let server = server(
        &registry,
        &["--require-signatures", "--trusted-key", key.public.as_str()],
    );
    let (status, body) = deploy(&server, &signed_ref);
    assert_eq!(status, 201, "{body}");
    let (_, versions) = server.get("/v1/models/versioned/versions");
    assert!(
        versions["versions"][0]["signed_by"].is_string(),
        "{versions}"
    );
    assert_error(
        &deploy(&server, &unsigned_ref),
        422,
        "signature_missing",
        "",
    );
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(digest(&signed).as_str())
    );
    // `model pull` writes the signature beside the component.
    let out = dir.path().join("back.wasm");
    let pulled = riskhost(
        &registry,
        &[
            "model",
            "pull",
            &signed_ref,
            "--out",
            out.to_str().unwrap_or_default(),
        ],
    );
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert!(dir.path().join("back.wasm.sig").exists());
}

#[test]
fn bad_artifacts_and_registry_failures_are_refused_while_the_live_version_serves() {
    let mut registry = Registry::start();
    let dir = TempDir::new("oci-files");
    let live = with_custom_section(&test_model("a"), "live");
    let file = dir.path().join("versioned.wasm");
    std::fs::write(&file, &live).expect("write");
    let live_ref = push(
        &registry,
        &file,
        &registry.reference("models/versioned", ":live"),
    );
    let server = server(&registry, &["--max-component-mib", "1"]);
    assert_eq!(deploy(&server, &live_ref).0, 201);

    // Scoring runs throughout; not one request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, failures, base) = (stop.clone(), failures.clone(), server.base.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < 1_000_000 {
                sent += 1;
                let ok = client
                    .post(format!("{base}/v1/score"))
                    .json(&json!({"model": "versioned", "portfolio": {"id": "spx", "positions": [{"instrument": "SPX", "quantity": 10}]}, "params": {"offset": sent as f64}}))
                    .send()
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            sent
        })
    };

    // Unknown tag.
    assert_error(
        &deploy(&server, &registry.reference("models/versioned", ":nope")),
        404,
        "oci_not_found",
        "",
    );
    // Not a reference.
    assert_error(
        &deploy(&server, "oci://Not A Reference"),
        422,
        "invalid_oci_reference",
        "",
    );
    assert_error(
        &answer(
            admin_request(&server, TOKEN, reqwest::Method::PUT, "/v1/models/versioned")
                .json(&json!({"oci": 5}))
                .send(),
        ),
        422,
        "invalid_body",
        "",
    );
    // Not a component: a core module under the component media types.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\x00\x00\x00").expect("write");
    let core_tag = format!("{}/models/core:1", registry.host);
    oras(&[
        "push",
        &core_tag,
        core.to_str().unwrap_or_default(),
        "application/wasm",
        "application/vnd.wasm.config.v0+json",
    ]);
    assert_error(
        &deploy(&server, &format!("oci://{core_tag}")),
        422,
        "oci_not_a_component",
        "core",
    );
    // Over --max-component-mib: refused from the manifest, before the download.
    let big = dir.path().join("big.wasm");
    std::fs::write(
        &big,
        with_custom_section(&test_model("b"), &"x".repeat(2 << 20)),
    )
    .expect("write");
    let big_ref = push(
        &registry,
        &big,
        &registry.reference("models/versioned", ":big"),
    );
    assert_error(
        &deploy(&server, &big_ref),
        422,
        "oci_artifact_too_large",
        "--max-component-mib",
    );
    // A tampered layer: the registry's stored blob no longer matches its digest.
    let tampered = with_custom_section(&test_model("b"), "tampered");
    std::fs::write(&file, &tampered).expect("write");
    let tampered_ref = push(
        &registry,
        &file,
        &registry.reference("models/versioned", ":tampered"),
    );
    let blob = registry.blob_path(&digest(&tampered));
    let mut changed = std::fs::read(&blob).expect("blob");
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    std::fs::write(&blob, changed).expect("tamper");
    assert_error(
        &deploy(&server, &tampered_ref),
        422,
        "oci_digest_mismatch",
        "",
    );
    // The registry is down.
    registry.stop();
    assert_error(
        &deploy(&server, &live_ref),
        502,
        "oci_unreachable",
        &registry.host,
    );

    stop.store(true, Ordering::Relaxed);
    let sent = load.join().expect("load thread");
    assert!(sent > 10, "too little load: {sent}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "scoring failed during the refusals"
    );
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(digest(&live).as_str())
    );
    let metrics = server.get_text("/metrics");
    for result in [
        "ok",
        "oci_not_found",
        "oci_not_a_component",
        "oci_artifact_too_large",
        "oci_digest_mismatch",
        "oci_unreachable",
    ] {
        assert!(
            metrics.contains(&format!("riskhost_oci_pulls_total{{result=\"{result}\"}}")),
            "no pull counted as {result}"
        );
    }
}

#[test]
fn a_fleet_pulls_once_and_every_replica_serves_the_digest_from_postgresql() {
    use common::db::PgSchema;
    let mut registry = Registry::start();
    let dir = TempDir::new("oci-files");
    let file = dir.path().join("versioned.wasm");
    let bytes = with_custom_section(&test_model("b"), "fleet");
    std::fs::write(&file, &bytes).expect("write");
    let reference = push(
        &registry,
        &file,
        &registry.reference("models/versioned", ":fleet"),
    );
    let schema = PgSchema::new("oci_fleet");
    let fleet = |id: &str| {
        server(
            &registry,
            &[
                "--model-store",
                "postgres",
                "--postgres-url",
                &schema.url,
                "--postgres-schema",
                &schema.name,
                "--replica-id",
                id,
            ],
        )
    };
    let (a, b) = (fleet("a"), fleet("b"));
    let (status, body) = deploy(&a, &reference);
    assert_eq!(status, 201, "{body}");
    // The OCI registry is gone: b converges from the PostgreSQL copy.
    registry.stop();
    common::wait_until(
        "replica b to serve the pulled digest",
        std::time::Duration::from_secs(20),
        || active_digest(&b, "versioned").as_deref() == Some(digest(&bytes).as_str()),
    );
    let (_, versions) = b.get("/v1/models/versioned/versions");
    let source = versions["versions"][0]["source"]
        .as_str()
        .unwrap_or_default();
    assert!(
        source.starts_with(&format!("oci:{}", reference.trim_start_matches("oci://"))),
        "the registry records the digest reference: {source}"
    );
}

#[test]
fn registry_credentials_are_sent_and_a_refusal_is_a_clear_502() {
    let registry = Registry::start_authenticated("ci", "s3cret");
    let dir = TempDir::new("oci-files");
    let file = dir.path().join("versioned.wasm");
    std::fs::write(&file, with_custom_section(&test_model("a"), "auth")).expect("write");
    let reference = registry.reference("models/versioned", ":auth");
    let refused = riskhost(
        &registry,
        &[
            "model",
            "push",
            file.to_str().unwrap_or_default(),
            &reference,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refused access"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let pushed = riskhost(
        &registry,
        &[
            "model",
            "push",
            file.to_str().unwrap_or_default(),
            &reference,
            "--oci-username",
            "ci",
            "--oci-password",
            "s3cret",
        ],
    );
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let anonymous = server(&registry, &[]);
    assert_error(
        &deploy(&anonymous, &reference),
        502,
        "oci_unauthorized",
        &registry.host,
    );
    let with_credentials = server(
        &registry,
        &["--oci-username", "ci", "--oci-password", "s3cret"],
    );
    let (status, body) = deploy(&with_credentials, &reference);
    assert_eq!(status, 201, "{body}");
}
