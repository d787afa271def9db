//! The real agent binary with a temp store.

use crate::bins::agent_command;
use crate::run;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

/// A device: a store dir and a token, driving `layerlink-agent`.
pub struct Agent {
    /// The store dir (`--store`).
    pub store: PathBuf,
    /// The device's bearer token (`--token`).
    pub token: String,
    /// Extra `sync` arguments (e.g. `--no-zstd`).
    pub sync_args: Vec<String>,
    _tmp: TempDir,
}

impl Agent {
    /// A device with an empty store in a temp dir.
    pub fn new(token: &str) -> Agent {
        let tmp = tempfile::Builder::new()
            .prefix("layerlink-agent-")
            .tempdir()
            .expect("temp dir");
        // A cross-built agent run through a runner (QEMU) defaults to its
        // own platform; the test images are linux/amd64 (as cross/test.sh).
        let sync_args = match std::env::var("LAYERLINK_AGENT_RUNNER") {
            Ok(r) if !r.trim().is_empty() => vec!["--platform".into(), "linux/amd64".into()],
            _ => Vec::new(),
        };
        Agent {
            store: tmp.path().join("store"),
            token: token.to_string(),
            sync_args,
            _tmp: tmp,
        }
    }

    /// A device whose agent asks for gzip archives only (`--no-zstd`, as
    /// agents before the zstd encoding) when `gzip` is true.
    pub fn with_encoding(token: &str, gzip: bool) -> Agent {
        let mut a = Agent::new(token);
        if gzip {
            a.sync_args.push("--no-zstd".into());
        }
        a
    }

    /// A scratch dir that lives as long as the agent (for checkouts).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }

    /// The agent command with nothing added.
    pub fn command(&self) -> Command {
        let mut cmd = agent_command();
        cmd.env("RUST_BACKTRACE", "1");
        cmd
    }

    /// `sync --server URL --store DIR --token T IMAGE...`, whatever it returns.
    pub fn try_sync(&self, server: &str, images: &[&str]) -> Output {
        self.try_sync_with(server, images, &[])
    }

    /// [`Agent::try_sync`] with extra sync arguments (after the usual ones).
    pub fn try_sync_with(&self, server: &str, images: &[&str], extra: &[&str]) -> Output {
        run(self
            .command()
            .arg("sync")
            .arg("--server")
            .arg(server)
            .arg("--store")
            .arg(&self.store)
            .arg("--token")
            .arg(&self.token)
            .args(&self.sync_args)
            .args(extra)
            .args(images))
    }

    /// Sync and panic with the agent's output if it fails.
    pub fn sync(&self, server: &str, images: &[&str]) -> Output {
        let out = self.try_sync(server, images);
        assert_success("sync", &out);
        out
    }

    /// `checkout --store DIR IMAGE DEST` (an OCI runtime bundle at DEST).
    pub fn checkout(&self, image: &str, dest: &Path) -> Output {
        let out = run(self
            .command()
            .arg("checkout")
            .arg("--store")
            .arg(&self.store)
            .arg(image)
            .arg(dest));
        assert_success("checkout", &out);
        out
    }

    /// `status --store DIR --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = run(self
            .command()
            .arg("status")
            .arg("--store")
            .arg(&self.store)
            .arg("--json"));
        assert_success("status", &out);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `verify --store DIR`, whatever it returns.
    pub fn verify(&self) -> Output {
        run(self.command().arg("verify").arg("--store").arg(&self.store))
    }

    /// `gc --store DIR`; panics if it fails.
    pub fn gc(&self) -> Output {
        let out = run(self.command().arg("gc").arg("--store").arg(&self.store));
        assert_success("gc", &out);
        out
    }
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "layerlink-agent {what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
