//! `layerlink-bench`: layerlink sync vs `skopeo copy` + `umoci unpack`,
//! side by side on the cached Debian test images (issues 2 and 3).
//!
//! One real registry (the binary given, normally the release build) gets
//! every test image pushed with skopeo through a proxy that times each
//! manifest PUT (the registry ingests the layers inside that request), then
//! the device side runs each scenario twice on fresh device directories:
//!
//! * **layerlink**: `layerlink-agent sync` through a TCP byte-counting proxy,
//!   then `layerlink-agent checkout --read-only`;
//! * **peer**: `skopeo copy docker://PROXY/... oci:LAYOUT:TAG` through a
//!   counting proxy to the same registry, into a layout already holding
//!   the device's earlier image(s), then `umoci unpack`.
//!
//! Device CPU time and peak RSS come from `wait4` via GNU time
//! (`/usr/bin/time`, user+sys and max RSS of the measured process and its
//! waited-for children); bytes from the proxy (TCP payload, both ways);
//! disk from a walk of the device directory counting each inode once.
//! The missing files' gzip'd size is computed here, independently of the
//! registry: every distinct non-empty content of the target image not held
//! by the earlier image(s), gzip'd on its own (flate2, default level).
//!
//! Prints a markdown report and writes it to `--out`. The benchmark
//! reports: missed targets are printed as MISS, the exit code stays 0
//! unless a step fails.
//!
//! ```text
//! scripts/bench.sh        # builds the release binaries, runs this
//! ```

use layerlink_tests::args::mib;
use layerlink_tests::layers::{image_files, layer_reader};
use layerlink_tests::oci::OciLayout;
use layerlink_tests::{test_images, CountingProxy, Registry};
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: layerlink-bench --registry-bin PATH --agent-bin PATH [--agent-label TEXT]
                       [--out FILE] [--command TEXT] [--reps N]

  --registry-bin PATH  the registry binary (normally target/release/layerlink-registry)
  --agent-bin PATH     the agent binary (normally target/release-agent/layerlink-agent)
  --agent-label TEXT   how to name the agent build in the report (default: its path)
  --out FILE           also write the report there (default: print only)
  --command TEXT       the command line to quote in the report (default: this one)
  --reps N             runs of the update scenario (the CPU target); the median by CPU is kept (default 5)
";

const TOKEN: &str = "tok-bench";
const REGISTRY_CONFIG: &str = r#"
[[devices]]
id = "bench"
token = "tok-bench"
repositories = ["*"]
"#;
/// The GNU time binary (it reports the child's `wait4` rusage).
const GNU_TIME: &str = "/usr/bin/time";
const PLATFORM: &str = "linux/amd64";

/// Targets from issue 3.
const TARGET_BYTES_OVER_MISSING_GZ: f64 = 1.3;
const TARGET_PULL_OVER_LAYERLINK: f64 = 10.0;
const TARGET_AGENT_RSS: u64 = 8 * 1024 * 1024;
const TARGET_CPU_RATIO: f64 = 0.1;

struct Opts {
    registry_bin: PathBuf,
    agent_bin: PathBuf,
    agent_label: String,
    out: Option<PathBuf>,
    command: String,
    reps: usize,
}

fn parse_args() -> Result<Opts, String> {
    let (mut registry_bin, mut agent_bin, mut agent_label, mut out, mut command) =
        (None, None, None, None, None);
    let mut reps = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--registry-bin" => registry_bin = Some(PathBuf::from(value()?)),
            "--agent-bin" => agent_bin = Some(PathBuf::from(value()?)),
            "--agent-label" => agent_label = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--command" => command = Some(value()?),
            "--reps" => {
                let v = value()?;
                reps = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--reps: {v:?} is not a positive number"))?;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let registry_bin = registry_bin.ok_or("--registry-bin is required")?;
    let agent_bin: PathBuf = agent_bin.ok_or("--agent-bin is required")?;
    for p in [&registry_bin, &agent_bin] {
        if !p.is_file() {
            return Err(format!("{} does not exist (build it first)", p.display()));
        }
    }
    Ok(Opts {
        agent_label: agent_label.unwrap_or_else(|| agent_bin.display().to_string()),
        registry_bin: std::fs::canonicalize(&registry_bin).map_err(|e| e.to_string())?,
        agent_bin: std::fs::canonicalize(&agent_bin).map_err(|e| e.to_string())?,
        out,
        reps,
        command: command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
    })
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("layerlink-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerlink-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Measuring one process

/// What one device-side command cost.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: f64,
    user: f64,
    sys: f64,
    /// Peak RSS in bytes.
    rss: u64,
}

impl Cost {
    /// Two commands one after the other: times add, RSS is the larger.
    fn then(self, o: Cost) -> Cost {
        Cost {
            wall: self.wall + o.wall,
            user: self.user + o.user,
            sys: self.sys + o.sys,
            rss: self.rss.max(o.rss),
        }
    }

    /// User + system CPU seconds.
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// Run `cmd` under GNU time; fail with its output if it fails.
fn measured(what: &str, cmd: &mut Command) -> anyhow::Result<Cost> {
    let report = tempfile::NamedTempFile::new()?;
    let mut timed = Command::new(GNU_TIME);
    timed
        .arg("-f")
        .arg("%U %S %M")
        .arg("-o")
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let t = Instant::now();
    let out = timed.output()?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(report.path())?;
    let f: Vec<&str> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    anyhow::ensure!(f.len() == 3, "unexpected GNU time output {text:?}");
    Ok(Cost {
        wall,
        user: f[0].parse()?,
        sys: f[1].parse()?,
        rss: f[2].parse::<u64>()? * 1024,
    })
}

/// Disk blocks used under `dir`, each inode counted once (like `du -s`).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        if seen.insert((m.dev(), m.ino())) {
            *total += m.blocks() * 512;
        }
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), seen, total);
                }
            }
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    walk(dir, &mut seen, &mut total);
    total
}

