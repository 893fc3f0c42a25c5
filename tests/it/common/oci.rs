//! A private OCI registry for a test: Debian's `docker-registry`
//! (distribution 2.8, installed by tests/tools.sh) on a free loopback port,
//! its storage in a temporary directory; and `oras` (Python, the venv of
//! tests/tools.sh) as an independent client, through tests/oci_client.py.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::db::free_port;
use super::{TempDir, workspace};

pub(crate) struct Registry {
    child: Option<Child>,
    dir: TempDir,
    /// `127.0.0.1:PORT`
    pub(crate) host: String,
}

impl Registry {
    pub(crate) fn start() -> Registry {
        Self::start_with_auth(None)
    }

    /// A registry that answers 401 without the basic credentials
    /// `user:password` (an htpasswd file made with the venv's bcrypt).
    pub(crate) fn start_authenticated(user: &str, password: &str) -> Registry {
        Self::start_with_auth(Some((user, password)))
    }

    fn start_with_auth(credentials: Option<(&str, &str)>) -> Registry {
        let dir = TempDir::new("oci-registry");
        let host = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = credentials {
            let hash = oras(&["bcrypt", password]);
            let htpasswd = dir.path().join("htpasswd");
            let line = format!("{user}:{}\n", hash["hash"].as_str().unwrap_or_default());
            std::fs::write(&htpasswd, line).expect("htpasswd");
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: riskhost-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml).expect("registry config");
        let mut registry = Registry {
            child: None,
            dir,
            host,
        };
        registry.start_again();
        registry
    }

    /// Starts the registry (again) and waits until `/v2/` answers.
    pub(crate) fn start_again(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start docker-registry (tests/tools.sh installs it)");
        self.child = Some(child);
        let url = format!("http://{}/v2/", self.host);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // 200, or 401 from a registry that wants credentials: it is up.
            if reqwest::blocking::get(&url)
                .is_ok_and(|r| r.status().is_success() || r.status().as_u16() == 401)
            {
                return;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `oci://HOST/REPO` + `suffix` (`:tag` or `@sha256:…`).
    pub(crate) fn reference(&self, repo: &str, suffix: &str) -> String {
        format!("oci://{}/{repo}{suffix}", self.host)
    }

    /// Where the registry keeps the blob `digest` (to tamper with it).
    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs tests/oci_client.py (oras) with `args`; its JSON answer.
pub(crate) fn oras(args: &[&str]) -> Value {
    let python = std::env::var("RISKHOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(workspace().join("tests/oci_client.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e} (tests/run.sh sets RISKHOST_TEST_PYTHON)")
        });
    assert!(
        out.status.success(),
        "oci_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // oras prints progress on standard output too; the answer is the last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("oci_client.py answered {stdout:?}: {e}"))
}
