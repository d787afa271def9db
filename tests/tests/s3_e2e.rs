//! The registry with its original blobs in a real S3-compatible server
//! (Garage, started by the harness): a real `layerlink-registry serve`
//! process, images pushed and pulled back with skopeo, a device synced with
//! the real agent, the bucket listed through the S3 API — and the local
//! blob directory empty.

use layerlink_registry::config::S3Config;
use layerlink_registry::store::storage::S3BlobStore;
use layerlink_tests::fixture::{assert_checkout_matches_umoci, test_repo, DEVICE_CONFIG, TOKEN};
use layerlink_tests::garage::Garage;
use layerlink_tests::{
    sha256_file, skopeo_pull, skopeo_push, test_images, Agent, OciLayout, Registry,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn s3_config(g: &Garage) -> S3Config {
    S3Config {
        endpoint: Some(g.endpoint.clone()),
        region: Some(g.region.clone()),
        access_key_id: Some(g.access_key_id.clone()),
        secret_access_key: Some(g.secret_access_key.clone()),
        virtual_hosted_style: false,
    }
}

/// `sha256:<hex>` → size, of every blob under `s3://bucket/prefix`.
fn bucket_blobs(g: &Garage, prefix: &str) -> BTreeMap<String, u64> {
    let store = S3BlobStore::open(&format!("s3://{}/{prefix}", g.bucket), &s3_config(g)).unwrap();
    store
        .list_keys()
        .unwrap()
        .into_iter()
        .map(|(key, size)| {
            let hex = key.rsplit('/').next().unwrap().to_owned();
            assert!(
                key.starts_with(&format!("{prefix}/blobs/sha256/")),
                "unexpected key {key}"
            );
            (format!("sha256:{hex}"), size)
        })
        .collect()
}

#[test]
fn push_pull_and_sync_with_blobs_in_garage() {
    let g = Garage::start("layerlink");
    let images = test_images();
    let src = images.layout();
    let tags = ["tiny:v1", "base-a:v1"];
    let config = format!("{DEVICE_CONFIG}\n{}", g.storage_toml("e2e"));
    let reg = Registry::start(Some(&config));
    assert!(
        reg.log().contains("s3://layerlink/e2e"),
        "the registry does not say where its blobs are:\n{}",
        reg.log()
    );
    for tag in tags {
        skopeo_push(&images.oci_dir, tag, &reg, &test_repo(tag));
    }

    // Every pushed blob (configs and layers) is in the bucket with its size.
    let mut want = BTreeMap::new();
    for tag in tags {
        let c = src.config_descriptor(tag);
        want.insert(c.digest, c.size);
        for l in src.layers(tag) {
            want.insert(l.digest, l.size);
        }
    }
    assert_eq!(bucket_blobs(&g, "e2e"), want, "blobs in the bucket");
    // …and none in the data directory.
    let local = reg.data_dir().join("blobs");
    let local_files = std::fs::read_dir(&local).map(|d| d.count()).unwrap_or(0);
    assert_eq!(local_files, 0, "{} holds blobs", local.display());

    // Pulled back byte-identical.
    let tmp = tempfile::tempdir().unwrap();
    let pulled_dir = tmp.path().join("pulled");
    for tag in tags {
        skopeo_pull(&reg, &test_repo(tag), &pulled_dir, tag);
    }
    let pulled = OciLayout::open(&pulled_dir);
    for tag in tags {
        assert_eq!(
            pulled.manifest_descriptor(tag).digest,
            src.manifest_descriptor(tag).digest,
            "{tag}: manifest digest"
        );
        for d in want.keys() {
            let p = pulled.blob_path(d);
            if p.is_file() {
                assert_eq!(format!("sha256:{}", sha256_file(&p).unwrap()), *d);
            }
        }
        for l in src.layers(tag) {
            assert!(
                pulled.blob_path(&l.digest).is_file(),
                "{tag}: layer {} not pulled",
                l.digest
            );
        }
    }

    // The layers were ingested from the bucket (ingest reads them there),
    // and a device syncs and checks out what umoci unpacks.
    let layers: std::collections::BTreeSet<String> = tags
        .iter()
        .flat_map(|t| src.layers(t).into_iter().map(|l| l.digest))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    while reg.stat("layers") < layers.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "ingest did not finish:\n{}",
            reg.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let stats = reg.stats();
    assert_eq!(
        stats["blobs"].as_u64(),
        Some(want.len() as u64),
        "stats: {stats}"
    );
    assert_eq!(
        stats["blob_bytes"].as_u64(),
        Some(want.values().sum::<u64>()),
        "stats: {stats}"
    );
    let agent = Agent::new(TOKEN);
    let image = test_repo("base-a:v1");
    agent.sync(&reg.url, &[&image]);
    assert_checkout_matches_umoci(&agent, &image, &images.oci_dir, "base-a:v1");
}

#[test]
fn registry_refuses_to_start_when_the_bucket_is_wrong() {
    let g = Garage::start("right");
    let config = g.storage_toml("x").replace("s3://right/", "s3://wrong/");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = layerlink_tests::run(
        std::process::Command::new(layerlink_tests::bins::registry_bin())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&cfg),
    );
    assert!(!out.status.success(), "started with a missing bucket");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("s3://wrong/x"),
        "error does not name the store: {err}"
    );
}

