//! Layer verification against the diff_ids ("tar-split", issue 13.8), end
//! to end with the real registry, skopeo pushes and the real agent:
//!
//! * a normal sync fetches each new layer's framing and verifies the built
//!   tree against the layer's diff_id before committing it — cold (tiny:v2,
//!   two layers) and on a held base (upd:v1 → upd:v2, layers built with
//!   `layer-base`, compact metadata and binary deltas); the checkouts equal
//!   `umoci unpack`;
//! * a registry whose index maps one file of a layer to another object
//!   (the archive and the framing agree with each other and every object
//!   verifies by its digest — only the layer's sha256 can tell) is refused:
//!   exit 5, the layer is not committed, the image has no record, the held
//!   image is intact (checkout ≡ umoci) and `verify` is clean; a later sync
//!   from an honest registry succeeds;
//! * a layer the registry has no framing for (its index cannot reproduce
//!   the tar) syncs with a warning with `--verify-layers on`, and is
//!   refused (exit 5, nothing committed) with `--verify-layers require`;
//!   the default (`off`) fetches no framing.
//!
//! The tampering edits the registry's redb index while it is stopped,
//! through the registry's own row types.

use layerlink_registry::store::index::{entry_key, EntryKind, EntryRecord, LayerMeta, RawHeader};
use layerlink_registry::store::index::{ENTRIES, LAYERS};
use layerlink_tests::fixture::{
    assert_checkout_matches_umoci, registry_with_test_images, test_repo, DEVICE_CONFIG, TOKEN,
};
use layerlink_tests::{test_images, Agent, Registry};
use redb::{ReadableDatabase as _, ReadableTable as _};
use std::path::Path;
use std::process::Output;

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// diff_ids of `tag` (from the cached layout's config).
fn diff_ids(tag: &str) -> Vec<String> {
    test_images().layout().diff_ids(tag)
}

fn hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

fn layer_dir(agent: &Agent, diff_id: &str) -> std::path::PathBuf {
    agent.store.join("layers").join(hex(diff_id))
}

