//! A fleet sharing one model registry in PostgreSQL (`--model-store
//! postgres`, docs/fleet.md): every replica is a real `riskhost serve`
//! process with its own data dir, all on one schema of their own.
//!
//! Swaps under load through different replicas, a late replica, a
//! PostgreSQL outage (a dedicated cluster), a lost notification,
//! concurrent uploads, a purge, and `GET /v1/fleet`.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::db::{DedicatedPostgres, PgSchema, psql};
use common::{
    Server, TempDir, active_digest, admin_request, answer, assert_error, digest, put_model,
    rollback, wait_until, with_custom_section, workspace,
};
use serde_json::{Value, json};

const TOKEN: &str = "fleet-admin-token";

/// Version `tag` of the `versioned` test model: build `a` or `b` made
/// unique by a custom section.
fn version(build: &str, tag: &str) -> Vec<u8> {
    let path = workspace().join(format!("tests/plugins/dist/versioned-{build}.wasm"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run tests/plugins/build.sh", path.display()));
    with_custom_section(&bytes, tag)
}

fn spx() -> Value {
    json!({"id": "spx", "positions": [{"instrument": "SPX", "quantity": 10}]})
}

/// A replica of the registry in `schema` at `pg_url`, named `id`.
fn replica(pg_url: &str, schema: &str, id: &str, plugins: &TempDir, extra: &[&str]) -> Server {
    let mut args = vec![
        "--model-store",
        "postgres",
        "--postgres-url",
        pg_url,
        "--postgres-schema",
        schema,
        "--replica-id",
        id,
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
        "--registry-poll-ms",
        "1000",
        "--fleet-heartbeat-ms",
        "300",
        "--postgres-connect-timeout-ms",
        "1000",
        "--postgres-wait-timeout-ms",
        "1000",
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// Two replicas, `a` and `b`, on a schema of their own, with no plugins
/// (they read the directory only at start-up). Bound as `let (schema, a,
/// b)`, the replicas stop before the schema is dropped.
fn two_replicas(tag: &str) -> (PgSchema, Server, Server) {
    let schema = PgSchema::new(tag);
    let plugins = TempDir::new("fleet-plugins");
    let a = replica(&schema.url, &schema.name, "a", &plugins, &[]);
    let b = replica(&schema.url, &schema.name, "b", &plugins, &[]);
    (schema, a, b)
}

/// Waits until every replica serves `digest` as `versioned`; returns how
/// long the slowest took.
fn converge(replicas: &[&Server], digest: &str, since: Instant) -> Duration {
    let mut slowest = Duration::ZERO;
    for server in replicas {
        wait_until(
            &format!("{} to serve {digest}", server.base),
            Duration::from_secs(20),
            || active_digest(server, "versioned").as_deref() == Some(digest),
        );
        slowest = slowest.max(since.elapsed());
    }
    slowest
}

/// Clients scoring `versioned` on every replica until stopped; each answer
/// is recorded as (status, digest).
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(u16, String, String)>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(bases: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let offsets = Arc::new(AtomicU64::new(1));
        let workers = bases
            .iter()
            .map(|base| {
                let (stop, answers, offsets) = (stop.clone(), answers.clone(), offsets.clone());
                let url = format!("{base}/v1/score");
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    // Bounded: stops when told, or after this many requests.
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let offset = offsets.fetch_add(1, Ordering::Relaxed) as f64;
                        let (status, body) = answer(
                            client
                                .post(&url)
                                .json(&json!({"model": "versioned", "portfolio": spx(), "params": {"offset": offset}}))
                                .send(),
                        );
                        let digest = body["digest"].as_str().unwrap_or_default().to_owned();
                        if let Ok(mut a) = answers.lock() {
                            a.push((status, digest, body["error"].to_string()));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            workers,
        }
    }

    fn finish(self) -> Vec<(u16, String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("load thread panicked");
        }
        std::mem::take(&mut *self.answers.lock().expect("lock"))
    }
}

#[test]
fn three_replicas_follow_twenty_swaps_under_load_and_a_late_replica_starts_current() {
    let schema = PgSchema::new("fleet_swaps");
    let plugins = TempDir::new("fleet-plugins");
    let replicas: Vec<Server> = (0..3)
        .map(|i| replica(&schema.url, &schema.name, &format!("r{i}"), &plugins, &[]))
        .collect();
    let first = version("a", "fleet-0");
    let (status, body) = put_model(&replicas[0], TOKEN, "versioned", first.clone(), None);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["revision"], 1, "{body}");
    let all: Vec<&Server> = replicas.iter().collect();
    converge(&all, &digest(&first), Instant::now());

    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let load = Load::start(&bases);
    let mut known: HashSet<String> = HashSet::from([digest(&first)]);
    let mut slowest = Duration::ZERO;
    let mut revision = 1;
    for i in 1..=20 {
        let through = &replicas[i % 3];
        let started = Instant::now();
        let (status, body) = if i % 4 == 0 {
            rollback(through, TOKEN, "versioned", None)
        } else {
            let bytes = version(if i % 2 == 0 { "a" } else { "b" }, &format!("fleet-{i}"));
            known.insert(digest(&bytes));
            put_model(through, TOKEN, "versioned", bytes, None)
        };
        assert!(status == 200 || status == 201, "swap {i}: {status} {body}");
        let now = body["digest"].as_str().expect("digest").to_owned();
        assert_eq!(
            active_digest(through, "versioned").as_deref(),
            Some(now.as_str()),
            "the replica that answered serves what it answered"
        );
        revision += 1;
        assert_eq!(body["revision"], revision, "swap {i}: {body}");
        slowest = slowest.max(converge(&all, &now, started));
    }
    let answers = load.finish();
    eprintln!(
        "20 swaps under load: {} requests, slowest replica converged in {slowest:?}",
        answers.len()
    );
    let failed: Vec<_> = answers.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    assert!(answers.len() > 100, "too little load: {}", answers.len());
    for (_, d, _) in &answers {
        assert!(
            known.contains(d),
            "answered by a version never uploaded: {d}"
        );
    }

    // A replica started now serves the registry's version from its first
    // ready answer.
    let registry_digest = active_digest(&replicas[0], "versioned").expect("active");
    let late = replica(&schema.url, &schema.name, "r3-late", &plugins, &[]);
    assert_eq!(
        active_digest(&late, "versioned").as_deref(),
        Some(registry_digest.as_str())
    );

    // The fleet view: the registry's pointer and every replica serving it.
    wait_until(
        "four live replicas in /v1/fleet",
        Duration::from_secs(10),
        || {
            let (_, view) = late.get("/v1/fleet");
            view["replicas"].as_array().is_some_and(|r| {
                r.len() == 4
                    && r.iter().all(|replica| {
                        replica["stale"] == false
                            && replica["models"]["versioned"]["digest"] == registry_digest.as_str()
                    })
            })
        },
    );
    let (status, view) = late.get("/v1/fleet");
    assert_eq!(status, 200);
    assert_eq!(view["model_store"], "postgres");
    assert_eq!(view["registry_available"], true);
    assert_eq!(
        view["models"]["versioned"]["digest"],
        registry_digest.as_str()
    );
    assert_eq!(view["models"]["versioned"]["revision"], revision);
    let ids: Vec<&str> = view["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2", "r3-late"]);

    // The audit log names every change, its key and its replica.
    let (_, versions) = late.get("/v1/models/versioned/versions");
    let history = versions["history"].as_array().expect("history");
    assert_eq!(history.len(), 21, "{versions}");
    assert!(
        history
            .iter()
            .filter(|h| h["by"]
                .as_str()
                .is_some_and(|b| b.starts_with("rollback by admin via r")))
            .count()
            == 5,
        "{versions}"
    );
}

#[test]
fn concurrent_uploads_through_two_replicas_end_in_one_state_with_both_audited() {
    let (_schema, a, b) = two_replicas("fleet_race");
    let (one, two) = (version("a", "race-1"), version("b", "race-2"));
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| put_model(&a, TOKEN, "versioned", one.clone(), None));
        let second = s.spawn(|| put_model(&b, TOKEN, "versioned", two.clone(), None));
        (
            first.join().expect("upload a"),
            second.join().expect("upload b"),
        )
    });
    assert_eq!(first.0, 201, "{}", first.1);
    assert_eq!(second.0, 201, "{}", second.1);
    let mut revisions = [first.1["revision"].as_i64(), second.1["revision"].as_i64()];
    revisions.sort();
    assert_eq!(
        revisions,
        [Some(1), Some(2)],
        "the database serialised them"
    );
    let (_, view) = a.get("/v1/fleet");
    let winner = view["models"]["versioned"]["digest"]
        .as_str()
        .expect("registry digest")
        .to_owned();
    let last = if first.1["revision"] == 2 {
        &first.1
    } else {
        &second.1
    };
    assert_eq!(last["digest"], winner.as_str());
    converge(&[&a, &b], &winner, Instant::now());
    let (_, versions) = b.get("/v1/models/versioned/versions");
    let uploads: Vec<&Value> = versions["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| {
            h["by"]
                .as_str()
                .is_some_and(|b| b.starts_with("upload by admin"))
        })
        .collect();
    assert_eq!(uploads.len(), 2, "{versions}");
    let vias: HashSet<&str> = uploads
        .iter()
        .filter_map(|h| h["by"].as_str())
        .filter_map(|b| b.split(" via ").nth(1))
        .map(|v| v.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(vias, HashSet::from(["a", "b"]));
}

