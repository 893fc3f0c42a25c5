//! `hostile-snoop`: a test model that probes the sandbox and reports back.
//!
//! It tries what a model must not be able to do or observe (files, the
//! environment, arguments, stdin, sockets) and reads what it may observe but
//! must find frozen or seeded (clocks, randomness), then returns everything
//! as its breakdown: one entry per probe, named `probe=what it saw`, valued
//! 1 when a forbidden thing succeeded (or with the number observed). The
//! sandbox tests assert on that report.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Read;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use riskhost_sdk::{
    BatchContext, Contribution, DataNeeds, Job, Model, ModelError, ModelInfo, Score, Unit,
};

pub struct HostileSnoop;

impl Model for HostileSnoop {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: reports what it can see of the host.".to_owned(),
            params: vec![],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(_ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let mut report = Report::default();

        match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => report.add("file", format!("read {} bytes", text.len()), 1.0),
            Err(e) => report.add("file", e, 0.0),
        }
        match std::fs::read_dir("/") {
            Ok(entries) => report.add("dir", "listed /", entries.count() as f64),
            Err(e) => report.add("dir", e, 0.0),
        }
        match std::fs::write("/tmp/riskhost-snoop", b"x") {
            Ok(()) => report.add("write", "wrote /tmp/riskhost-snoop", 1.0),
            Err(e) => report.add("write", e, 0.0),
        }
        report.add("env", "variables", std::env::vars_os().count() as f64);
        match std::env::var("PATH") {
            Ok(v) => report.add("env_path", v, 1.0),
            Err(e) => report.add("env_path", e, 0.0),
        }
        report.add("args", "arguments", std::env::args_os().count() as f64);
        let mut stdin = Vec::new();
        match std::io::stdin().read_to_end(&mut stdin) {
            Ok(n) => report.add("stdin", "bytes read", n as f64),
            Err(e) => report.add("stdin", e, 0.0),
        }
        let (net, connected) = tcp_probe();
        report.add("net", net, connected);

        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(-1.0);
        report.add("wall_clock", "seconds since 1970", wall);
        let start = Instant::now();
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = std::hint::black_box(spin.wrapping_add(i));
        }
        report.add(
            "monotonic",
            "ns elapsed over a busy loop",
            start.elapsed().as_nanos() as f64,
        );

        let draw = getrandom::u64().map_or_else(|e| e.to_string(), |r| format!("{r:016x}"));
        report.add("random", draw, 0.0);
        let hashed = RandomState::new().hash_one(42u64);
        report.add("hash_seed", format!("{hashed:016x}"), 0.0);
        report.add("job_seed", format!("{:016x}", job.seed), 0.0);
        report.add("stdout", "printed a line", 0.0);
        println!("hostile-snoop was here (seed {:016x})", job.seed);

        Ok(Score {
            value: 0.0,
            unit: Unit::Index,
            breakdown: report.0,
        })
    }
}

#[derive(Default)]
struct Report(Vec<Contribution>);

impl Report {
    fn add(&mut self, probe: &str, seen: impl std::fmt::Display, value: f64) {
        let mut seen = seen.to_string().replace('\n', " ");
        seen.truncate(200);
        self.0.push(Contribution {
            name: format!("{probe}={seen}"),
            value,
        });
    }
}

/// Tries to open a TCP connection to 127.0.0.1:80 through wasi:sockets.
#[cfg(target_os = "wasi")]
fn tcp_probe() -> (String, f64) {
    use wasip2::sockets::instance_network::instance_network;
    use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasip2::sockets::tcp_create_socket::create_tcp_socket;

    let network = instance_network();
    let socket = match create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(s) => s,
        Err(e) => return (format!("create-tcp-socket: {e:?}"), 0.0),
    };
    let address = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port: 80,
        address: (127, 0, 0, 1),
    });
    match socket.start_connect(&network, address) {
        Ok(()) => ("start-connect: accepted".to_owned(), 1.0),
        Err(e) => (format!("start-connect: {e:?}"), 0.0),
    }
}

#[cfg(not(target_os = "wasi"))]
fn tcp_probe() -> (String, f64) {
    ("not wasm".to_owned(), 0.0)
}

riskhost_sdk::export_model!(HostileSnoop);
