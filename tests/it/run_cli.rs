//! `riskhost run …`, the command-line client of risk runs, against a real
//! server: a run of every stored portfolio waited for and downloaded as
//! CSV, its status, results, cancel and listing; a JSON Lines file (and
//! standard input) streamed as an NDJSON upload; a run cancelled while the
//! client waits exits 4; and bad input gets a clear error, never a panic.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::common::{
    Server, TempDir, binary, inline_portfolios, plugins_with, stored_portfolio_count, workspace,
};

/// `riskhost run ARGS --server URL`, run to its end.
fn cli(server: &Server, args: &[&str]) -> Output {
    command(server, args).output().expect("cannot run riskhost")
}

fn command(server: &Server, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("run")
        .args(args)
        .args(["--server", &server.base])
        // The anonymous test server; a token from the caller's shell
        // would be refused.
        .env_remove("RISKHOST_TOKEN");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command succeeded, showing what it printed if not.
#[track_caller]
fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    assert!(!stderr(output).contains("panicked"), "{}", stderr(output));
}

/// Asserts the command failed with `code`, with `needles` in its stderr.
#[track_caller]
fn assert_fails(output: &Output, code: i32, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        stdout(output)
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr does not mention {needle:?}: {err}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn ndjson(portfolios: &[Value]) -> String {
    portfolios.iter().map(|p| format!("{p}\n")).collect()
}

#[test]
fn a_run_of_every_stored_portfolio_is_waited_for_downloaded_and_read_back() {
    let server = Server::start(&[]);
    let dir = TempDir::new("run-cli");
    let csv_path = dir.path().join("results.csv");
    let csv_arg = csv_path.to_str().expect("utf-8 path");
    let output = cli(
        &server,
        &[
            "submit",
            "--all",
            "--model",
            "var-historical",
            "--model",
            "es-historical",
            "--wait",
            "--out",
            csv_arg,
            "--format",
            "csv",
        ],
    );
    assert_ok(&output);
    let id = stdout(&output).trim().to_owned();
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "stdout is not a run id: {id:?}"
    );
    let err = stderr(&output);
    assert!(err.contains(&format!("run {id} completed")), "{err}");
    // stderr is not a terminal here: no bar, no control characters.
    assert!(!err.contains('\u{1b}') && !err.contains('\r'), "{err:?}");

    // A header, then one row per stored portfolio × model.
    let stored = stored_portfolio_count();
    let csv = std::fs::read_to_string(&csv_path).expect("the CSV results");
    let rows: Vec<&str> = csv.lines().collect();
    assert!(
        rows[0].starts_with("run_id,portfolio_index,portfolio_id,model"),
        "{csv}"
    );
    assert_eq!(rows.len(), 1 + stored * 2, "{csv}");
    assert!(rows[1..].iter().all(|r| r.starts_with(&id)), "{csv}");
    assert!(
        !dir.path().join(".results.csv.partial").exists(),
        "the partial download was left behind"
    );

    // The status, for people and as JSON.
    let output = cli(&server, &["status", &id]);
    assert_ok(&output);
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!("run {id}: completed\n")),
        "{text}"
    );
    assert!(text.contains("var-historical (sha256:"), "{text}");
    let output = cli(&server, &["status", &id, "--json"]);
    assert_ok(&output);
    let view: Value = serde_json::from_slice(&output.stdout).expect("the run as JSON");
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["cells"],
        json!({"ok": stored * 2, "failed": 0}),
        "{view}"
    );
    // Waiting on a run that has ended returns at once, exit 0.
    assert_ok(&cli(&server, &["status", &id, "--wait"]));

    // The results as NDJSON on standard output: one line per cell.
    let output = cli(&server, &["results", &id]);
    assert_ok(&output);
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), stored * 2);
    assert!(lines.iter().all(|l| l["run_id"] == id.as_str()));
    assert!(lines.iter().all(|l| l["value"].is_number()), "{lines:?}");
    // And as CSV into a file (the format from its name): the same as the
    // download after the wait.
    let again = dir.path().join("again.csv");
    assert_ok(&cli(
        &server,
        &["results", &id, "--out", again.to_str().expect("utf-8 path")],
    ));
    assert_eq!(std::fs::read_to_string(&again).expect("again.csv"), csv);

    // Cancelling a run that has ended reports how it ended.
    let output = cli(&server, &["cancel", &id]);
    assert_ok(&output);
    let text = stdout(&output);
    assert!(
        text.contains(&format!("run {id}: completed")) && text.contains("nothing to cancel"),
        "{text}"
    );

    // The list holds it.
    let output = cli(&server, &["list"]);
    assert_ok(&output);
    let text = stdout(&output);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&id) && l.contains("completed")),
        "{text}"
    );
    let output = cli(&server, &["list", "--json"]);
    assert_ok(&output);
    let list: Value = serde_json::from_slice(&output.stdout).expect("the list as JSON");
    assert_eq!(list["runs"][0]["id"], id.as_str(), "{list}");
}

