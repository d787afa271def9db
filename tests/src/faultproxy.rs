//! Fault injection for the agent: a loopback proxy that breaks connections
//! ([`FaultProxy`]) and the power-cut / network-fault runs shared by
//! `layerlink-faults` and `tests/faults_e2e.rs`.
//!
//! Per connection the proxy draws (seeded) whether to misbehave and how:
//! cut the stream at a random byte (either direction), stall the
//! server→client stream for a while, truncate the response (clean EOF to the
//! client mid-body), or answer `HTTP/1.1 503` itself without reaching the
//! registry. Every byte forwarded is counted.
//!
//! The power-cut run SIGKILLs `layerlink-agent sync` at a seeded delay spread
//! over the duration of an uncut sync, then checks that `verify` passes, that
//! a rerun finishes, that the checkout equals `umoci unpack`, and how many
//! bytes travelled twice.

use crate::bins::agent_command;
use crate::pump::{pump, After, Step, Tap};
use crate::{compare_trees, test_images, umoci_unpack, CountingProxy, Registry};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small seeded PRNG (splitmix64): runs replay from their seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the proxy does to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// Close both directions after this many bytes; `down` picks the
    /// server→client stream (else client→server).
    Cut {
        /// Bytes forwarded before the cut.
        at: u64,
        /// Which stream counts the bytes.
        down: bool,
    },
    /// Pause the server→client stream after `at` bytes for `secs` seconds.
    Stall {
        /// Bytes forwarded before the stall.
        at: u64,
        /// Stall length in seconds.
        secs: u64,
    },
    /// After `at` server→client bytes, send the client EOF and drop the
    /// upstream connection (a short response).
    Truncate {
        /// Bytes forwarded before the EOF.
        at: u64,
    },
    /// Answer `HTTP/1.1 503` without reaching the registry.
    Http503,
}

/// How a [`FaultProxy`] picks faults.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Seed of the per-connection draws.
    pub seed: u64,
    /// Probability that a connection gets a fault.
    pub rate: f64,
    /// Fault byte offsets are uniform in `0..window`.
    pub window: u64,
    /// Stall length in seconds.
    pub stall_secs: u64,
    /// Stop injecting after this many faults (`None`: never stop).
    pub max_faults: Option<u64>,
    /// Draw stalls and client→server cuts too. A proxy that must always
    /// fail sets this to false: only 503s, truncations and server→client
    /// cuts, which fire on every response longer than `window`.
    pub stalls: bool,
}

impl FaultPlan {
    /// Draw the fault for the next connection.
    fn draw(&self, rng: &mut Rng) -> Fault {
        if rng.unit() >= self.rate {
            return Fault::None;
        }
        let kinds = if self.stalls { 4 } else { 3 };
        let at = rng.below(self.window.max(1));
        match rng.below(kinds) {
            0 => Fault::Cut {
                at,
                down: !self.stalls || rng.below(4) != 0,
            },
            1 => Fault::Truncate { at },
            2 => Fault::Http503,
            _ => Fault::Stall {
                at,
                secs: self.stall_secs,
            },
        }
    }
}

