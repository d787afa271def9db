//! `layerlink-load`: many devices syncing at once against one registry.
//!
//! Starts a real `layerlink-registry serve` on loopback with a temp data
//! dir and a config holding N device tokens, pushes one test image with
//! skopeo, then runs N device threads at once (released together by a
//! barrier). Each device, per round, sends a plan request (empty holdings)
//! and an archive request (zstd, as today's agent asks) for the layers the
//! plan says it needs, and **checks what it received**: it decodes the
//! archive, hashes every file's content against the digest its entry
//! declares, counts the layer-end markers, and requires every distinct
//! non-empty file content of the image (counted from the test layout, not
//! by the registry) to have arrived. Everything is bounded:
//! per-request timeouts and an overall time limit after which unfinished
//! devices count as failed. The devices start once the registry has
//! prepared the pushed image (its log says so), as a fleet's cron would
//! find it.
//!
//! With `--up-to-date` the devices measure the path a fleet's cron hits
//! most: each device first reports (unmeasured, before the start line)
//! full holdings that already contain every layer of the image, then each
//! round is one plan request carrying only the holdings hash, which must
//! answer "nothing needed"; no archive is fetched.
//!
//! With `--backend postgres-s3` the registry keeps its metadata and device
//! records in a PostgreSQL cluster and its blobs in a Garage bucket, both
//! started for the run (as the e2e tests start them); `--replicas N` then
//! starts N registry processes on that one database and bucket, each with
//! its own data dir, and device `i` talks to replica `i mod N` (the image
//! is pushed through replica 0; the others ingest it from the shared blobs
//! on the first, unmeasured request).
//!
//! Prints a header and one line: devices, rounds, failed syncs, plan and
//! archive latency p50/p99, bytes per archive, the registries' peak RSS
//! (`VmHWM` from `/proc/PID/status`, the largest replica) and the wall
//! time; then, per replica, its CPU time (user + system, from
//! `/proc/PID/stat`) during the measured rounds and its peak RSS. Exit code 0 when
//! every sync succeeded, 1 otherwise, 2 on bad arguments.
//!
//! ```text
//! cargo run -p layerlink-tests --bin layerlink-load -- --devices 200
//! cargo run --release -p layerlink-tests --bin layerlink-load -- \
//!     --registry-bin target/release/layerlink-registry
//! ```

use layerlink_proto::archive::FEATURES_HEADER;
use layerlink_proto::msg::{
    ArchiveRequest, HeldSet, Holdings, ImageRef, LayerState, PlanRequest, PlanResponse, Platform,
    CONTENT_TYPE,
};
use layerlink_tests::bins::registry_bin;
use layerlink_tests::test_images;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: layerlink-load [--devices N] [--rounds R] [--image TAG] [--time-limit SECS]
                      [--registry-bin PATH] [--up-to-date] [--spread SECS]
                      [--backend embedded|postgres-s3] [--replicas N]

  --devices N         simulated devices, one thread each (default 200)
  --rounds R          plan+archive syncs per device (default 1)
  --image TAG         test image to sync (default tiny:v1; see scripts/build-test-images.sh)
  --time-limit SECS   stop after this long; unfinished syncs count as failed (default 300)
  --registry-bin P    registry binary (default: the debug build, built if needed)
  --up-to-date        devices already hold the image: each round is one plan
                      request with the holdings hash, which must need nothing
  --spread SECS       each device starts each round at its own offset within
                      SECS (as cron with a randomized delay spreads a fleet);
                      0 (default): every device at once, a worst-case burst
  --backend B         embedded (default: redb + the data dir) or postgres-s3
                      (PostgreSQL + a Garage bucket, started for the run)
  --replicas N        registry processes sharing the backend (default 1;
                      more than 1 needs --backend postgres-s3)
";

