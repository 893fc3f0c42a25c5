//! Scenario 15 (issue 20): riskhost against the platform it replaces — a
//! Python FastAPI + NumPy historical VaR service whose answers a
//! `@cache_result` decorator caches in Redis (GET, on a miss compute and
//! SETEX), served by 2 uvicorn workers. The reference lives in
//! `examples/bench/reference-fastapi/` (`app.py`, pinned `requirements.txt`);
//! this scenario installs it from PyPI into a venv of its own under
//! `~/.cache/riskhost/` (reused while `requirements.txt` is unchanged),
//! writes riskhost's embedded sample price table to a CSV for it, checks that
//! both answer the same VaR, then loads both the same way: 64 connections in
//! a closed loop, a fixed body (riskhost L1 hit vs a Redis hit) and a new
//! portfolio per request (a model call vs a NumPy computation, each followed
//! by a Redis write).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::Method;

use super::http::{Tiers, measure, median};
use super::{Context, load_row, ratio, score_body};
use crate::loadgen::{Outcome, Target};
use crate::report::{Row, number};
use crate::service::{Redis, Scratch, free_port};

const SCENARIO: &str = "riskhost vs the platform it replaces";
const MODEL: &str = "var-historical";
/// The first quantity of the fresh bodies, far from the fixed body's 10.
const UNIQUE_FROM: u64 = 1_000_000;
const CONNECTIONS: usize = 64;
/// uvicorn worker processes, as the old platform ran.
const WORKERS: usize = 2;
/// The reference service, relative to the workspace root.
const REFERENCE_DIR: &str = "examples/bench/reference-fastapi";
/// Redis key prefixes: the two services share the bench's private Redis.
const RISKHOST_PREFIX: &str = "bench-platform";
const FASTAPI_PREFIX: &str = "bench-fastapi:";
/// The agreement required of the two VaR values (relative).
const TOLERANCE: f64 = 1e-9;
/// Goals of issue 20: riskhost's throughput over the FastAPI reference's.
const CACHED_GOAL: f64 = 10.0;
const UNCACHED_GOAL: f64 = 5.0;

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let reference_dir = ctx.root.join(REFERENCE_DIR);
    let python = venv(&reference_dir)?;
    let redis = Redis::start()?;
    let data = Scratch::new("platform")?;

    // The price table riskhost serves by default, for the Python side.
    let prices = data.join("prices.csv");
    let file = std::fs::File::create(&prices)
        .with_context(|| format!("cannot create {}", prices.display()))?;
    riskhost_market::sample_table()
        .write_csv(file)
        .with_context(|| format!("cannot write the sample prices to {}", prices.display()))?;

    let dist = ctx.dist_arg();
    let args = [
        "--plugins",
        dist.as_str(),
        "--watch",
        "false",
        "--redis-url",
        redis.url.as_str(),
        "--redis-prefix",
        RISKHOST_PREFIX,
    ];
    let riskhost = ctx.host.serve(&data.join("riskhost"), &args)?;
    let fastapi = FastApi::start(&python, &reference_dir, &prices, &redis.url, &data)?;
    let post_fastapi = |body: Bytes| -> anyhow::Result<Bytes> {
        let (status, answer) = ctx.rt.block_on(crate::loadgen::request(
            fastapi.addr,
            Method::POST,
            "/v1/score",
            body,
        ))?;
        if status != 200 {
            bail!(
                "FastAPI reference: POST /v1/score: HTTP {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
        }
        Ok(answer)
    };

    // Same answer before any timing: the fixed body (computed, then cached
    // by both) and one with every parameter set.
    let fixed = score_body(MODEL, 10);
    let with_params = Bytes::from(
        r#"{"model":"var-historical","portfolio":{"positions":[{"instrument":"SPX","quantity":-7},{"instrument":"NKY","quantity":3},{"instrument":"BTCUSD","quantity":2}]},"params":{"confidence":0.975,"horizon_days":10,"lookback_days":500}}"#,
    );
    for body in [&fixed, &with_params, &fixed] {
        let ours = riskhost.post_ok("/v1/score", body.clone())?;
        let theirs = post_fastapi(body.clone())?;
        agree(&ours, &theirs).with_context(|| {
            format!(
                "the FastAPI reference disagrees with riskhost on {}",
                String::from_utf8_lossy(body)
            )
        })?;
    }

    let unique =
        || -> crate::loadgen::BodyFn { Arc::new(|n: u64| score_body(MODEL, UNIQUE_FROM + n)) };
    let tiers = Arc::new(Tiers::default());
    let plan = ctx.load.closed(CONNECTIONS);
    let redis_port = port_of(&redis.url)?;
    let fastapi_counts = |outcome: &Outcome, before: (u64, u64)| -> anyhow::Result<String> {
        let after = redis_hits_misses(redis_port)?;
        Ok(format!(
            "Redis (warm-up included): {} GET hits, {} GET misses; {} workers",
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
            WORKERS
        ) + if outcome.errors > 0 { " (errors!)" } else { "" })
    };

    let hit = measure(
        ctx,
        &tiers.counting(Target::post_fixed(
            riskhost.addr,
            "/v1/score",
            fixed.clone(),
        )),
        plan,
    )?;
    let hit_tiers = tiers.take();
    let before = redis_hits_misses(redis_port)?;
    let cached = measure(
        ctx,
        &Target::post_fixed(fastapi.addr, "/v1/score", fixed.clone()),
        plan,
    )?;
    let cached_counts = fastapi_counts(&cached, before)?;
    let miss = measure(
        ctx,
        &tiers.counting(Target::post(riskhost.addr, "/v1/score", unique())),
        plan,
    )?;
    let miss_tiers = tiers.take();
    let before = redis_hits_misses(redis_port)?;
    let uncached = measure(
        ctx,
        &Target::post(fastapi.addr, "/v1/score", unique()),
        plan,
    )?;
    let uncached_counts = fastapi_counts(&uncached, before)?;
    drop((riskhost, fastapi));

    let versus = |ours: &Outcome, theirs: &Outcome, what: &str| -> (f64, String) {
        let (a, b) = (median(&ours.throughput), median(&theirs.throughput));
        let text = format!(
            "{} FastAPI {what} ({} req/s) · p99 {} ms vs {} ms",
            ratio(a, b),
            number(b),
            number(ours.ms(0.99)),
            number(theirs.ms(0.99)),
        );
        (if b > 0.0 { a / b } else { 0.0 }, text)
    };
    let conns = format!("{CONNECTIONS} conns");
    let platform =
        |outcome: &Outcome| format!("1.00× (the platform; p99 {} ms)", number(outcome.ms(0.99)));
    let with = |row: Row, extra: String| {
        let note = format!("{} · {extra}", row.note);
        row.note(note)
    };

    let (x, text) = versus(&hit, &cached, "cached");
    let hit_row = load_row(
        SCENARIO,
        format!("riskhost: L1 hit (fixed body) · {conns}"),
        &hit,
    )
    .reference(text)
    .goal(
        &format!("≥ {CACHED_GOAL}× FastAPI cached, 0 errors"),
        x >= CACHED_GOAL && hit.errors == 0,
    );
    let (x, text) = versus(&miss, &uncached, "uncached");
    let miss_row = load_row(
        SCENARIO,
        format!("riskhost: miss (model call + Redis SET, a new portfolio per request) · {conns}"),
        &miss,
    )
    .reference(text)
    .goal(
        &format!("≥ {UNCACHED_GOAL}× FastAPI uncached, 0 errors"),
        x >= UNCACHED_GOAL && miss.errors == 0,
    );
    Ok(vec![
        with(hit_row, hit_tiers),
        with(
            load_row(
                SCENARIO,
                format!(
                    "FastAPI + NumPy, {WORKERS} uvicorn workers: cached (Redis GET hit, fixed body) · {conns}"
                ),
                &cached,
            )
            .reference(platform(&cached)),
            cached_counts,
        ),
        with(miss_row, miss_tiers),
        with(
            load_row(
                SCENARIO,
                format!(
                    "FastAPI + NumPy, {WORKERS} uvicorn workers: uncached (NumPy VaR + SETEX, the same new portfolios) · {conns}"
                ),
                &uncached,
            )
            .reference(platform(&uncached)),
            uncached_counts,
        ),
    ])
}

