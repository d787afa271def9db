//! Start the real `layerlink-registry serve` for a test: one helper for
//! every test file that talks to a running registry (`oci_api`,
//! `edit_registry`, `device_auth`, `oci_conformance`).

// Each test file is its own crate and uses a different part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The registry binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_layerlink-registry")
}

/// The first line `child` printed on its piped stdout (`listening on
/// URL`, or what went wrong), trimmed.
pub fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

/// A `serve` process on a free loopback port with its own data directory,
/// killed on drop (printing its log when the test failed).
pub struct Served {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`, as the process printed it.
    pub base: String,
    /// Its `--data` directory.
    pub data: PathBuf,
    /// The file its stderr (the log) goes to.
    pub stderr: PathBuf,
    dir: tempfile::TempDir,
}

impl Served {
    /// Start with `config` as the `--config` file's text when given, and
    /// `RUST_LOG=rust_log` when given.
    pub fn start(config: Option<&str>, rust_log: Option<&str>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data);
        if let Some(text) = config {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let line = first_line(&mut child);
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no listening line: {line:?}"))
            .to_owned();
        Served {
            child,
            base,
            data,
            stderr,
            dir,
        }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- registry log\n{}", self.log());
        }
    }
}
