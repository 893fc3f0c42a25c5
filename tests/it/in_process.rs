//! The server run inside the test's own process, as `riskhost serve` runs it:
//! `Server::build` from parsed settings, then `server::run(listener, server,
//! shutdown)` handed a shutdown future the test resolves. No child process,
//! no signals: what this checks is that the server's life is its caller's
//! to end, and that it ends cleanly with every background task.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use common::{TempDir, plugins_dir, wait_until};
use riskhost::config::{Cli, Command};
use serde_json::{Value, json};

/// Parses `riskhost serve ARGS` exactly as the binary does.
fn serve_args(args: &[&str]) -> riskhost::config::ServeArgs {
    let cli = Cli::try_parse_from(["riskhost", "serve"].iter().chain(args))
        .unwrap_or_else(|e| panic!("the test's flags do not parse: {e}"));
    match cli.command {
        Command::Serve(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn the_server_serves_until_its_shutdown_future_resolves_then_returns() {
    let data_dir = TempDir::new("in-process");
    let plugins = plugins_dir();
    let args = serve_args(&[
        "--plugins",
        plugins.to_str().expect("utf-8"),
        "--data-dir",
        data_dir.path().to_str().expect("utf-8"),
        "--anonymous-scoring",
        "--watch",
        "false",
        // The compile worker is the `riskhost` binary's subcommand; this
        // process is the test binary, so it compiles in process.
        "--compile-isolation",
        "false",
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, address) = std::sync::mpsc::channel::<SocketAddr>();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        riskhost::services::runtime()?.block_on(async move {
            let server = riskhost::server::Server::build(&args).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            bound.send(listener.local_addr()?)?;
            riskhost::server::run(listener, server, async {
                let _ = stopped.await;
            })
            .await
        })
    });
    let address = address
        .recv_timeout(Duration::from_secs(120))
        .expect("the server never bound its listener");
    let base = format!("http://{address}");
    let client = reqwest::blocking::Client::new();

    wait_until("/readyz answers 200", Duration::from_secs(120), || {
        client
            .get(format!("{base}/readyz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    let answer = client
        .post(format!("{base}/v1/score"))
        .json(&json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 10}]}}))
        .send()
        .expect("score");
    let status = answer.status();
    let body: Value = answer.json().expect("json");
    assert_eq!(status, 200, "{body}");
    assert!(body["value"].as_f64().is_some_and(|v| v > 0.0), "{body}");
    let missing = client
        .get(format!("{base}/v1/nothing"))
        .send()
        .expect("get");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().expect("a JSON error");
    assert_eq!(body["error"]["code"], "not_found");

    // Resolve the shutdown future: `run` drains, flushes and returns Ok.
    stop.send(()).expect("the server is still running");
    let outcome = server.join().expect("the server thread panicked");
    assert!(outcome.is_ok(), "run ended with {outcome:?}");
    assert!(
        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "the listener is closed once run returns"
    );
}
