//! Scenario 6: hot swap under load. A server watches a plugins directory
//! holding `var-historical.wasm`; while 4 connections score it in a closed
//! loop, the file is overwritten with a new version (the same component with
//! a different custom section, so a different digest) 20 times (`--quick`:
//! 5). Per swap: the time from the start of the file write to the first
//! response that carries the new version's digest. Every request of the
//! whole run must succeed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{Context, score_body};
use crate::loadgen::{Stop, Target};
use crate::report::{Row, number};
use crate::service::Scratch;

const SCENARIO: &str = "hot swap";
const MODEL: &str = "var-historical";

/// `bytes` with a custom section named `riskhost-bench` holding `tag`
/// appended: still the same component, but a different digest.
pub(super) fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"riskhost-bench";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// The `digest` field of a score response.
pub(super) fn digest_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(r#""digest":""#)? + r#""digest":""#.len();
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_owned())
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let swaps = if ctx.quick { 5 } else { 20 };
    let original = std::fs::read(ctx.dist.join(format!("{MODEL}.wasm")))?;
    let plugins = Scratch::new("swap-plugins")?;
    let file = plugins.join(&format!("{MODEL}.wasm"));
    std::fs::write(&file, with_custom_section(&original, "version-0"))?;
    let data = Scratch::new("swap-data")?;
    let plugins_arg = plugins.path().display().to_string();
    let server = ctx.host.serve(
        &data.path().join("data"),
        &["--plugins", plugins_arg.as_str(), "--cache-ttl-secs", "0"],
    )?;

    // Digests in the order they were first answered, with when.
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let recorder = Arc::clone(&seen);
    let target = Target::post(
        server.addr,
        "/v1/score",
        Arc::new(|n: u64| score_body(MODEL, 1 + n % 1000)),
    )
    .inspect(Arc::new(move |body: &[u8], at: Instant| {
        if let Some(d) = digest_of(body)
            && let Ok(mut seen) = recorder.lock()
            && !seen.iter().any(|(s, _)| *s == d)
        {
            seen.push((d, at));
        }
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let target = target.clone();
        ctx.rt.spawn(async move {
            let mut phases = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let p = crate::loadgen::phase(
                    &target,
                    4,
                    Stop::After(Duration::from_millis(250)),
                    None,
                )
                .await;
                phases.push(p);
            }
            phases
        })
    };
    let seen_count = || seen.lock().map(|s| s.len()).unwrap_or(0);
    wait_for(|| seen_count() >= 1, "the first version's answers")?;

    let mut latencies = Vec::new();
    for i in 1..=swaps {
        let bytes = with_custom_section(&original, &format!("version-{i}"));
        let before = seen_count();
        let written = Instant::now();
        std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
        wait_for(|| seen_count() > before, "the new version's first answer")?;
        let first = seen
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .last()
            .map(|(_, at)| *at)
            .context("no version seen")?;
        latencies.push(first.saturating_duration_since(written).as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let phases = ctx.rt.block_on(load).context("the load task failed")?;
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    for p in phases {
        let p = p?;
        ok += p.ok;
        errors += p.errors;
        first_error = first_error.or(p.first_error);
    }
    drop(server);

    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let p99 = quantile(0.99);
    let note = format!(
        "{swaps} swaps, 4 conns scoring throughout: {} requests, {errors} failed{}",
        ok + errors,
        first_error
            .map(|e| format!(" (first: {})", e.chars().take(120).collect::<String>()))
            .unwrap_or_default()
    );
    Ok(vec![
        Row::reading(
            SCENARIO,
            "file written → first response from the new version · p50".to_owned(),
            quantile(0.5),
            "ms",
        )
        .reference(format!(
            "min {} ms, max {} ms",
            number(latencies[0]),
            number(latencies[latencies.len() - 1])
        ))
        .note(note.clone()),
        Row::reading(
            SCENARIO,
            "file written → first response from the new version · p99".to_owned(),
            p99,
            "ms",
        )
        .goal("≤ 1 s", p99 <= 1000.0)
        .note("includes the watcher's settle time (--watch-settle-ms, 200 ms)".to_owned()),
        Row::reading(
            SCENARIO,
            "failed requests during the swaps".to_owned(),
            errors as f64,
            "requests",
        )
        .goal("0", errors == 0)
        .note(note),
    ])
}

/// Polls `done` every millisecond for up to 30 s.
pub(super) fn wait_for(done: impl Fn() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() > deadline {
            bail!("waited 30 s for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
