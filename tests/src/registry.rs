//! The real registry process.

use crate::bins::registry_bin;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

/// How long `Registry::start` waits for the "listening on" line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `LAYERLINK_TEST_BACKEND=postgres-s3`: every registry started without a
/// `[storage]` section of its own gets its metadata and device records in a
/// PostgreSQL cluster and its blobs in a Garage bucket, both started for it
/// (and stopped with it), so a suite written for the embedded default runs
/// unchanged on the production backends (`scripts/test.sh` runs a set of
/// suites both ways). Unset or `embedded`: the embedded default.
pub const BACKEND_VAR: &str = "LAYERLINK_TEST_BACKEND";

/// The servers behind a registry started on the production backends.
struct Backends {
    _postgres: crate::postgres::TestPostgres,
    _garage: crate::garage::Garage,
}

/// With [`BACKEND_VAR`] = `postgres-s3` and no `[storage]` in `config`:
/// start the servers and return the `[storage]` section naming them.
fn production_backends(config: Option<&str>) -> Option<(Backends, String)> {
    match std::env::var(BACKEND_VAR).as_deref() {
        Err(_) | Ok("" | "embedded") => return None,
        Ok("postgres-s3") => {}
        Ok(other) => panic!("{BACKEND_VAR}={other}: expected `embedded` or `postgres-s3`"),
    }
    if config.is_some_and(|c| c.contains("[storage")) {
        return None;
    }
    let postgres = crate::postgres::TestPostgres::start();
    let url = postgres.create_database();
    let garage = crate::garage::Garage::start("registry");
    let storage = garage.storage_toml_with_metadata("e2e", &url);
    Some((
        Backends {
            _postgres: postgres,
            _garage: garage,
        },
        storage,
    ))
}

/// A running `layerlink-registry serve` on `127.0.0.1:<ephemeral port>` with
/// its own data dir. Killed (and its temp data dir removed) on drop.
pub struct Registry {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub host: String,
    data: PathBuf,
    config: Option<PathBuf>,
    creds: Option<(String, String)>,
    output: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    tmp: Option<TempDir>,
    /// Declared last: dropped after the process is killed.
    backends: Option<Backends>,
}

impl Registry {
    /// Start a registry with a fresh temp data dir and, if given, this TOML
    /// config (written to a file and passed with `--config`).
    pub fn start(config: Option<&str>) -> Registry {
        let tmp = tempfile::Builder::new()
            .prefix("layerlink-registry-")
            .tempdir()
            .expect("temp dir");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("create data dir");
        match production_backends(config) {
            None => Self::start_at(tmp, &data, config, None),
            Some((backends, storage)) => {
                // The storage tables go last: a config's own top-level keys
                // must come before any table.
                let config = format!("{}\n{storage}", config.unwrap_or(""));
                Self::start_at(tmp, &data, Some(&config), Some(backends))
            }
        }
    }

    /// Start another registry process on the same data dir as `self` after
    /// stopping `self` (restart / persistence tests).
    pub fn restart(mut self) -> Registry {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let config_text = self
            .config
            .as_ref()
            .map(|p| std::fs::read_to_string(p).expect("config"));
        let tmp = self.tmp.take().expect("temp dir present until drop");
        let backends = self.backends.take();
        Self::start_at(tmp, &self.data, config_text.as_deref(), backends)
    }

    /// Stop `self`, run `f` on its data dir (offline commands such as
    /// `gc`), then start another registry process on it.
    pub fn restart_after(mut self, f: impl FnOnce(&Path)) -> Registry {
        let _ = self.child.kill();
        let _ = self.child.wait();
        f(&self.data);
        self.restart()
    }

