//! The registry as OCI clients see it: a real `layerlink-registry serve`
//! process, real images pushed and pulled with skopeo (and podman), and
//! malformed requests sent over raw HTTP. The oracles are skopeo's own
//! copies and an independent walk of the layer tars — never the registry's
//! code.

use layerlink_tests::http::{request, request_declaring, Response};
use layerlink_tests::images::TAGS;
use layerlink_tests::layers::{image_files, tarfile_count, LayerFiles};
use layerlink_tests::oci::skopeo_push_output;
use layerlink_tests::{
    sha256_file, sha256_hex, skopeo_pull, skopeo_push, test_images, OciLayout, Registry,
};
use serde_json::json;
use std::time::{Duration, Instant};

/// `base-a:v1` → `test/base-a:v1`.
fn remote(tag: &str) -> String {
    format!("test/{tag}")
}

/// Wait until the registry has ingested `layers` layers (ingest may finish
/// just after the manifest PUT returns), then return the stats.
fn stats_after_ingest(reg: &Registry, layers: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = reg.stats();
        if stats["layers"].as_u64() == Some(layers) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The registry's dedup figures must equal an independent count over the
/// layer tars. The empty file needs no object (devices never link it), so
/// `distinct_objects` counts distinct non-empty contents.
fn assert_stats_match(stats: &serde_json::Value, expected_layers: u64, files: &LayerFiles) {
    let get = |k: &str| {
        stats[k]
            .as_u64()
            .unwrap_or_else(|| panic!("stats has no `{k}`: {stats}"))
    };
    assert_eq!(get("layers"), expected_layers, "layers ingested: {stats}");
    assert_eq!(
        get("regular_files"),
        files.regular_files,
        "regular files: {stats}"
    );
    assert_eq!(
        get("logical_bytes"),
        files.logical_bytes,
        "logical bytes: {stats}"
    );
    assert_eq!(get("file_entries"), files.entries, "tar entries: {stats}");
    assert_eq!(
        get("distinct_objects") as usize,
        files.distinct_nonempty(),
        "distinct objects vs an independent count of distinct non-empty contents: {stats}"
    );
}

/// The registry's figures against a second tar implementation (Python's
/// `tarfile`), so that a bug shared by ingest and [`image_files`] (both use
/// the `tar` crate) cannot agree with itself.
fn assert_stats_match_tarfile(stats: &serde_json::Value, src: &OciLayout) {
    let py = tarfile_count(src, TAGS);
    let got = |k: &str| stats[k].as_u64().unwrap();
    assert_eq!(
        (
            got("file_entries"),
            got("regular_files"),
            got("logical_bytes"),
            got("distinct_objects"),
            got("distinct_bytes")
        ),
        (
            py.entries,
            py.regular_files,
            py.logical_bytes,
            py.distinct_nonempty,
            py.distinct_bytes
        ),
        "(entries, regular files, logical bytes, distinct objects, their bytes): registry vs \
         Python tarfile"
    );
}

/// `stored_bytes` (from the registry's database) against the object files
/// actually on disk under `DATA/objects`.
fn assert_stored_bytes_on_disk(stats: &serde_json::Value, reg: &Registry) {
    fn walk(dir: &std::path::Path, files: &mut u64, bytes: &mut u64) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                walk(&e.path(), files, bytes);
            } else if m.is_file() {
                *files += 1;
                *bytes += m.len();
            }
        }
    }
    let (mut files, mut bytes) = (0, 0);
    walk(&reg.data_dir().join("objects"), &mut files, &mut bytes);
    assert_eq!(
        (files, bytes),
        (
            stats["distinct_objects"].as_u64().unwrap(),
            stats["stored_bytes"].as_u64().unwrap()
        ),
        "(object files, bytes) on disk vs stats (distinct_objects, stored_bytes)"
    );
}

fn assert_same_blob(a: &OciLayout, b: &OciLayout, digest: &str, what: &str) {
    let (pa, pb) = (a.blob_path(digest), b.blob_path(digest));
    assert!(pb.is_file(), "{what} {digest} missing after pull");
    assert_eq!(
        sha256_file(&pa).unwrap(),
        sha256_file(&pb).unwrap(),
        "{what} {digest} differs after pull"
    );
    assert_eq!(
        format!("sha256:{}", sha256_file(&pb).unwrap()),
        digest,
        "{what} bytes match their digest"
    );
}

