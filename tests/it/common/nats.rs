//! NATS helpers of the integration tests: the flags of a `--runs nats`
//! server with its own stream prefix, PostgreSQL schema and ClickHouse
//! database (so tests share the one NATS server without meeting), and a
//! nats-server of its own for a test that stops it.
//!
//! The shared NATS runs on 127.0.0.1:4222 with JetStream
//! (`tests/services.sh`).

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::TempDir;
use super::db::{ChDatabase, PgSchema, ch_url, free_port, unique_name, wait_until};

/// The shared NATS.
pub(crate) fn nats_url() -> String {
    std::env::var("RISKHOST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Where a `--runs nats` server keeps its runs: every replica of one
/// test is started with the same [`NatsRuns::args`].
pub(crate) struct NatsRuns {
    pub(crate) schema: PgSchema,
    pub(crate) clickhouse: ChDatabase,
    pub(crate) prefix: String,
    pub(crate) url: String,
}

impl NatsRuns {
    pub(crate) fn new(tag: &str) -> NatsRuns {
        Self::on(tag, &nats_url())
    }

    /// On the NATS server at `url`.
    pub(crate) fn on(tag: &str, url: &str) -> NatsRuns {
        NatsRuns {
            schema: PgSchema::new(tag),
            clickhouse: ChDatabase::new(&ch_url(), tag),
            prefix: unique_name(tag).replace('_', "-"),
            url: url.to_owned(),
        }
    }

    /// The server flags.
    pub(crate) fn args(&self) -> Vec<String> {
        [
            "--runs",
            "nats",
            "--nats-url",
            &self.url,
            "--nats-prefix",
            &self.prefix,
            "--postgres-url",
            &self.schema.url,
            "--postgres-schema",
            &self.schema.name,
            "--clickhouse-url",
            &self.clickhouse.url,
            "--clickhouse-database",
            &self.clickhouse.name,
            "--events",
            "none",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for NatsRuns {
    /// Deletes the test's stream (and with it its consumer) through the
    /// JetStream API, spoken as plain NATS protocol.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(address) = self.url.strip_prefix("nats://") else {
            return;
        };
        let Ok(mut socket) = std::net::TcpStream::connect(address) else {
            return;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
        let mut info = [0u8; 4096];
        let _ = socket.read(&mut info);
        let stream = format!("{}_RUNS", self.prefix.to_ascii_uppercase());
        let _ = socket.write_all(
            format!(
                "CONNECT {{\"verbose\":false}}\r\nPUB $JS.API.STREAM.DELETE.{stream} _INBOX.riskhost-test-cleanup 0\r\n\r\nPING\r\n"
            )
            .as_bytes(),
        );
        // PONG: the server has handled the publish.
        let _ = socket.read(&mut info);
    }
}

/// A nats-server of its own, on a spare port with its own JetStream
/// directory, which survives a stop and a start.
pub(crate) struct DedicatedNats {
    dir: TempDir,
    pub(crate) port: u16,
    child: Mutex<Option<Child>>,
}

impl DedicatedNats {
    pub(crate) fn start() -> DedicatedNats {
        let nats = DedicatedNats {
            dir: TempDir::new("nats"),
            port: free_port(),
            child: Mutex::new(None),
        };
        nats.start_again();
        nats
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        )
        .is_ok()
    }

    /// Starts it (again) and waits until it listens.
    pub(crate) fn start_again(&self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nats-server");
        match self.child.lock() {
            Ok(mut slot) => *slot = Some(child),
            Err(_) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                panic!("the nats-server slot is poisoned");
            }
        }
        wait_until("nats-server listening", Duration::from_secs(20), || {
            self.answers()
        });
    }

    /// Deletes its JetStream store (while it is stopped): NATS forgets
    /// every stream and message.
    pub(crate) fn wipe(&self) {
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }

    /// Stops it (SIGTERM, as an operator's restart) and waits until it is gone.
    pub(crate) fn stop(&self) {
        let Some(mut child) = self.child.lock().ok().and_then(|mut slot| slot.take()) else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        wait_until("nats-server stopped", Duration::from_secs(10), || {
            !self.answers()
        });
    }
}

impl Drop for DedicatedNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().ok().and_then(|mut slot| slot.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