#[derive(Default)]
struct Shared {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
    /// Faults that took effect (a cut beyond the end of a response does not).
    fired: AtomicU64,
    fired_kinds: Mutex<Vec<Fault>>,
    drawn: AtomicU64,
    stop: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// A loopback proxy that injects [`Fault`]s per connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listen on an ephemeral loopback port, forward to `upstream`.
    pub fn start(upstream: SocketAddr, plan: FaultPlan) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let addr = listener.local_addr().expect("fault proxy addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(plan.seed);
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let mut fault = plan.draw(&mut rng);
                if let Some(max) = plan.max_faults {
                    if fault != Fault::None && s.drawn.load(Ordering::SeqCst) >= max {
                        fault = Fault::None;
                    }
                }
                if fault != Fault::None {
                    s.drawn.fetch_add(1, Ordering::SeqCst);
                }
                let sh = s.clone();
                std::thread::spawn(move || serve(client, upstream, fault, &sh));
            }
        });
        FaultProxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes forwarded both ways so far.
    pub fn bytes_total(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst) + self.shared.down.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Faults that took effect so far.
    pub fn faults_fired(&self) -> u64 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// The faults that took effect, in order.
    pub fn fired_kinds(&self) -> Vec<Fault> {
        self.shared.fired_kinds.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for s in self.shared.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn fired(shared: &Shared, fault: Fault) {
    shared.fired.fetch_add(1, Ordering::SeqCst);
    shared.fired_kinds.lock().unwrap().push(fault);
}

fn serve(mut client: TcpStream, upstream: SocketAddr, fault: Fault, shared: &Arc<Shared>) {
    if fault == Fault::Http503 {
        // Read the request head (or give up after a while), answer 503.
        let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        fired(shared, fault);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut open = shared.open.lock().unwrap();
        open.push(client.try_clone().expect("clone"));
        open.push(server.try_clone().expect("clone"));
    }
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let (c3, s3) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let sh = shared.clone();
    let up = std::thread::spawn(move || forward(client, server, &sh, false, fault, (c3, s3)));
    let (c4, s4) = (
        c2.try_clone().expect("clone"),
        s2.try_clone().expect("clone"),
    );
    forward(s2, c2, shared, true, fault, (c4, s4));
    let _ = up.join();
}

/// The tap of one direction: counts what it forwarded (after writing it)
/// and applies `fault` when its byte offset is reached in this direction.
/// `pair` is (client, server), for cutting both.
struct Faulty<'a> {
    shared: &'a Shared,
    counter: &'a AtomicU64,
    fault: Fault,
    pair: (TcpStream, TcpStream),
    /// Bytes forwarded so far.
    sent: u64,
    /// (offset, action) still to come in this direction: 0 cut, 1 stall,
    /// 2 truncate.
    trigger: Option<(u64, u8)>,
    /// The action of the trigger whose offset was reached.
    due: Option<u8>,
}

impl Tap for Faulty<'_> {
    fn look(&mut self, chunk: &[u8]) -> Step {
        match self.trigger {
            Some((at, action)) if self.sent + chunk.len() as u64 >= at => {
                self.due = Some(action);
                Step::Split((at - self.sent) as usize)
            }
            _ => Step::Forward,
        }
    }

    fn written(&mut self, n: usize) {
        self.counter.fetch_add(n as u64, Ordering::SeqCst);
        self.sent += n as u64;
    }

    fn at_split(&mut self) -> After {
        self.trigger = None;
        fired(self.shared, self.fault);
        match self.due.take() {
            Some(0) => {
                let _ = self.pair.0.shutdown(Shutdown::Both);
                let _ = self.pair.1.shutdown(Shutdown::Both);
                After::Stop
            }
            Some(1) => {
                if let Fault::Stall { secs, .. } = self.fault {
                    std::thread::sleep(Duration::from_secs(secs));
                }
                After::Go
            }
            _ => {
                let _ = self.pair.1.shutdown(Shutdown::Both);
                let _ = self.pair.0.shutdown(Shutdown::Write);
                After::Stop
            }
        }
    }
}

/// Forward `from` → `to`, applying `fault` to this direction. `pair` is
/// (client, server) for cutting both.
fn forward(
    from: TcpStream,
    to: TcpStream,
    shared: &Shared,
    down: bool,
    fault: Fault,
    pair: (TcpStream, TcpStream),
) {
    let trigger = match fault {
        Fault::Cut { at, down: d } if d == down => Some((at, 0)),
        Fault::Stall { at, .. } if down => Some((at, 1)),
        Fault::Truncate { at } if down => Some((at, 2)),
        _ => None,
    };
    let mut tap = Faulty {
        shared,
        counter: if down { &shared.down } else { &shared.up },
        fault,
        pair,
        sent: 0,
        trigger,
        due: None,
    };
    pump(from, to, 32 * 1024, &mut tap);
}

// ---------------------------------------------------------------------------
// Runs shared by the `layerlink-faults` binary and the cargo test.