#[test]
fn every_test_image_round_trips_byte_identical_and_files_are_stored_once() {
    let images = test_images();
    let src = images.layout();
    let reg = Registry::start(None);
    for tag in TAGS {
        skopeo_push(&images.oci_dir, tag, &reg, &remote(tag));
    }

    let tmp = tempfile::tempdir().unwrap();
    let pulled_dir = tmp.path().join("pulled");
    for tag in TAGS {
        skopeo_pull(&reg, &remote(tag), &pulled_dir, tag);
    }
    let pulled = OciLayout::open(&pulled_dir);
    for tag in TAGS {
        assert_eq!(
            pulled.manifest_descriptor(tag).digest,
            src.manifest_descriptor(tag).digest,
            "{tag}: manifest digest changed through the registry"
        );
        assert_eq!(
            pulled.manifest_bytes(tag),
            src.manifest_bytes(tag),
            "{tag}: manifest bytes"
        );
        assert_same_blob(&src, &pulled, &src.config_descriptor(tag).digest, "config");
        for layer in src.layers(tag) {
            assert_same_blob(&src, &pulled, &layer.digest, "layer");
        }
    }

    // Dedup figures against an independent walk of every distinct layer.
    let files = image_files(&src, TAGS);
    let distinct_layers: std::collections::BTreeSet<String> = TAGS
        .iter()
        .flat_map(|t| src.layers(t).into_iter().map(|l| l.digest))
        .collect();
    let stats = stats_after_ingest(&reg, distinct_layers.len() as u64);
    assert_stats_match(&stats, distinct_layers.len() as u64, &files);
    assert_stats_match_tarfile(&stats, &src);
    assert_stored_bytes_on_disk(&stats, &reg);
    // The point of it all: three ~170 MB Debian trees cost little more than one.
    let one = image_files(&src, &["base-a:v1"]);
    assert!(
        (stats["distinct_objects"].as_u64().unwrap() as usize) < one.digests.len() * 3 / 2,
        "base-a:v1, base-a:v2 and base-b:v1 should share most objects: {stats}"
    );
    assert_eq!(stats["tags"].as_u64(), Some(TAGS.len() as u64), "{stats}");
}

#[test]
fn pushing_again_adds_no_objects() {
    let images = test_images();
    let src = images.layout();
    let reg = Registry::start(None);
    skopeo_push(&images.oci_dir, "tiny:v2", &reg, "a/tiny:v2");
    let files = image_files(&src, &["tiny:v2"]);
    let first = stats_after_ingest(&reg, 2);
    assert_stats_match(&first, 2, &files);

    // Same image again, under the same and under another name.
    skopeo_push(&images.oci_dir, "tiny:v2", &reg, "a/tiny:v2");
    skopeo_push(&images.oci_dir, "tiny:v2", &reg, "b/other:latest");
    std::thread::sleep(Duration::from_millis(500));
    let again = reg.stats();
    let unchanged = |before: &serde_json::Value, after: &serde_json::Value, keys: &[&str]| {
        for k in keys {
            assert_eq!(
                after[k], before[k],
                "{k} changed by a re-push: before {before} after {after}"
            );
        }
    };
    let dedup = [
        "layers",
        "distinct_objects",
        "stored_bytes",
        "regular_files",
        "file_entries",
    ];
    unchanged(&first, &again, &dedup);
    unchanged(&first, &again, &["blobs", "blob_bytes"]);
    assert_eq!(again["repositories"].as_u64(), Some(2), "{again}");

    // tiny:v1 is tiny:v2's lower layer: only its config blob is new.
    skopeo_push(&images.oci_dir, "tiny:v1", &reg, "a/tiny:v1");
    std::thread::sleep(Duration::from_millis(500));
    let third = reg.stats();
    unchanged(&first, &third, &dedup);
    assert_eq!(
        third["blobs"].as_u64(),
        first["blobs"].as_u64().map(|b| b + 1),
        "{third}"
    );
}

