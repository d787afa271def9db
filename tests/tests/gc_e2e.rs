//! Garbage collection (issue 14), end to end: the real registry, skopeo
//! pushes, the real agent, `layerlink-registry gc` on the stopped registry.
//!
//! What is freed is judged from outside: the blobs from the OCI layout the
//! images were pushed from, the file objects from Python `tarfile`'s sha256
//! of every regular file of the layers (not the registry's own tar reader),
//! the bytes from a walk of the data directory before and after. What is
//! kept is judged by a device updating to the live image (checkout ≡
//! `umoci unpack`) and by the deleted image pushed again and synced.

use layerlink_tests::bins::registry_bin;
use layerlink_tests::fixture::{self, registry_with_test_images, test_repo};
use layerlink_tests::http::request;
use layerlink_tests::layers::tarfile_digests;
use layerlink_tests::{skopeo_push, test_images, Agent};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "tok-gc-dev";
const CONFIG: &str = r#"
[[devices]]
id = "dev-gc"
token = "tok-gc-dev"
repositories = ["test/*"]
"#;

/// Every file under `dir` and its size (the redb file and the serve lock
/// are rewritten, not freed: left out).
fn files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        for e in std::fs::read_dir(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk(&e.path(), out);
            } else {
                out.insert(e.path(), m.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out.retain(|p, _| {
        !p.ends_with("registry.redb")
            && !p.ends_with("serve.lock")
            && !p.starts_with(dir.join("tmp"))
    });
    out
}

/// `layerlink-registry gc --data DATA --json ARGS...`, which must succeed.
fn gc(data: &Path, args: &[&str]) -> serde_json::Value {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    layerlink_tests::registry::gc_json(data, &args)
}

fn object_path(data: &Path, hex: &str) -> PathBuf {
    data.join("objects")
        .join(&hex[..2])
        .join(format!("{hex}.zst"))
}

/// Bytes of the files in `before` that are not in `after`, and whether any
/// file appeared.
fn freed(before: &BTreeMap<PathBuf, u64>, after: &BTreeMap<PathBuf, u64>) -> (u64, Vec<PathBuf>) {
    let gone = before
        .iter()
        .filter(|(p, _)| !after.contains_key(*p))
        .map(|(_, n)| n)
        .sum();
    let new = after
        .keys()
        .filter(|p| !before.contains_key(*p))
        .cloned()
        .collect();
    (gone, new)
}

fn n(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("gc report has no `{key}`: {report}"))
}

