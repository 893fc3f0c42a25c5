//! `riskhost-bench`: riskhost's benchmarks, run as `cargo xtask bench`.
//!
//! ```text
//! cargo xtask bench [--quick] [--write] [--only LIST] [--dist DIR]
//! ```
//!
//! Rebuilds the example models (`plugins/build.sh`) so the measured wasm is
//! the current source, builds `riskhost` in release mode for the service
//! scenarios, loads the models through the real `ModelEngine`, runs every
//! scenario in [`scenarios::ALL`] and prints one markdown table to stdout
//! (progress goes to stderr). `--quick` takes fewer, shorter samples (a smoke
//! run); `--write` also puts the run — date, command, machine, table — at
//! the top of the Results section of BENCHMARKS.md, above earlier runs.
//! `--only` runs some scenarios (by key, comma-separated; for development,
//! never written). `--dist DIR` benchmarks the components in DIR instead of
//! rebuilding `plugins/dist/` (to compare build settings); such runs are not
//! written either.

mod data;
mod harness;
mod loadgen;
mod reference;
mod report;
mod scenarios;
mod service;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask bench [--quick] [--write] [--only LIST] [--dist DIR]

  --quick      fewer, shorter samples (a smoke run, under 3 minutes once built)
  --write      put the results at the top of the Results section of BENCHMARKS.md
  --only LIST  run only these scenarios (comma-separated keys: compute, overhead,
               http, batch, batching, hotswap, startup, memory, events, backtest,
               fleet, analytics, runs, challenger, platform, sizes);
               cannot be combined with --write
  --dist DIR   benchmark DIR/<model>.wasm instead of building plugins/dist/
               (to compare build settings; cannot be combined with --write)";

struct Options {
    quick: bool,
    write: bool,
    only: Option<Vec<String>>,
    dist: Option<PathBuf>,
}

fn parse(args: &[String]) -> anyhow::Result<Option<Options>> {
    let mut options = Options {
        quick: false,
        write: false,
        only: None,
        dist: None,
    };
    let mut rest = args.iter().map(String::as_str);
    match rest.next() {
        Some("bench") => {}
        Some("-h" | "--help" | "help") => return Ok(None),
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
        None => bail!("no task given\n\n{USAGE}"),
    }
    while let Some(arg) = rest.next() {
        match arg {
            "--quick" => options.quick = true,
            "--write" => options.write = true,
            "--dist" => {
                let dir = rest.next().context("--dist needs a directory")?;
                options.dist = Some(PathBuf::from(dir));
            }
            "--only" => {
                let list = rest.next().context("--only needs a list of scenarios")?;
                let keys: Vec<String> = list.split(',').map(str::to_owned).collect();
                for key in &keys {
                    if !scenarios::ALL.iter().any(|s| s.key == key) {
                        bail!("unknown scenario `{key}`\n\n{USAGE}");
                    }
                }
                options.only = Some(keys);
            }
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown option `{other}`\n\n{USAGE}"),
        }
    }
    if options.write && options.dist.is_some() {
        bail!("--write records the product's build only; drop --dist to write the results");
    }
    if options.write && options.only.is_some() {
        bail!("--write records complete runs only; drop --only to write the results");
    }
    Ok(Some(options))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(options) = parse(&args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    if cfg!(debug_assertions) {
        bail!(
            "this is a debug build, whose timings mean nothing; run `cargo xtask bench` (a release build)"
        );
    }
    // Under cargo (the `xtask` alias) the command a reader can rerun is the alias.
    let command = if std::env::var_os("CARGO").is_some() {
        format!("cargo xtask {}", args.join(" "))
    } else {
        std::env::args().collect::<Vec<_>>().join(" ")
    };

    let root = workspace_root()?;
    let dist = match &options.dist {
        Some(dir) => {
            eprintln!(
                "benchmarking the components in {} (not rebuilt)",
                dir.display()
            );
            dir.clone()
        }
        None => {
            build_plugins(&root)?;
            root.join("plugins/dist")
        }
    };

    let bin = build_host(&root)?;

    let machine = report::Machine::detect(&root);
    eprintln!(
        "machine: {} cores, {}, Linux {}, {}",
        machine.cores, machine.cpu, machine.kernel, machine.rustc
    );
    let started = Instant::now();
    eprintln!("loading the models through ModelEngine::load …");
    let ctx = scenarios::Context::new(&root, &dist, &bin, options.quick)?;

    let mut rows = Vec::new();
    for scenario in scenarios::ALL {
        if let Some(only) = &options.only
            && !only.iter().any(|k| k == scenario.key)
        {
            continue;
        }
        let t = Instant::now();
        eprintln!("running: {} …", scenario.name);
        let new =
            (scenario.run)(&ctx).with_context(|| format!("scenario `{}` failed", scenario.name))?;
        eprintln!("  {} rows in {:.1} s", new.len(), t.elapsed().as_secs_f64());
        rows.extend(new);
    }
    eprintln!("done in {:.1} s\n", started.elapsed().as_secs_f64());

    let section = report::run_section(
        &command,
        &machine,
        options.quick,
        (ctx.sampling, ctx.load),
        started.elapsed(),
        &rows,
    );
    println!("{section}");
    if options.write {
        let path = root.join("BENCHMARKS.md");
        report::insert_run(&path, &section)?;
        eprintln!("wrote the results into {}", path.display());
    }
    Ok(())
}

/// The workspace root: two levels above this crate's manifest.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize()
        .with_context(|| format!("cannot find the workspace root at {}", root.display()))
}

/// Builds the `riskhost` binary in release mode next to this one (same
/// target directory and profile) and returns its path.
fn build_host(root: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building riskhost (release) …");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "riskhost",
            "--bin",
            "riskhost",
        ])
        .current_dir(root)
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p riskhost failed ({status})");
    }
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let bin = exe
        .parent()
        .context("this executable has no directory")?
        .join("riskhost");
    if !bin.exists() {
        bail!("built riskhost, but it is not at {}", bin.display());
    }
    Ok(bin)
}

/// Runs `plugins/build.sh`, so the benchmarked components match the source.
fn build_plugins(root: &Path) -> anyhow::Result<()> {
    build_script(root, "plugins/build.sh", "the models")
}

/// Runs the build script `script` (relative to `root`), its output on stderr.
pub(crate) fn build_script(root: &Path, script: &str, what: &str) -> anyhow::Result<()> {
    let script = root.join(script);
    eprintln!("building {what}: {} …", script.display());
    let status = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        // Keep stdout for the table.
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_the_task_and_its_flags() -> anyhow::Result<()> {
        let o = parse(&args("bench --quick --write"))?.context("expected options")?;
        assert!(o.quick && o.write);
        let o = parse(&args("bench"))?.context("expected options")?;
        assert!(!o.quick && !o.write);
        assert!(parse(&args("bench --help"))?.is_none());
        let o = parse(&args("bench --dist /tmp/x"))?.context("expected options")?;
        assert_eq!(o.dist, Some(PathBuf::from("/tmp/x")));
        assert!(parse(&args("bench --dist")).is_err());
        assert!(parse(&args("bench --dist /tmp/x --write")).is_err());
        assert!(parse(&args("bench --fast")).is_err());
        let o = parse(&args("bench --only http,batch"))?.context("expected options")?;
        assert_eq!(o.only, Some(vec!["http".to_owned(), "batch".to_owned()]));
        assert!(parse(&args("bench --only nope")).is_err());
        assert!(parse(&args("bench --only http --write")).is_err());
        assert!(parse(&args("test")).is_err());
        assert!(parse(&[]).is_err());
        Ok(())
    }
}