/// The device token of [`FAULT_DEVICE_CONFIG`].
pub const TOKEN: &str = "tok-faults";

/// Registry config with one device allowed everything.
pub const FAULT_DEVICE_CONFIG: &str = r#"
[[devices]]
id = "faults"
token = "tok-faults"
repositories = ["*"]
"#;

/// `base-a:v1` → `test/base-a:v1` ([`crate::fixture::test_repo`]).
pub fn remote(tag: &str) -> String {
    crate::fixture::test_repo(tag)
}

/// A sync from an optional held image to a target image.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Short name for reports.
    pub name: &'static str,
    /// Image synced (uncut) before the run, if any.
    pub before: Option<&'static str>,
    /// Image whose sync is broken.
    pub target: &'static str,
}

/// The three scenarios of the harness.
pub const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "cold base-a:v1",
        before: None,
        target: "base-a:v1",
    },
    Scenario {
        name: "base-a:v1->v2",
        before: Some("base-a:v1"),
        target: "base-a:v2",
    },
    Scenario {
        name: "base-a:v1->base-b:v1",
        before: Some("base-a:v1"),
        target: "base-b:v1",
    },
];

/// The project's package-update scenario (benchmark scenario 6), for
/// `layerlink-faults resume --scenario upd`.
pub const UPD_SCENARIO: Scenario = Scenario {
    name: "upd:v1->v2",
    before: Some("upd:v1"),
    target: "upd:v2",
};

/// A scenario by name: one of [`SCENARIOS`], [`UPD_SCENARIO`], or the
/// short keys `cold`, `update` (base-a:v1→v2), `second`, `upd`.
pub fn scenario_named(name: &str) -> Option<Scenario> {
    let all = [SCENARIOS[0], SCENARIOS[1], SCENARIOS[2], UPD_SCENARIO];
    let key = match name {
        "cold" => SCENARIOS[0].name,
        "update" => SCENARIOS[1].name,
        "second" => SCENARIOS[2].name,
        "upd" => UPD_SCENARIO.name,
        n => n,
    };
    all.into_iter().find(|s| s.name == key)
}

/// A registry holding `tags`, every layer ingested.
pub fn registry_with(tags: &[&str]) -> Registry {
    crate::fixture::registry_with_test_images(FAULT_DEVICE_CONFIG, tags)
}

fn sync_cmd(server: &str, store: &Path, image: &str, retry_for: u64) -> Command {
    let mut cmd = agent_command();
    cmd.arg("sync")
        .arg("--server")
        .arg(server)
        .arg("--store")
        .arg(store)
        .arg("--token")
        .arg(TOKEN)
        .arg("--retry-for")
        .arg(retry_for.to_string())
        .arg(remote(image))
        .stdin(Stdio::null());
    cmd
}

/// Start a sync and SIGKILL it after `delay`: (whether it was still
/// running when killed, its exit status).
fn sync_killed_after(
    server: &str,
    store: &Path,
    image: &str,
    delay: Duration,
) -> (bool, std::process::ExitStatus) {
    let mut child = sync_cmd(server, store, image, 30)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    std::thread::sleep(delay);
    let killed = matches!(child.try_wait(), Ok(None));
    let _ = child.kill(); // SIGKILL
    let status = child.wait().expect("wait agent");
    (killed, status)
}

