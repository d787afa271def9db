//! `layerlink-vmcut`: filesystem-level power cuts of the agent's store.
//!
//! ```text
//! layerlink-vmcut [--cuts N] [--seed S] [--accel auto|kvm|tcg] [--keep]
//! ```
//!
//! The agent runs inside a QEMU virtual machine (kernel, initramfs and
//! `/init` from `tests/vm/setup.sh`, which this binary runs first) whose
//! store is an ext4 file system on a virtio disk opened with `cache=none`
//! (`O_DIRECT` on the host): only what the guest kernel actually wrote
//! reaches the image file. SIGKILLing QEMU at a seeded moment after the
//! guest printed `LL-STEP-START sync` throws away the guest's page cache and
//! every write it had not issued yet — a power cut of the store's file
//! system, with journal replay at the next mount.
//!
//! Per cut (alternating a cold sync of `base-a:v1` and an update
//! `base-a:v1` → `base-a:v2`): boot, sync, SIGKILL; boot again and run
//! `verify`, `sync`, `verify`, `checkout` (each must exit 0); then on the
//! host `e2fsck -fn` the image and compare the checkout's rootfs, mounted
//! read-only through a loop device, with `umoci unpack` of the same image.
//! Bytes on the wire are counted by a proxy in front of the real registry:
//! excess = cut run + rerun − one uncut sync, i.e. what travelled twice.
//!
//! Output: one line per cut, a markdown table, and last a machine-readable
//! `RESULT vmcut survived tried excess_total excess_worst seed`. Exit 1 if
//! any cut failed. Work files go under `$VMCUT_TMPDIR` (default `/var/tmp`:
//! a real disk, `O_DIRECT` does not work on tmpfs).

use layerlink_tests::args::{arg, mib, num};
use layerlink_tests::bins::{target_dir, workspace_root};
use layerlink_tests::faultproxy::{registry_with, remote, Rng, TOKEN};
use layerlink_tests::{compare_trees, test_images, umoci_unpack, CountingProxy, Registry};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Size of each store disk (sparse).
const DISK_SIZE: &str = "2G";
/// The agent's `--retry-for` inside the guest.
const RETRY_FOR: u64 = 60;

/// The kernel, initramfs and accelerator of the guest.
struct VmKit {
    kernel: PathBuf,
    initrd: PathBuf,
    accel: String,
    /// Boot-to-`LL-DONE` timeout.
    timeout: Duration,
}

/// A running guest: its QEMU process and its console lines as they come.
struct Boot {
    child: Child,
    lines: Receiver<(Instant, String)>,
}

/// What a finished boot printed.
#[derive(Debug, Default)]
struct Outcome {
    /// `(step, exit code)` in order.
    steps: Vec<(String, i32)>,
    /// The `LL-DONE` code, if the guest got that far.
    done: Option<i32>,
    /// The last console lines before the end (for failure reports).
    tail: Vec<String>,
    /// From the first sync's plan line (`… layers to fetch (N new files,
    /// …`): files the registry still had to send.
    new_files: Option<u64>,
    /// `LL-NOSTORE`: the store directory did not exist (a cold cut before
    /// it reached the disk; the old state is "no store").
    no_store: bool,
}

impl Outcome {
    fn code(&self, step_index: usize) -> Option<i32> {
        self.steps.get(step_index).map(|s| s.1)
    }
}

/// The part of a console line from its `LL-` marker on (progress lines may
/// end in `\r` and share a line with the marker).
fn marker(line: &str) -> Option<&str> {
    line.find("LL-").map(|i| line[i..].trim())
}

impl VmKit {
    fn boot(&self, disk: &Path, steps: &str, server: &str, image: &str, log: &Path) -> Boot {
        let append = format!(
            "console=ttyS0 quiet loglevel=3 panic=-1 ll.steps={steps} ll.server={server} \
             ll.image={image} ll.token={TOKEN} ll.retry={RETRY_FOR}"
        );
        let cpu = if self.accel == "kvm" { "host" } else { "max" };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            &self.accel,
            "-cpu",
            cpu,
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initrd)
        .arg("-append")
        .arg(append)
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=none",
            disk.display()
        ))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .args(["-device", "virtio-rng-pci"])
        .args(["-display", "none", "-vga", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (tx, rx) = channel();
        let file = std::fs::File::create(log).expect("console log");
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            let mut file = file.try_clone().expect("log clone");
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = file.write_all(&buf);
                            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                            let _ = tx.send((Instant::now(), line));
                        }
                    }
                }
            });
        }
        Boot { child, lines: rx }
    }
}