/// `layerlink-registry gc` with `--config` collects blobs in the bucket:
/// what only the deleted image used goes (bytes counted from the source
/// layout, independently of the registry), everything the live image needs
/// stays, and the registry still serves it afterwards.
#[test]
fn gc_frees_blobs_in_the_bucket() {
    let g = Garage::start("gc-test");
    let images = test_images();
    let src = images.layout();
    let (gone, live) = ("tiny:v1", "tiny:v2");
    let reg = Registry::start(Some(&g.storage_toml("gc")));
    for tag in [gone, live] {
        skopeo_push(&images.oci_dir, tag, &reg, &format!("gc/{tag}"));
    }
    let blobs_of = |tag: &str| -> std::collections::BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = src
            .layers(tag)
            .into_iter()
            .map(|l| (l.digest, l.size))
            .collect();
        let c = src.config_descriptor(tag);
        m.insert(c.digest, c.size);
        m
    };
    let (gone_blobs, live_blobs) = (blobs_of(gone), blobs_of(live));
    let only_gone: BTreeMap<String, u64> = gone_blobs
        .iter()
        .filter(|(d, _)| !live_blobs.contains_key(*d))
        .map(|(d, s)| (d.clone(), *s))
        .collect();
    assert!(!only_gone.is_empty(), "tiny:v1 and v2 no longer differ");
    let mut all = live_blobs.clone();
    all.extend(gone_blobs.clone());
    assert_eq!(bucket_blobs(&g, "gc"), all);

    let r = layerlink_tests::http::request(
        reg.addr(),
        "DELETE",
        &format!("/v2/gc/tiny/manifests/{}", &gone[5..]),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "DELETE tag: {}", r.text());
    let cfg = reg.config_path().unwrap().to_owned();
    let mut report = serde_json::Value::Null;
    let reg = reg.restart_after(|data| {
        report = layerlink_tests::registry::gc_json(
            data,
            &[
                "--grace".as_ref(),
                "0".as_ref(),
                "--config".as_ref(),
                cfg.as_os_str(),
            ],
        );
    });
    assert_eq!(
        report["blobs_deleted"].as_u64(),
        Some(only_gone.len() as u64),
        "{report}"
    );
    assert_eq!(
        report["blob_bytes"].as_u64(),
        Some(only_gone.values().sum::<u64>()),
        "{report}"
    );
    assert_eq!(bucket_blobs(&g, "gc"), live_blobs, "bucket after gc");

    let tmp = tempfile::tempdir().unwrap();
    skopeo_pull(&reg, &format!("gc/{live}"), &tmp.path().join("p"), "x");
    let pulled = OciLayout::open(tmp.path().join("p"));
    assert_eq!(pulled.manifest_bytes("x"), src.manifest_bytes(live));
}

/// The object store unreachable: `serve` refuses to start (exit 1, the
/// error names the store, after the client's retries: ~5 s for a refused
/// connection); a running registry whose store goes away answers blob
/// reads with 500 and keeps serving.
#[test]
fn unreachable_object_store() {
    let g = Garage::start("gone");
    let toml = g.storage_toml("u");
    let images = test_images();
    let src = images.layout();
    let mut reg = Registry::start(Some(&toml));
    skopeo_push(&images.oci_dir, "tiny:v1", &reg, "u/tiny:v1");
    let layer = src.layers("tiny:v1")[0].digest.clone();
    let path = format!("/v2/u/tiny/blobs/{layer}");
    assert_eq!(
        layerlink_tests::http::request(reg.addr(), "GET", &path, &[], b"").status,
        200
    );
    let endpoint = g.endpoint.clone();
    drop(g);
    let r = layerlink_tests::http::request(reg.addr(), "GET", &path, &[], b"");
    assert_eq!(r.status, 500, "blob read with the store gone: {}", r.text());
    assert!(reg.is_running(), "the registry died with its object store");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let out = layerlink_tests::run(
        std::process::Command::new(layerlink_tests::bins::registry_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&cfg),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listing blob store s3://gone/u") && err.contains(&endpoint[7..]),
        "{err}"
    );
}