// ---------------------------------------------------------------------------
// Timing manifest PUTs on the push path

/// A loopback TCP proxy that notes, per connection, when a request starting
/// `PUT /v2/…/manifests/` begins and when the first byte of its answer
/// comes back: the registry ingests the image's layers inside that request.
struct PutTimer {
    addr: SocketAddr,
    times: Arc<Mutex<Vec<Duration>>>,
    stop: Arc<AtomicBool>,
}

impl PutTimer {
    fn start(upstream: SocketAddr) -> std::io::Result<PutTimer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let times = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (times.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let pending: Arc<Mutex<Option<Instant>>> = Arc::default();
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let p = pending.clone();
                std::thread::spawn(move || {
                    pump(client, server, |chunk| {
                        let line = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
                        let line = String::from_utf8_lossy(line);
                        if line.starts_with("PUT /v2/") && line.contains("/manifests/") {
                            *p.lock().unwrap() = Some(Instant::now());
                        }
                    })
                });
                let t = t.clone();
                std::thread::spawn(move || {
                    pump(s2, c2, |_| {
                        if let Some(start) = pending.lock().unwrap().take() {
                            t.lock().unwrap().push(start.elapsed());
                        }
                    })
                });
            }
        });
        Ok(PutTimer { addr, times, stop })
    }

    /// The manifest PUT durations seen since the last call.
    fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.times.lock().unwrap())
    }
}

