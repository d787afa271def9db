//! Where the real binaries are, and building them on first use.
//!
//! Cargo gives a test `CARGO_BIN_EXE_<name>` only for its own package's
//! binaries, so the harness runs
//! `cargo build --bins -p layerlink-registry -p layerlink-agent` once per
//! test binary (a no-op when they are up to date: cargo has released its
//! build lock by the time tests run) and takes them from the target dir.
//!
//! Environment:
//! * `CARGO_TARGET_DIR` — honoured like cargo does;
//! * `LAYERLINK_SKIP_BUILD=1` — do not run cargo (binaries already built);
//! * `LAYERLINK_REGISTRY_BIN`, `LAYERLINK_AGENT_BIN` — use these binaries;
//! * `LAYERLINK_AGENT_RUNNER` — a command prefix for the agent, split on
//!   whitespace (e.g. `qemu-aarch64 -L /` for a
//!   cross-built agent).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target dir (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Build the registry and agent binaries once per process.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("LAYERLINK_SKIP_BUILD").is_some() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--bins",
                "-p",
                "layerlink-registry",
                "-p",
                "layerlink-agent",
            ])
            .current_dir(workspace_root())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running cargo build");
        if !out.status.success() {
            panic!(
                "cargo build --bins -p layerlink-registry -p layerlink-agent failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

fn bin(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    ensure_built();
    let p = target_dir().join("debug").join(name);
    assert!(
        p.exists(),
        "{} not found: build it with `cargo build --workspace --bins` (or set {env})",
        p.display()
    );
    p
}

/// The `layerlink-registry` binary.
pub fn registry_bin() -> PathBuf {
    bin("LAYERLINK_REGISTRY_BIN", "layerlink-registry")
}

/// The `layerlink-agent` binary.
pub fn agent_bin() -> PathBuf {
    bin("LAYERLINK_AGENT_BIN", "layerlink-agent")
}

/// A command running the agent, through `LAYERLINK_AGENT_RUNNER` if set.
pub fn agent_command() -> Command {
    let bin = agent_bin();
    match std::env::var("LAYERLINK_AGENT_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().expect("non-empty runner"));
            cmd.args(parts).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}
