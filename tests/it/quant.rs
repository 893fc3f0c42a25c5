//! The quant's loop, end to end, exactly as `docs/first-model.md` tells it:
//! `riskhost new` (Rust and Python), build, `riskhost model inspect`,
//! `riskhost model test`, then serve the new models over HTTP. Also what
//! `model test` tells a quant when a model is broken.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Server, TempDir, binary, workspace};
use serde_json::{Value, json};

/// Runs a command in `dir`; returns its output, failing with both streams
/// when its exit status is not the expected one.
#[track_caller]
fn run(dir: &Path, program: &str, args: &[&str], expect_success: bool) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        // Scaffolded Rust projects share the repository's compiled crates.
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert_eq!(
        output.status.success(),
        expect_success,
        "{program} {args:?} in {}: {}\n--- stdout\n{}\n--- stderr\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// `riskhost ARGS` in `dir`.
#[track_caller]
fn riskhost(dir: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&run(dir, &binary(), args, true).stdout).into_owned()
}

/// `riskhost ARGS` in `dir`, expected to fail; returns stdout and stderr.
#[track_caller]
fn riskhost_fails(dir: &Path, args: &[&str]) -> String {
    let output = run(dir, &binary(), args, false);
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The guide's steps for one language, up to a tested component; returns
/// the component's path.
fn create_build_and_test(work: &Path, name: &str, lang: &str) -> PathBuf {
    // 1. Create the project.
    let created = riskhost(work, &["new", name, "--lang", lang]);
    assert!(created.contains(&format!("model `{name}`")), "{created}");
    let project = work.join(name);
    assert!(project.join("portfolio.json").is_file());

    // 2. Build it (the Rust project also runs its native unit test first).
    if lang == "rust" {
        let tested = run(&project, "cargo", &["test", "--quiet"], true);
        let out = String::from_utf8_lossy(&tested.stdout);
        assert!(out.contains("1 passed"), "{out}");
    }
    let built = run(&project, "./build.sh", &[], true);
    let wasm = project.join(format!("dist/{name}.wasm"));
    assert!(wasm.is_file(), "{}", String::from_utf8_lossy(&built.stderr));
    let dist_wasm = format!("dist/{name}.wasm");

    // 3. Inspect it: what it declares, and that it loads as the server loads it.
    let inspected = riskhost(&project, &["model", "inspect", &dist_wasm]);
    assert!(
        inspected.contains(&format!("name       {name}")),
        "{inspected}"
    );
    assert!(inspected.contains("confidence"), "{inspected}");
    assert!(inspected.contains("valid      yes"), "{inspected}");
    let json: Value = serde_json::from_str(&riskhost(
        &project,
        &["model", "inspect", &dist_wasm, "--json"],
    ))
    .expect("inspect --json is JSON");
    assert_eq!(json["valid"], true);
    assert_eq!(json["info"]["name"], name);
    assert!(
        json["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let exports: Vec<&str> = json["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        exports.contains(&"info") && exports.contains(&"score-batch"),
        "{exports:?}"
    );

    // 4. Test it: the bundled sample portfolios, then its own portfolio.
    let tested = riskhost(&project, &["model", "test", &dist_wasm, "--repeat", "3"]);
    assert!(tested.contains("5 portfolios passed, 0 failed"), "{tested}");
    let own = riskhost(
        &project,
        &[
            "model",
            "test",
            &dist_wasm,
            "--portfolio",
            "portfolio.json",
            "--param",
            "confidence=0.975",
            "--repeat",
            "3",
        ],
    );
    assert!(own.contains("1 portfolio passed, 0 failed"), "{own}");
    assert!(own.contains("confidence=0.975"), "{own}");
    wasm
}

#[test]
fn a_new_rust_and_a_new_python_model_build_pass_their_tests_and_serve() {
    let work = TempDir::new("quant");
    let rust = create_build_and_test(work.path(), "my-var", "rust");
    let python = create_build_and_test(work.path(), "my-var-py", "python");

    // 5. Ship: drop both components into a plugins folder and serve it.
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir plugins");
    for wasm in [&rust, &python] {
        let file = wasm.file_name().expect("file name");
        std::fs::copy(wasm, plugins.join(file)).expect("copy component");
    }
    let server = Server::start_with(&["--plugins", plugins.to_str().expect("utf-8 path")]);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["failures"], json!([]), "{models}");
    let score = |model: &str| {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": model, "portfolio": {"id": "balanced"}, "params": {"confidence": 0.975}}),
        );
        assert_eq!(status, 200, "{model}: {body}");
        body
    };
    let (from_rust, from_python) = (score("my-var"), score("my-var-py"));
    // The two templates are the same historical VaR, computed the same way.
    let (r, p) = (
        from_rust["value"].as_f64().expect("value"),
        from_python["value"].as_f64().expect("value"),
    );
    assert!(r > 0.0, "a 97.5% VaR of a long portfolio is a loss: {r}");
    assert!((r - p).abs() <= 1e-9 * r.abs(), "Rust {r}, Python {p}");
    assert_eq!(from_rust["breakdown"].as_array().map(Vec::len), Some(8));
    let sum: f64 = from_python["breakdown"]
        .as_array()
        .expect("breakdown")
        .iter()
        .filter_map(|c| c["value"].as_f64())
        .sum();
    assert!((sum - p).abs() <= 1e-9 * p.abs(), "breakdown {sum} vs {p}");
}