fn run_agent(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run layerlink-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(store: &Path) -> (i32, String) {
    let mut cmd = agent_command();
    cmd.arg("verify")
        .arg("--store")
        .arg(store)
        .stdin(Stdio::null());
    let out = cmd.output().expect("run layerlink-agent verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Check `tag` out of `store` into `dest` and compare its rootfs with
/// `reference/rootfs`; `Err` describes the first differences.
fn checkout_matches(store: &Path, tag: &str, dest: &Path, reference: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dest);
    let mut cmd = agent_command();
    cmd.arg("checkout")
        .arg("--store")
        .arg(store)
        .arg(remote(tag))
        .arg(dest)
        .stdin(Stdio::null());
    let out = cmd.output().expect("run layerlink-agent checkout");
    if !out.status.success() {
        return Err(format!(
            "checkout failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let diffs = compare_trees(&reference.join("rootfs"), &dest.join("rootfs"));
    let _ = std::fs::remove_dir_all(dest);
    crate::tree::differences_summary(&diffs)
}

fn copy_store(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    if !from.exists() {
        return;
    }
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp -a");
    assert!(
        st.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

/// A scenario set up for repeated broken syncs: the registry, the store
/// as it is before the target sync, the umoci reference, the uncut cost.
pub struct Prepared {
    /// The scenario.
    pub scenario: Scenario,
    /// The registry (direct URL; each run puts its own proxy in front).
    pub reg: Registry,
    /// Work dir (removed by the caller).
    pub work: PathBuf,
    /// The store holding `before` (may not exist for a cold start).
    pub prep_store: PathBuf,
    /// `umoci unpack` of the target.
    pub reference: PathBuf,
    /// Bytes on the wire (both ways) of an uncut target sync.
    pub uncut_bytes: u64,
    /// Wall time of an uncut target sync.
    pub uncut_time: Duration,
}

/// Set up `scenario` under `work`: push, sync `before`, unpack the
/// reference, time and count one uncut sync of the target.
pub fn prepare(scenario: Scenario, work: &Path) -> Prepared {
    prepare_limited(scenario, work, 0)
}

/// [`prepare`] with the uncut syncs' registry→device traffic limited to
/// `rate` bytes/s (0 = unlimited).
pub fn prepare_limited(scenario: Scenario, work: &Path, rate: u64) -> Prepared {
    std::fs::create_dir_all(work).expect("work dir");
    let mut tags = vec![scenario.target];
    if let Some(b) = scenario.before {
        tags.push(b);
    }
    let reg = registry_with(&tags);
    let prep_store = work.join("prep-store");
    if let Some(b) = scenario.before {
        let (code, err) = run_agent(&mut sync_cmd(&reg.url, &prep_store, b, 30));
        assert_eq!(
            code, 0,
            "preparing {}: sync {b} failed: {err}",
            scenario.name
        );
    }
    let reference = work.join("reference");
    umoci_unpack(&test_images().oci_dir, scenario.target, &reference);
    // Two uncut syncs: the first also pays the registry's first-time work
    // (archive building, cold caches), so cut delays drawn from its time
    // landed after the (faster) cut runs had finished. The span is the
    // faster of the two; the bytes are the last run's.
    let store = work.join("uncut-store");
    let mut uncut_time = Duration::MAX;
    let mut uncut_bytes = 0;
    for _ in 0..2 {
        copy_store(&prep_store, &store);
        let proxy = CountingProxy::start(reg.addr());
        proxy.limit_down(rate);
        let t0 = Instant::now();
        let (code, err) = run_agent(&mut sync_cmd(&proxy.url(), &store, scenario.target, 30));
        uncut_time = uncut_time.min(t0.elapsed());
        assert_eq!(code, 0, "uncut sync of {} failed: {err}", scenario.name);
        uncut_bytes = proxy.bytes_total();
        checkout_matches(&store, scenario.target, &work.join("co"), &reference)
            .unwrap_or_else(|e| panic!("uncut sync of {}: {e}", scenario.name));
        let _ = std::fs::remove_dir_all(&store);
    }
    Prepared {
        scenario,
        reg,
        work: work.to_path_buf(),
        prep_store,
        reference,
        uncut_bytes,
        uncut_time,
    }
}

/// Outcome of a batch of broken syncs.
#[derive(Debug, Default, Clone)]
pub struct FaultReport {
    /// Runs tried.
    pub tried: u64,
    /// Runs after which everything held (verify, rerun, checkout).
    pub survived: u64,
    /// Kills that landed while the agent still ran (power cuts only): the
    /// cuts the published figure counts.
    pub killed_mid_sync: u64,
    /// Of those, the ones after which everything held.
    pub survived_mid_sync: u64,
    /// Cuts that landed after the sync had finished (power cuts only):
    /// they test a rerun of a complete store, not a cut; reported apart.
    pub after_completion: u64,
    /// Faults that took effect (network only).
    pub faults_fired: u64,
    /// Bytes beyond an uncut sync, summed over the runs.
    pub excess_total: u64,
    /// The worst single run's excess bytes.
    pub excess_worst: u64,
    /// Bytes of one uncut sync.
    pub uncut_bytes: u64,
    /// One line per failure.
    pub failures: Vec<String>,
}

impl FaultReport {
    /// Add another report's figures to this one.
    pub fn add(&mut self, o: &FaultReport) {
        self.tried += o.tried;
        self.survived += o.survived;
        self.killed_mid_sync += o.killed_mid_sync;
        self.survived_mid_sync += o.survived_mid_sync;
        self.after_completion += o.after_completion;
        self.faults_fired += o.faults_fired;
        self.excess_total += o.excess_total;
        self.excess_worst = self.excess_worst.max(o.excess_worst);
        self.failures.extend(o.failures.iter().cloned());
    }
}

/// `cuts` power cuts on a prepared scenario: SIGKILL the sync after a
/// seeded delay in `[0, 1.1 × uncut time)`, then `verify` must pass, a
/// rerun must finish, and the checkout must equal umoci — after every cut.
/// A cut that landed after the sync had finished is counted in
/// `after_completion`, not in `killed_mid_sync`/`survived_mid_sync`.
/// Excess (mid-sync cuts only) = cut-run bytes + rerun bytes − uncut
/// bytes: what travelled twice.
pub fn power_cuts(p: &Prepared, cuts: u64, seed: u64) -> FaultReport {
    let mut rng = Rng::new(seed);
    let mut rep = FaultReport {
        uncut_bytes: p.uncut_bytes,
        ..Default::default()
    };
    let store = p.work.join("cut-store");
    let span = p.uncut_time.as_micros() as u64 * 11 / 10;
    for i in 0..cuts {
        rep.tried += 1;
        let delay = Duration::from_micros(rng.below(span.max(1)));
        copy_store(&p.prep_store, &store);
        let proxy = CountingProxy::start(p.reg.addr());
        let (killed, status) = sync_killed_after(&proxy.url(), &store, p.scenario.target, delay);
        if killed {
            rep.killed_mid_sync += 1;
        } else {
            rep.after_completion += 1;
        }
        let cut_bytes = proxy.bytes_total();
        proxy.reset();
        let what = format!(
            "[{}] cut {i} at {:.3}s (seed {seed})",
            p.scenario.name,
            delay.as_secs_f64()
        );
        if !killed && !status.success() {
            rep.failures
                .push(format!("{what}: sync failed before the cut: {status}"));
            continue;
        }
        let (code, out) = verify(&store);
        if code != 0 {
            rep.failures.push(format!(
                "{what}: verify after the cut exited {code}: {}",
                out.trim()
            ));
            continue;
        }
        let (code, err) = run_agent(&mut sync_cmd(&proxy.url(), &store, p.scenario.target, 30));
        if code != 0 {
            rep.failures
                .push(format!("{what}: rerun exited {code}: {}", err.trim()));
            continue;
        }
        let rerun_bytes = proxy.bytes_total();
        drop(proxy);
        let excess = (cut_bytes + rerun_bytes).saturating_sub(p.uncut_bytes);
        if killed {
            rep.excess_total += excess;
            rep.excess_worst = rep.excess_worst.max(excess);
        }
        let (code, out) = verify(&store);
        if code != 0 {
            rep.failures.push(format!(
                "{what}: verify after the rerun exited {code}: {}",
                out.trim()
            ));
            continue;
        }
        eprintln!("{what}: killed mid-sync {killed}, verify ok, rerun ok, excess {excess} B",);
        if let Err(e) =
            checkout_matches(&store, p.scenario.target, &p.work.join("co"), &p.reference)
        {
            rep.failures.push(format!("{what}: {e}"));
            continue;
        }
        rep.survived += 1;
        if killed {
            rep.survived_mid_sync += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&store);
    rep
}

/// Outcome of [`resume_cuts`].
#[derive(Debug, Default, Clone)]
pub struct ResumeReport {
    /// SIGKILLs that landed while the sync ran.
    pub cuts: u64,
    /// Updates brought to completion (a run that finished before its kill
    /// completes one, and the next cut starts a new update from the
    /// before-store; the last run always completes one).
    pub updates: u64,
    /// Bytes on the wire over every run, both ways.
    pub total_bytes: u64,
    /// Bytes of one uncut update.
    pub uncut_bytes: u64,
    /// One line per failure.
    pub failures: Vec<String>,
}

impl ResumeReport {
    /// What the cuts cost beyond the updates themselves.
    pub fn excess(&self) -> u64 {
        self.total_bytes
            .saturating_sub(self.updates * self.uncut_bytes)
    }
    /// One update plus every cut's cost, in uncut updates: the issue's
    /// "N cuts cost X× one update".
    pub fn cost_ratio(&self) -> f64 {
        1.0 + self.excess() as f64 / self.uncut_bytes.max(1) as f64
    }
}

/// `cuts` successive SIGKILLs during one update, each run resuming from
/// what the cut before left (a device losing power again and again):
/// each run is killed after a seeded delay in `[0, uncut time)`; after
/// every cut `verify` must pass; when a run finishes before its kill the
/// update is complete (checked against umoci) and the next one starts from
/// the before-store. A last uncut run completes the update in flight. All
/// bytes go through one counting proxy.
///
/// `rate` (bytes/s, 0 = unlimited) limits the registry→device direction of
/// every run, the uncut reference run included ([`prepare_limited`]), as on
/// a device's WAN link; unlimited loopback instead lets the agent's kernel
/// receive buffer fill ahead of what the agent has applied, and a cut
/// loses it whatever the agent keeps (the proxy's own send buffer is kept
/// small, so bytes it never delivered are not counted: [`CountingProxy`]).
pub fn resume_cuts(p: &Prepared, cuts: u64, seed: u64, rate: u64) -> ResumeReport {
    let mut rng = Rng::new(seed);
    let mut rep = ResumeReport {
        uncut_bytes: p.uncut_bytes,
        ..Default::default()
    };
    let store = p.work.join("resume-store");
    copy_store(&p.prep_store, &store);
    let proxy = CountingProxy::start(p.reg.addr());
    proxy.limit_down(rate);
    let span = p.uncut_time.as_micros() as u64;
    let mut attempts = 0;
    while rep.cuts < cuts && attempts < cuts * 5 {
        attempts += 1;
        let delay = Duration::from_micros(rng.below(span.max(1)));
        let (killed, status) = sync_killed_after(&proxy.url(), &store, p.scenario.target, delay);
        let what = format!(
            "[{}] run {attempts} cut at {:.3}s (seed {seed})",
            p.scenario.name,
            delay.as_secs_f64()
        );
        if killed {
            rep.cuts += 1;
            let (code, out) = verify(&store);
            if code != 0 {
                rep.failures.push(format!(
                    "{what}: verify after the cut exited {code}: {}",
                    out.trim()
                ));
                return rep;
            }
            eprintln!("{what}: killed, {} B so far", proxy.bytes_total());
        } else {
            if !status.success() {
                rep.failures
                    .push(format!("{what}: sync failed before the cut: {status}"));
                return rep;
            }
            rep.updates += 1;
            eprintln!("{what}: finished before the cut; next update from the before-store");
            if let Err(e) =
                checkout_matches(&store, p.scenario.target, &p.work.join("co"), &p.reference)
            {
                rep.failures.push(format!("{what}: {e}"));
                return rep;
            }
            copy_store(&p.prep_store, &store);
        }
    }
    let (code, err) = run_agent(&mut sync_cmd(&proxy.url(), &store, p.scenario.target, 30));
    if code != 0 {
        rep.failures
            .push(format!("final run exited {code}: {}", err.trim()));
        return rep;
    }
    rep.updates += 1;
    rep.total_bytes = proxy.bytes_total();
    let (code, out) = verify(&store);
    if code != 0 {
        rep.failures.push(format!(
            "verify after the final run exited {code}: {}",
            out.trim()
        ));
    }
    if let Err(e) = checkout_matches(&store, p.scenario.target, &p.work.join("co"), &p.reference) {
        rep.failures.push(format!("final checkout: {e}"));
    }
    let _ = std::fs::remove_dir_all(&store);
    rep
}

/// Network-fault runs on a prepared scenario until `faults` faults have
/// fired (or `max_runs` runs): each run syncs through a [`FaultProxy`]
/// (seeded per run, at most `per_run` faults) with `--retry-for retry_for`;
/// the sync must succeed, verify must pass and the checkout equal umoci.
pub fn net_faults(
    p: &Prepared,
    faults: u64,
    seed: u64,
    per_run: u64,
    retry_for: u64,
    max_runs: u64,
) -> FaultReport {
    let mut rep = FaultReport {
        uncut_bytes: p.uncut_bytes,
        ..Default::default()
    };
    let store = p.work.join("net-store");
    let mut run = 0;
    while rep.faults_fired < faults && run < max_runs {
        let run_seed = seed.wrapping_mul(1_000_003).wrapping_add(run);
        run += 1;
        rep.tried += 1;
        copy_store(&p.prep_store, &store);
        let plan = FaultPlan {
            seed: run_seed,
            rate: 0.6,
            window: p.uncut_bytes.max(1),
            stall_secs: 2,
            max_faults: Some(per_run),
            stalls: true,
        };
        let proxy = FaultProxy::start(p.reg.addr(), plan);
        let (code, err) = run_agent(&mut sync_cmd(
            &proxy.url(),
            &store,
            p.scenario.target,
            retry_for,
        ));
        let fired = proxy.faults_fired();
        rep.faults_fired += fired;
        let what = format!(
            "[{}] net run {} (seed {seed}, run seed {run_seed}, faults {:?})",
            p.scenario.name,
            run - 1,
            proxy.fired_kinds()
        );
        let bytes = proxy.bytes_total();
        drop(proxy);
        if code != 0 {
            rep.failures
                .push(format!("{what}: sync exited {code}: {}", err.trim()));
            continue;
        }
        let excess = bytes.saturating_sub(p.uncut_bytes);
        eprintln!("{what}: sync ok, {fired} faults, excess {excess} B");
        rep.excess_total += excess;
        rep.excess_worst = rep.excess_worst.max(excess);
        let (code, out) = verify(&store);
        if code != 0 {
            rep.failures
                .push(format!("{what}: verify exited {code}: {}", out.trim()));
            continue;
        }
        if let Err(e) =
            checkout_matches(&store, p.scenario.target, &p.work.join("co"), &p.reference)
        {
            rep.failures.push(format!("{what}: {e}"));
            continue;
        }
        rep.survived += 1;
    }
    let _ = std::fs::remove_dir_all(&store);
    rep
}

/// Sync through a proxy that breaks every connection (cut, truncate or
/// 503, no stalls) with `--retry-for retry_for`: returns the exit code and
/// the wall time. The agent must give up with exit 3.
pub fn always_failing(p: &Prepared, seed: u64, retry_for: u64) -> (i32, Duration, String) {
    let store = p.work.join("fail-store");
    copy_store(&p.prep_store, &store);
    let plan = FaultPlan {
        seed,
        rate: 1.0,
        window: 100,
        stall_secs: 0,
        max_faults: None,
        stalls: false,
    };
    let proxy = FaultProxy::start(p.reg.addr(), plan);
    let t0 = Instant::now();
    let (code, err) = run_agent(&mut sync_cmd(
        &proxy.url(),
        &store,
        p.scenario.target,
        retry_for,
    ));
    let took = t0.elapsed();
    drop(proxy);
    let _ = std::fs::remove_dir_all(&store);
    (code, took, err)
}
