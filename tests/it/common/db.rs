//! Database helpers of the integration tests: unique schema / database
//! names, SQL through `psql` and ClickHouse's HTTP interface, `riskhost db`,
//! and dedicated PostgreSQL and ClickHouse instances a test may stop.
//!
//! The shared services are PostgreSQL on 127.0.0.1:5432 (trust auth,
//! database `test`; `tests/services.sh`) and ClickHouse on 127.0.0.1:8123
//! (`tests/clickhouse.sh`). Every test works in its own schema or database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{TempDir, binary, workspace};

/// The shared PostgreSQL.
pub(crate) fn pg_url() -> String {
    std::env::var("RISKHOST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The shared ClickHouse.
pub(crate) fn ch_url() -> String {
    std::env::var("RISKHOST_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A name unique to this test run: `t_<tag>_<pid>_<random>`, valid as a
/// PostgreSQL schema and a ClickHouse database.
pub(crate) fn unique_name(tag: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(Instant::now()) % 1_000_000_000;
    format!("t_{tag}_{}_{r}", std::process::id())
}

/// Runs SQL with `psql` against `url`, returning its unaligned output.
pub(crate) fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .expect("cannot run psql");
    assert!(
        out.status.success(),
        "psql failed: {sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs a ClickHouse query over HTTP, returning the text answer.
pub(crate) fn ch_query(url: &str, sql: &str) -> Result<String, String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let r = client
        .post(format!("{url}/"))
        .body(sql.to_owned())
        .send()
        .map_err(|e| e.to_string())?;
    let ok = r.status().is_success();
    let text = r.text().map_err(|e| e.to_string())?;
    if ok {
        Ok(text.trim().to_owned())
    } else {
        Err(text)
    }
}

/// Runs `riskhost db <args>` and asserts success.
pub(crate) fn riskhost_db(args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("db")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("cannot run riskhost db");
    assert!(
        out.status.success(),
        "riskhost db {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A schema in the shared PostgreSQL, dropped with the value.
pub(crate) struct PgSchema {
    pub(crate) url: String,
    pub(crate) name: String,
}

impl PgSchema {
    pub(crate) fn new(tag: &str) -> PgSchema {
        PgSchema {
            url: pg_url(),
            name: unique_name(tag),
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.url,
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .output();
    }
}

/// A database in a ClickHouse, dropped with the value.
pub(crate) struct ChDatabase {
    pub(crate) url: String,
    pub(crate) name: String,
}

impl ChDatabase {
    pub(crate) fn new(url: &str, tag: &str) -> ChDatabase {
        ChDatabase {
            url: url.to_owned(),
            name: unique_name(tag),
        }
    }
}

impl Drop for ChDatabase {
    fn drop(&mut self) {
        let _ = ch_query(&self.url, &format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Waits until `check` holds, panicking with `what` after `timeout`.
#[track_caller]
pub(crate) fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of its own (initdb into a temp dir, a spare port),
/// for tests that stop the database. Runs as the `postgres` user when the
/// tests run as root, since PostgreSQL refuses root.
pub(crate) struct DedicatedPostgres {
    dir: TempDir,
    pub(crate) port: u16,
}

impl DedicatedPostgres {
    pub(crate) fn start() -> DedicatedPostgres {
        let dir = TempDir::new("pg");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_root {
            let status = Command::new("chown")
                .args(["postgres", &dir.path().to_string_lossy()])
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let pg = DedicatedPostgres {
            dir,
            port: free_port(),
        };
        let data = pg.data_dir();
        pg.run(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            &data,
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        pg.start_again();
        pg
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn run(&self, argv: &[&str]) {
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut command = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c.args(argv);
            c
        } else {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        };
        let out = command.output().expect("cannot run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{argv:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the cluster and waits until it accepts connections.
    pub(crate) fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").to_string_lossy().into_owned();
        self.run(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            &self.data_dir(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    /// Stops the cluster (fast: open connections are closed).
    pub(crate) fn stop(&self) {
        self.run(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            &self.data_dir(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }
}

impl Drop for DedicatedPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args(["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = Command::new(format!("{PG_BIN}/pg_ctl"))
            .args(["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A ClickHouse server of its own (`tests/clickhouse.sh` with a temp dir and
/// spare ports), for tests that stop it.
pub(crate) struct DedicatedClickHouse {
    dir: TempDir,
    pub(crate) http_port: u16,
    tcp_port: u16,
}

impl DedicatedClickHouse {
    pub(crate) fn start() -> DedicatedClickHouse {
        let ch = DedicatedClickHouse {
            dir: TempDir::new("ch"),
            http_port: free_port(),
            tcp_port: free_port(),
        };
        ch.start_again();
        ch
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("clickhouse.pid")
    }

    /// Starts it (again) and waits until it answers.
    pub(crate) fn start_again(&self) {
        let out = Command::new(workspace().join("tests/clickhouse.sh"))
            .env("CH_DIR", self.dir.path())
            .env("CH_HTTP_PORT", self.http_port.to_string())
            .env("CH_TCP_PORT", self.tcp_port.to_string())
            .output()
            .expect("cannot run tests/clickhouse.sh");
        assert!(
            out.status.success(),
            "tests/clickhouse.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops it and waits until the process is gone.
    pub(crate) fn stop(&self) {
        let pid = std::fs::read_to_string(self.pid_file()).expect("clickhouse pid file");
        let pid = pid.trim().to_owned();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let gone = |pid: &str| !Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !gone(&pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !gone(&pid) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        wait_until("ClickHouse stopped", Duration::from_secs(10), || {
            ch_query(&self.url(), "SELECT 1").is_err()
        });
    }
}

impl Drop for DedicatedClickHouse {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}