#[test]
fn a_purge_through_one_replica_unloads_the_model_everywhere() {
    let (_schema, a, b) = two_replicas("fleet_purge");
    let bytes = version("a", "purge");
    assert_eq!(
        put_model(&a, TOKEN, "versioned", bytes.clone(), None).0,
        201
    );
    converge(&[&a, &b], &digest(&bytes), Instant::now());
    let (status, body) = answer(
        admin_request(
            &b,
            TOKEN,
            reqwest::Method::DELETE,
            "/v1/models/versioned?purge=true",
        )
        .send(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["unloaded"]["digest"], digest(&bytes).as_str());
    wait_until("the purge on replica a", Duration::from_secs(10), || {
        active_digest(&a, "versioned").is_none()
    });
    let scored = a.post(
        "/v1/score",
        &json!({"model": "versioned", "portfolio": spx()}),
    );
    assert_error(&scored, 404, "unknown_model", "versioned");
    let pinned = a.post(
        "/v1/score",
        &json!({"model": format!("versioned@{}", digest(&bytes)), "portfolio": spx()}),
    );
    assert_eq!(
        pinned.0, 404,
        "a purged version cannot be pinned: {}",
        pinned.1
    );
    assert_error(
        &a.get("/v1/models/versioned/versions"),
        404,
        "unknown_model",
        "versioned",
    );
}

#[test]
fn without_notifications_the_poll_converges_within_its_period() {
    let schema = PgSchema::new("fleet_poll");
    let plugins = TempDir::new("fleet-plugins");
    let a = replica(&schema.url, &schema.name, "a", &plugins, &[]);
    // Polling every 1 s, never listening: only the poll can bring a change.
    // Replica ids name the listeners in pg_stat_activity, which every
    // test's PostgreSQL connections share: this one is the test's own.
    let b = replica(
        &schema.url,
        &schema.name,
        "poll-only-b",
        &plugins,
        &["--registry-listen=false"],
    );
    let listeners = psql(
        &schema.url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'riskhost-registry poll-only-b'",
    );
    assert_eq!(listeners.trim(), "0");
    let one = version("a", "poll-1");
    let started = Instant::now();
    assert_eq!(put_model(&a, TOKEN, "versioned", one.clone(), None).0, 201);
    converge(&[&b], &digest(&one), started);
    eprintln!("converged by the poll alone in {:?}", started.elapsed());
}

#[test]
fn a_killed_listener_reconnects_and_catches_up() {
    let schema = PgSchema::new("fleet_lost");
    let plugins = TempDir::new("fleet-plugins");
    let a = replica(&schema.url, &schema.name, "a", &plugins, &[]);
    // A replica id no other test uses: it names the listener to kill.
    let b = replica(
        &schema.url,
        &schema.name,
        "killed-listener-b",
        &plugins,
        &[],
    );
    let one = version("a", "lost-1");
    assert_eq!(put_model(&a, TOKEN, "versioned", one.clone(), None).0, 201);
    converge(&[&a, &b], &digest(&one), Instant::now());
    // Kill b's LISTEN connection, then change the registry at once: the
    // notification is lost on the dead connection.
    let killed = psql(
        &schema.url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'riskhost-registry killed-listener-b'",
    );
    assert_eq!(killed.trim(), "1", "b's listener connection: {killed}");
    let two = version("b", "lost-2");
    let started = Instant::now();
    assert_eq!(put_model(&a, TOKEN, "versioned", two.clone(), None).0, 201);
    // The listener reconnects and re-reads the registry (the poll would
    // too, within its 1 s period).
    converge(&[&b], &digest(&two), started);
    eprintln!(
        "converged after a lost notification in {:?}",
        started.elapsed()
    );
    wait_until("b's listener back", Duration::from_secs(10), || {
        psql(
            &schema.url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'riskhost-registry killed-listener-b'",
        )
        .trim()
            == "1"
    });
}

#[test]
fn a_postgres_outage_keeps_serving_refuses_admin_writes_and_converges_after() {
    let pg = DedicatedPostgres::start();
    let url = pg.url();
    let plugins = TempDir::new("fleet-plugins");
    let b_dir = TempDir::new("fleet-b");
    let b_data = format!("--data-dir={}", b_dir.path().display());
    let a = replica(&url, "fleet", "a", &plugins, &[]);
    let b = replica(&url, "fleet", "b", &plugins, &[&b_data]);
    let one = version("a", "outage-1");
    assert_eq!(put_model(&a, TOKEN, "versioned", one.clone(), None).0, 201);
    converge(&[&a, &b], &digest(&one), Instant::now());

    pg.stop();
    for server in [&a, &b] {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": "versioned", "portfolio": spx()}),
        );
        assert_eq!(status, 200, "serving goes on: {body}");
        assert_eq!(body["digest"], digest(&one).as_str());
    }
    let refused = put_model(&a, TOKEN, "versioned", version("b", "outage-2"), None);
    assert_error(&refused, 503, "registry_unavailable", "PostgreSQL");
    assert_error(
        &rollback(&b, TOKEN, "versioned", None),
        503,
        "registry_unavailable",
        "PostgreSQL",
    );
    let (status, view) = a.get("/v1/fleet");
    assert_eq!(status, 200);
    assert_eq!(view["registry_available"], false, "{view}");
    assert_eq!(view["models"], Value::Null);
    assert_eq!(view["replicas"][0]["id"], "a");
    assert_eq!(view["replicas"][0]["stale"], true);

    // A replica that starts while PostgreSQL is down serves what it last
    // applied, and says it is stale.
    drop(b);
    let b = replica(&url, "fleet", "b", &plugins, &[&b_data]);
    assert_eq!(
        active_digest(&b, "versioned").as_deref(),
        Some(digest(&one).as_str())
    );
    let (status, _) = b.get("/readyz");
    assert_eq!(status, 200, "a stale replica that serves is ready");
    assert_eq!(b.metric("riskhost_fleet_stale"), Some(1.0));

    pg.start_again();
    let two = version("b", "outage-2");
    let mut answer_two = (0, Value::Null);
    wait_until(
        "admin writes to work again",
        Duration::from_secs(20),
        || {
            answer_two = put_model(&a, TOKEN, "versioned", two.clone(), None);
            answer_two.0 == 201
        },
    );
    converge(&[&a, &b], &digest(&two), Instant::now());
    wait_until("b to be fresh again", Duration::from_secs(10), || {
        b.metric("riskhost_fleet_stale") == Some(0.0)
    });
}

