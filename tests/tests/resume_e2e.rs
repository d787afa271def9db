//! Cheap resumption after a cut (issue 13, point 6), end to end with the
//! real registry, a skopeo push, the real agent and `umoci unpack`.
//!
//! The agent stages verified objects in `tmp/` and moves them into
//! `objects/` a batch at a time; a SIGKILL before the batch flush used to
//! leave them in `tmp/`, which the next start emptied, so the next sync
//! downloaded them again. Now the next start re-hashes them and promotes the
//! sound ones, and the sync that follows reports them as held.

use layerlink_tests::fixture::assert_checkout_matches_umoci;
use layerlink_tests::oci::skopeo_push;
use layerlink_tests::proxy::CountingProxy;
use layerlink_tests::{run_ok, Agent, Registry};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use layerlink_tests::fixture::{DEVICE_CONFIG, TOKEN};

/// Incompressible files of the test image, and their size.
const FILES: usize = 8;
const FILE_BYTES: usize = 384 * 1024;
/// Registry→device rate of the cut run: one file every ~1.5 s, so the
/// kill lands while the batch (flushed after 5 s) is still in `tmp/`.
const RATE: u64 = 256 * 1024;

/// Deterministic incompressible bytes (xorshift).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An OCI layout at `dir` with image `tag`: one layer of [`FILES`] random
/// files plus a few small ones, made with umoci.
fn make_image(dir: &Path, tag: &str) {
    let layout = dir.join("oci");
    run_ok(
        Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout),
    );
    let image = format!("{}:{tag}", layout.display());
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = dir.join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    );
    let data = bundle.join("rootfs/data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..FILES {
        std::fs::write(
            data.join(format!("blob-{i}.bin")),
            noise(i as u64, FILE_BYTES),
        )
        .unwrap();
    }
    std::fs::write(data.join("README"), b"resume test image\n").unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
    std::fs::write(bundle.join("rootfs/etc/hostname"), b"resume\n").unwrap();
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    );
    let _ = std::fs::remove_dir_all(&bundle);
}

fn sync_cmd(agent: &Agent, url: &str, image: &str) -> Command {
    let mut cmd = agent.command();
    cmd.arg("sync")
        .arg("--server")
        .arg(url)
        .arg("--store")
        .arg(&agent.store)
        .arg("--token")
        .arg(&agent.token)
        .arg("--retry-for")
        .arg("30")
        .arg(image)
        .stdin(Stdio::null());
    cmd
}

/// Complete files of the test image staged in `tmp/` (sizes match).
fn staged_files(store: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(store.join("tmp")) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            e.metadata()
                .map(|m| m.is_file() && m.len() == FILE_BYTES as u64)
                .unwrap_or(false)
        })
        .count()
}

fn objects_of_size(store: &Path, size: u64) -> usize {
    let mut n = 0;
    for fan in std::fs::read_dir(store.join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(fan.path()).unwrap().flatten() {
            if f.metadata().map(|m| m.len() == size).unwrap_or(false) {
                n += 1;
            }
        }
    }
    n
}

const TAG: &str = "resume:v1";
const IMAGE: &str = "test/resume:v1";

/// The test image in a temp dir, pushed to a fresh registry and ingested.
struct Setup {
    work: tempfile::TempDir,
    oci: std::path::PathBuf,
    reg: Registry,
    /// Bytes one uncut sync moves (measured on another device).
    uncut: u64,
}