#[test]
fn two_concurrent_pushes_of_one_image_both_succeed_and_store_once() {
    let images = test_images();
    let src = images.layout();
    let reg = Registry::start(None);
    let outputs = std::thread::scope(|s| {
        let a =
            s.spawn(|| skopeo_push_output(&images.oci_dir, "base-b:v1", &reg, "race/base-b:v1"));
        let b =
            s.spawn(|| skopeo_push_output(&images.oci_dir, "base-b:v1", &reg, "race/base-b:v1"));
        [a.join().unwrap(), b.join().unwrap()]
    });
    for out in &outputs {
        assert!(
            out.status.success(),
            "a concurrent push failed:\n{}\n--- registry log\n{}",
            String::from_utf8_lossy(&out.stderr),
            reg.log()
        );
    }
    let stats = stats_after_ingest(&reg, 2);
    // Two layers and one config, each stored once.
    assert_eq!(stats["blobs"].as_u64(), Some(3), "{stats}");
    assert_stats_match(&stats, 2, &image_files(&src, &["base-b:v1"]));

    let tmp = tempfile::tempdir().unwrap();
    skopeo_pull(&reg, "race/base-b:v1", &tmp.path().join("p"), "x");
    let pulled = OciLayout::open(tmp.path().join("p"));
    assert_eq!(pulled.manifest_bytes("x"), src.manifest_bytes("base-b:v1"));
}