struct Opts {
    devices: usize,
    rounds: usize,
    image: String,
    time_limit: Duration,
    registry_bin: Option<PathBuf>,
    up_to_date: bool,
    spread: Duration,
    shared: bool,
    replicas: usize,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        devices: 200,
        rounds: 1,
        image: "tiny:v1".into(),
        time_limit: Duration::from_secs(300),
        registry_bin: None,
        up_to_date: false,
        spread: Duration::ZERO,
        shared: false,
        replicas: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match a.as_str() {
            "--devices" => o.devices = number(&a, value(&a)?)? as usize,
            "--rounds" => o.rounds = number(&a, value(&a)?)? as usize,
            "--image" => o.image = value(&a)?,
            "--time-limit" => o.time_limit = Duration::from_secs(number(&a, value(&a)?)?),
            "--registry-bin" => o.registry_bin = Some(PathBuf::from(value(&a)?)),
            "--up-to-date" => o.up_to_date = true,
            "--spread" => o.spread = Duration::from_secs(number(&a, value(&a)?)?),
            "--backend" => {
                o.shared = match value(&a)?.as_str() {
                    "embedded" => false,
                    "postgres-s3" => true,
                    other => return Err(format!("--backend {other:?}: embedded or postgres-s3")),
                }
            }
            "--replicas" => o.replicas = number(&a, value(&a)?)? as usize,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    if o.devices == 0 || o.rounds == 0 || o.devices > 10_000 {
        return Err("--devices must be 1..=10000 and --rounds at least 1".into());
    }
    if o.replicas == 0 || o.replicas > 8 || (o.replicas > 1 && !o.shared) {
        return Err("--replicas must be 1..=8, and above 1 needs --backend postgres-s3".into());
    }
    Ok(o)
}

/// The registry process, killed on drop.
struct Server {
    child: Child,
    addr: String,
    /// The registry's stderr (its log).
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(i: usize) -> String {
    // Long enough to look like a real token; derived, not secret.
    format!(
        "load-{i:05}-{:016x}",
        (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

/// The servers behind `--backend postgres-s3`, stopped on drop.
struct Shared {
    _postgres: layerlink_tests::postgres::TestPostgres,
    _garage: layerlink_tests::garage::Garage,
    /// The config's `[storage]` section naming them.
    storage: String,
}

fn start_shared() -> Shared {
    let postgres = layerlink_tests::postgres::TestPostgres::start();
    let url = postgres.create_database();
    let garage = layerlink_tests::garage::Garage::start("load");
    let storage = garage.storage_toml_with_metadata("load", &url);
    Shared {
        _postgres: postgres,
        _garage: garage,
        storage,
    }
}

fn start_registry(opts: &Opts, storage: &str) -> Result<Server, String> {
    let dir = tempfile::Builder::new()
        .prefix("layerlink-load-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut config = String::new();
    for i in 0..opts.devices {
        config.push_str(&format!(
            "[[devices]]\nid = \"load-{i:05}\"\ntoken = \"{}\"\nrepositories = [\"load/*\"]\n\n",
            token(i)
        ));
    }
    config.push_str(storage);
    let config_path = dir.path().join("registry.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let bin = opts.registry_bin.clone().unwrap_or_else(registry_bin);
    let stderr =
        std::fs::File::create(dir.path().join("registry.stderr")).map_err(|e| e.to_string())?;
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config_path)
        // Warnings, and the line saying a push's preparation is done.
        .env("RUST_LOG", "warn,layerlink_registry::sync::precompute=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let Some(addr) = line.trim().strip_prefix("listening on http://") else {
        let _ = child.kill();
        return Err(format!("the registry did not start: {line:?}"));
    };
    Ok(Server {
        addr: addr.to_owned(),
        child,
        stderr: dir.path().join("registry.stderr"),
        _dir: dir,
    })
}

/// Wait until the registry logged that the pushed image's background
/// preparation (zstd frames, cold archive) is done, as it would be long
/// before a fleet's cron runs; the time it took.
fn wait_prepared(server: &Server, limit: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
        if log.contains("precomputed ") {
            return Ok(t.elapsed());
        }
        if log.contains("precompute failed") {
            return Err(format!("the registry's preparation failed:\n{log}"));
        }
        if t.elapsed() > limit {
            return Err(format!("no preparation done within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn push_image(server: &Server, tag: &str) -> Result<(), String> {
    let images = test_images();
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", images.oci_dir.display()))
        .arg(format!("docker://{}/load/{tag}", server.addr))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running skopeo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "skopeo push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// `VmHWM` (peak resident set) or `VmRSS` of a process, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: None,
    }
}

/// One device's measurements.
#[derive(Default)]
struct DeviceResult {
    plan: Vec<Duration>,
    archive: Vec<Duration>,
    archive_bytes: u64,
    failures: Vec<String>,
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<ureq::http::Response<ureq::Body>, String> {
    let resp = agent
        .post(url)
        .header("content-type", CONTENT_TYPE)
        .header(FEATURES_HEADER, "layer-base,zstd")
        .header("authorization", format!("Bearer {token}"))
        .send(body)
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() != 200 {
        let status = resp.status();
        let mut body = Vec::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(4096)
            .read_to_end(&mut body);
        let msg = postcard::from_bytes::<layerlink_proto::ErrorBody>(&body)
            .map(|e| format!("{:?}: {}", e.code, e.message))
            .unwrap_or_default();
        return Err(format!("{url}: HTTP {status} {msg}"));
    }
    Ok(resp)
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Decode an archive (gzip or zstd, by magic) and check it: every file
/// with content hashes to its `LAYERLINK.digest`, `layers` layer-end
/// markers, and every content of `expected` arrived. The archive's
/// compressed size.
fn check_archive(
    body: impl Read,
    layers: usize,
    expected: &BTreeSet<String>,
) -> Result<u64, String> {
    use layerlink_proto::archive::{PAX_DIGEST, PAX_MARKER};
    use sha2::{Digest as _, Sha256};
    let mut counted = BufReader::with_capacity(64 * 1024, Counting { inner: body, n: 0 });
    let (_, decoder) = layerlink_tests::layers::decode_archive(&mut counted)
        .map_err(|e| format!("reading the archive: {e}"))?;
    let mut tar = tar::Archive::new(decoder);
    let (mut ends, mut got) = (0usize, BTreeSet::new());
    let mut buf = vec![0u8; 64 * 1024];
    for entry in tar.entries().map_err(|e| format!("archive tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("archive tar entry: {e}"))?;
        let (mut digest, mut marker) = (None, None);
        if let Some(pax) = entry.pax_extensions().map_err(|e| format!("PAX: {e}"))? {
            for ext in pax {
                let ext = ext.map_err(|e| format!("PAX record: {e}"))?;
                match ext.key() {
                    Ok(PAX_DIGEST) => digest = ext.value().ok().map(str::to_owned),
                    Ok(PAX_MARKER) => marker = ext.value().ok().map(str::to_owned),
                    _ => {}
                }
            }
        }
        if marker.as_deref() == Some("layer-end") {
            ends += 1;
        }
        if !entry.header().entry_type().is_file() || entry.size() == 0 {
            continue;
        }
        let Some(want) = digest else { continue };
        let mut h = Sha256::new();
        loop {
            let k = entry
                .read(&mut buf)
                .map_err(|e| format!("file content: {e}"))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if hex != want {
            return Err(format!("a file declared as {want} hashes to {hex}"));
        }
        got.insert(hex);
    }
    drop(tar);
    std::io::copy(&mut counted, &mut std::io::sink()).map_err(|e| format!("archive tail: {e}"))?;
    if ends != layers {
        return Err(format!("{ends} layer-end markers for {layers} layers"));
    }
    let missing = expected.difference(&got).count();
    if missing > 0 {
        return Err(format!(
            "{missing} of the image's {} file contents never arrived",
            expected.len()
        ));
    }
    Ok(counted.into_inner().n)
}

/// One plan request; its latency is recorded in `out.plan`.
fn plan(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    image: &ImageRef,
    holdings: Holdings,
    out: &mut DeviceResult,
) -> Result<PlanResponse, String> {
    let plan_req = PlanRequest {
        platform: platform(),
        images: vec![image.clone()],
        holdings,
    };
    let body = postcard::to_allocvec(&plan_req).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let resp = post(agent, &format!("{base}/layerlink/v1/plan"), token, body)?;
    let mut bytes = Vec::new();
    resp.into_body()
        .into_reader()
        .take(1 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the plan: {e}"))?;
    let plan: PlanResponse =
        postcard::from_bytes(&bytes).map_err(|e| format!("decoding the plan: {e}"))?;
    out.plan.push(t.elapsed());
    Ok(plan)
}

/// Whether a plan needs nothing (every layer of its one image held).
fn needs_nothing(p: &PlanResponse) -> Result<(), String> {
    let img = p.images.first().ok_or("the plan has no image")?;
    let needed = img
        .layers
        .iter()
        .filter(|l| matches!(l.state, LayerState::Needed(_)))
        .count();
    if needed > 0 || img.layers.is_empty() {
        return Err(format!(
            "a device holding the image was told {needed} of {} layers are needed",
            img.layers.len()
        ));
    }
    Ok(())
}

/// Plan, then receive and check the archive of the needed layers.
fn sync_once(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    image: &ImageRef,
    expected: &BTreeSet<String>,
    out: &mut DeviceResult,
) -> Result<(), String> {
    let plan = plan(
        agent,
        base,
        token,
        image,
        Holdings::Full(HeldSet::default()),
        out,
    )?;
    let img = plan.images.first().ok_or("the plan has no image")?;
    let layers: Vec<_> = img
        .layers
        .iter()
        .filter(|l| matches!(l.state, LayerState::Needed(_)))
        .map(|l| l.diff_id)
        .collect();
    let n_layers = layers.len();
    let archive_req = ArchiveRequest {
        repository: image.repository.clone(),
        manifest_digest: img.manifest_digest,
        layers,
        metadata: true,
        holdings: Holdings::Hash(plan.holdings_hash),
    };
    let body = postcard::to_allocvec(&archive_req).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let resp = post(agent, &format!("{base}/layerlink/v1/archive"), token, body)?;
    let n = check_archive(resp.into_body().into_reader(), n_layers, expected)?;
    out.archive.push(t.elapsed());
    out.archive_bytes = n;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("layerlink-load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("layerlink-load: {e}");
            ExitCode::from(1)
        }
    }
}

/// User + system CPU time of a process so far (`/proc/PID/stat`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / clock_ticks())
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on
/// Linux unless it says otherwise).
fn clock_ticks() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

fn run(opts: &Opts) -> Result<bool, String> {
    let shared = opts.shared.then(start_shared);
    let storage = shared.as_ref().map_or("", |s| s.storage.as_str());
    let servers = (0..opts.replicas)
        .map(|_| start_registry(opts, storage))
        .collect::<Result<Vec<_>, _>>()?;
    let server = &servers[0];
    let pid = server.child.id();
    push_image(server, &opts.image)?;
    let prepared = wait_prepared(server, Duration::from_secs(900))?;
    eprintln!(
        "{} prepared by the registry {:.1} s after the push",
        opts.image,
        prepared.as_secs_f64()
    );
    let rss_idle = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    eprintln!(
        "registry pid {pid} on {} ({} devices configured, RSS after push {} MiB); {} devices × {} round(s) of {}{}{}",
        server.addr,
        opts.devices,
        rss_idle / 1024,
        opts.devices,
        opts.rounds,
        opts.image,
        if opts.up_to_date { ", already held (plan only)" } else { "" },
        if opts.spread.is_zero() {
            ", all at once".to_owned()
        } else {
            format!(", each round spread over {} s", opts.spread.as_secs())
        }
    );

    let (repo, reference) = opts
        .image
        .split_once(':')
        .ok_or("--image must be name:tag")?;
    let image = ImageRef {
        repository: format!("load/{repo}"),
        reference: reference.to_owned(),
    };
    let bases: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    // What every device must receive, counted from the layout.
    let empty = layerlink_tests::sha256_hex(b"");
    let expected: Arc<BTreeSet<String>> = Arc::new(
        layerlink_tests::layers::image_files(&test_images().layout(), &[opts.image.as_str()])
            .digests
            .into_iter()
            .filter(|d| *d != empty)
            .collect(),
    );
    // --up-to-date: the image's layers (diff_ids from the layout's config).
    let held: Option<Arc<Vec<layerlink_proto::Digest>>> = if opts.up_to_date {
        let ids = test_images().layout().diff_ids(&opts.image);
        let ids: Result<Vec<_>, _> = ids
            .iter()
            .map(|d| layerlink_proto::Digest::parse(d))
            .collect();
        Some(Arc::new(ids.map_err(|e| format!("diff_id: {e:?}"))?))
    } else {
        None
    };
    let start_line = Arc::new(Barrier::new(opts.devices + 1));
    let deadline = Instant::now() + opts.time_limit;
    let (tx, rx) = mpsc::channel();
    for i in 0..opts.devices {
        let (tx, start_line, base, image, expected) = (
            tx.clone(),
            start_line.clone(),
            bases[i % bases.len()].clone(),
            image.clone(),
            expected.clone(),
        );
        let rounds = opts.rounds;
        let spread = opts.spread;
        let held = held.clone();
        std::thread::Builder::new()
            .name(format!("device-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let token = token(i);
                let mut out = DeviceResult::default();
                // --up-to-date: report holdings that contain the image
                // (not measured), keep the hash the registry recorded.
                let mut held_hash = None;
                if let Some(layers) = &held {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(120)))
                        .build()
                        .into();
                    let set = HeldSet {
                        layers: layers.to_vec(),
                        objects: Vec::new(),
                    };
                    let mut setup = DeviceResult::default();
                    match plan(
                        &agent,
                        &base,
                        &token,
                        &image,
                        Holdings::Full(set),
                        &mut setup,
                    )
                    .and_then(|p| needs_nothing(&p).map(|()| p.holdings_hash))
                    {
                        Ok(h) => held_hash = Some(h),
                        Err(e) => out.failures.push(format!("setup: {e}")),
                    }
                }
                start_line.wait();
                let t0 = Instant::now();
                // A fixed pseudo-random offset per device within `spread`.
                let offset = if spread.is_zero() {
                    Duration::ZERO
                } else {
                    let h = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
                    Duration::from_micros(h % spread.as_micros().max(1) as u64)
                };
                for round in 0..rounds {
                    let at = offset + spread * round as u32;
                    std::thread::sleep(at.saturating_sub(t0.elapsed()));
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        out.failures
                            .push("time limit reached before the sync".into());
                        break;
                    }
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(left.min(Duration::from_secs(120))))
                        .build()
                        .into();
                    let result = match (&held, held_hash) {
                        (Some(_), Some(h)) => {
                            plan(&agent, &base, &token, &image, Holdings::Hash(h), &mut out)
                                .and_then(|p| needs_nothing(&p))
                        }
                        (Some(_), None) => Err("no holdings recorded".into()),
                        (None, _) => sync_once(&agent, &base, &token, &image, &expected, &mut out),
                    };
                    if let Err(e) = result {
                        out.failures.push(e);
                    }
                }
                let _ = tx.send(out);
            })
            .map_err(|e| format!("starting device thread {i}: {e}"))?;
    }
    drop(tx);
    start_line.wait();
    let t0 = Instant::now();
    let cpu0: Vec<Duration> = servers.iter().map(|s| cpu_time(s.child.id())).collect();

    let mut results = Vec::new();
    let grace = Duration::from_secs(5);
    while results.len() < opts.devices {
        let left = (deadline + grace).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => results.push(r),
            Err(_) => break,
        }
    }
    let wall = t0.elapsed();
    let cpu: Vec<Duration> = servers
        .iter()
        .zip(&cpu0)
        .map(|(s, c0)| cpu_time(s.child.id()).saturating_sub(*c0))
        .collect();
    let peaks: Vec<u64> = servers
        .iter()
        .map(|s| proc_status_kib(s.child.id(), "VmHWM").unwrap_or(0))
        .collect();
    let peak_kib = peaks.iter().copied().max().unwrap_or(0);

    let unfinished = opts.devices - results.len();
    let mut plan: Vec<Duration> = results
        .iter()
        .flat_map(|r| r.plan.iter().copied())
        .collect();
    let mut archive: Vec<Duration> = results
        .iter()
        .flat_map(|r| r.archive.iter().copied())
        .collect();
    plan.sort();
    archive.sort();
    let failures: Vec<&String> = results.iter().flat_map(|r| &r.failures).collect();
    let failed = failures.len() + unfinished * opts.rounds;
    let archive_bytes = results.iter().map(|r| r.archive_bytes).max().unwrap_or(0);
    for f in failures.iter().take(5) {
        eprintln!("failure: {f}");
    }
    if failures.len() > 5 {
        eprintln!("… and {} more failures", failures.len() - 5);
    }
    if unfinished > 0 {
        eprintln!("{unfinished} devices did not finish within the time limit");
    }
    println!(
        "{:>7} {:>6} {:>7} {:>6} {:>12} {:>12} {:>15} {:>15} {:>13} {:>12} {:>7}",
        "devices",
        "rounds",
        "syncs",
        "failed",
        "plan_p50_ms",
        "plan_p99_ms",
        "archive_p50_ms",
        "archive_p99_ms",
        "archive_bytes",
        "peak_rss_MiB",
        "wall_s"
    );
    println!(
        "{:>7} {:>6} {:>7} {:>6} {:>12.1} {:>12.1} {:>15.1} {:>15.1} {:>13} {:>12.1} {:>7.1}",
        opts.devices,
        opts.rounds,
        opts.devices * opts.rounds,
        failed,
        percentile(&plan, 0.50),
        percentile(&plan, 0.99),
        percentile(&archive, 0.50),
        percentile(&archive, 0.99),
        archive_bytes,
        peak_kib as f64 / 1024.0,
        wall.as_secs_f64()
    );
    for (k, (c, p)) in cpu.iter().zip(&peaks).enumerate() {
        println!(
            "replica {k}: cpu {:.2} s during the rounds, peak RSS {:.1} MiB ({} backend)",
            c.as_secs_f64(),
            *p as f64 / 1024.0,
            if opts.shared {
                "postgres-s3"
            } else {
                "embedded"
            }
        );
    }
    drop(servers);
    drop(shared);
    Ok(failed == 0)
}