fn setup() -> Setup {
    let work = tempfile::Builder::new()
        .prefix("layerlink-resume-")
        .tempdir()
        .unwrap();
    make_image(work.path(), TAG);
    let oci = work.path().join("oci");
    let reg = Registry::start(Some(DEVICE_CONFIG));
    skopeo_push(&oci, TAG, &reg, IMAGE);
    let deadline = Instant::now() + Duration::from_secs(120);
    while reg.stat("layers") < 1 {
        assert!(
            Instant::now() < deadline,
            "layer not ingested: {}",
            reg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let reference = Agent::new(TOKEN);
    let proxy = CountingProxy::start(reg.addr());
    let out = sync_cmd(&reference, &proxy.url(), IMAGE).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uncut = proxy.bytes_total();
    assert!(
        uncut > (FILES * FILE_BYTES) as u64,
        "uncut sync moved only {uncut} B"
    );
    Setup {
        work,
        oci,
        reg,
        uncut,
    }
}

/// Every big file stored once, `verify` clean, checkout == umoci.
fn assert_sound(agent: &Agent, oci: &Path) {
    assert_eq!(
        objects_of_size(&agent.store, FILE_BYTES as u64),
        FILES,
        "every big file is stored once"
    );
    let v = agent.verify();
    assert!(
        v.status.success(),
        "verify after the rerun: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert_checkout_matches_umoci(agent, IMAGE, oci, TAG);
}

/// SIGKILL the agent while a batch of verified objects sits in `tmp/`:
/// the next sync keeps them (promoted, held) and its bytes are less than a
/// full resend by at least two of those objects; the checkout equals umoci.
#[test]
fn a_cut_keeps_the_verified_objects_of_the_batch_in_flight() {
    let Setup {
        work: _work,
        oci,
        reg,
        uncut,
    } = setup();

    // The cut: a slow link, killed once three files are staged (the batch
    // is flushed 5 s after its first object, i.e. after the fourth).
    let agent = Agent::new(TOKEN);
    let slow = CountingProxy::start(reg.addr());
    slow.limit_down(RATE);
    let mut child = sync_cmd(&agent, &slow.url(), IMAGE)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if staged_files(&agent.store) >= 3 {
            break;
        }
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "the sync ended before three files were staged"
        );
        assert!(Instant::now() < deadline, "no file staged within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let cut_bytes = slow.bytes_total();
    assert_eq!(
        objects_of_size(&agent.store, FILE_BYTES as u64),
        0,
        "the batch had been flushed before the cut: the test proves nothing"
    );
    drop(slow);

    // The next run: nothing to download twice beyond the file in flight.
    let proxy = CountingProxy::start(reg.addr());
    let out = sync_cmd(&agent, &proxy.url(), IMAGE).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rerun failed: {err}");
    let rerun = proxy.bytes_total();
    eprintln!("uncut sync {uncut} B; cut run {cut_bytes} B; rerun {rerun} B");
    // Three files were staged; at least two of them must not travel again
    // (a margin for framing: the rerun gets a spliced archive, the uncut
    // sync a cached cold one).
    let kept = (2 * FILE_BYTES) as u64;
    assert!(
        rerun + kept <= uncut,
        "rerun moved {rerun} B, uncut sync {uncut} B: the staged files were sent again \
         (cut run {cut_bytes} B)\n{err}"
    );
    assert_sound(&agent, &oci);
}

/// SIGKILL mid-archive: the next run sends `layerlink-resume` for the bytes
/// it kept, the registry answers with the rest of the same archive, and
/// the two runs together move the archive about once (what the kernel had
/// buffered for the killed process and the second plan are all that
/// travels twice); the kept bytes are gone after the sync, and the checkout
/// equals umoci.
#[test]
fn a_cut_archive_is_resumed_from_where_it_stopped() {
    let Setup {
        work: _work,
        oci,
        reg,
        uncut,
    } = setup();

    // Killed half-way, in the middle of some file's content.
    let agent = Agent::new(TOKEN);
    let slow = CountingProxy::start(reg.addr());
    slow.limit_down(RATE);
    let mut child = sync_cmd(&agent, &slow.url(), IMAGE)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let half = uncut / 2 + (FILE_BYTES as u64) / 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    while slow.bytes_total() < half {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "the sync ended before half of the archive arrived"
        );
        assert!(Instant::now() < deadline, "half the archive took over 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let cut_bytes = slow.bytes_total();
    drop(slow);
    let part = agent.store.join("partial-archive");
    let kept = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(kept > 0, "the cut run kept no bytes of the archive");

    let proxy = CountingProxy::start(reg.addr());
    let out = sync_cmd(&agent, &proxy.url(), IMAGE).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rerun failed: {err}");
    let rerun = proxy.bytes_total();
    eprintln!("uncut {uncut} B; cut run {cut_bytes} B (kept {kept} B); rerun {rerun} B");
    assert!(
        reg.log().contains("archive resumed"),
        "the registry did not resume the archive:\n{}",
        reg.log()
    );
    // Twice over the wire: what the killed process had not read yet, and
    // the rerun's plan and headers; a regenerated archive would also resend
    // the metadata and the file that was half-received.
    let slack = 128 * 1024;
    assert!(
        cut_bytes + rerun <= uncut + slack,
        "cut run {cut_bytes} B + rerun {rerun} B > uncut {uncut} B + {slack} B\n{err}"
    );
    assert!(!part.exists(), "the kept bytes outlived the sync");
    assert!(!agent.store.join("partial-archive.info").exists());
    assert_sound(&agent, &oci);
}