#[test]
fn gc_frees_exactly_what_no_tag_or_device_needs() {
    let images = test_images();
    let layout = images.layout();
    let reg = registry_with_test_images(CONFIG, &["base-a:v1", "base-a:v2"]);
    let data = reg.data_dir().to_owned();

    // v2 = v1 plus 53 new files: deleting v2 and keeping v1 frees those.
    let (gone_tag, live_tag) = ("base-a:v2", "base-a:v1");

    // A device syncs the image about to be deleted: it holds its layer.
    let agent = Agent::new(TOKEN);
    agent.sync(&reg.url, &[&test_repo(gone_tag)]);

    // gc refuses to run beside `serve` (its pushes are fenced only inside
    // one process): usage error, nothing deleted.
    let before = files(&data);
    let out = Command::new(registry_bin())
        .args(["gc", "--grace", "0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "gc beside a serving registry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files(&data), before, "a refused gc deleted files");

    // Delete its tag: the manifest stays, untagged, until gc.
    let gone_digest = layout.manifest_descriptor(gone_tag).digest;
    let r = request(
        reg.addr(),
        "DELETE",
        &format!("/v2/test/base-a/manifests/{}", &gone_tag[7..]),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "DELETE tag: {}", r.text());

    // Independent expectations.
    let blobs_of = |tag: &str| -> BTreeSet<String> {
        let mut s: BTreeSet<String> = layout.layers(tag).into_iter().map(|l| l.digest).collect();
        s.insert(layout.config_descriptor(tag).digest);
        s
    };
    let only_gone_blobs: Vec<String> = blobs_of(gone_tag)
        .difference(&blobs_of(live_tag))
        .cloned()
        .collect();
    let only_gone_blob_bytes: u64 = only_gone_blobs
        .iter()
        .map(|d| std::fs::metadata(layout.blob_path(d)).unwrap().len())
        .sum();
    let gone_files = tarfile_digests(&layout, &[gone_tag]);
    let live_files = tarfile_digests(&layout, &[live_tag]);
    let only_gone_files: Vec<&String> = gone_files.difference(&live_files).collect();
    assert!(
        !only_gone_blobs.is_empty() && only_gone_files.len() > 10,
        "the test images no longer differ enough for this test"
    );
    let blob_file = |d: &str| {
        data.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };

    // 1. The device was seen just now: the deleted image's layer keeps its index rows and
    //    objects; its original blobs go.
    let mut report = serde_json::Value::Null;
    let before = files(&data);
    let reg = reg.restart_after(|d| report = gc(d, &["--grace", "0"]));
    let after = files(&data);
    assert_eq!(n(&report, "manifests_deleted"), 1, "{report}");
    assert_eq!(
        n(&report, "blobs_deleted"),
        only_gone_blobs.len() as u64,
        "{report}"
    );
    assert_eq!(n(&report, "blob_bytes"), only_gone_blob_bytes, "{report}");
    assert_eq!(n(&report, "layers_kept_for_devices"), 1, "{report}");
    assert_eq!(n(&report, "layers_forgotten"), 0, "{report}");
    assert_eq!(n(&report, "objects_deleted"), 0, "{report}");
    let (gone_bytes, new) = freed(&before, &after);
    assert_eq!(gone_bytes, n(&report, "bytes_freed"), "{report}");
    assert!(new.is_empty(), "gc created files: {new:?}");
    for d in &only_gone_blobs {
        assert!(!blob_file(d).exists(), "{d} survived");
    }
    for d in blobs_of(live_tag) {
        assert!(blob_file(&d).is_file(), "live blob {d} was deleted");
    }

    // 2. A dry run counts what forgetting the device's holdings frees,
    //    and deletes nothing.
    let mut dry = serde_json::Value::Null;
    let mut real = serde_json::Value::Null;
    let before = files(&data);
    let reg = reg.restart_after(|d| {
        dry = gc(d, &["--grace", "0", "--device-grace", "0", "--dry-run"]);
        assert_eq!(files(d), before, "a dry run deleted files");
        real = gc(d, &["--grace", "0", "--device-grace", "0"]);
    });
    let after = files(&data);
    let mut dry_as_real = dry.clone();
    dry_as_real["dry_run"] = serde_json::Value::Bool(false);
    assert_eq!(dry_as_real, real, "the dry run counted something else");
    assert_eq!(n(&real, "layers_forgotten"), 1, "{real}");
    assert_eq!(
        n(&real, "objects_deleted"),
        only_gone_files.len() as u64,
        "{real}"
    );
    assert!(
        n(&real, "cache_files_deleted") > 0,
        "the deleted image's content frames (made by the sync) should go: {real}"
    );
    let (gone_bytes, new) = freed(&before, &after);
    assert_eq!(gone_bytes, n(&real, "bytes_freed"), "{real}");
    assert!(new.is_empty(), "gc created files: {new:?}");
    for hex in &only_gone_files {
        assert!(!object_path(&data, hex).exists(), "object {hex} survived");
    }
    for hex in &live_files {
        assert!(
            object_path(&data, hex).is_file(),
            "live object {hex} was deleted"
        );
    }
    assert_eq!(reg.stat("layers"), 1, "index: only the live image's layer");

    // 3. Nothing a live image needs was lost: the device moves to it.
    agent.sync(&reg.url, &[&test_repo(live_tag)]);
    fixture::assert_checkout_matches_umoci(&agent, &test_repo(live_tag), &images.oci_dir, live_tag);
    let r = request(
        reg.addr(),
        "GET",
        &format!("/v2/test/base-a/manifests/{gone_digest}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "deleted manifest still served");

    // 4. A second collection finds nothing but the archive step 3's sync kept for a
    //    resumption (dead once nothing serves: the next start would clear it); the deleted
    //    image pushed again syncs to a new device.
    let mut again = serde_json::Value::Null;
    let mut kept = (0, 0);
    let reg = reg.restart_after(|d| {
        let archives: Vec<u64> = files(&d.join("resume")).into_values().collect();
        kept = (archives.len() as u64, archives.iter().sum::<u64>());
        again = gc(d, &["--grace", "0"]);
        assert!(
            files(&d.join("resume")).is_empty(),
            "kept archives survived gc"
        );
    });
    assert!(kept.1 > 0, "step 3's sync kept no archive");
    assert_eq!(n(&again, "cache_files_deleted"), kept.0, "{again}");
    assert_eq!(n(&again, "bytes_freed"), kept.1, "{again}");
    assert_eq!(n(&again, "manifests_deleted"), 0, "{again}");
    skopeo_push(&images.oci_dir, gone_tag, &reg, &test_repo(gone_tag));
    let fresh = Agent::new(TOKEN);
    fresh.sync(&reg.url, &[&test_repo(gone_tag)]);
    fixture::assert_checkout_matches_umoci(&fresh, &test_repo(gone_tag), &images.oci_dir, gone_tag);
}

/// The value of the metric line starting with `series ` in `/metrics`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn serve_collects_by_itself_on_its_interval() {
    // Grace 5 s: longer than a tiny push's gap between its blobs and its
    // manifest, so the pushes below are never cut short by a collection.
    let config =
        format!("{CONFIG}\n[gc]\ninterval = \"1s\"\ngrace = \"5s\"\ndevice_grace = \"0\"\n");
    let images = test_images();
    let layout = images.layout();
    let reg = registry_with_test_images(&config, &["tiny:v1", "tiny:v2"]);
    let v2 = layout.manifest_descriptor("tiny:v2").digest;
    let only_v2: Vec<String> = layout
        .layers("tiny:v2")
        .into_iter()
        .map(|l| l.digest)
        .filter(|d| !layout.layers("tiny:v1").iter().any(|l| l.digest == *d))
        .collect();
    assert!(!only_v2.is_empty());
    let r = request(reg.addr(), "DELETE", "/v2/test/tiny/manifests/v2", &[], b"");
    assert_eq!(r.status, 202, "DELETE tag: {}", r.text());

    // Within a few intervals after the grace period: the untagged manifest
    // and its own layer blob are gone, logged and counted.
    reg.wait_for_log("gc: deleted 1 manifest(s)", 1);
    let r = request(
        reg.addr(),
        "GET",
        &format!("/v2/test/tiny/manifests/{v2}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "collected manifest still served");
    for d in &only_v2 {
        // A blob is spared until its own file is older than the grace
        // period, which can be one run after its manifest went (the
        // manifest's push time is kept in whole seconds).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let head = || {
            request(
                reg.addr(),
                "HEAD",
                &format!("/v2/test/tiny/blobs/{d}"),
                &[],
                b"",
            )
        };
        while head().status == 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(
            head().status,
            404,
            "blob {d} of the collected image still served"
        );
        let file = reg
            .data_dir()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        // The run unlinks the blob (HEAD answers 404) before it deletes
        // the file: on a loaded machine the HEAD can fall in between.
        while file.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(!file.exists(), "{} survived", file.display());
    }
    let m = request(reg.addr(), "GET", "/metrics", &[], b"").text();
    assert!(
        sample(&m, "layerlink_gc_runs_total{outcome=\"ok\"}") >= 1.0,
        "no successful gc run counted:\n{m}"
    );
    assert!(
        sample(&m, "layerlink_gc_bytes_freed_total") > 0.0,
        "no freed bytes counted:\n{m}"
    );

    // The live image is whole.
    let agent = Agent::new(TOKEN);
    agent.sync(&reg.url, &[&test_repo("tiny:v1")]);
    fixture::assert_checkout_matches_umoci(
        &agent,
        &test_repo("tiny:v1"),
        &images.oci_dir,
        "tiny:v1",
    );
}