impl Drop for PutTimer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, mut on_chunk: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        on_chunk(&buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------
// Independent figures from the image layout

/// Uncompressed tar bytes of every layer of `tag`.
fn uncompressed_bytes(layout: &OciLayout, tag: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for layer in layout.layers(tag) {
        total += std::io::copy(&mut layer_reader(layout, &layer), &mut std::io::sink())?;
    }
    Ok(total)
}

/// What a device holding `held` lacks of `tag`, by content.
#[derive(Debug, Default, Clone, Copy)]
struct Missing {
    /// Distinct non-empty contents the device lacks.
    files: u64,
    /// Their raw size.
    raw: u64,
    /// Their sizes gzip'd one by one (flate2, default level).
    gz: u64,
    /// Tar entries of the target image (every one costs archive metadata).
    entries: u64,
}

fn missing(layout: &OciLayout, held: &[&str], tag: &str) -> anyhow::Result<Missing> {
    let held = image_files(layout, held).digests;
    let empty = layerlink_tests::sha256_hex(b"");
    let mut counted = BTreeSet::new();
    let mut m = Missing::default();
    let mut content = Vec::new();
    for layer in layout.layers(tag) {
        let mut archive = tar::Archive::new(layer_reader(layout, &layer));
        for entry in archive.entries()? {
            let mut entry = entry?;
            m.entries += 1;
            let t = entry.header().entry_type();
            if !(t.is_file() || t == tar::EntryType::Continuous) {
                continue;
            }
            content.clear();
            entry.read_to_end(&mut content)?;
            let digest = layerlink_tests::sha256_hex(&content);
            if digest == empty || held.contains(&digest) || !counted.insert(digest) {
                continue;
            }
            m.files += 1;
            m.raw += content.len() as u64;
            let mut gz =
                flate2::write::GzEncoder::new(CountingSink(0), flate2::Compression::default());
            gz.write_all(&content)?;
            m.gz += gz.finish()?.0;
        }
    }
    Ok(m)
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The two device sides

/// `base-a:v1` → `test/base-a:v1`.
fn remote(tag: &str) -> String {
    format!("test/{tag}")
}

/// A device directory for one side of one scenario.
struct Device {
    dir: tempfile::TempDir,
    checkouts: u32,
}

impl Device {
    fn new(prefix: &str) -> anyhow::Result<Device> {
        Ok(Device {
            dir: tempfile::Builder::new().prefix(prefix).tempdir()?,
            checkouts: 0,
        })
    }

    /// A copy of this device's `store` (agent) or `oci` layout (peer) —
    /// `cp -a`, hard links within it stay links — so every repetition
    /// starts from the same state. The earlier bundles are not copied: the
    /// measured steps do not read them, and [`Device::disk`] of the original
    /// counts them.
    fn clone_device(&self, prefix: &str) -> anyhow::Result<Device> {
        let copy = Device {
            dir: tempfile::Builder::new().prefix(prefix).tempdir()?,
            checkouts: self.checkouts,
        };
        for part in ["store", "oci"] {
            let from = self.path(part);
            if !from.exists() {
                continue;
            }
            let out = Command::new("cp")
                .arg("-a")
                .arg(&from)
                .arg(copy.path(part))
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "copying {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(copy)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn next_bundle(&mut self) -> PathBuf {
        self.checkouts += 1;
        self.path(&format!("bundle-{}", self.checkouts))
    }

    fn disk(&self) -> u64 {
        disk_use(self.dir.path())
    }
}

/// One side's figures for the measured image (the median repetition).
#[derive(Debug, Clone, Copy, Default)]
struct Side {
    bytes: u64,
    fetch: Cost,
    unpack: Cost,
    disk_before: u64,
    disk_after: u64,
    /// Lowest and highest total CPU over the repetitions.
    cpu_range: (f64, f64),
    /// Whether every repetition moved the same number of bytes.
    bytes_stable: bool,
    /// Highest peak RSS of any process over the repetitions.
    rss_max: u64,
    /// How many repetitions ran.
    runs: usize,
}

impl Side {
    fn total(&self) -> Cost {
        self.fetch.then(self.unpack)
    }
}

/// The two tools on the device side.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Layerlink,
    Peer,
}

impl Tool {
    fn prefix(self) -> &'static str {
        match self {
            Tool::Layerlink => "bench-layerlink-",
            Tool::Peer => "bench-skopeo-",
        }
    }
}

struct Bench<'a> {
    opts: &'a Opts,
    /// Counts the bytes between the device side and the registry.
    proxy: CountingProxy,
    /// In front of `proxy`: keeps what the registry sent when asked to.
    recorder: Recorder,
    /// Device trees being removed in the background.
    trash: Vec<std::thread::JoinHandle<()>>,
    /// Devices that fetched and unpacked some images, by tool and images.
    prepared: std::collections::BTreeMap<(Tool, Vec<&'static str>), Device>,
}

impl Bench<'_> {
    /// `layerlink-agent sync` of `tag` onto `dev` from `server`.
    fn agent_sync(&self, server: &str, dev: &Device, tag: &str) -> Command {
        let mut cmd = Command::new(&self.opts.agent_bin);
        cmd.arg("sync")
            .arg("--server")
            .arg(server)
            .arg("--store")
            .arg(dev.path("store"))
            .arg("--token")
            .arg(TOKEN)
            .arg("--platform")
            .arg(PLATFORM)
            .arg("--quiet")
            .arg(remote(tag));
        cmd
    }

    /// Fetch `tag` onto `dev`: agent sync, or skopeo copy.
    fn fetch(&self, tool: Tool, dev: &Device, tag: &str) -> anyhow::Result<Cost> {
        match tool {
            Tool::Layerlink => measured(
                &format!("layerlink-agent sync {tag}"),
                &mut self.agent_sync(&format!("http://{}", self.recorder.addr), dev, tag),
            ),
            Tool::Peer => measured(
                &format!("skopeo copy {tag}"),
                Command::new("skopeo")
                    .args([
                        "--insecure-policy",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                    ])
                    .arg(format!("docker://{}/{}", self.recorder.addr, remote(tag)))
                    .arg(format!("oci:{}:{tag}", dev.path("oci").display())),
            ),
        }
    }

    /// Make `tag` runnable on `dev`: agent checkout, or umoci unpack.
    fn unpack(&self, tool: Tool, dev: &mut Device, tag: &str) -> anyhow::Result<Cost> {
        let dest = dev.next_bundle();
        match tool {
            Tool::Layerlink => measured(
                &format!("layerlink-agent checkout {tag}"),
                Command::new(&self.opts.agent_bin)
                    .arg("checkout")
                    .arg("--store")
                    .arg(dev.path("store"))
                    .arg("--read-only")
                    .arg(remote(tag))
                    .arg(dest),
            ),
            Tool::Peer => measured(
                &format!("umoci unpack {tag}"),
                Command::new("umoci")
                    .arg("unpack")
                    .arg("--image")
                    .arg(format!("{}:{tag}", dev.path("oci").display()))
                    .arg(dest),
            ),
        }
    }

    /// A device that fetched and unpacked `held` (made once, then reused).
    fn prepared(&mut self, tool: Tool, held: &[&'static str]) -> anyhow::Result<&Device> {
        let key = (tool, held.to_vec());
        if !self.prepared.contains_key(&key) {
            let mut dev = Device::new(tool.prefix())?;
            for h in held {
                self.fetch(tool, &dev, h)?;
                self.unpack(tool, &mut dev, h)?;
            }
            self.prepared.insert(key.clone(), dev);
        }
        Ok(&self.prepared[&key])
    }

    /// `reps` times: a copy of the device holding `held` fetches and
    /// unpacks `tag`; the repetition with the median CPU time is kept.
    fn measure(
        &mut self,
        tool: Tool,
        held: &[&'static str],
        tag: &str,
        reps: usize,
        record: bool,
    ) -> anyhow::Result<(Side, Option<Anatomy>)> {
        let mut runs = Vec::new();
        let mut anatomy_of_first = None;
        for rep in 0..reps.max(1) {
            let prepared = self.prepared(tool, held)?;
            let disk_prepared = prepared.disk();
            let mut dev = prepared.clone_device(tool.prefix())?;
            if tool == Tool::Layerlink && !held.is_empty() {
                // Unmeasured no-op sync: the registry's record of this
                // device's holdings matches its store again (an earlier
                // repetition moved it on), as it would on a real device.
                for h in held {
                    self.fetch(tool, &dev, h)?;
                }
            }
            let clone_before = dev.disk();
            let record = record && rep == 0;
            self.recorder.record(record);
            self.proxy.reset();
            let fetch = self.fetch(tool, &dev, tag)?;
            let bytes = self.proxy.bytes_total();
            self.recorder.record(false);
            let streams = self.recorder.take();
            if record {
                anatomy_of_first = Some(archive_anatomy(&streams, tag)?);
            }
            let unpack = self.unpack(tool, &mut dev, tag)?;
            let added = dev.disk().saturating_sub(clone_before);
            // Removing a device tree takes long on a busy disk: overlap it.
            self.trash.push(std::thread::spawn(move || drop(dev)));
            runs.push(Side {
                bytes,
                fetch,
                unpack,
                disk_before: disk_prepared,
                disk_after: disk_prepared + added,
                ..Side::default()
            });
        }
        let cpus: Vec<f64> = runs.iter().map(|r| r.total().cpu()).collect();
        let range = cpus
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
        let stable = runs.iter().all(|r| r.bytes == runs[0].bytes);
        let rss_max = runs.iter().map(|r| r.total().rss).max().unwrap_or(0);
        runs.sort_by(|a, b| a.total().cpu().total_cmp(&b.total().cpu()));
        let mut median = runs[runs.len() / 2];
        median.cpu_range = range;
        median.bytes_stable = stable;
        median.rss_max = rss_max;
        median.runs = runs.len();
        Ok((median, anatomy_of_first))
    }
}

// ---------------------------------------------------------------------------
// What a dedup archive is made of

/// The dedup archive among the responses recorded during a sync of `tag`,
/// taken apart.
fn archive_anatomy(streams: &[Vec<u8>], tag: &str) -> anyhow::Result<Anatomy> {
    let archives: Vec<Vec<u8>> = streams
        .iter()
        .flat_map(|stream| http_bodies(stream))
        .filter(|(content_type, _)| content_type.contains("archive"))
        .map(|(_, body)| body)
        .collect();
    anyhow::ensure!(
        archives.len() == 1,
        "expected one archive response in the recorded sync of {tag}, found {}",
        archives.len()
    );
    anatomy(&archives[0])
}

/// One connection's recorded bytes.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A loopback TCP proxy keeping every server→client byte, per connection.
struct Recorder {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<Recording>>>,
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(upstream: SocketAddr) -> std::io::Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let streams: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let on = Arc::new(AtomicBool::new(false));
        let (st, sp, o) = (streams.clone(), stop.clone(), on.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let record: Recording = Arc::default();
                st.lock().unwrap().push(record.clone());
                let o = o.clone();
                std::thread::spawn(move || pump(client, server, |_| {}));
                std::thread::spawn(move || {
                    pump(s2, c2, |chunk| {
                        if o.load(Ordering::SeqCst) {
                            record.lock().unwrap().extend_from_slice(chunk);
                        }
                    })
                });
            }
        });
        Ok(Recorder {
            addr,
            streams,
            on,
            stop,
        })
    }

    /// Start or stop recording.
    fn record(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// Every connection's recorded server→client bytes; forgets them.
    fn take(&self) -> Vec<Vec<u8>> {
        self.streams
            .lock()
            .unwrap()
            .drain(..)
            .map(|s| std::mem::take(&mut *s.lock().unwrap()))
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// The responses in one connection's server→client bytes: (content type,
/// body with chunked transfer encoding removed).
fn http_bodies(mut s: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(end) = s.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&s[..end]).to_ascii_lowercase();
        s = &s[end + 4..];
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let content_type = header("content-type").unwrap_or_default();
        let mut body = Vec::new();
        if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = n.min(s.len());
            body.extend_from_slice(&s[..n]);
            s = &s[n..];
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
                let size = String::from_utf8_lossy(&s[..eol]);
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or(0);
                s = &s[(eol + 2).min(s.len())..];
                if size == 0 {
                    s = &s[2.min(s.len())..];
                    break;
                }
                let n = size.min(s.len());
                body.extend_from_slice(&s[..n]);
                s = &s[(n + 2).min(s.len())..];
            }
        } else {
            body.extend_from_slice(s);
            s = &[];
        }
        out.push((content_type, body));
    }
    out
}

