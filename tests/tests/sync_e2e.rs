//! Device sync end to end: a real registry, real Debian images pushed with
//! skopeo, the real agent syncing through a TCP byte-counting proxy. The
//! oracle for every checkout is `umoci unpack` of the same image; the
//! oracle for bytes is the wire itself.

use layerlink_tests::fixture::{self, registry_with_test_images, test_repo};
use layerlink_tests::layers::{image_files, LayerFiles};
use layerlink_tests::{test_images, Agent, CountingProxy, Registry};

const TOKEN: &str = "tok-dev1";
const DEVICE_CONFIG: &str = r#"
[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["*"]
"#;

/// What a no-op sync may cost on the wire, both directions.
const NOOP_BUDGET: u64 = 2 * 1024;

/// A registry holding some test images, reached through a counting proxy.
struct Fixture {
    reg: Registry,
    proxy: CountingProxy,
}

fn remote(tag: &str) -> String {
    test_repo(tag)
}

fn fixture(tags: &[&str]) -> Fixture {
    let reg = registry_with_test_images(DEVICE_CONFIG, tags);
    let proxy = CountingProxy::start(reg.addr());
    Fixture { reg, proxy }
}

impl Fixture {
    /// Sync `tags` and return the bytes it cost on the wire (both ways).
    fn sync(&self, agent: &Agent, tags: &[&str]) -> u64 {
        self.proxy.reset();
        let images: Vec<String> = tags.iter().map(|t| remote(t)).collect();
        let images: Vec<&str> = images.iter().map(String::as_str).collect();
        agent.sync(&self.proxy.url(), &images);
        self.proxy.bytes_total()
    }
}

/// Check `tag` out of the agent's store and compare it with `umoci unpack`.
fn assert_checkout_matches_umoci(agent: &Agent, tag: &str) {
    fixture::assert_checkout_matches_umoci(agent, &remote(tag), &test_images().oci_dir, tag);
}

/// A second sync of what the device holds must cost almost nothing.
fn assert_noop_sync(fx: &Fixture, agent: &Agent, tags: &[&str]) {
    let cost = fx.sync(agent, tags);
    assert!(
        cost < NOOP_BUDGET,
        "a no-op sync of {tags:?} cost {cost} bytes on the wire (budget {NOOP_BUDGET})"
    );
}

/// Compressed bytes of the layers of `tag`.
fn layer_bytes(tag: &str) -> u64 {
    test_images()
        .layout()
        .layers(tag)
        .iter()
        .map(|l| l.size)
        .sum()
}

/// The contents `new` has that `held` lacks: (count, bytes, bytes each
/// gzip'd on its own at level 6): what an incremental sync must carry.
fn new_content_bytes(held: &LayerFiles, new_tag: &str) -> (u64, u64, u64) {
    use std::io::{Read as _, Write as _};
    let layout = test_images().layout();
    let mut bytes = 0;
    let mut gz_bytes = 0;
    let mut count = 0;
    let mut seen = std::collections::BTreeSet::new();
    for layer in layout.layers(new_tag) {
        let mut archive = tar::Archive::new(layerlink_tests::layers::layer_reader(&layout, &layer));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let digest = layerlink_tests::sha256_reader(data.as_slice()).unwrap();
            if !held.digests.contains(&digest) && seen.insert(digest) {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                gz.write_all(&data).unwrap();
                gz_bytes += gz.finish().unwrap().len() as u64;
                bytes += data.len() as u64;
                count += 1;
            }
        }
    }
    (count, bytes, gz_bytes)
}

