//! The server run inside the test's own process, as `riskhost serve` runs it
//! (`riskhost::serve_in_process`: the flags parsed as the command line's,
//! `Server::build`, then `server::run(listener, server, shutdown)`), handed
//! a shutdown future the test resolves. No child process,
//! no signals: what this checks is that the server's life is its caller's
//! to end, and that it ends cleanly with every background task.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{TempDir, plugins_dir, wait_until};
use serde_json::{Value, json};

#[test]
fn the_server_serves_until_its_shutdown_future_resolves_then_returns() {
    let data_dir = TempDir::new("in-process");
    let plugins = plugins_dir();
    let flags = [
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
    ]
    .map(str::to_owned);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, address) = std::sync::mpsc::channel::<SocketAddr>();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            bound.send(listener.local_addr()?)?;
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            riskhost::serve_in_process(&flags, listener, async {
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