#[test]
fn publishers_must_authenticate_when_configured() {
    let images = test_images();
    let reg = Registry::start(Some(
        r#"
[[publishers]]
user = "ci"
password = "s3cret"
"#,
    ));
    // Without credentials: refused, with 401 and a challenge.
    let out = layerlink_tests::run(
        std::process::Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:tiny:v1", images.oci_dir.display()))
            .arg(format!("docker://{}/auth/tiny:v1", reg.host)),
    );
    assert!(!out.status.success(), "anonymous push accepted");
    let r = request(reg.addr(), "POST", "/v2/auth/tiny/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.header("www-authenticate").is_some(),
        "401 without a challenge"
    );
    // Wrong password: refused too.
    let r = request(
        reg.addr(),
        "POST",
        "/v2/auth/tiny/blobs/uploads/",
        &[("Authorization", "Basic Y2k6d3Jvbmc=")], // ci:wrong
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // With them: works (the harness passes the config's credentials).
    skopeo_push(&images.oci_dir, "tiny:v1", &reg, "auth/tiny:v1");
    let tmp = tempfile::tempdir().unwrap();
    skopeo_pull(&reg, "auth/tiny:v1", &tmp.path().join("p"), "t");
}

// ------------------------------------------------------------ bad inputs

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Start an upload session; the path of its `Location`.
fn start_upload(reg: &Registry, repo: &str) -> String {
    let r = request(
        reg.addr(),
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(
        r.status,
        202,
        "starting an upload: {} {}",
        r.status,
        r.text()
    );
    let loc = r.header("location").expect("upload Location").to_string();
    match loc.find("/v2/") {
        Some(i) => loc[i..].to_string(),
        None => loc,
    }
}

fn with_query(path: &str, q: &str) -> String {
    if path.contains('?') {
        format!("{path}&{q}")
    } else {
        format!("{path}?{q}")
    }
}

/// Upload a blob in one PUT; the response.
fn put_blob(reg: &Registry, repo: &str, bytes: &[u8], claimed: &str) -> Response {
    let loc = start_upload(reg, repo);
    request(
        reg.addr(),
        "PUT",
        &with_query(&loc, &format!("digest={claimed}")),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )
}

fn blob_exists(reg: &Registry, repo: &str, digest: &str) -> bool {
    let r = request(
        reg.addr(),
        "HEAD",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        b"",
    );
    match r.status {
        200 => true,
        404 => false,
        s => panic!("HEAD blob {digest}: unexpected {s}"),
    }
}

fn blob_files(reg: &Registry) -> usize {
    std::fs::read_dir(reg.data_dir().join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn blob_with_wrong_digest_is_refused_and_nothing_is_stored() {
    let reg = Registry::start(None);
    let body = b"some bytes that are not what the digest says".repeat(100);
    let wrong = digest_of(b"something else");

    // Monolithic: POST ?digest=
    let r = request(
        reg.addr(),
        "POST",
        &format!("/v2/bad/blobs/uploads/?digest={wrong}"),
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(
        r.status,
        400,
        "monolithic upload with wrong digest: {}",
        r.text()
    );
    assert!(
        r.oci_error_codes().contains(&"DIGEST_INVALID".to_string()),
        "{}",
        r.text()
    );

    // Session: POST, PUT ?digest= with the body.
    let r = put_blob(&reg, "bad", &body, &wrong);
    assert_eq!(r.status, 400, "PUT with wrong digest: {}", r.text());
    assert!(
        r.oci_error_codes().contains(&"DIGEST_INVALID".to_string()),
        "{}",
        r.text()
    );

    // Session: PATCH the bytes, then PUT with the wrong digest.
    let loc = start_upload(&reg, "bad");
    let r = request(
        reg.addr(),
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(r.status, 202, "PATCH: {}", r.text());
    let loc = r
        .header("location")
        .map(|l| l[l.find("/v2/").unwrap_or(0)..].to_string())
        .unwrap_or(loc);
    let r = request(
        reg.addr(),
        "PUT",
        &with_query(&loc, &format!("digest={wrong}")),
        &[],
        b"",
    );
    assert_eq!(
        r.status,
        400,
        "PUT after PATCH with wrong digest: {}",
        r.text()
    );
    assert!(
        r.oci_error_codes().contains(&"DIGEST_INVALID".to_string()),
        "{}",
        r.text()
    );

    // A malformed digest is refused too.
    let r = put_blob(&reg, "bad", &body, "sha256:nothex");
    assert_eq!(r.status, 400, "malformed digest: {}", r.text());

    assert!(!blob_exists(&reg, "bad", &wrong));
    assert!(!blob_exists(&reg, "bad", &digest_of(&body)));
    assert_eq!(blob_files(&reg), 0, "a blob file was stored");
    assert_eq!(reg.stats()["blobs"].as_u64(), Some(0));

    // The right digest then works: the refusals left nothing half-done.
    let r = put_blob(&reg, "bad", &body, &digest_of(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(blob_exists(&reg, "bad", &digest_of(&body)));
    let r = request(
        reg.addr(),
        "GET",
        &format!("/v2/bad/blobs/{}", digest_of(&body)),
        &[],
        b"",
    );
    assert_eq!(r.body, body);
}

#[test]
fn truncated_uploads_store_nothing() {
    let reg = Registry::start(None);
    let full = (0..100_000u32)
        .flat_map(|i| i.to_le_bytes())
        .collect::<Vec<u8>>();
    let digest = digest_of(&full);
    let half = &full[..full.len() / 2];

    // One PUT declaring the full length, sending half, then EOF.
    let loc = start_upload(&reg, "trunc");
    let r = request_declaring(
        reg.addr(),
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &[("Content-Type", "application/octet-stream")],
        full.len() as u64,
        half,
    );
    if let Ok(r) = &r {
        assert!(
            r.status >= 400,
            "truncated PUT accepted: {} {}",
            r.status,
            r.text()
        );
    }
    assert!(!blob_exists(&reg, "trunc", &digest));

    // A truncated PATCH, then a PUT that claims the full digest.
    let loc = start_upload(&reg, "trunc");
    let _ = request_declaring(
        reg.addr(),
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream")],
        full.len() as u64,
        half,
    );
    let r = request(
        reg.addr(),
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &[],
        b"",
    );
    assert!(
        r.status >= 400,
        "PUT after a truncated PATCH accepted: {} {}",
        r.status,
        r.text()
    );
    assert!(!blob_exists(&reg, "trunc", &digest));
    assert_eq!(blob_files(&reg), 0, "a blob file was stored");

    // Monolithic POST declaring more than it sends.
    let _ = request_declaring(
        reg.addr(),
        "POST",
        &format!("/v2/trunc/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        full.len() as u64,
        half,
    );
    assert!(!blob_exists(&reg, "trunc", &digest));
    assert_eq!(blob_files(&reg), 0, "a blob file was stored");
    assert_eq!(
        request(reg.addr(), "GET", "/v2/", &[], b"").status,
        200,
        "registry still serves after truncated uploads"
    );
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn config_blob(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn manifest(config: &[u8], layers: &[(&str, &[u8])]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|(mt, b)| json!({
            "mediaType": mt,
            "digest": digest_of(b),
            "size": b.len(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn put_manifest(reg: &Registry, repo: &str, reference: &str, bytes: &[u8]) -> Response {
    request(
        reg.addr(),
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", OCI_MANIFEST)],
        bytes,
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn manifest_naming_a_missing_blob_is_refused() {
    let reg = Registry::start(None);
    let layer = gzip(b"never uploaded");
    let config = config_blob(&[digest_of(b"whatever")]);
    assert_eq!(
        put_blob(&reg, "m", &config, &digest_of(&config)).status,
        201
    );
    let m = manifest(&config, &[(GZIP_LAYER, &layer)]);
    let r = put_manifest(&reg, "m", "v1", &m);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.oci_error_codes()
            .contains(&"MANIFEST_BLOB_UNKNOWN".to_string()),
        "{}",
        r.text()
    );
    assert_eq!(
        request(reg.addr(), "GET", "/v2/m/manifests/v1", &[], b"").status,
        404
    );
    assert_eq!(
        request(
            reg.addr(),
            "GET",
            &format!("/v2/m/manifests/{}", digest_of(&m)),
            &[],
            b""
        )
        .status,
        404
    );

    // The config missing is the same error.
    let config2 = config_blob(&[]);
    let m = manifest(&config2, &[]);
    let r = put_manifest(&reg, "m", "v2", &m);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.oci_error_codes()
            .contains(&"MANIFEST_BLOB_UNKNOWN".to_string()),
        "{}",
        r.text()
    );
}

/// A layer that cannot be split into files (not gzip, damaged, truncated,
/// bad checksum). By default the manifest is stored and served as the OCI
/// spec requires, nothing of the layer enters the file store, and the image
/// is listed as not syncable (issue 17); with `reject_unsyncable = true`
/// the push is refused and the store is unchanged.
#[test]
fn corrupt_layers_store_the_manifest_but_no_files_or_are_refused_in_strict_mode() {
    let images = test_images();
    let src = images.layout();
    let real = src.blob(&src.layers("tiny:v1")[0].digest);
    let tar = gunzip(&real);
    let mut corrupt: Vec<(&str, Vec<u8>)> = Vec::new();
    // 1. Not gzip at all.
    corrupt.push((
        "not gzip",
        b"\x1f\x8b this is not a gzip stream at all".repeat(50),
    ));
    // 2. gzip whose deflate data is damaged midway.
    let mut damaged = real.clone();
    let mid = damaged.len() / 2;
    for b in &mut damaged[mid..mid + 64] {
        *b ^= 0x5a;
    }
    corrupt.push(("damaged gzip", damaged));
    // 3. Valid gzip of a tar cut in the middle of a file's content.
    corrupt.push(("truncated tar", gzip(&tar[..tar.len() / 2])));
    // 4. Valid gzip of a tar whose first header checksum is wrong.
    let mut bad_sum = tar.clone();
    bad_sum[0] ^= 0x20;
    corrupt.push(("bad header checksum", gzip(&bad_sum)));

    for strict in [false, true] {
        let reg = Registry::start(strict.then_some("reject_unsyncable = true\n"));
        // Something in the store first, so "unchanged" means something.
        skopeo_push(&images.oci_dir, "tiny:v1", &reg, "good/tiny:v1");
        let before = stats_after_ingest(&reg, 1);
        let mut manifests = Vec::new();
        for (i, (what, blob)) in corrupt.iter().enumerate() {
            assert_eq!(
                put_blob(&reg, "evil", blob, &digest_of(blob)).status,
                201,
                "{what}: blob upload"
            );
            let diff_id = format!("sha256:{}", sha256_hex(what.as_bytes()));
            let config = config_blob(&[diff_id]);
            assert_eq!(
                put_blob(&reg, "evil", &config, &digest_of(&config)).status,
                201
            );
            let m = manifest(&config, &[(GZIP_LAYER, blob)]);
            let tag = format!("v{i}");
            let r = put_manifest(&reg, "evil", &tag, &m);
            let served = request(
                reg.addr(),
                "GET",
                &format!("/v2/evil/manifests/{tag}"),
                &[],
                b"",
            );
            if strict {
                assert_eq!(r.status, 400, "{what}: strict push: {}", r.text());
                assert!(r.text().contains("MANIFEST_INVALID"), "{}", r.text());
                assert_eq!(served.status, 404, "{what}: refused manifest is served");
            } else {
                assert_eq!(r.status, 201, "{what}: push: {}", r.text());
                assert_eq!(served.status, 200, "{what}: stored manifest not served");
                assert_eq!(served.body, m, "{what}: manifest bytes changed");
                manifests.push(digest_of(&m));
            }
        }
        let after = reg.stats();
        // No file of a corrupt layer entered the file store, either way.
        for k in [
            "layers",
            "file_entries",
            "regular_files",
            "distinct_objects",
            "logical_bytes",
            "stored_bytes",
        ] {
            assert_eq!(
                after[k], before[k],
                "{k} changed by corrupt layers (strict: {strict}): before {before} after {after}"
            );
        }
        let unsyncable: Vec<String> = after["unsyncable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_str().unwrap().to_owned())
            .collect();
        if strict {
            assert_eq!(after["manifests"], before["manifests"]);
            assert!(unsyncable.is_empty(), "{after}");
        } else {
            let mut want = manifests.clone();
            want.sort();
            let mut got = unsyncable.clone();
            got.sort();
            assert_eq!(got, want, "stats lists the unsyncable images");
        }
        // And the good image is still intact.
        let tmp = tempfile::tempdir().unwrap();
        skopeo_pull(&reg, "good/tiny:v1", &tmp.path().join("p"), "t");
        assert_eq!(
            OciLayout::open(tmp.path().join("p")).manifest_bytes("t"),
            src.manifest_bytes("tiny:v1")
        );
    }
}

#[test]
fn the_store_survives_a_restart() {
    let images = test_images();
    let src = images.layout();
    let reg = Registry::start(None);
    skopeo_push(&images.oci_dir, "tiny:v2", &reg, "keep/tiny:v2");
    let before = stats_after_ingest(&reg, 2);
    let reg = reg.restart();
    let after = reg.stats();
    assert_eq!(after, before);
    let tmp = tempfile::tempdir().unwrap();
    skopeo_pull(&reg, "keep/tiny:v2", &tmp.path().join("p"), "t");
    assert_eq!(
        OciLayout::open(tmp.path().join("p")).manifest_bytes("t"),
        src.manifest_bytes("tiny:v2")
    );
}

// ----------------------------------------------------------------- podman

/// podman (from its own throw-away storage, vfs driver) pushes to the
/// registry; podman recompresses layers, so the check is on what the
/// layers hold: the diff_ids, and the files the registry counted.
#[test]
fn podman_push_works() {
    let images = test_images();
    let src = images.layout();
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let podman = |args: &[&str]| {
        let mut cmd = std::process::Command::new("podman");
        cmd.arg("--root")
            .arg(tmp.path().join("root"))
            .arg("--runroot")
            .arg(tmp.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        layerlink_tests::run_ok(&mut cmd)
    };
    podman(&[
        "pull",
        "-q",
        &format!("oci:{}:tiny:v2", images.oci_dir.display()),
    ]);
    let id = String::from_utf8(podman(&["images", "-q"]).stdout).unwrap();
    let id = id
        .lines()
        .next()
        .expect("podman has the image")
        .trim()
        .to_string();
    podman(&[
        "push",
        "--tls-verify=false",
        &id,
        &format!("docker://{}/podman/tiny:v2", reg.host),
    ]);

    skopeo_pull(&reg, "podman/tiny:v2", &tmp.path().join("p"), "t");
    let pulled = OciLayout::open(tmp.path().join("p"));
    assert_eq!(
        pulled.diff_ids("t"),
        src.diff_ids("tiny:v2"),
        "same layer contents"
    );
    let stats = stats_after_ingest(&reg, 2);
    assert_stats_match(&stats, 2, &image_files(&pulled, &["t"]));
    podman(&["rmi", "-a", "-f"]);
}