/// What one dedup archive holds, by entry kind (see proto/SPEC.md).
#[derive(Debug, Clone, Copy, Default)]
struct Anatomy {
    /// The gzip'd archive as sent.
    gz: u64,
    /// Its tar, uncompressed.
    tar: u64,
    /// Reference entries (`layerlink:sha256:…` hard links).
    references: u64,
    /// New files (`LAYERLINK.digest`) and their content bytes.
    new_files: u64,
    new_file_bytes: u64,
    /// Marker entries.
    markers: u64,
    /// Every other entry (directories, symlinks, empty files, links, …).
    other: u64,
    /// The same tar gzip'd (flate2 default level) without the reference
    /// entries: what the archive would cost if references were free.
    gz_without_references: u64,
}

fn tar_number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256
        field[1..]
            .iter()
            .fold(u64::from(field[0] & 0x7f), |n, b| (n << 8) | u64::from(*b))
    } else {
        let text = String::from_utf8_lossy(field);
        u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
    }
}

fn gz_len(bytes: &[u8]) -> anyhow::Result<u64> {
    let mut gz = flate2::write::GzEncoder::new(CountingSink(0), flate2::Compression::default());
    gz.write_all(bytes)?;
    Ok(gz.finish()?.0)
}

/// Walk the archive's tar headers (raw, so entries can be dropped).
fn anatomy(gz: &[u8]) -> anyhow::Result<Anatomy> {
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(gz).read_to_end(&mut tar)?;
    let mut a = Anatomy {
        gz: gz.len() as u64,
        tar: tar.len() as u64,
        ..Anatomy::default()
    };
    let mut kept = Vec::with_capacity(tar.len());
    let mut pax: Option<(usize, &[u8])> = None;
    let mut i = 0;
    while i + 512 <= tar.len() {
        let h = &tar[i..i + 512];
        if h.iter().all(|b| *b == 0) {
            kept.extend_from_slice(&tar[i..]);
            break;
        }
        let size = tar_number(&h[124..136]) as usize;
        let end = (i + 512 + size.div_ceil(512) * 512).min(tar.len());
        let data = &tar[(i + 512).min(end)..(i + 512 + size).min(end)];
        if h[156] == b'x' {
            // PAX header: belongs to the entry after it.
            pax = Some((pax.map_or(i, |(start, _)| start), data));
            i = end;
            continue;
        }
        let (start, records) = pax.take().unwrap_or((i, &[]));
        let has = |key: &[u8]| records.windows(key.len()).any(|w| w == key);
        if h[156] == b'1' && h[157..].starts_with(b"layerlink:sha256:") {
            a.references += 1;
        } else {
            if has(b"LAYERLINK.marker=") {
                a.markers += 1;
            } else if has(b"LAYERLINK.digest=") {
                a.new_files += 1;
                a.new_file_bytes += size as u64;
            } else {
                a.other += 1;
            }
            kept.extend_from_slice(&tar[start..end]);
        }
        i = end;
    }
    a.gz_without_references = gz_len(&kept)?;
    Ok(a)
}

