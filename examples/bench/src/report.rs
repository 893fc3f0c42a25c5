//! Results: the row every scenario returns, the markdown table, the machine
//! description, and the insertion of a run into BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::harness::{Sampling, Stats};
use crate::scenarios::LoadSampling;

/// One line of the results table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Which scenario, e.g. `model compute`.
    pub(crate) scenario: String,
    /// What was measured within it, e.g. `var-historical · batch 100 · wasm`.
    pub(crate) variant: String,
    /// The median of the per-sample means, or the value of a one-off reading.
    pub(crate) median: f64,
    /// Fastest per-sample mean; `None` for a one-off reading.
    pub(crate) min: Option<f64>,
    /// Slowest per-sample mean; `None` for a one-off reading.
    pub(crate) max: Option<f64>,
    /// Unit of `median`, `min` and `max`, e.g. `µs/job`.
    pub(crate) unit: &'static str,
    /// What the number is compared with, and the ratio or difference.
    pub(crate) reference: String,
    /// The target and whether this run met it; empty when there is none.
    pub(crate) goal: String,
    pub(crate) note: String,
}

impl Row {
    /// A timed row, in microseconds.
    pub(crate) fn timed(scenario: &str, variant: String, stats: Stats, unit: &'static str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            variant,
            median: micros(stats.median),
            min: Some(micros(stats.min)),
            max: Some(micros(stats.max)),
            unit,
            reference: String::new(),
            goal: String::new(),
            note: String::new(),
        }
    }

    /// Repeated readings (e.g. throughput per repetition): their median and
    /// min–max. `values` may be empty (then the row reads 0).
    pub(crate) fn sampled(
        scenario: &str,
        variant: String,
        values: &[f64],
        unit: &'static str,
    ) -> Row {
        let mut v: Vec<f64> = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Row {
            scenario: scenario.to_owned(),
            variant,
            median,
            min: v.first().copied(),
            max: v.last().copied(),
            unit,
            reference: String::new(),
            goal: String::new(),
            note: String::new(),
        }
    }

    /// A row holding one reading, not a timing (e.g. a file size).
    pub(crate) fn reading(scenario: &str, variant: String, value: f64, unit: &'static str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            variant,
            median: value,
            min: None,
            max: None,
            unit,
            reference: String::new(),
            goal: String::new(),
            note: String::new(),
        }
    }

    pub(crate) fn reference(mut self, reference: String) -> Row {
        self.reference = reference;
        self
    }

    /// Sets the goal as `target` and marks it met or missed.
    pub(crate) fn goal(mut self, target: &str, met: bool) -> Row {
        self.goal = format!("{target} · {}", if met { "met" } else { "**missed**" });
        self
    }

    pub(crate) fn note(mut self, note: String) -> Row {
        self.note = note;
        self
    }
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A number with about three significant digits.
pub(crate) fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The results as a markdown table.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Scenario | Variant | Median | Min–max | Unit | Reference / ratio | Goal | Note |\n\
         |---|---|---:|---:|---|---|---|---|\n",
    );
    for r in rows {
        let range = match (r.min, r.max) {
            (Some(min), Some(max)) => format!("{}–{}", number(min), number(max)),
            _ => "—".to_owned(),
        };
        let cell = |s: &str| {
            if s.is_empty() {
                "—".to_owned()
            } else {
                s.replace('|', "\\|")
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&r.scenario),
            cell(&r.variant),
            number(r.median),
            range,
            r.unit,
            cell(&r.reference),
            cell(&r.goal),
            cell(&r.note),
        );
    }
    out
}

/// What the numbers were measured on.
pub(crate) struct Machine {
    pub(crate) cores: String,
    pub(crate) cpu: String,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub(crate) kernel: String,
    pub(crate) rustc: String,
    pub(crate) commit: Option<String>,
    /// The 1-minute load average when the run started (other work on the
    /// machine), if known.
    pub(crate) load_at_start: Option<String>,
}

impl Machine {
    pub(crate) fn detect(root: &Path) -> Machine {
        let cores = std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown (no model name in /proc/cpuinfo)".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let rustc = command_output(root, "rustc", &["--version"])
            .unwrap_or_else(|| "unknown (rustc --version failed)".to_owned());
        let commit = command_output(root, "git", &["rev-parse", "--short=12", "HEAD"]).map(|c| {
            let dirty = command_output(root, "git", &["status", "--porcelain"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} + uncommitted changes")
            } else {
                c
            }
        });
        Machine {
            cores,
            cpu,
            kernel,
            rustc,
            commit,
            load_at_start: load_average(),
        }
    }
}

/// The 1-minute load average from /proc/loadavg.
pub(crate) fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