/// Checks that two score answers carry the same `as_of` and a `value`
/// equal within [`TOLERANCE`] (relative).
fn agree(ours: &[u8], theirs: &[u8]) -> anyhow::Result<()> {
    let field = |answer: &[u8], who: &str| -> anyhow::Result<(f64, String)> {
        let json: serde_json::Value =
            serde_json::from_slice(answer).with_context(|| format!("{who} answered no JSON"))?;
        let value = json
            .get("value")
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("{who} answered no numeric `value`: {json}"))?;
        let as_of = json
            .get("as_of")
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("{who} answered no `as_of`: {json}"))?;
        Ok((value, as_of.to_owned()))
    };
    let (a, a_date) = field(ours, "riskhost")?;
    let (b, b_date) = field(theirs, "the FastAPI reference")?;
    if a_date != b_date {
        bail!("as_of {a_date} (riskhost) vs {b_date} (FastAPI)");
    }
    // Written so that a NaN on either side fails.
    let close = (a - b).abs() <= TOLERANCE * a.abs().max(b.abs());
    if !close {
        bail!(
            "VaR {a} (riskhost) vs {b} (FastAPI): relative difference {:e} > {TOLERANCE:e}",
            (a - b).abs() / a.abs().max(b.abs())
        );
    }
    Ok(())
}