struct Scenario {
    name: &'static str,
    held: &'static [&'static str],
    tag: &'static str,
    /// Whether the pull-vs-layerlink target applies.
    incremental: bool,
    /// Whether to run it `--reps` times (the CPU target's scenario).
    repeat: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "0. cold sync tiny:v1 (RSS reference)",
        held: &[],
        tag: "tiny:v1",
        incremental: false,
        repeat: false,
    },
    Scenario {
        name: "1. cold sync base-a:v1",
        held: &[],
        tag: "base-a:v1",
        incremental: false,
        repeat: false,
    },
    Scenario {
        name: "2. holds base-a:v1, syncs base-b:v1",
        held: &["base-a:v1"],
        tag: "base-b:v1",
        incremental: true,
        repeat: false,
    },
    Scenario {
        name: "3. holds base-a:v1, syncs base-a:v2 (update)",
        held: &["base-a:v1"],
        tag: "base-a:v2",
        incremental: true,
        repeat: true,
    },
];

struct Outcome {
    scenario: &'static Scenario,
    missing: Missing,
    /// The dedup archive of the incremental scenarios, taken apart.
    anatomy: Option<Anatomy>,
    ll: Side,
    peer: Side,
}

/// One pushed image.
struct Push {
    tag: &'static str,
    layers: usize,
    compressed: u64,
    uncompressed: u64,
    wall: f64,
    put: Option<f64>,
}

// ---------------------------------------------------------------------------