fn digest_bytes(d: &str) -> [u8; 32] {
    let h = hex(d);
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// In the registry's index (registry stopped): make one regular file of
/// layer `victim` name the content of a regular file of layer `donor`
/// (size and header follow, so the archive and the framing are
/// self-consistent). Returns the file's path.
fn swap_one_file(data: &Path, victim: &str, donor: &str) -> String {
    let db = redb::Database::open(data.join("registry.redb")).expect("open registry.redb");
    let (v, d) = (digest_bytes(victim), digest_bytes(donor));
    let rows = |layer: &[u8; 32]| -> Vec<(u32, EntryRecord)> {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(ENTRIES).unwrap();
        let mut lo = [0u8; 36];
        lo[..32].copy_from_slice(layer);
        let mut hi = lo;
        hi[32..].copy_from_slice(&u32::MAX.to_be_bytes());
        t.range::<&[u8]>(&lo[..]..=&hi[..])
            .unwrap()
            .map(|r| {
                let (k, val) = r.unwrap();
                let n = u32::from_be_bytes(k.value()[32..36].try_into().unwrap());
                (n, postcard::from_bytes(val.value()).unwrap())
            })
            .collect()
    };
    let files = |rs: Vec<(u32, EntryRecord)>| -> Vec<(u32, EntryRecord)> {
        rs.into_iter()
            .filter(|(_, r)| r.kind == EntryKind::File && r.size > 0)
            .collect()
    };
    let (n, mut rec) = files(rows(&v))
        .into_iter()
        .next()
        .expect("a regular file in the victim layer");
    let (_, other) = files(rows(&d))
        .into_iter()
        .find(|(_, r)| r.object != rec.object)
        .expect("another file in the donor layer");
    rec.object = other.object;
    rec.size = other.size;
    rec.raw = RawHeader::Canonical;
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(ENTRIES).unwrap();
        let key = entry_key(&layerlink_proto::Digest(v), n);
        let bytes = postcard::to_allocvec(&rec).unwrap();
        t.insert(&key[..], bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    String::from_utf8_lossy(&rec.path).into_owned()
}

/// In the registry's index (registry stopped): mark layer `diff_id` as not
/// reproducible byte for byte, so it has no framing.
fn mark_inexact(data: &Path, diff_id: &str) {
    let db = redb::Database::open(data.join("registry.redb")).expect("open registry.redb");
    let key = digest_bytes(diff_id);
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(LAYERS).unwrap();
        let mut meta: LayerMeta = {
            let v = t.get(&key).unwrap().expect("layer row");
            postcard::from_bytes(v.value()).unwrap()
        };
        meta.exact = false;
        let bytes = postcard::to_allocvec(&meta).unwrap();
        t.insert(&key, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// A device that verifies layers (`--verify-layers on`; the default is off).
fn verifying_agent() -> Agent {
    let mut a = Agent::new(TOKEN);
    a.sync_args.extend(["--verify-layers".into(), "on".into()]);
    a
}

fn assert_verify_clean(agent: &Agent) {
    let v = agent.verify();
    assert!(v.status.success(), "verify is not clean: {}", text(&v));
}

#[test]
fn normal_syncs_verify_every_layer_and_match_umoci() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["tiny:v2", "upd:v1", "upd:v2"]);
    let agent = verifying_agent();
    // Cold: both layers of tiny:v2.
    let out = agent.sync(&reg.url, &[&test_repo("tiny:v2")]);
    let err = stderr(&out);
    for d in diff_ids("tiny:v2") {
        assert!(
            err.contains(&format!("layer {d}: verified")),
            "layer {d} of tiny:v2 was not verified:\n{err}"
        );
        assert!(layer_dir(&agent, &d).is_dir());
    }
    assert_checkout_matches_umoci(
        &agent,
        &test_repo("tiny:v2"),
        &test_images().oci_dir,
        "tiny:v2",
    );
    // Update on a held base: upd:v2's layers are built on upd:v1's.
    agent.sync(&reg.url, &[&test_repo("upd:v1")]);
    let out = agent.sync(&reg.url, &[&test_repo("upd:v2")]);
    let err = stderr(&out);
    for d in diff_ids("upd:v2") {
        assert!(
            err.contains(&format!("layer {d}: verified")),
            "layer {d} of upd:v2 was not verified:\n{err}"
        );
    }
    assert!(
        err.contains("kept from a held layer"),
        "upd:v2 was expected to be built on held layers:\n{err}"
    );
    assert_checkout_matches_umoci(
        &agent,
        &test_repo("upd:v2"),
        &test_images().oci_dir,
        "upd:v2",
    );
    assert_verify_clean(&agent);
    // The registry served one framing per new layer.
    let log = reg.log();
    let framings = log.matches("request=\"framing\"").count();
    assert_eq!(framings, 2 + 2 + 2, "one framing per new layer:\n{log}");
}

#[test]
fn a_registry_that_swaps_one_file_is_refused() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["tiny:v1", "tiny:v2"]);
    let agent = verifying_agent();
    agent.sync(&reg.url, &[&test_repo("tiny:v1")]);
    let ids = diff_ids("tiny:v2");
    let (base, top) = (ids[0].clone(), ids[1].clone());
    // The top layer's file now names a file of the held base: the device
    // holds that object, so the archive sends a reference to it.
    let mut path = String::new();
    let reg: Registry = reg.restart_after(|data| path = swap_one_file(data, &top, &base));
    let out = agent.try_sync(&reg.url, &[&test_repo("tiny:v2")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        err.contains(&format!("layer {top}")) && err.contains("not to its diff_id"),
        "the error does not name the layer and the mismatch:\n{err}"
    );
    assert!(
        err.contains("not committed"),
        "the error does not say the layer was not committed:\n{err}"
    );
    assert!(!path.is_empty());
    // Nothing committed: no layer, no record; the held image is intact.
    assert!(
        !layer_dir(&agent, &top).exists(),
        "the tampered layer was committed"
    );
    let st = agent.status_json();
    let images = st["images"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = images
        .iter()
        .map(|i| i["image"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("tiny:v2")),
        "tiny:v2 has a record after the refusal: {st}"
    );
    assert!(
        names.iter().any(|n| n.contains("tiny:v1")),
        "tiny:v1 lost its record: {st}"
    );
    assert_verify_clean(&agent);
    assert_checkout_matches_umoci(
        &agent,
        &test_repo("tiny:v1"),
        &test_images().oci_dir,
        "tiny:v1",
    );
    // Without the check the same registry would have been believed.
    let blind = agent.try_sync_with(
        &reg.url,
        &[&test_repo("tiny:v2")],
        &["--verify-layers", "off"],
    );
    assert!(blind.status.success(), "{}", text(&blind));
    assert!(layer_dir(&agent, &top).is_dir());
}

#[test]
fn a_layer_without_framing_warns_or_is_refused() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["tiny:v1"]);
    let layer = diff_ids("tiny:v1")[0].clone();
    let reg: Registry = reg.restart_after(|data| mark_inexact(data, &layer));
    // require: refused before anything is fetched.
    let strict = Agent::new(TOKEN);
    let out = strict.try_sync_with(
        &reg.url,
        &[&test_repo("tiny:v1")],
        &["--verify-layers", "require"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        stderr(&out).contains("has no framing"),
        "the error does not say why: {}",
        text(&out)
    );
    assert!(!layer_dir(&strict, &layer).exists());
    // on: synced, with a warning naming the layer.
    let lax = verifying_agent();
    let out = lax.sync(&reg.url, &[&test_repo("tiny:v1")]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("warning: layer {layer} is not verified")),
        "no warning for the unverified layer:\n{err}"
    );
    assert_checkout_matches_umoci(
        &lax,
        &test_repo("tiny:v1"),
        &test_images().oci_dir,
        "tiny:v1",
    );
}