fn command_output(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The current UTC date and time, `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "unknown date".to_owned())
}

/// One run: a heading with the date and command, the machine, and the table.
pub(crate) fn run_section(
    command: &str,
    machine: &Machine,
    quick: bool,
    (sampling, load): (Sampling, LoadSampling),
    took: Duration,
    rows: &[Row],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {} — `{command}`\n", now_utc());
    let _ = writeln!(
        out,
        "- Machine: {} cores (available_parallelism), {}, Linux {}, {}",
        machine.cores, machine.cpu, machine.kernel, machine.rustc
    );
    if let Some(commit) = &machine.commit {
        let _ = writeln!(out, "- Commit: {commit}");
    }
    if let (Some(start), Some(end)) = (&machine.load_at_start, load_average()) {
        let _ = writeln!(
            out,
            "- Load average (1 min) of the machine: {start} at the start, {end} at the end"
        );
    }
    let _ = writeln!(
        out,
        "- Sampling: {} mode; in-process timings: warm-up {} ms, {} samples of about {} ms each; \
         HTTP load: {}",
        if quick { "quick" } else { "full" },
        sampling.warm_up.as_millis(),
        sampling.samples,
        sampling.sample_time.as_millis(),
        load.describe(),
    );
    let _ = writeln!(out, "- The run took {:.0} s\n", took.as_secs_f64());
    out.push_str(&table(rows));
    out
}

/// The heading under which runs are inserted, newest first.
pub(crate) const RESULTS_HEADING: &str = "## Results";

/// The lines around the newest run in BENCHMARKS.md: what is between them
/// is generated and replaced by the next `--write`, which moves it below.
pub(crate) const BEGIN: &str =
    "<!-- bench:latest:begin (generated by `cargo xtask bench --write`) -->";
pub(crate) const END: &str = "<!-- bench:latest:end -->";

/// Puts `section` at the top of the Results section of `path`, between the
/// markers, and moves the run that was there just below them, so every
/// earlier run stays, newest first.
pub(crate) fn insert_run(path: &Path, section: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} (it holds the results)", path.display()))?;
    let updated = insert_into(&text, section).with_context(|| path.display().to_string())?;
    // Write then rename, so an interrupted run never leaves half a file.
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, updated).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn insert_into(text: &str, section: &str) -> anyhow::Result<String> {
    if let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) {
        if end < begin {
            bail!("the end marker comes before the begin marker");
        }
        let previous = text[begin + BEGIN.len()..end].trim();
        let rest = text[end + END.len()..].trim_start_matches('\n');
        let mut out = String::with_capacity(text.len() + section.len() + 2);
        out.push_str(&text[..begin]);
        out.push_str(BEGIN);
        out.push_str("\n\n");
        out.push_str(section.trim_end());
        out.push_str("\n\n");
        out.push_str(END);
        out.push_str("\n\n");
        if !previous.is_empty() {
            out.push_str(previous);
            out.push_str("\n\n");
        }
        out.push_str(rest);
        return Ok(out);
    }
    let section = format!("{BEGIN}\n\n{}\n\n{END}\n", section.trim_end());
    let section = section.as_str();
    let mut offset = 0;
    let mut insert_at = None;
    for line in text.split_inclusive('\n') {
        offset += line.len();
        if line.trim_end() == RESULTS_HEADING {
            insert_at = Some(offset);
            break;
        }
    }
    let Some(mut at) = insert_at else {
        bail!("no `{RESULTS_HEADING}` heading to insert the results under");
    };
    // Keep any text that directly follows the heading (up to the first run).
    let rest = &text[at..];
    let first_run = rest
        .find("\n### ")
        .map(|i| i + 1)
        .or_else(|| rest.starts_with("### ").then_some(0));
    at += first_run.unwrap_or(rest.len());
    let (before, after) = text.split_at(at);
    let mut out = String::with_capacity(text.len() + section.len() + 2);
    out.push_str(before);
    if !before.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(section.trim_end());
    out.push_str("\n\n");
    out.push_str(after);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_inserted_newest_first_keeping_the_intro() -> anyhow::Result<()> {
        let doc = "# B\n\nintro\n\n## Results\n\nNewest first.\n\n### run 0\n\nold\n";
        let once = insert_into(doc, "### run 1\n\n| t |\n")?;
        assert_eq!(
            once,
            format!(
                "# B\n\nintro\n\n## Results\n\nNewest first.\n\n{BEGIN}\n\n### run 1\n\n| t |\n\n{END}\n\n### run 0\n\nold\n"
            )
        );
        let twice = insert_into(&once, "### run 2\n")?;
        assert_eq!(
            twice,
            format!(
                "# B\n\nintro\n\n## Results\n\nNewest first.\n\n{BEGIN}\n\n### run 2\n\n{END}\n\n### run 1\n\n| t |\n\n### run 0\n\nold\n"
            )
        );
        assert!(insert_into("# B\n", "### run\n").is_err());
        Ok(())
    }

    #[test]
    fn table_escapes_pipes_and_marks_missing_cells() {
        let row = Row::reading("s", "a|b".into(), 1234.0, "KiB");
        let t = table(&[row]);
        assert!(
            t.contains("| s | a\\|b | 1234 | — | KiB | — | — | — |"),
            "{t}"
        );
    }
}