/// The commit the binaries were built from, and which of the registry's,
/// agent's and proto's files differed from it (a shared work tree).
fn source_revision() -> String {
    let root = layerlink_tests::bins::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--", "registry", "agent", "proto"]).unwrap_or_default();
    let dirty: Vec<&str> = dirty.lines().filter_map(|l| l.get(3..)).collect();
    if dirty.is_empty() {
        format!("commit {head}")
    } else {
        format!(
            "commit {head} plus uncommitted changes in {}",
            dirty
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// A progress line on stderr with the seconds since start.
fn progress(started: Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
}

fn run(opts: &Opts) -> anyhow::Result<()> {
    for tool in ["skopeo", "umoci"] {
        anyhow::ensure!(
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} not found (scripts/install-deps.sh installs it)"
        );
    }
    anyhow::ensure!(
        Path::new(GNU_TIME).is_file(),
        "{GNU_TIME} (GNU time, Debian package `time`) is needed to read the device processes' rusage"
    );
    // The harness takes the binaries from these.
    std::env::set_var("LAYERLINK_REGISTRY_BIN", &opts.registry_bin);
    std::env::set_var("LAYERLINK_AGENT_BIN", &opts.agent_bin);
    std::env::set_var("LAYERLINK_SKIP_BUILD", "1");
    let started = Instant::now();
    let date = String::from_utf8_lossy(
        &Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?
            .stdout,
    )
    .trim()
    .to_string();

    progress(started, "test images");
    let images = test_images();
    let layout = images.layout();

    progress(started, "registry + pushes");
    let reg = Registry::start(Some(REGISTRY_CONFIG));
    let timer = PutTimer::start(reg.addr())?;
    let mut pushes = Vec::new();
    for tag in ["tiny:v1", "base-a:v1", "base-a:v2", "base-b:v1"] {
        let t = Instant::now();
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag}", images.oci_dir.display()))
            .arg(format!("docker://{}/{}", timer.addr, remote(tag)))
            .stdin(Stdio::null())
            .output()?;
        let wall = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            out.status.success(),
            "skopeo push {tag} failed:\n{}\n--- registry log\n{}",
            String::from_utf8_lossy(&out.stderr),
            reg.log()
        );
        let puts = timer.take();
        let layers = layout.layers(tag);
        pushes.push(Push {
            tag,
            layers: layers.len(),
            compressed: layers.iter().map(|l| l.size).sum(),
            uncompressed: uncompressed_bytes(&layout, tag)?,
            wall,
            put: (!puts.is_empty()).then(|| puts.iter().map(Duration::as_secs_f64).sum()),
        });
        progress(started, &format!("pushed {tag} in {wall:.1}s"));
    }
    let stats = reg.stats();

    let proxy = CountingProxy::start(reg.addr());
    let mut bench = Bench {
        opts,
        recorder: Recorder::start(proxy.addr())?,
        proxy,
        trash: Vec::new(),
        prepared: Default::default(),
    };
    let mut results = Vec::new();
    for s in SCENARIOS {
        progress(started, s.name);
        let missing = missing(&layout, s.held, s.tag)?;
        let reps = if s.repeat { opts.reps } else { 1 };
        let (ll, anatomy) = bench.measure(Tool::Layerlink, s.held, s.tag, reps, s.incremental)?;
        progress(
            started,
            &format!(
                "  layerlink: {} bytes, {:.2} s CPU",
                ll.bytes,
                ll.total().cpu()
            ),
        );
        let (peer, _) = bench.measure(Tool::Peer, s.held, s.tag, reps, false)?;
        progress(
            started,
            &format!(
                "  skopeo+umoci: {} bytes, {:.2} s CPU",
                peer.bytes,
                peer.total().cpu()
            ),
        );
        results.push(Outcome {
            scenario: s,
            missing,
            anatomy,
            ll,
            peer,
        });
    }
    for t in std::mem::take(&mut bench.trash) {
        let _ = t.join();
    }
    let report = render(
        opts,
        &source_revision(),
        &date,
        &pushes,
        &stats,
        &results,
        started.elapsed().as_secs_f64(),
    );
    print!("{report}");
    if let Some(out) = &opts.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The report

fn bytes(b: u64) -> String {
    if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        mib(b)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn render(
    opts: &Opts,
    source: &str,
    date: &str,
    pushes: &[Push],
    stats: &serde_json::Value,
    results: &[Outcome],
    elapsed: f64,
) -> String {
    let mut r = String::new();
    let w = &mut r;
    let _ = writeln!(w, "# layerlink benchmark\n");
    let _ = writeln!(w, "- date: {date}");
    let _ = writeln!(w, "- command: `{}`", opts.command);
    let _ = writeln!(w, "- source: {source}");
    let _ = writeln!(
        w,
        "- registry: release build; agent: `{}` build; agent checkout: `--read-only` (hard links into the store)",
        opts.agent_label
    );
    let _ = writeln!(
        w,
        "- peer: `skopeo copy docker://… oci:LAYOUT:TAG` + `umoci unpack` (a writable bundle); the layout already holds the device's earlier image"
    );
    let _ = writeln!(
        w,
        "- scenario 3 (the CPU target) runs {} times per tool, each from a copy of the same device state; the run with the median \
         device CPU is shown, with the CPU range over the runs; the other scenarios run once",
        opts.reps
    );
    let _ = writeln!(
        w,
        "- host: {} CPUs, loopback, registry and device on one machine (timings are noisy when other work runs; bytes are exact)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(w, "- total run time: {elapsed:.0} s\n");

    let _ = writeln!(w, "## Device sync (issue 3)\n");
    let _ = writeln!(
        w,
        "Bytes: TCP payload both ways through a counting proxy. CPU: user+sys, and peak RSS: max RSS, of the device processes \
         (agent `sync` + `checkout` vs `skopeo copy` + `umoci unpack`; wait4 rusage via GNU time). Disk: the device directory \
         after the step (store + checkouts vs OCI layout + bundles), each inode once, with what this step added.\n"
    );
    let _ = writeln!(
        w,
        "| scenario | tool | bytes on the wire | device CPU | peak RSS | disk (added) | wall |"
    );
    let _ = writeln!(w, "|---|---|--:|--:|--:|--:|--:|");
    for res in results {
        for (tool, side) in [("layerlink", &res.ll), ("skopeo + umoci", &res.peer)] {
            let c = side.total();
            let range = if side.runs > 1 {
                format!(
                    " ({:.2}–{:.2}, {} runs)",
                    side.cpu_range.0, side.cpu_range.1, side.runs
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                w,
                "| {} | {tool} | {}{} | {:.2} s{range} | {} | {} (+{}) | {:.2} s |",
                res.scenario.name,
                bytes(side.bytes),
                if side.bytes_stable { "" } else { " (varied)" },
                c.cpu(),
                mib(side.rss_max),
                mib(side.disk_after),
                mib(side.disk_after.saturating_sub(side.disk_before)),
                c.wall
            );
        }
    }

    let _ = writeln!(w, "\nPer command (user + sys CPU, peak RSS, wall):\n");
    let _ = writeln!(
        w,
        "| scenario | agent sync | agent checkout | skopeo copy | umoci unpack |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|");
    let cell = |c: &Cost| {
        format!(
            "{:.2} + {:.2} s, {}, {:.2} s",
            c.user,
            c.sys,
            mib(c.rss),
            c.wall
        )
    };
    for res in results {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            res.scenario.name,
            cell(&res.ll.fetch),
            cell(&res.ll.unpack),
            cell(&res.peer.fetch),
            cell(&res.peer.unpack)
        );
    }

    let _ = writeln!(w, "\n## Targets\n");
    let _ = writeln!(
        w,
        "missing-gz: the target image's distinct non-empty file contents (by sha256) that the device's earlier image lacks, \
         each gzip'd on its own (flate2, default level), summed — computed here from the layer tars, not by the registry. \
         The last column spreads what layerlink sent beyond missing-gz over the target image's tar entries (a layer sent on \
         a held layer it resembles carries only the entries that differ; other layers carry every entry, held files as \
         reference entries).\n"
    );
    let _ = writeln!(
        w,
        "| scenario | tar entries | missing files | missing raw | missing-gz | layerlink bytes / missing-gz (≤ {TARGET_BYTES_OVER_MISSING_GZ}) | layer-pull bytes / layerlink bytes (≥ {TARGET_PULL_OVER_LAYERLINK}) | (layerlink − missing-gz) / entries |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for res in results {
        let m = &res.missing;
        let over = res.ll.bytes as f64 / m.gz.max(1) as f64;
        let pull = res.peer.bytes as f64 / res.ll.bytes.max(1) as f64;
        let pull_cell = if res.scenario.incremental {
            format!(
                "{pull:.1} **{}**",
                verdict(pull >= TARGET_PULL_OVER_LAYERLINK)
            )
        } else {
            format!("{pull:.2} (no target: cold)")
        };
        let per_entry = (res.ll.bytes as f64 - m.gz as f64) / m.entries.max(1) as f64;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {over:.2} **{}** | {pull_cell} | {per_entry:.0} B |",
            res.scenario.name,
            m.entries,
            m.files,
            mib(m.raw),
            bytes(m.gz),
            verdict(over <= TARGET_BYTES_OVER_MISSING_GZ),
        );
    }
    if results.iter().any(|r| r.anatomy.is_some()) {
        let _ = writeln!(
            w,
            "\nWhat the dedup archive of an incremental sync is made of (recorded on the first measured sync; entry kinds \
             as in proto/SPEC.md). The last column re-gzips the archive's tar without its reference entries (flate2, default \
             level): what it would cost if held files needed no entry.\n"
        );
        let _ = writeln!(
            w,
            "| scenario | archive (gz) | tar | reference entries | new files (bytes) | other entries | markers | gz without reference entries (/ missing-gz) |"
        );
        let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|");
        for res in results {
            let Some(a) = &res.anatomy else { continue };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} ({}) | {} | {} | {} ({:.2}) |",
                res.scenario.name,
                bytes(a.gz),
                bytes(a.tar),
                a.references,
                a.new_files,
                bytes(a.new_file_bytes),
                a.other,
                a.markers,
                bytes(a.gz_without_references),
                a.gz_without_references as f64 / res.missing.gz.max(1) as f64
            );
        }
    }
    let agent_rss = results.iter().map(|r| r.ll.rss_max).max().unwrap_or(0);
    let _ = writeln!(
        w,
        "\n- agent peak RSS over every sync and checkout: {} (target < {}) **{}**",
        mib(agent_rss),
        mib(TARGET_AGENT_RSS),
        verdict(agent_rss < TARGET_AGENT_RSS)
    );
    if let Some(update) = results.iter().find(|r| r.scenario.tag == "base-a:v2") {
        let (ll, peer) = (update.ll.total().cpu(), update.peer.total().cpu());
        let ratio = ll / peer.max(1e-9);
        let _ = writeln!(
            w,
            "- update scenario CPU, agent / (skopeo + umoci): {ll:.2} s / {peer:.2} s = {ratio:.3} (target < {TARGET_CPU_RATIO}) **{}**; \
             over the runs' extremes: {:.3} (best agent / worst peer) to {:.3} (worst agent / best peer)",
            verdict(ratio < TARGET_CPU_RATIO),
            update.ll.cpu_range.0 / update.peer.cpu_range.1.max(1e-9),
            update.ll.cpu_range.1 / update.peer.cpu_range.0.max(1e-9),
        );
    }
    let find = |tag: &str, cold: bool| {
        results
            .iter()
            .find(|r| r.scenario.tag == tag && r.scenario.held.is_empty() == cold)
    };
    if let (Some(tiny), Some(a), Some(b)) = (
        find("tiny:v1", true),
        find("base-a:v1", true),
        find("base-b:v1", false),
    ) {
        let size = |tag: &str| {
            pushes
                .iter()
                .find(|p| p.tag == tag)
                .map_or(0, |p| p.uncompressed)
        };
        let _ = writeln!(
            w,
            "- agent sync peak RSS is flat in image size: tiny:v1 ({} of layer tar) {}, base-a:v1 ({}) {}, base-b:v1 ({}) {}",
            mib(size("tiny:v1")),
            mib(tiny.ll.fetch.rss),
            mib(size("base-a:v1")),
            mib(a.ll.fetch.rss),
            mib(size("base-b:v1")),
            mib(b.ll.fetch.rss)
        );
    }

    let _ = writeln!(w, "\n## Registry ingest and dedup (issue 2)\n");
    let _ = writeln!(
        w,
        "Pushed once each, in this order, with `skopeo copy oci:… docker://…` through a timing proxy. The registry ingests an \
         image's layers inside the manifest PUT: \"ingest\" is the time from that request's first byte to its answer's first \
         byte, and ingest throughput is the image's uncompressed layer tar bytes over it (MB = 10^6 bytes). Push throughput \
         is the same bytes over the whole skopeo run.\n"
    );
    let _ = writeln!(
        w,
        "| image | layers | compressed | uncompressed tar | push wall | push MB/s | manifest PUT (ingest) | ingest MB/s |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for p in pushes {
        let (put, rate) = match p.put {
            Some(s) => (
                format!("{s:.2} s"),
                format!("{:.0}", p.uncompressed as f64 / 1e6 / s.max(1e-9)),
            ),
            None => ("n/a".into(), "n/a".into()),
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {:.2} s | {:.0} | {put} | {rate} |",
            p.tag,
            p.layers,
            mib(p.compressed),
            mib(p.uncompressed),
            p.wall,
            p.uncompressed as f64 / 1e6 / p.wall.max(1e-9)
        );
    }
    let num = |k: &str| stats[k].as_u64().unwrap_or(0);
    let _ = writeln!(
        w,
        "\n`layerlink-registry stats --json` after the pushes: {} layers, {} tar entries, {} regular files, {} distinct objects; \
         logical {} → stored {}: dedup ratio **{}** (the original blobs are kept as well: {} in {} blobs).",
        num("layers"),
        num("file_entries"),
        num("regular_files"),
        num("distinct_objects"),
        mib(num("logical_bytes")),
        mib(num("stored_bytes")),
        stats["dedup_ratio"]
            .as_f64()
            .map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}")),
        mib(num("blob_bytes")),
        num("blobs"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{Builder, EntryType, Header};

    fn header(kind: EntryType, path: &str, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// A small archive in the shape proto/SPEC.md describes.
    fn archive() -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        b.append_pax_extensions([("LAYERLINK.marker", b"layer".as_slice())])
            .unwrap();
        let mut h = header(EntryType::Regular, ".layerlink/layer", 0);
        b.append(&h, std::io::empty()).unwrap();
        h = header(EntryType::Directory, "etc/", 0);
        b.append(&h, std::io::empty()).unwrap();
        let content = b"hello world\n";
        b.append_pax_extensions([("LAYERLINK.digest", sha256_hex(content).as_bytes())])
            .unwrap();
        h = header(EntryType::Regular, "etc/new", content.len() as u64);
        b.append(&h, content.as_slice()).unwrap();
        for i in 0..3 {
            h = header(EntryType::Link, &format!("etc/held{i}"), 0);
            h.set_link_name_literal(format!("layerlink:sha256:{}", "ab".repeat(32)))
                .unwrap();
            b.append(&h, std::io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn sha256_hex(b: &[u8]) -> String {
        layerlink_tests::sha256_hex(b)
    }

    #[test]
    fn anatomy_counts_entry_kinds() {
        let gz = archive();
        let a = anatomy(&gz).unwrap();
        assert_eq!(a.gz, gz.len() as u64);
        assert_eq!(
            (
                a.markers,
                a.other,
                a.new_files,
                a.new_file_bytes,
                a.references
            ),
            (1, 1, 1, 12, 3)
        );
        assert!(a.gz_without_references < a.gz, "{a:?}");
    }

    #[test]
    fn http_bodies_handles_length_and_chunked() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 200 OK\r\ncontent-type: application/vnd.layerlink.archive\r\ntransfer-encoding: chunked\r\n\r\n\
2\r\nxy\r\n3\r\nzzz\r\n0\r\n\r\n";
        let bodies = http_bodies(stream);
        assert_eq!(
            bodies,
            vec![
                ("a/b".to_string(), b"abc".to_vec()),
                (
                    "application/vnd.layerlink.archive".to_string(),
                    b"xyzzz".to_vec()
                )
            ]
        );
    }

    #[test]
    fn disk_use_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let one = disk_use(dir.path());
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_eq!(disk_use(dir.path()), one);
        std::fs::write(dir.path().join("c"), vec![1u8; 64 * 1024]).unwrap();
        assert!(disk_use(dir.path()) >= one + 64 * 1024);
    }
}