/// The port of a `redis://127.0.0.1:PORT/` URL.
fn port_of(url: &str) -> anyhow::Result<u16> {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in the Redis URL {url}"))
}

/// `keyspace_hits` and `keyspace_misses` of the Redis on `port` (`INFO
/// stats` over RESP): what the FastAPI reference's cache lookups found.
fn redis_hits_misses(port: u16) -> anyhow::Result<(u64, u64)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to Redis on port {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let len: usize = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected reply to INFO stats: {header:?}"))?;
    let mut info = vec![0; len];
    reader.read_exact(&mut info)?;
    let info = String::from_utf8_lossy(&info);
    let stat = |name: &str| -> anyhow::Result<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in Redis INFO stats"))
    };
    Ok((stat("keyspace_hits")?, stat("keyspace_misses")?))
}

/// The Python of the reference's venv, `~/.cache/riskhost/bench-fastapi-
/// <hash of requirements.txt>/bin/python`; creates the venv (`python3 -m
/// venv`, `pip install -r requirements.txt`) unless a complete one exists.
fn venv(reference_dir: &Path) -> anyhow::Result<PathBuf> {
    let requirements = reference_dir.join("requirements.txt");
    let pinned = std::fs::read(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let home = std::env::var_os("HOME")
        .context("HOME is not set: the FastAPI reference's venv goes under ~/.cache/riskhost/")?;
    let dir = PathBuf::from(home)
        .join(".cache/riskhost")
        .join(format!("bench-fastapi-{:016x}", fnv1a(&pinned)));
    let python = dir.join("bin/python");
    // Written last, so an interrupted install is redone rather than reused.
    let complete = dir.join(".riskhost-bench-complete");
    if complete.exists() {
        return Ok(python);
    }
    let version = Command::new("python3")
        .arg("--version")
        .output()
        .context("cannot run python3: the FastAPI reference needs Python 3 with its venv module (apt-get install python3 python3-venv)")?;
    if !version.status.success() {
        bail!("python3 --version failed ({})", version.status);
    }
    eprintln!(
        "  creating the FastAPI reference's venv in {} ({}, packages from {}) …",
        dir.display(),
        String::from_utf8_lossy(&version.stdout).trim(),
        requirements.display()
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the incomplete venv {}", dir.display()))?;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .stdout(Stdio::null())
        .output()
        .context("cannot run python3 -m venv")?;
    if !made.status.success() {
        bail!(
            "python3 -m venv {} failed ({}): python3 without its venv module? (apt-get install python3-venv)\n{}",
            dir.display(),
            made.status,
            String::from_utf8_lossy(&made.stderr).trim()
        );
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--only-binary", ":all:", "-r"])
        .arg(&requirements)
        // Keep stdout for the table.
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot run {} -m pip", python.display()))?;
    if !status.success() {
        bail!(
            "pip install -r {} into {} failed ({status}); is PyPI reachable?",
            requirements.display(),
            dir.display()
        );
    }
    std::fs::write(&complete, b"")
        .with_context(|| format!("cannot write {}", complete.display()))?;
    Ok(python)
}

/// 64-bit FNV-1a: names the venv after the exact requirements it holds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The FastAPI reference under uvicorn: the supervisor and its workers in a
/// process group of their own, stopped together on drop.
struct FastApi {
    child: Child,
    addr: SocketAddr,
}

impl FastApi {
    fn start(
        python: &Path,
        app_dir: &Path,
        prices: &Path,
        redis_url: &str,
        scratch: &Scratch,
    ) -> anyhow::Result<FastApi> {
        use std::os::unix::process::CommandExt as _;

        let port = free_port()?;
        let ready_dir = scratch.join("fastapi-ready");
        std::fs::create_dir_all(&ready_dir)
            .with_context(|| format!("cannot create {}", ready_dir.display()))?;
        let log = scratch.join("uvicorn.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(python)
            .args(["-m", "uvicorn", "app:app", "--app-dir"])
            .arg(app_dir)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", &WORKERS.to_string(), "--log-level", "warning"])
            .current_dir(app_dir)
            .env("RISKHOST_BENCH_PRICES", prices)
            .env("RISKHOST_BENCH_REDIS_URL", redis_url)
            .env("RISKHOST_BENCH_REDIS_PREFIX", FASTAPI_PREFIX)
            .env("RISKHOST_BENCH_READY_DIR", &ready_dir)
            // No __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} -m uvicorn", python.display()))?;
        let mut server = FastApi {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let log_tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        // Every worker has loaded the prices and reached Redis.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = std::fs::read_dir(&ready_dir)
                .with_context(|| format!("cannot read {}", ready_dir.display()))?
                .count();
            if ready >= WORKERS {
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "uvicorn exited ({status}) before its {WORKERS} workers were ready; its log:\n{}",
                    log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "uvicorn's {WORKERS} workers not ready after 2 minutes ({ready} ready); its log:\n{}",
                    log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // ...and the socket answers.
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(server.addr) {
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let request = format!(
                    "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    server.addr
                );
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 200")
                {
                    break;
                }
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "uvicorn exited ({status}) before answering; its log:\n{}",
                    log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "uvicorn not answering GET /healthz after 2 minutes; its log:\n{}",
                    log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Signals the whole process group (uvicorn and its workers).
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for FastApi {
    fn drop(&mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (a stuck worker) goes too.
        self.signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_agree_within_the_tolerance_only() {
        let answer = |v: f64| format!(r#"{{"as_of":"2018-12-31","value":{v}}}"#).into_bytes();
        assert!(agree(&answer(1000.0), &answer(1000.0 * (1.0 + 1e-12))).is_ok());
        assert!(agree(&answer(1000.0), &answer(1000.0 * (1.0 + 1e-6))).is_err());
        let other_day = br#"{"as_of":"2018-12-28","value":1000.0}"#;
        assert!(agree(&answer(1000.0), other_day).is_err());
        assert!(agree(&answer(1000.0), b"{}").is_err());
    }

    #[test]
    fn reads_the_port_of_a_redis_url() {
        assert_eq!(port_of("redis://127.0.0.1:6390/").ok(), Some(6390));
        assert!(port_of("redis://127.0.0.1/").is_err());
    }
}