#[test]
fn cold_sync_of_base_a_matches_umoci_and_resync_is_free() {
    let fx = fixture(&["base-a:v1"]);
    // Both encodings from the same registry: an agent that asks for zstd
    // (today's) and one that does not (older agents get gzip).
    let mut costs = Vec::new();
    for gzip in [true, false] {
        let enc = if gzip { "gzip" } else { "zstd" };
        let agent = Agent::with_encoding(TOKEN, gzip);
        let t0 = std::time::Instant::now();
        let cold = fx.sync(&agent, &["base-a:v1"]);
        eprintln!(
            "cold sync of base-a:v1 ({enc}): {cold} bytes on the wire in {:.1?}; layer blobs {} bytes",
            t0.elapsed(),
            layer_bytes("base-a:v1")
        );
        assert!(
            cold < layer_bytes("base-a:v1") * 3 / 2,
            "a cold sync ({cold} B, {enc}) should cost about the compressed layer ({} B)",
            layer_bytes("base-a:v1")
        );
        assert_checkout_matches_umoci(&agent, "base-a:v1");
        assert_noop_sync(&fx, &agent, &["base-a:v1"]);
        let verify = agent.verify();
        assert!(
            verify.status.success(),
            "verify after sync ({enc}): {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        costs.push(cold);
    }
    // zstd level 19 frames beat gzip -6 on the same content.
    assert!(
        costs[1] < costs[0] * 95 / 100,
        "zstd cold sync {} B is not clearly below gzip {} B",
        costs[1],
        costs[0]
    );
}

/// Incremental sync from `from` to `to`: checkout equals umoci, bytes stay
/// near what is really new, a re-sync is free; with both encodings.
fn incremental(from: &str, to: &str) {
    let fx = fixture(&[from, to]);
    for gzip in [true, false] {
        incremental_with(&fx, from, to, gzip);
    }
}

fn incremental_with(fx: &Fixture, from: &str, to: &str, gzip: bool) {
    let enc = if gzip { "gzip" } else { "zstd" };
    let agent = Agent::with_encoding(TOKEN, gzip);
    fx.sync(&agent, &[from]);
    let held = image_files(&test_images().layout(), &[from]);
    let (new_files, new_bytes, new_gz) = new_content_bytes(&held, to);

    let cost = fx.sync(&agent, &[to]);
    let full = layer_bytes(to);
    eprintln!(
        "{from} → {to} ({enc}): {cost} bytes on the wire; {new_files} new contents ({new_bytes} B \
         uncompressed, {new_gz} B gzip'd one by one); {to}'s layers are {full} B compressed"
    );
    // The issue's target: at most 1.3x the missing files' gzip'd sizes,
    // everything included (HTTP, the plan and report messages). Each of the
    // ~6,700 entries costing a reference header would blow it.
    let budget = new_gz * 13 / 10;
    assert!(
        cost <= budget,
        "{from} → {to} ({enc}) cost {cost} B, more than 1.3 x the new contents gzip'd ({new_gz} B)"
    );
    assert!(
        cost < full / 4,
        "{from} → {to} ({enc}) cost {cost} B: not much less than the plain layers ({full} B)"
    );
    assert_checkout_matches_umoci(&agent, to);
    assert_noop_sync(fx, &agent, &[to]);
}

#[test]
fn device_with_base_a_syncs_base_b_cheaply_and_exactly() {
    incremental("base-a:v1", "base-b:v1");
}

#[test]
fn device_with_base_a_v1_syncs_the_rebuilt_v2_cheaply_and_exactly() {
    incremental("base-a:v1", "base-a:v2");
}

#[test]
fn tiny_images_with_whiteouts_hard_links_and_xattrs_check_out_exactly() {
    let fx = fixture(&["tiny:v1", "tiny:v2"]);
    for gzip in [true, false] {
        let agent = Agent::with_encoding(TOKEN, gzip);
        fx.sync(&agent, &["tiny:v1"]);
        assert_checkout_matches_umoci(&agent, "tiny:v1");
        // v2 adds a layer on v1: only that layer travels.
        let cost = fx.sync(&agent, &["tiny:v1", "tiny:v2"]);
        assert!(
            cost < 16 * 1024,
            "tiny:v2's small upper layer cost {cost} B"
        );
        assert_checkout_matches_umoci(&agent, "tiny:v2");
        assert_checkout_matches_umoci(&agent, "tiny:v1");
        assert_noop_sync(&fx, &agent, &["tiny:v1", "tiny:v2"]);
        let devices = fx.reg.devices().to_string();
        assert!(
            devices.contains("dev1"),
            "the registry keeps no record of dev1's holdings: {devices}"
        );
        let status = agent.status_json().to_string();
        assert!(
            status.contains("tiny"),
            "status --json does not mention the synced images: {status}"
        );
    }
}

#[test]
fn a_wrong_token_gets_nothing() {
    let fx = fixture(&["tiny:v1"]);
    let agent = Agent::new("not-a-device-token");
    let out = agent.try_sync(&fx.proxy.url(), &[&remote("tiny:v1")]);
    assert!(!out.status.success(), "sync with a wrong token succeeded");
    assert!(
        fx.proxy.bytes_down() < 4096,
        "a refused device received {} bytes",
        fx.proxy.bytes_down()
    );
    // The registry still serves the right device.
    let good = Agent::new(TOKEN);
    fx.sync(&good, &["tiny:v1"]);
    assert_checkout_matches_umoci(&good, "tiny:v1");
}

#[test]
fn a_sync_cut_midway_resumes_without_downloading_everything_again() {
    let fx = fixture(&["base-a:v1"]);
    // What a full cold sync costs, on another device.
    let reference = Agent::new(TOKEN);
    fx.sync(&reference, &["base-a:v1"]);
    let full = fx.proxy.bytes_down();

    // Cut the connection halfway. The agent may retry by itself within the
    // same run or fail and be run again; either way what arrived before the
    // cut must not be downloaded again (much).
    let agent = Agent::new(TOKEN);
    let cut_at = full / 2;
    fx.proxy.reset();
    fx.proxy.cut_after(cut_at);
    let first = agent.try_sync(&fx.proxy.url(), &[&remote("base-a:v1")]);
    assert!(!fx.proxy.cut_pending(), "the cut never fired");
    let runs = if first.status.success() {
        1
    } else {
        agent.sync(&fx.proxy.url(), &[&remote("base-a:v1")]);
        2
    };
    let total = fx.proxy.bytes_down();
    eprintln!(
        "full sync {full} B down; cut after {cut_at} B; in all {total} B down over {runs} run(s)"
    );
    // Only the stream in flight may travel twice (measured: 0.2 MB of a
    // 54 MB sync); the bound is 1/32 of a full sync (before: half of what
    // had arrived before the cut).
    assert!(
        total.saturating_sub(full) <= full / 32,
        "after a cut at {cut_at} B the device downloaded {total} B in all, {} B more than \
         a full sync ({full} B): more than the stream in flight was downloaded again",
        total.saturating_sub(full)
    );
    assert_checkout_matches_umoci(&agent, "base-a:v1");
    assert_noop_sync(&fx, &agent, &["base-a:v1"]);
}

#[test]
fn verify_detects_a_damaged_object() {
    let fx = fixture(&["tiny:v1"]);
    let agent = Agent::new(TOKEN);
    fx.sync(&agent, &["tiny:v1"]);
    let ok = agent.verify();
    assert!(
        ok.status.success(),
        "verify of a fresh store: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The largest object is random.bin; damage it in place.
    let objects = agent.store.join("objects");
    let mut biggest: Option<(u64, std::path::PathBuf)> = None;
    let mut stack = vec![objects.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && biggest.as_ref().is_none_or(|(s, _)| m.len() > *s) {
                biggest = Some((m.len(), e.path()));
            }
        }
    }
    let (size, path) = biggest.expect("the store has objects under objects/");
    assert_eq!(
        size, 300_000,
        "the biggest object should be tiny's random.bin"
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1234] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let bad = agent.verify();
    assert!(
        !bad.status.success(),
        "verify missed a damaged object {}",
        path.display()
    );
}