#[test]
fn portfolio_files_are_uploaded_json_lines_streamed() {
    let server = Server::start(&["--run-chunk-size", "64"]);
    let dir = TempDir::new("run-cli-upload");

    // 300 portfolios, one per line: an NDJSON upload across chunks.
    let file = dir.path().join("book.ndjson");
    std::fs::write(&file, ndjson(&inline_portfolios(300))).expect("write the portfolios");
    let out = dir.path().join("results.ndjson");
    let output = cli(
        &server,
        &[
            "submit",
            "--model",
            "var-historical",
            "--param",
            "confidence=0.975",
            "--portfolios",
            file.to_str().expect("utf-8 path"),
            "--wait",
            "--json",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
    );
    assert_ok(&output);
    let view: Value = serde_json::from_slice(&output.stdout).expect("the run as JSON");
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["portfolios"], 300, "{view}");
    assert_eq!(view["chunks"]["total"], 5, "{view}");
    assert_eq!(view["cells"], json!({"ok": 300, "failed": 0}), "{view}");
    assert_eq!(view["params"]["confidence"], 0.975, "{view}");
    let results = std::fs::read_to_string(&out).expect("the NDJSON results");
    let mut indexes: Vec<u64> = results
        .lines()
        .map(|l| {
            let cell: Value = serde_json::from_str(l).expect("a JSON line");
            cell["portfolio_index"].as_u64().expect("portfolio_index")
        })
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..300).collect::<Vec<u64>>());

    // Standard input, the same way.
    let mut child = command(
        &server,
        &[
            "submit",
            "--model",
            "var-historical",
            "--portfolios",
            "-",
            "--wait",
            "--json",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("cannot run riskhost");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(ndjson(&inline_portfolios(7)).as_bytes())
        .expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("riskhost");
    assert_ok(&output);
    let view: Value = serde_json::from_slice(&output.stdout).expect("the run as JSON");
    assert_eq!(view["portfolios"], 7, "{view}");
    assert_eq!(view["cells"]["ok"], 7, "{view}");

    // A .json file: an array of portfolios, sent inline.
    let file = dir.path().join("three.json");
    std::fs::write(&file, Value::Array(inline_portfolios(3)).to_string()).expect("write");
    let output = cli(
        &server,
        &[
            "submit",
            "--model",
            "es-historical",
            "--portfolios",
            file.to_str().expect("utf-8 path"),
            "--wait",
            "--json",
        ],
    );
    assert_ok(&output);
    let view: Value = serde_json::from_slice(&output.stdout).expect("the run as JSON");
    assert_eq!(view["cells"], json!({"ok": 3, "failed": 0}), "{view}");

    // Stored portfolios by id.
    let output = cli(
        &server,
        &[
            "submit",
            "--model",
            "var-historical",
            "--ids",
            "balanced,tech",
            "--wait",
            "--json",
        ],
    );
    assert_ok(&output);
    let view: Value = serde_json::from_slice(&output.stdout).expect("the run as JSON");
    assert_eq!(view["cells"], json!({"ok": 2, "failed": 0}), "{view}");
}

#[test]
fn a_run_cancelled_while_the_client_waits_exits_4_with_its_results_so_far() {
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--run-chunk-size",
        "1",
        "--run-workers",
        "1",
        // Its warm-up at load may outlast the default 1 s on a busy machine.
        "--model-limits",
        "slow-legal:deadline_ms=20000",
    ]);
    let dir = TempDir::new("run-cli-cancel");
    let file = dir.path().join("book.ndjson");
    std::fs::write(&file, ndjson(&inline_portfolios(1000))).expect("write the portfolios");
    let out = dir.path().join("partial.ndjson");
    let mut child = command(
        &server,
        &[
            "submit",
            "--model",
            "slow-legal",
            "--param",
            "steps_millions=20",
            "--portfolios",
            file.to_str().expect("utf-8 path"),
            "--wait",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("cannot run riskhost");
    // The id comes first, before the client waits.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut id = String::new();
    lines.read_line(&mut id).expect("the run id");
    let id = id.trim().to_owned();
    assert!(!id.is_empty(), "no run id");

    let output = cli(&server, &["cancel", &id]);
    assert_ok(&output);
    assert_eq!(stdout(&output), format!("run {id}: cancelled\n"));

    let output = child.wait_with_output().expect("riskhost");
    assert_fails(&output, 4, &[&format!("run {id} ended cancelled")]);
    // The results so far were downloaded all the same: every chunk done,
    // but perhaps the one in flight at the cancel, which may finish after.
    let (_, run) = server.get(&format!("/v1/runs/{id}"));
    let done = run["chunks"]["done"].as_u64().expect("done");
    let downloaded = std::fs::read_to_string(&out).expect("the results so far");
    let downloaded = downloaded.lines().count() as u64;
    assert!(
        downloaded <= done && done <= downloaded + 1 && done < 1000,
        "{downloaded} lines; {run}"
    );
    // And waiting on it again says the same.
    assert_fails(&cli(&server, &["status", &id, "--wait"]), 4, &["cancelled"]);
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit_code() {
    let server = Server::start(&[]);
    // An unknown model: the server's code and status.
    let output = cli(&server, &["submit", "--all", "--model", "no-such-model"]);
    assert_fails(&output, 1, &["404", "unknown_model", "no-such-model"]);
    assert!(output.stdout.is_empty(), "{}", stdout(&output));

    // A portfolios file that does not exist is named.
    let missing = workspace().join("no/such/book.ndjson");
    let output = cli(
        &server,
        &[
            "submit",
            "--model",
            "var-historical",
            "--portfolios",
            missing.to_str().expect("utf-8 path"),
        ],
    );
    assert_fails(&output, 1, &["cannot open", &missing.display().to_string()]);

    // A bad line of an upload: the server names its line.
    let dir = TempDir::new("run-cli-bad");
    let file = dir.path().join("bad.ndjson");
    std::fs::write(&file, "{\"id\": \"balanced\"}\nnot json\n").expect("write");
    let output = cli(
        &server,
        &[
            "submit",
            "--model",
            "var-historical",
            "--portfolios",
            file.to_str().expect("utf-8 path"),
        ],
    );
    // The server counts the run as the upload's first line; the client
    // names the file's.
    assert_fails(
        &output,
        1,
        &[
            "422",
            "invalid_body",
            &format!("line 2 of {}", file.display()),
        ],
    );

    // An unknown run.
    for args in [
        &["status", "no-such-run"][..],
        &["results", "no-such-run"],
        &["cancel", "no-such-run"],
    ] {
        let output = cli(&server, args);
        assert_fails(&output, 1, &["404", "unknown_run"]);
    }

    // Usage errors are clap's: exit 2.
    let output = cli(&server, &["submit", "--model", "var-historical"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = cli(
        &server,
        &["submit", "--all", "--model", "m", "--as-of", "yesterday"],
    );
    assert_fails(&output, 2, &["yesterday"]);

    // A server that is not there.
    let output = Command::new(binary())
        .args(["run", "list", "--server", "http://127.0.0.1:1"])
        .env_remove("RISKHOST_TOKEN")
        .output()
        .expect("cannot run riskhost");
    assert_fails(&output, 1, &["cannot reach", "127.0.0.1:1"]);
}