fn test_model(name: &str) -> String {
    let path = workspace()
        .join("tests/plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run tests/plugins/build.sh (tests/run.sh does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

#[test]
fn model_test_tells_a_quant_what_is_wrong() {
    let here = workspace();
    let faulty = test_model("quant-faulty");
    let spx = here.join("examples/portfolios/single-spx.json");
    let spx = spx.to_str().expect("utf-8 path");

    // A model that passes.
    let ok = riskhost(&here, &["model", "test", &faulty, "--repeat", "2"]);
    assert!(ok.contains("5 portfolios passed, 0 failed"), "{ok}");
    assert!(ok.contains("peak memory"), "{ok}");

    // A panic: where, and the model's own message.
    let out = riskhost_fails(
        &here,
        &[
            "model",
            "test",
            &faulty,
            "--portfolio",
            spx,
            "--param",
            "fault=1",
        ],
    );
    assert!(out.contains("[model_trap]"), "{out}");
    assert!(
        out.contains("panicked at tests/plugins/quant-faulty/src/lib.rs:"),
        "{out}"
    );
    assert!(
        out.contains("covariance matrix is not positive definite for SPX"),
        "{out}"
    );

    // The model's own insufficient-data error, naming the instrument.
    let out = riskhost_fails(
        &here,
        &[
            "model",
            "test",
            &faulty,
            "--portfolio",
            spx,
            "--param",
            "fault=2",
        ],
    );
    assert!(
        out.contains("[insufficient_data] quant-faulty has insufficient data: SPX has no implied volatility surface"),
        "{out}"
    );

    // A parameter out of bounds: which one, and the bounds.
    let out = riskhost_fails(&here, &["model", "test", &faulty, "--param", "fault=9"]);
    assert!(
        out.contains("parameter `fault` = 9 is out of bounds [0, 4]"),
        "{out}"
    );

    // An instrument the data does not have: which one.
    let work = TempDir::new("quant-errors");
    let unknown = work.path().join("unknown.json");
    std::fs::write(
        &unknown,
        r#"{"id": "u", "positions": [{"instrument": "SPX", "quantity": 1}, {"instrument": "NOPE", "quantity": 2}]}"#,
    )
    .expect("write portfolio");
    let out = riskhost_fails(
        &here,
        &[
            "model",
            "test",
            &faulty,
            "--portfolio",
            unknown.to_str().expect("utf-8"),
        ],
    );
    assert!(out.contains("[unknown_instrument]"), "{out}");
    assert!(out.contains("NOPE"), "{out}");

    // A score that depends on the other jobs of its call.
    let out = riskhost_fails(&here, &["model", "test", &faulty, "--param", "fault=3"]);
    assert!(out.contains("depends on its company"), "{out}");

    // A missing export: which one; inspect fails too, and says it in JSON.
    let info_only = test_model("quant-info-only");
    let out = riskhost_fails(&here, &["model", "test", &info_only]);
    assert!(out.contains("no export `score-batch`"), "{out}");
    assert!(out.contains("does not load"), "{out}");
    let out = riskhost_fails(&here, &["model", "inspect", &info_only]);
    assert!(out.contains("valid      NO:"), "{out}");
    assert!(out.contains("exports    info\n"), "{out}");
    let output = run(
        &here,
        &binary(),
        &["model", "inspect", &info_only, "--json"],
        false,
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("inspect --json is JSON");
    assert_eq!(json["valid"], false);
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("must export `info` and `score-batch`")),
        "{json}"
    );

    // Not WebAssembly at all.
    let junk = work.path().join("junk.wasm");
    std::fs::write(&junk, "not a component").expect("write junk");
    let out = riskhost_fails(&here, &["model", "test", junk.to_str().expect("utf-8")]);
    assert!(out.contains("WebAssembly magic bytes"), "{out}");
}

#[test]
fn inspect_flags_the_imports_the_sandbox_denies_or_virtualises() {
    let here = workspace();
    let python = here.join("examples/python/dist/var-parametric-py.wasm");
    assert!(
        python.is_file(),
        "{} is missing: run examples/python/build.sh (tests/run.sh does)",
        python.display()
    );
    let json: Value = serde_json::from_str(&riskhost(
        &here,
        &[
            "model",
            "inspect",
            python.to_str().expect("utf-8"),
            "--json",
        ],
    ))
    .expect("JSON");
    assert_eq!(json["valid"], true, "{json}");
    assert_eq!(json["info"]["name"], "var-parametric-py");
    let treatment = |prefix: &str| -> Vec<String> {
        json["imports"]
            .as_array()
            .expect("imports")
            .iter()
            .filter(|i| i["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .map(|i| i["treatment"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // componentize-py imports all of WASI 0.2; the sandbox links all of it.
    for (prefix, expected) in [
        ("wasi:sockets/", "denied"),
        ("wasi:filesystem/", "virtualised"),
        ("wasi:random/", "virtualised"),
        ("wasi:clocks/", "virtualised"),
    ] {
        let found = treatment(prefix);
        assert!(!found.is_empty(), "no {prefix} import in {json}");
        assert!(found.iter().all(|t| t == expected), "{prefix}: {found:?}");
    }
    assert!(
        json["imports"]
            .as_array()
            .expect("imports")
            .iter()
            .all(|i| i["treatment"] != "unsupported"),
        "{json}"
    );
}

/// The guide's measurement command (on the Rust model: the Python one only
/// takes longer) reports the cost of single and batched calls.
#[test]
fn model_test_measures_single_and_batched_calls() {
    let here = workspace();
    let model = common::plugins_dir().join("var-parametric.wasm");
    let model = model.to_str().expect("utf-8 path");
    let args = [
        "model",
        "test",
        model,
        "--portfolio",
        "examples/python/twenty.json",
        "--batch",
        "100",
        "--repeat",
        "40",
    ];
    let text = riskhost(&here, &args);
    assert!(text.contains("ok   twenty"), "{text}");
    assert!(text.contains("(20 positions)"), "{text}");
    assert!(text.contains("batch of 100:"), "{text}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let report: Value = serde_json::from_str(&riskhost(&here, &json_args)).expect("JSON");
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(0))
    );
    let timing = &report["portfolios"][0]["timing"];
    assert_eq!(timing["calls"], 40);
    assert_eq!(timing["batch"]["jobs"], 100);
    let (single, batch) = (
        timing["median_us"].as_f64().expect("median"),
        timing["batch"]["median_us"].as_f64().expect("batch median"),
    );
    assert!(single > 0.0 && batch > 0.0, "{timing}");
    let per_job = timing["batch"]["per_job_us"].as_f64().expect("per job");
    assert!((per_job * 100.0 - batch).abs() <= 1e-6 * batch, "{timing}");
    // An instance's linear memory is at least one 64 KiB page.
    assert!(
        timing["peak_memory_bytes"]
            .as_u64()
            .is_some_and(|b| b >= 65536),
        "{timing}"
    );
}
