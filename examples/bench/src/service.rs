//! The processes the service scenarios measure: `riskhost serve` started on
//! a loopback port with its own data directory, a private `redis-server`,
//! and small helpers around them (readiness, resident memory, scratch dirs).
//!
//! Every process is stopped when its handle is dropped, so a failing
//! scenario leaves nothing running.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::Method;

use crate::loadgen;

/// How `riskhost serve` is started: the binary, and the API key every
/// server is given and every request carries. Requests authenticate as in
/// production (digest compare, scope check, the key's token bucket); the
/// key's rate is set far above what two cores can send, so the bucket is
/// paid for but never refuses. Its burst is as large as its rate: a burst
/// of 100,000 at 10⁹ a minute tolerated only 6 ms between the bucket's
/// clock readings, and one run at 1,000 connections got a 429 from it.
pub(crate) struct Host {
    pub(crate) bin: PathBuf,
    pub(crate) rt: tokio::runtime::Handle,
    key_spec: String,
}

impl Host {
    pub(crate) fn new(bin: PathBuf, rt: tokio::runtime::Handle) -> anyhow::Result<Host> {
        let help = Command::new(&bin)
            .args(["serve", "--help"])
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !help.status.success() {
            bail!("{} serve --help failed", bin.display());
        }
        let key_spec = format!(
            "bench:sha256={},scopes=admin,rate_per_minute=1000000000,burst=1000000000",
            hex_digest(loadgen::bearer_token())
        );
        Ok(Host { bin, rt, key_spec })
    }

    /// Starts `riskhost serve` with `args` on a free loopback port and the
    /// data directory `data_dir`, and waits until `/readyz` answers 200.
    pub(crate) fn serve(&self, data_dir: &Path, args: &[&str]) -> anyhow::Result<Server> {
        let started = Instant::now();
        let mut command = Command::new(&self.bin);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            // The default log level and access log, as deployed: what they
            // write is part of the measured cost (to /dev/null).
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command.args(["--api-key", &self.key_spec]);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        // The first line names the address; reading it blocks until then.
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rt: self.rt.clone(),
            ready_after: Duration::ZERO,
        };
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                bail!("riskhost serve {args:?} exited before listening");
            };
            let line = line?;
            if let Some(url) = line.strip_prefix("riskhost listening on http://") {
                break url.trim().parse::<SocketAddr>()?;
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        server.addr = addr;
        let deadline = started + Duration::from_secs(300);
        loop {
            if let Ok((200, _)) = server.get("/readyz") {
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("riskhost serve {args:?} exited ({status}) before ready");
            }
            if Instant::now() > deadline {
                bail!("riskhost serve {args:?} not ready after 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        server.ready_after = started.elapsed();
        Ok(server)
    }
}

/// A running `riskhost serve`; killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    rt: tokio::runtime::Handle,
    /// From spawn to the first 200 of `/readyz`.
    pub(crate) ready_after: Duration,
}

impl Server {
    pub(crate) fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.rt
            .block_on(loadgen::request(self.addr, Method::GET, path, Bytes::new()))
    }

    /// The model CPU the server has counted so far (`riskhost_model_cpu_seconds`):
    /// `(seconds, calls)`, of `model` or of every model.
    pub(crate) fn model_cpu(&self, model: Option<&str>) -> anyhow::Result<(f64, f64)> {
        let (status, text) = self.get("/metrics")?;
        if status != 200 {
            bail!("GET /metrics: HTTP {status}");
        }
        let text = String::from_utf8_lossy(&text);
        let label = model.map(|m| format!("model=\"{m}\""));
        let total = |series: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(series))
                .filter(|l| {
                    label
                        .as_ref()
                        .is_none_or(|label| l.contains(label.as_str()))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok((
            total("riskhost_model_cpu_seconds_sum"),
            total("riskhost_model_cpu_seconds_count"),
        ))
    }

    pub(crate) fn post(&self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        self.rt
            .block_on(loadgen::request(self.addr, Method::POST, path, body))
    }

    /// POSTs and requires a 200.
    pub(crate) fn post_ok(&self, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        let (status, answer) = self.post(path, body)?;
        if status != 200 {
            bail!(
                "POST {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
        }
        Ok(answer)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in MiB.
    pub(crate) fn rss_mib(&self) -> anyhow::Result<f64> {
        rss_mib(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS in /proc/PID/status")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// A private `redis-server` on a free loopback port, without persistence;
/// killed on drop. Private so the benchmark neither reads nor disturbs the
/// shared Redis other work uses.
pub(crate) struct Redis {
    child: Child,
    pub(crate) url: String,
}

impl Redis {
    pub(crate) fn start() -> anyhow::Result<Redis> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (apt-get install redis-server)")?;
        let redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A scratch directory under the system's temp dir, removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(what: &str) -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "riskhost-bench-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex_digest(token: &str) -> String {
    riskhost_auth::token_digest(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
