//! `riskhost new NAME --lang rust|python`: a model project that builds to a
//! valid component as it stands.
//!
//! The templates (in `templates/`) are a small historical VaR in each
//! language, written so both give the same score for the same request: the
//! quant starts from a model that loads, scores and has a test, and changes
//! it. A Rust project depends on the SDK by path (by default the checkout
//! this binary was built from); a Python project carries its own copy of the
//! WIT contract, so it needs nothing from this repository to build.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::{Lang, NewArgs};

/// The componentize-py release Python projects build with; the version the
/// host's tests run (examples/python/build.sh pins the same).
pub(crate) const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The contract, copied into Python projects.
const MODEL_WIT: &str = include_str!("../../../wit/model.wit");
const RUST_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");
const PORTFOLIO: &str = include_str!("templates/portfolio.json");

const RUST_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("templates/rust/lib.rs")),
    ("build.sh", include_str!("templates/rust/build.sh")),
    ("README.md", include_str!("templates/rust/README.md")),
    (".gitignore", include_str!("templates/rust/gitignore")),
    (
        ".cargo/config.toml",
        include_str!("templates/rust/cargo-config.toml"),
    ),
    ("rust-toolchain.toml", RUST_TOOLCHAIN),
    ("portfolio.json", PORTFOLIO),
];

const PYTHON_FILES: &[(&str, &str)] = &[
    ("app.py", include_str!("templates/python/app.py")),
    ("build.sh", include_str!("templates/python/build.sh")),
    ("README.md", include_str!("templates/python/README.md")),
    (".gitignore", include_str!("templates/python/gitignore")),
    ("wit/model.wit", MODEL_WIT),
    ("portfolio.json", PORTFOLIO),
];

/// The SDK of the checkout this binary was built from.
fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

pub(crate) fn run(args: &NewArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let created = scaffold(args, &dir)?;
    let build = "./build.sh";
    println!(
        "created {} model `{}` in {} ({} files)",
        match args.lang {
            Lang::Rust => "a Rust",
            Lang::Python => "a Python",
        },
        args.name,
        dir.display(),
        created.len()
    );
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  {build}");
    println!("  riskhost model test dist/{}.wasm", args.name);
    Ok(())
}