#[test]
fn model_publish_ships_a_component_through_any_replica() {
    let (_schema, a, b) = two_replicas("fleet_publish");
    let dir = TempDir::new("fleet-publish");
    let file = dir.path().join("versioned.wasm");
    let bytes = version("b", "published");
    std::fs::write(&file, &bytes).expect("write");
    let publish = |token: &str| {
        std::process::Command::new(common::binary())
            .args(["model", "publish"])
            .arg(&file)
            .args(["--server", &b.base, "--token", token])
            .output()
            .expect("riskhost model publish")
    };
    let out = publish(TOKEN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    assert_eq!(answer["digest"], digest(&bytes).as_str(), "{answer}");
    assert_eq!(answer["revision"], 1);
    converge(&[&a, &b], &digest(&bytes), Instant::now());

    // A file that is not a model is refused before anything is sent.
    std::fs::write(&file, b"\0asm-not-a-component").expect("write");
    let out = publish(TOKEN);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not load, so it is not published"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong token is the server's 401, said plainly.
    std::fs::write(&file, &bytes).expect("write");
    let out = publish("admin.wrong");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_single_server_is_a_fleet_of_one() {
    let server = Server::start(&[]);
    let (status, view) = server.get("/v1/fleet");
    assert_eq!(status, 200);
    assert_eq!(view["model_store"], "local");
    assert_eq!(view["registry_available"], true);
    let digest = active_digest(&server, "var-historical").expect("served");
    assert_eq!(view["models"]["var-historical"]["digest"], digest.as_str());
    assert_eq!(view["models"]["var-historical"]["revision"], Value::Null);
    assert_eq!(view["replicas"].as_array().map(Vec::len), Some(1));
    assert_eq!(view["replicas"][0]["models"], view["models"]);
}

#[test]
fn the_plugins_directory_seeds_only_models_the_registry_never_held() {
    let schema = PgSchema::new("fleet_seed");
    let plugins = TempDir::new("fleet-seed");
    let seeded = version("a", "seeded");
    std::fs::write(plugins.path().join("versioned.wasm"), &seeded).expect("write");
    let a = replica(&schema.url, &schema.name, "a", &plugins, &[]);
    assert_eq!(
        active_digest(&a, "versioned").as_deref(),
        Some(digest(&seeded).as_str())
    );
    let (_, view) = a.get("/v1/fleet");
    assert_eq!(view["models"]["versioned"]["revision"], 1, "{view}");

    let newer = version("b", "uploaded");
    assert_eq!(
        put_model(&a, TOKEN, "versioned", newer.clone(), None).0,
        201
    );
    // A replica started from the same directory does not undo the upload.
    let b = replica(&schema.url, &schema.name, "b", &plugins, &[]);
    assert_eq!(
        active_digest(&b, "versioned").as_deref(),
        Some(digest(&newer).as_str())
    );
    let (_, view) = b.get("/v1/fleet");
    assert_eq!(view["models"]["versioned"]["revision"], 2, "{view}");
    let (_, versions) = b.get("/v1/models/versioned/versions");
    let history: Vec<&str> = versions["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["by"].as_str())
        .collect();
    assert_eq!(
        history,
        [
            "upload by plugins-dir via a (revision 1)",
            "upload by admin via a (revision 2)"
        ]
    );
}

#[test]
fn a_fleet_that_requires_signatures_takes_signed_versions_only() {
    let keys = TempDir::new("fleet-keys");
    let key = crate::signing::keygen(keys.path(), "publisher.key");
    let schema = PgSchema::new("fleet_signed");
    let plugins = TempDir::new("fleet-plugins");
    let flags = ["--require-signatures", "--trusted-key", key.public.as_str()];
    let a = replica(&schema.url, &schema.name, "a", &plugins, &flags);
    let b = replica(&schema.url, &schema.name, "b", &plugins, &flags);
    let file = keys.path().join("versioned.wasm");
    let signed = version("a", "signed");
    std::fs::write(&file, &signed).expect("write");
    crate::signing::sign(&file, &key, None);
    // `model publish` sends versioned.wasm.sig along; both replicas check it.
    let out = std::process::Command::new(common::binary())
        .args(["model", "publish"])
        .arg(&file)
        .args(["--server", &b.base, "--token", TOKEN])
        .output()
        .expect("riskhost model publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    converge(&[&a, &b], &digest(&signed), Instant::now());
    let (_, versions) = a.get("/v1/models/versioned/versions");
    assert!(
        versions["versions"][0]["signed_by"].is_string(),
        "{versions}"
    );

    let unsigned = put_model(&a, TOKEN, "versioned", version("b", "unsigned"), None);
    assert_error(&unsigned, 422, "signature_missing", "");
    let (_, view) = b.get("/v1/fleet");
    assert_eq!(
        view["models"]["versioned"]["revision"], 1,
        "nothing changed: {view}"
    );
    assert_eq!(
        view["models"]["versioned"]["digest"],
        digest(&signed).as_str()
    );
}

/// A challenger set through one replica is followed by every replica (each
/// scores its own live cells in its shadow and keeps its own evidence),
/// and stopping it through one replica stops it everywhere.
#[test]
fn a_challenger_set_through_one_replica_is_followed_by_every_replica() {
    let (_schema, a, b) = two_replicas("fleet_challenger");
    let (status, champion) = put_model(&a, TOKEN, "versioned", version("a", "champion"), None);
    assert_eq!(status, 201, "{champion}");
    let (status, challenger) = put_model(&a, TOKEN, "versioned", version("b", "challenger"), None);
    assert_eq!(status, 201, "{challenger}");
    let (status, back) = rollback(&a, TOKEN, "versioned", None);
    assert_eq!(status, 200, "{back}");
    let champion = champion["digest"].as_str().unwrap_or_default().to_owned();
    let challenger = challenger["digest"].as_str().unwrap_or_default().to_owned();
    converge(&[&a, &b], &champion, Instant::now());
    let request = |server: &Server, method: reqwest::Method, body: Option<Value>| {
        let r = admin_request(server, TOKEN, method, "/v1/models/versioned/challenger");
        answer(match body {
            Some(body) => r.json(&body).send(),
            None => r.send(),
        })
    };
    let (status, set) = request(
        &a,
        reqwest::Method::PUT,
        Some(json!({"version": challenger, "sample": 1.0})),
    );
    assert_eq!(status, 200, "{set}");
    wait_until(
        "replica b follows the challenger",
        Duration::from_secs(20),
        || request(&b, reqwest::Method::GET, None).1["digest"] == challenger.as_str(),
    );
    for quantity in 1..=5 {
        let (status, live) = b.post(
            "/v1/score",
            &json!({"model": "versioned", "portfolio": {"positions": [{"instrument": "SPX", "quantity": quantity}]}}),
        );
        assert_eq!(status, 200, "{live}");
        assert_eq!(live["digest"], champion.as_str(), "the champion answers");
    }
    wait_until(
        "replica b compared its cells",
        Duration::from_secs(30),
        || request(&b, reqwest::Method::GET, None).1["compared"] == 5,
    );
    let (_, evidence) = request(&b, reqwest::Method::GET, None);
    assert_eq!(evidence["diverged"], 5, "build B doubles A: {evidence}");
    assert_eq!(
        request(&a, reqwest::Method::GET, None).1["compared"],
        0,
        "each replica keeps its own evidence"
    );
    let (status, stopped) = request(&a, reqwest::Method::DELETE, None);
    assert_eq!(status, 200, "{stopped}");
    wait_until(
        "replica b stops the challenger",
        Duration::from_secs(20),
        || request(&b, reqwest::Method::GET, None).0 == 404,
    );
}
