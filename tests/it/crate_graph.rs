//! The crate graph holds ARCHITECTURE.md to its word: dependencies point
//! downward only, HTTP stays in the outermost crates, the engine does no
//! I/O, and clap and anyhow stay at the edges. Read from `cargo metadata`,
//! so a new dependency that breaks a rule fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each riskhost crate and the riskhost crates it may depend on.
const LAYERS: &[(&str, &[&str])] = &[
    ("riskhost-engine", &[]),
    ("riskhost-db", &[]),
    ("riskhost-market", &["riskhost-db"]),
    ("riskhost-cache", &["riskhost-engine", "riskhost-market"]),
    ("riskhost-models", &["riskhost-engine"]),
    (
        "riskhost-fleet",
        &["riskhost-db", "riskhost-engine", "riskhost-models"],
    ),
    ("riskhost-events", &["riskhost-db"]),
    ("riskhost-backtest", &[]),
    ("riskhost-oci", &[]),
    (
        "riskhost-scoring",
        &[
            "riskhost-backtest",
            "riskhost-engine",
            "riskhost-models",
            "riskhost-market",
            "riskhost-cache",
            "riskhost-events",
        ],
    ),
    ("riskhost-auth", &["riskhost-db"]),
    (
        "riskhost-runs",
        &["riskhost-scoring", "riskhost-models", "riskhost-db"],
    ),
    (
        "riskhost-http",
        &[
            "riskhost-engine",
            "riskhost-models",
            "riskhost-cache",
            "riskhost-events",
            "riskhost-scoring",
            "riskhost-auth",
            "riskhost-backtest",
            "riskhost-oci",
            "riskhost-runs",
        ],
    ),
];

/// Only these may depend on the HTTP stack.
const HTTP_CRATES: &[&str] = &["axum", "axum-core", "tower-http", "utoipa", "utoipa-axum"];
/// Crates that do I/O the engine must never reach, even transitively.
const IO_CRATES: &[&str] = &[
    "tokio-postgres",
    "deadpool-postgres",
    "redis",
    "clickhouse",
    "axum",
    "hyper",
    "reqwest",
    "tower-http",
    "notify",
];
/// Edge crates: the command line and untyped errors belong to the binary.
const EDGE_CRATES: &[&str] = &["clap", "anyhow"];

struct Package {
    id: String,
    /// Declared normal (non-dev, non-build) dependencies: name → optional.
    deps: BTreeMap<String, bool>,
    /// Feature name → what it enables.
    features: BTreeMap<String, Vec<String>>,
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

fn workspace_packages(meta: &Value) -> BTreeMap<String, Package> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut packages = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let id = p["id"].as_str().unwrap_or_default();
        if !members.contains(id) {
            continue;
        }
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| {
                (
                    d["name"].as_str().unwrap_or_default().to_owned(),
                    d["optional"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let features = p["features"]
            .as_object()
            .map(|f| {
                f.iter()
                    .map(|(k, v)| {
                        let enables = v
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_owned)
                                    .collect()
                            })
                            .unwrap_or_default();
                        (k.clone(), enables)
                    })
                    .collect()
            })
            .unwrap_or_default();
        packages.insert(
            p["name"].as_str().unwrap_or_default().to_owned(),
            Package {
                id: id.to_owned(),
                deps,
                features,
            },
        );
    }
    packages
}

#[test]
fn every_layer_depends_only_downward() {
    let packages = workspace_packages(&metadata());
    for (name, allowed) in LAYERS {
        let package = packages
            .get(*name)
            .unwrap_or_else(|| panic!("{name} is not a workspace member"));
        for dep in package.deps.keys().filter(|d| d.starts_with("riskhost-")) {
            assert!(
                allowed.contains(&dep.as_str()) || dep == "riskhost-sdk",
                "{name} depends on {dep}, which is not below it (ARCHITECTURE.md's crate graph)"
            );
        }
    }
    let layered: BTreeSet<&str> = LAYERS.iter().map(|(n, _)| *n).collect();
    for name in packages.keys().filter(|n| n.starts_with("riskhost-")) {
        let edge = ["riskhost-sdk", "riskhost-bench"].contains(&name.as_str());
        assert!(
            edge || layered.contains(name.as_str()),
            "{name} has no place in the crate graph: add it to LAYERS and ARCHITECTURE.md"
        );
    }
}

#[test]
fn only_http_and_the_binary_know_http() {
    let packages = workspace_packages(&metadata());
    for (name, _) in LAYERS.iter().filter(|(n, _)| *n != "riskhost-http") {
        let package = &packages[*name];
        for (dep, optional) in &package.deps {
            if !HTTP_CRATES.contains(&dep.as_str()) {
                continue;
            }
            assert!(
                *optional && dep == "utoipa",
                "{name} depends on {dep}: only riskhost-http (and the binary) may"
            );
            // The schema derives are reachable only through the `schema` feature.
            for (feature, enables) in &package.features {
                if enables.iter().any(|e| e == "dep:utoipa") {
                    assert_eq!(
                        feature, "schema",
                        "{name} enables utoipa from feature `{feature}`; only `schema` may"
                    );
                }
            }
        }
    }
}

#[test]
fn clap_and_anyhow_stay_at_the_edges() {
    let packages = workspace_packages(&metadata());
    for (name, _) in LAYERS {
        for dep in packages[*name].deps.keys() {
            assert!(
                !EDGE_CRATES.contains(&dep.as_str()),
                "{name} depends on {dep}: settings are plain structs and errors are typed below the binary"
            );
        }
    }
}

#[test]
fn the_engine_reaches_no_io_crate() {
    let meta = metadata();
    let packages = workspace_packages(&meta);
    let engine = &packages["riskhost-engine"];
    // The resolve graph unifies features over the workspace, so start from
    // the engine's non-optional dependencies and walk only normal edges.
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|n| (n["id"].as_str().unwrap_or_default(), n))
        .collect();
    let name_of = |id: &str| -> String {
        meta["packages"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == id))
            .and_then(|p| p["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let normal_deps = |id: &str| -> Vec<(String, String)> {
        nodes[id]["deps"]
            .as_array()
            .map(|deps| {
                deps.iter()
                    .filter(|d| {
                        d["dep_kinds"]
                            .as_array()
                            .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()))
                    })
                    .map(|d| {
                        let pkg = d["pkg"].as_str().unwrap_or_default().to_owned();
                        (name_of(&pkg), pkg)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut stack: Vec<(String, Vec<String>)> = normal_deps(&engine.id)
        .into_iter()
        .filter(|(name, _)| engine.deps.get(name) == Some(&false))
        .map(|(name, id)| (id, vec![name]))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some((id, path)) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let name = path.last().cloned().unwrap_or_default();
        assert!(
            !IO_CRATES.contains(&name.as_str()),
            "riskhost-engine reaches {name} through {}: the engine does no I/O",
            path.join(" → ")
        );
        for (dep_name, dep_id) in normal_deps(&id) {
            let mut next = path.clone();
            next.push(dep_name);
            stack.push((dep_id, next));
        }
    }
    assert!(
        seen.len() > 10,
        "the walk saw only {} crates: the metadata was not read right",
        seen.len()
    );
}