/// Writes the project; returns the files written.
pub(crate) fn scaffold(args: &NewArgs, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    check_name(&args.name)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} already exists and is not empty; pick another --dir or remove it",
                dir.display()
            );
        }
    }
    let mut vars = vec![
        ("{{name}}", args.name.clone()),
        ("{{crate}}", args.name.replace('-', "_")),
        (
            "{{componentize_py_version}}",
            COMPONENTIZE_PY_VERSION.to_owned(),
        ),
    ];
    let files = match args.lang {
        Lang::Rust => {
            let sdk = sdk_path(args.sdk_path.as_deref())?;
            vars.push(("{{sdk_path}}", toml_path(&sdk)?));
            RUST_FILES
        }
        Lang::Python => PYTHON_FILES,
    };
    let mut written = Vec::new();
    if args.lang == Lang::Rust
        && let Some(lock) = sdk_lockfile(args.sdk_path.as_deref())
    {
        // Start from the SDK checkout's resolution: the same wit-bindgen the
        // SDK is tested with, and builds that can share its compiled crates.
        // Cargo drops the entries the project does not use.
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("Cargo.lock");
        std::fs::copy(&lock, &path)
            .with_context(|| format!("cannot copy {} to {}", lock.display(), path.display()))?;
        written.push(path);
    }
    for (relative, template) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = vars
            .iter()
            .fold((*template).to_owned(), |text, (key, value)| {
                text.replace(key, value)
            });
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if relative.ends_with(".sh") {
            make_executable(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

/// The same rule the host applies to `info().name` at load time, checked
/// now so the project does not build a model that cannot load.
fn check_name(name: &str) -> anyhow::Result<()> {
    if !riskhost_engine::ModelName::is_valid(name) {
        bail!(
            "`{name}` is not a valid model name: use lower-kebab-case ASCII (a-z, 0-9, '-'), starting with a letter, e.g. `credit-var`"
        );
    }
    Ok(())
}

/// The SDK folder, checked and made absolute (the project may be anywhere).
fn sdk_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = given.map_or_else(default_sdk_path, Path::to_path_buf);
    let manifest = path.join("Cargo.toml");
    let is_sdk = std::fs::read_to_string(&manifest)
        .map(|text| text.contains("name = \"riskhost-sdk\""))
        .unwrap_or(false);
    if !is_sdk {
        bail!(
            "no riskhost SDK at {} (expected the `sdk/` folder of a riskhost checkout); pass --sdk-path PATH/TO/riskhost/sdk",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}

/// The lockfile of the workspace holding the SDK, if there is one.
fn sdk_lockfile(given: Option<&Path>) -> Option<PathBuf> {
    let sdk = given.map_or_else(default_sdk_path, Path::to_path_buf);
    let lock = sdk.parent()?.join("Cargo.lock");
    lock.is_file().then_some(lock)
}

/// A path as a TOML basic-string body.
fn toml_path(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
    Ok(text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_mode(0o755);
    std::fs::set_permissions(path, permissions)
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, lang: Lang) -> NewArgs {
        NewArgs {
            name: name.into(),
            lang,
            dir: None,
            sdk_path: None,
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("riskhost-new-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_follow_the_hosts_rule() {
        assert!(check_name("my-var").is_ok());
        assert!(check_name("var2").is_ok());
        for bad in ["", "My-var", "my_var", "-var", "var-", "2var", "my--var"] {
            assert!(check_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rust_project_points_at_the_sdk_and_has_no_placeholders_left() {
        let dir = temp("rust");
        let files = scaffold(&args("demo-var", Lang::Rust), &dir).expect("scaffold");
        // The templates, plus the SDK workspace's lockfile.
        assert_eq!(files.len(), RUST_FILES.len() + 1);
        assert!(dir.join("Cargo.lock").is_file());
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        let sdk = default_sdk_path().canonicalize().expect("sdk");
        assert!(
            manifest.contains(&format!("path = \"{}\"", sdk.display())),
            "{manifest}"
        );
        for file in files.iter().filter(|f| !f.ends_with("Cargo.lock")) {
            let text = std::fs::read_to_string(file).expect("read");
            assert!(
                !text.contains("{{"),
                "{} keeps a placeholder",
                file.display()
            );
        }
        let build = std::fs::read_to_string(dir.join("build.sh")).expect("build.sh");
        assert!(build.contains("release/demo_var.wasm"), "{build}");
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("name: \"demo-var\""));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn python_project_carries_the_contract() {
        let dir = temp("python");
        scaffold(&args("demo-py", Lang::Python), &dir).expect("scaffold");
        let wit = std::fs::read_to_string(dir.join("wit/model.wit")).expect("wit");
        assert!(wit.contains("package riskhost:model@1.0.0;"));
        let app = std::fs::read_to_string(dir.join("app.py")).expect("app.py");
        assert!(app.contains("name=\"demo-py\""));
        let build = std::fs::read_to_string(dir.join("build.sh")).expect("build.sh");
        assert!(build.contains(&format!(
            "COMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}"
        )));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn refuses_a_non_empty_folder_and_a_missing_sdk() {
        let dir = temp("busy");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("keep.txt"), "mine").expect("write");
        let error = scaffold(&args("demo", Lang::Python), &dir).unwrap_err();
        assert!(error.to_string().contains("not empty"), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.txt")).expect("read"),
            "mine"
        );
        std::fs::remove_dir_all(&dir).ok();

        let mut rust = args("demo", Lang::Rust);
        rust.sdk_path = Some(PathBuf::from("/nonexistent/sdk"));
        let error = scaffold(&rust, &temp("nosdk")).unwrap_err();
        assert!(error.to_string().contains("--sdk-path"), "{error}");
    }
}