impl Boot {
    /// Wait for a console line whose marker starts with `prefix`; its time.
    fn wait_for(&mut self, prefix: &str, timeout: Duration, out: &mut Outcome) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) => {
                    let hit = record(&line, out);
                    if hit.is_some_and(|m| m.starts_with(prefix)) {
                        return Some(t);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Drain what the console printed so far without waiting.
    fn drain(&mut self, out: &mut Outcome) {
        while let Ok((_, line)) = self.lines.try_recv() {
            record(&line, out);
        }
    }

    /// Run to `LL-DONE` (or the timeout, then kill); collect the outcome.
    fn finish(mut self, timeout: Duration, mut out: Outcome) -> Outcome {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, line)) => {
                    if record(&line, &mut out).is_some_and(|m| m.starts_with("LL-DONE")) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    out.tail
                        .push(format!("(timeout after {timeout:?}, killed)"));
                    let _ = self.child.kill();
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // The guest powers off right after LL-DONE; give QEMU a moment.
        let stop = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        out
    }

    /// SIGKILL QEMU: the power cut.
    fn cut(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Note a console line in `out`; return its marker, if any.
fn record<'a>(line: &'a str, out: &mut Outcome) -> Option<&'a str> {
    out.tail.push(line.to_string());
    if out.new_files.is_none() {
        if let Some(rest) = line.split("layers to fetch (").nth(1) {
            out.new_files = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    if out.tail.len() > 40 {
        out.tail.remove(0);
    }
    let m = marker(line)?;
    let f: Vec<&str> = m.split_whitespace().collect();
    match f.as_slice() {
        ["LL-STEP-EXIT", step, code] => out
            .steps
            .push((step.to_string(), code.parse().unwrap_or(-1))),
        ["LL-DONE", code] => out.done = Some(code.parse().unwrap_or(-1)),
        ["LL-NOSTORE"] => out.no_store = true,
        _ => {}
    }
    Some(m)
}

fn sh(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sh_ok(cmd: &mut Command) -> String {
    let (code, out) = sh(cmd);
    assert_eq!(code, 0, "{cmd:?} failed: {out}");
    out
}

/// A fresh sparse ext4 image at `path`.
fn mkfs(path: &Path) {
    let _ = std::fs::remove_file(path);
    sh_ok(Command::new("truncate").args(["-s", DISK_SIZE]).arg(path));
    sh_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(path),
    );
}

fn copy_image(from: &Path, to: &Path) {
    let _ = std::fs::remove_file(to);
    sh_ok(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

/// Whether the image's journal needs replay (the file system was not
/// unmounted cleanly: the cut hit it mid-flight).
fn needs_recovery(img: &Path) -> bool {
    let (_, out) = sh(Command::new("dumpe2fs").arg("-h").arg(img));
    out.lines()
        .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
}

/// `e2fsck -fn`: `Err` with its report unless the file system is clean.
fn fsck(img: &Path) -> Result<(), String> {
    let (code, out) = sh(Command::new("e2fsck").arg("-fn").arg(img));
    if code == 0 {
        Ok(())
    } else {
        Err(format!("e2fsck -fn exited {code}: {}", last_lines(&out, 8)))
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Mount `img` read-only on `mnt`, compare `mnt/co/rootfs` with
/// `reference/rootfs`, unmount.
fn rootfs_matches(img: &Path, mnt: &Path, reference: &Path) -> Result<(), String> {
    std::fs::create_dir_all(mnt).expect("mount point");
    let (code, out) = sh(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,ro,noload"])
        .arg(img)
        .arg(mnt));
    if code != 0 {
        return Err(format!("mount -o loop,ro failed: {}", out.trim()));
    }
    let diffs = compare_trees(&reference.join("rootfs"), &mnt.join("co/rootfs"));
    let (ucode, uout) = sh(Command::new("umount").arg(mnt));
    assert_eq!(ucode, 0, "umount {}: {uout}", mnt.display());
    layerlink_tests::tree::differences_summary(&diffs)
}

/// One scenario: the store image before the target sync, the umoci
/// reference, and the cost of an uncut sync.
struct Prepared {
    name: &'static str,
    target: &'static str,
    prep_img: PathBuf,
    reference: PathBuf,
    uncut_bytes: u64,
    uncut_sync: Duration,
    /// New files of an uncut sync (its plan line).
    uncut_files: u64,
}

fn guest_url(proxy: &CountingProxy) -> String {
    format!("http://10.0.2.2:{}", proxy.addr().port())
}

/// Boot `img` running `steps` against `server`, to the end; panic unless
/// every step exited 0.
fn boot_ok(vm: &VmKit, img: &Path, steps: &str, server: &str, image: &str, log: &Path) -> Outcome {
    let boot = vm.boot(img, steps, server, image, log);
    let out = boot.finish(vm.timeout, Outcome::default());
    assert!(
        out.done == Some(0),
        "boot ({steps}, {image}) did not finish cleanly: {:?}; console tail:\n{}",
        out.steps,
        out.tail.join("\n")
    );
    out
}

fn prepare(
    vm: &VmKit,
    reg: &Registry,
    work: &Path,
    name: &'static str,
    before: Option<&'static str>,
    target: &'static str,
) -> Prepared {
    let dir = work.join(name.replace([' ', ':', '>'], "_"));
    std::fs::create_dir_all(&dir).expect("scenario dir");
    let prep_img = dir.join("prep.img");
    mkfs(&prep_img);
    if let Some(b) = before {
        boot_ok(
            vm,
            &prep_img,
            "sync,verify",
            &format!("http://10.0.2.2:{}", reg.addr().port()),
            &remote(b),
            &dir.join("prep.log"),
        );
    }
    let reference = dir.join("reference");
    umoci_unpack(&test_images().oci_dir, target, &reference);
    // One uncut run: its bytes and sync time, and a check that the whole
    // pipeline (guest checkout, fsck, host mount, compare) agrees.
    let img = dir.join("uncut.img");
    copy_image(&prep_img, &img);
    let proxy = CountingProxy::start(reg.addr());
    let log = dir.join("uncut.log");
    let mut boot = vm.boot(
        &img,
        "sync,verify,checkout",
        &guest_url(&proxy),
        &remote(target),
        &log,
    );
    let mut out = Outcome::default();
    let t0 = boot
        .wait_for("LL-STEP-START sync", vm.timeout, &mut out)
        .unwrap_or_else(|| {
            panic!(
                "{name}: uncut run never started its sync; see {}",
                log.display()
            )
        });
    let t1 = boot
        .wait_for("LL-STEP-EXIT sync", vm.timeout, &mut out)
        .unwrap_or_else(|| panic!("{name}: uncut sync never ended; see {}", log.display()));
    let out = boot.finish(vm.timeout, out);
    assert!(
        out.done == Some(0),
        "{name}: uncut run failed: {:?}\n{}",
        out.steps,
        out.tail.join("\n")
    );
    let uncut_bytes = proxy.bytes_total();
    let uncut_files = out.new_files.unwrap_or(0);
    fsck(&img).unwrap_or_else(|e| panic!("{name}: uncut run: {e}"));
    rootfs_matches(&img, &dir.join("mnt"), &reference)
        .unwrap_or_else(|e| panic!("{name}: uncut run: {e}"));
    let _ = std::fs::remove_file(&img);
    Prepared {
        name,
        target,
        prep_img,
        reference,
        uncut_bytes,
        uncut_sync: t1 - t0,
        uncut_files,
    }
}

/// One cut's record.
#[derive(Debug, Default)]
struct CutResult {
    scenario: &'static str,
    delay: Duration,
    killed_mid_sync: bool,
    journal_replayed: bool,
    verify_after_cut: Option<i32>,
    rerun: Option<i32>,
    verify_after_rerun: Option<i32>,
    /// Files the rerun still had to fetch (of `Prepared::uncut_files`).
    rerun_files: Option<u64>,
    /// The cut left no store directory (verify after the cut not applicable).
    no_store: bool,
    fsck_ok: bool,
    rootfs_ok: bool,
    bytes_cut: u64,
    bytes_rerun: u64,
    excess: u64,
    failure: Option<String>,
}

fn cut_once(
    vm: &VmKit,
    reg: &Registry,
    p: &Prepared,
    dir: &Path,
    i: u64,
    delay: Duration,
) -> CutResult {
    let mut r = CutResult {
        scenario: p.name,
        delay,
        ..Default::default()
    };
    let img = dir.join(format!("cut{i}.img"));
    copy_image(&p.prep_img, &img);
    let image = remote(p.target);

    // 1. Boot, sync, pull the plug.
    let proxy = CountingProxy::start(reg.addr());
    let log1 = dir.join(format!("cut{i}-a.log"));
    let mut boot = vm.boot(&img, "sync", &guest_url(&proxy), &image, &log1);
    let mut out = Outcome::default();
    if boot
        .wait_for("LL-STEP-START sync", vm.timeout, &mut out)
        .is_none()
    {
        boot.cut();
        r.failure = Some(format!(
            "the guest never started the sync; see {}",
            log1.display()
        ));
        return r;
    }
    std::thread::sleep(delay);
    boot.drain(&mut out);
    r.killed_mid_sync = out.steps.is_empty();
    boot.cut();
    r.bytes_cut = proxy.bytes_total();
    drop(proxy);
    r.journal_replayed = needs_recovery(&img);

    // 2. Power back on: verify what the cut left, finish the job, check.
    let proxy = CountingProxy::start(reg.addr());
    let log2 = dir.join(format!("cut{i}-b.log"));
    let boot = vm.boot(
        &img,
        "verify-if-store,sync,verify,checkout",
        &guest_url(&proxy),
        &image,
        &log2,
    );
    let out = boot.finish(vm.timeout, Outcome::default());
    r.bytes_rerun = proxy.bytes_total();
    drop(proxy);
    r.verify_after_cut = out.code(0);
    r.no_store = out.no_store;
    r.rerun = out.code(1);
    r.verify_after_rerun = out.code(2);
    r.rerun_files = Some(out.new_files.unwrap_or(0));
    r.excess = (r.bytes_cut + r.bytes_rerun).saturating_sub(p.uncut_bytes);
    if out.done != Some(0) {
        let failed = out
            .steps
            .iter()
            .find(|s| s.1 != 0)
            .map(|s| format!("{} exited {}", s.0, s.1))
            .unwrap_or_else(|| format!("boot ended with LL-DONE {:?}", out.done));
        let agent_lines: Vec<&String> = out
            .tail
            .iter()
            .filter(|l| l.contains("layerlink-agent") || l.contains("LL-ERROR"))
            .collect();
        r.failure = Some(format!(
            "{failed}: {}; console: {}",
            agent_lines
                .iter()
                .map(|s| s.trim())
                .collect::<Vec<_>>()
                .join(" | "),
            log2.display()
        ));
        // Does a further sync repair it? (Reported, not counted as survival.)
        if r.verify_after_cut.is_some_and(|c| c != 0) {
            let log3 = dir.join(format!("cut{i}-c.log"));
            let proxy = CountingProxy::start(reg.addr());
            let boot = vm.boot(
                &img,
                "sync,verify,checkout",
                &guest_url(&proxy),
                &image,
                &log3,
            );
            let again = boot.finish(vm.timeout, Outcome::default());
            if let Some(f) = r.failure.as_mut() {
                f.push_str(&format!(
                    "; a plain rerun then gave {:?} (done {:?})",
                    again.steps, again.done
                ));
            }
        }
        return r;
    }
    match fsck(&img) {
        Ok(()) => r.fsck_ok = true,
        Err(e) => {
            r.failure = Some(e);
            return r;
        }
    }
    match rootfs_matches(&img, &dir.join("mnt"), &p.reference) {
        Ok(()) => r.rootfs_ok = true,
        Err(e) => r.failure = Some(e),
    }
    if r.failure.is_none() {
        let _ = std::fs::remove_file(&img);
        let _ = std::fs::remove_file(&log1);
        let _ = std::fs::remove_file(&log2);
    }
    r
}

/// Boot a tiny image with no steps under KVM: does it reach `LL-DONE`?
fn kvm_works(kit: &VmKit, work: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let probe = VmKit {
        kernel: kit.kernel.clone(),
        initrd: kit.initrd.clone(),
        accel: "kvm".into(),
        timeout: Duration::from_secs(30),
    };
    let img = work.join("probe.img");
    mkfs(&img);
    let boot = probe.boot(
        &img,
        "none",
        "http://10.0.2.2:1",
        "x",
        &work.join("probe.log"),
    );
    let out = boot.finish(probe.timeout, Outcome::default());
    let _ = std::fs::remove_file(&img);
    out.done.is_some()
}

fn scenario_files(scenarios: &[Prepared], name: &str) -> u64 {
    scenarios
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.uncut_files)
        .unwrap_or(0)
}

fn verify_cell(r: &CutResult) -> String {
    if r.no_store {
        "no store".into()
    } else {
        code(r.verify_after_cut)
    }
}

fn code(c: Option<i32>) -> String {
    c.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cuts = num(&args, "--cuts", 20);
    let seed = num(&args, "--seed", 1);
    let accel = arg(&args, "--accel").unwrap_or_else(|| "auto".into());
    let keep = args.iter().any(|a| a == "--keep");
    let rel = target_dir().join("release");
    for (env, name) in [
        ("LAYERLINK_REGISTRY_BIN", "layerlink-registry"),
        ("LAYERLINK_AGENT_BIN", "layerlink-agent"),
    ] {
        if std::env::var_os(env).is_none() {
            std::env::set_var(env, rel.join(name));
        }
    }
    let agent = PathBuf::from(std::env::var_os("LAYERLINK_AGENT_BIN").expect("set above"));
    // The VM: kernel + initramfs holding this agent (rebuilt if it changed).
    let setup = workspace_root().join("tests/vm/setup.sh");
    // setup.sh prints the VM dir on the last line of its stdout.
    let out = Command::new("bash")
        .arg(&setup)
        .arg(&agent)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/vm/setup.sh");
    assert!(out.status.success(), "{} failed", setup.display());
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let vm_dir = PathBuf::from(out.lines().last().expect("setup.sh output").trim());
    let tmp_root = std::env::var_os("VMCUT_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let work = tempfile::Builder::new()
        .prefix("layerlink-vmcut-")
        .tempdir_in(&tmp_root)
        .expect("work dir")
        .keep();
    let mut vm = VmKit {
        kernel: vm_dir.join("kernel/vmlinuz"),
        initrd: vm_dir.join("initramfs.cpio.gz"),
        accel: "tcg".into(),
        timeout: Duration::from_secs(900),
    };
    vm.accel = match accel.as_str() {
        "auto" => {
            if kvm_works(&vm, work.as_path()) {
                "kvm".into()
            } else {
                println!("KVM cannot boot this kernel here; using TCG (software emulation)");
                "tcg".into()
            }
        }
        other => other.to_string(),
    };
    let t0 = Instant::now();
    let reg = registry_with(&["base-a:v1", "base-a:v2"]);
    let scenarios = [
        prepare(
            &vm,
            &reg,
            work.as_path(),
            "cold base-a:v1",
            None,
            "base-a:v1",
        ),
        prepare(
            &vm,
            &reg,
            work.as_path(),
            "base-a:v1->v2",
            Some("base-a:v1"),
            "base-a:v2",
        ),
    ];
    for p in &scenarios {
        println!(
            "{}: uncut sync {} in {:.1}s (guest, accel {})",
            p.name,
            mib(p.uncut_bytes),
            p.uncut_sync.as_secs_f64(),
            vm.accel
        );
    }
    let mut rng = Rng::new(seed);
    let mut results = Vec::new();
    for i in 0..cuts {
        let p = &scenarios[(i % scenarios.len() as u64) as usize];
        let span = p.uncut_sync.as_micros() as u64 * 11 / 10;
        let delay = Duration::from_micros(rng.below(span.max(1)));
        let dir = work.join(format!("cuts{}", i % scenarios.len() as u64));
        std::fs::create_dir_all(&dir).expect("cut dir");
        let r = cut_once(&vm, &reg, p, &dir, i, delay);
        println!(
            "cut {i} ({}): delay {:.2}s, mid-sync {}, journal replayed {}, verify-after-cut {}, rerun {}, \
             verify {}, fsck {}, rootfs {}, bytes cut {} rerun {} excess {}, files refetched {}/{}{}",
            r.scenario,
            r.delay.as_secs_f64(),
            r.killed_mid_sync,
            r.journal_replayed,
            verify_cell(&r),
            code(r.rerun),
            code(r.verify_after_rerun),
            r.fsck_ok,
            r.rootfs_ok,
            r.bytes_cut,
            r.bytes_rerun,
            r.excess,
            code(r.rerun_files.map(|n| n as i32)),
            p.uncut_files,
            r.failure
                .as_ref()
                .map(|f| format!(" — FAIL {f}"))
                .unwrap_or_default()
        );
        results.push(r);
    }

    println!();
    println!("| # | scenario | cut after | mid-sync | journal replayed | verify after cut | rerun exit | verify | e2fsck | rootfs = umoci | files refetched | re-downloaded (excess) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in results.iter().enumerate() {
        println!(
            "| {i} | {} | {:.2}s | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} |",
            r.scenario,
            r.delay.as_secs_f64(),
            if r.killed_mid_sync { "yes" } else { "no" },
            if r.journal_replayed { "yes" } else { "no" },
            verify_cell(r),
            code(r.rerun),
            code(r.verify_after_rerun),
            if r.fsck_ok { "clean" } else { "-" },
            if r.rootfs_ok { "yes" } else { "NO" },
            code(r.rerun_files.map(|n| n as i32)),
            scenario_files(&scenarios, r.scenario),
            mib(r.excess)
        );
    }
    let survived = results.iter().filter(|r| r.failure.is_none()).count();
    let mid = results.iter().filter(|r| r.killed_mid_sync).count();
    let replayed = results.iter().filter(|r| r.journal_replayed).count();
    let excess_total: u64 = results.iter().map(|r| r.excess).sum();
    let excess_worst = results.iter().map(|r| r.excess).max().unwrap_or(0);
    println!();
    for p in &scenarios {
        let rs: Vec<&CutResult> = results.iter().filter(|r| r.scenario == p.name).collect();
        println!(
            "{}: survived {}/{}, killed mid-sync {}, journal replayed {}, uncut sync {}, re-downloaded total {} worst {}",
            p.name,
            rs.iter().filter(|r| r.failure.is_none()).count(),
            rs.len(),
            rs.iter().filter(|r| r.killed_mid_sync).count(),
            rs.iter().filter(|r| r.journal_replayed).count(),
            mib(p.uncut_bytes),
            mib(rs.iter().map(|r| r.excess).sum()),
            mib(rs.iter().map(|r| r.excess).max().unwrap_or(0)),
        );
    }
    for (i, r) in results.iter().enumerate() {
        if let Some(f) = &r.failure {
            println!(
                "FAIL cut {i} ({}, seed {seed}, delay {:.3}s): {f}",
                r.scenario,
                r.delay.as_secs_f64()
            );
        }
    }
    println!(
        "vm power cuts: survived {survived}/{} (killed mid-sync {mid}, journal replayed {replayed}), seed {seed}, accel {}, \
         re-downloaded total {} worst {}, {:.0}s",
        results.len(),
        vm.accel,
        mib(excess_total),
        mib(excess_worst),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "RESULT vmcut {survived} {} {excess_total} {excess_worst} {seed}",
        results.len()
    );
    if keep || survived < results.len() {
        println!("work dir kept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if survived < results.len() {
        // `exit` runs no destructors: stop the registry first.
        drop(reg);
        std::process::exit(1);
    }
}