    fn start_at(
        tmp: TempDir,
        data: &Path,
        config: Option<&str>,
        backends: Option<Backends>,
    ) -> Registry {
        let mut cmd = Command::new(registry_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data);
        let mut config_path = None;
        let mut creds = None;
        // The tests turn the background preparation of pushed images off
        // unless their config names it (`precompute = true`): it compresses
        // every object of every pushed image at zstd level 19 (~50 s of CPU
        // per 60 MB image), which would double the suite's CPU on 2 cores.
        // Syncs make what they need on first use either way; the
        // precompute test turns it on and checks what it made.
        let with_default = match config {
            Some(t) if t.contains("precompute") => Some(t.to_owned()),
            Some(t) => Some(format!("precompute = false\n{t}")),
            None => Some("precompute = false\n".to_owned()),
        };
        if let Some(text) = with_default.as_deref() {
            let p = tmp.path().join("registry.toml");
            std::fs::write(&p, text).expect("write config");
            cmd.arg("--config").arg(&p);
            config_path = Some(p);
            creds = publisher_creds(text);
        }
        let stderr_path = tmp.path().join("registry.stderr");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_BACKTRACE", "1");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(rest.trim().to_string());
                        }
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let url = match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "registry did not print 'listening on' within {START_TIMEOUT:?} (exit: {status:?})\n--- stdout\n{}\n--- stderr\n{}",
                    output.lock().unwrap().join("\n"),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        Registry {
            child,
            url,
            host,
            data: data.to_path_buf(),
            config: config_path,
            creds,
            output,
            stderr_path,
            tmp: Some(tmp),
            backends,
        }
    }

    /// The registry process' id (the benchmark reads its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The config file the registry was started with (tests rewrite it and
    /// send `SIGHUP`).
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Send the registry process a signal (`kill -s SIG PID`).
    pub fn signal(&self, sig: &str) {
        crate::run_ok(
            Command::new("kill")
                .arg("-s")
                .arg(sig)
                .arg(self.child.id().to_string()),
        );
    }

    /// Wait up to 30 s for `needle` to appear `count` times in the log.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.log().matches(needle).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {count}x {needle:?} in the registry log within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The socket address the registry listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.host.parse().expect("host is ip:port")
    }

    /// `user:password` of the first publisher in the config, if any.
    pub fn creds(&self) -> Option<String> {
        self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"))
    }

    /// Everything the process wrote so far (stdout then stderr).
    pub fn log(&self) -> String {
        format!(
            "{}\n{}",
            self.output.lock().unwrap().join("\n"),
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Delta entries the registry reports having sent so far (the `sent=N`
    /// of its `archive deltas` log lines, summed).
    pub fn deltas_sent(&self) -> u64 {
        self.log()
            .lines()
            .filter(|l| l.contains("archive deltas"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("sent="))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
    }

    /// `layerlink-registry stats --data DIR --json` (with the registry's
    /// `--config`, which says where blobs are), parsed.
    pub fn stats(&self) -> serde_json::Value {
        let out = crate::run(
            Command::new(registry_bin())
                .arg("stats")
                .arg("--data")
                .arg(&self.data)
                .args(self.storage_config_arg())
                .arg("--json"),
        );
        assert!(
            out.status.success(),
            "layerlink-registry stats failed ({}):\n{}\n--- registry log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stats --json printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `layerlink-registry devices --data DIR --json`, parsed: what each
    /// device last reported holding.
    pub fn devices(&self) -> serde_json::Value {
        let out = crate::run(
            Command::new(registry_bin())
                .arg("devices")
                .arg("--data")
                .arg(&self.data)
                .args(self.storage_config_arg())
                .arg("--json"),
        );
        assert!(
            out.status.success(),
            "layerlink-registry devices failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "devices --json printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `--config FILE` for offline commands when the config has a
    /// `[storage]` section (metadata elsewhere than the data dir).
    pub fn storage_config_arg(&self) -> Vec<std::ffi::OsString> {
        match &self.config {
            Some(path) if std::fs::read_to_string(path).is_ok_and(|t| t.contains("[storage]")) => {
                vec!["--config".into(), path.into()]
            }
            _ => Vec::new(),
        }
    }

    /// One number from `stats --json` (panics naming the field if absent).
    pub fn stat(&self, field: &str) -> u64 {
        let stats = self.stats();
        stats[field]
            .as_u64()
            .unwrap_or_else(|| panic!("stats --json has no numeric `{field}`: {stats}"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- registry log ({})\n{}", self.url, self.log());
        }
    }
}

/// The first `[[publishers]]` user/password of a registry config.
fn publisher_creds(config: &str) -> Option<(String, String)> {
    let v: toml::Value = toml::from_str(config).expect("registry config is valid TOML");
    let p = v.get("publishers")?.as_array()?.first()?;
    Some((
        p.get("user")?.as_str()?.to_string(),
        p.get("password")?.as_str()?.to_string(),
    ))
}

/// `layerlink-registry gc --json --data DATA ARGS…` (offline: nothing may
/// serve DATA): its JSON report. Panics with stderr if it fails.
pub fn gc_json(data: &Path, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new(crate::bins::registry_bin())
        .args(["gc", "--json", "--data"])
        .arg(data)
        .args(args)
        .output()
        .expect("running layerlink-registry gc");
    assert!(
        out.status.success(),
        "gc {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gc --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
