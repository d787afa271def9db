//! The registry with its metadata in a real PostgreSQL (`[storage]
//! metadata`): a cluster started by the harness (`tests/src/postgres.rs`),
//! the real registry process, skopeo pushing and pulling. The oracles are
//! the OCI layout skopeo pushed from and `psql` reading the tables — not
//! the registry's code. (The layer index and device records stay in the
//! data directory for now; see the README.)

use layerlink_tests::bins::registry_bin;
use layerlink_tests::http::request;
use layerlink_tests::postgres::TestPostgres;
use layerlink_tests::{skopeo_pull, skopeo_push, test_images, OciLayout, Registry};
use std::process::Command;

#[test]
fn push_pull_restart_with_metadata_in_postgres() {
    let images = test_images();
    let src = images.layout();
    let mut pg = TestPostgres::start();
    let url = pg.create_database();
    let config = format!("[storage]\nmetadata = \"{url}\"\n");
    let reg = Registry::start(Some(&config));
    skopeo_push(&images.oci_dir, "tiny:v1", &reg, "pg/tiny:v1");
    skopeo_push(&images.oci_dir, "tiny:v2", &reg, "pg/tiny:v2");

    // The tags, manifests and blob links are rows in PostgreSQL.
    let hex = |tag: &str| {
        src.manifest_descriptor(tag)
            .digest
            .trim_start_matches("sha256:")
            .to_owned()
    };
    assert_eq!(
        pg.psql(
            "test0",
            "SELECT tag || ' ' || encode(digest, 'hex') FROM oci_tags \
             WHERE repository = 'pg/tiny' ORDER BY tag"
        ),
        format!("v1 {}\nv2 {}\n", hex("tiny:v1"), hex("tiny:v2"))
    );
    let stored = pg.psql(
        "test0",
        &format!(
            "SELECT encode(bytes, 'hex') FROM oci_manifests WHERE repository = 'pg/tiny' \
             AND digest = decode('{}', 'hex')",
            hex("tiny:v1")
        ),
    );
    assert_eq!(
        stored.trim(),
        layerlink_tests::hex(&src.manifest_bytes("tiny:v1"))
    );
    let mut blobs: Vec<String> = ["tiny:v1", "tiny:v2"]
        .iter()
        .flat_map(|t| {
            let mut d: Vec<String> = src.layers(t).into_iter().map(|l| l.digest).collect();
            d.push(src.config_descriptor(t).digest);
            d
        })
        .map(|d| d.trim_start_matches("sha256:").to_owned())
        .collect();
    blobs.sort();
    blobs.dedup();
    let linked = pg.psql(
        "test0",
        "SELECT encode(digest, 'hex') FROM oci_repo_blobs WHERE repository = 'pg/tiny' \
         ORDER BY digest",
    );
    assert_eq!(linked.lines().collect::<Vec<_>>(), blobs);

    // Pulled back byte-identical, also after a restart (the metadata is in
    // the database, not in the process).
    let reg = reg.restart();
    let tmp = tempfile::tempdir().unwrap();
    let pulled_dir = tmp.path().join("pulled");
    for tag in ["tiny:v1", "tiny:v2"] {
        skopeo_pull(&reg, &format!("pg/{tag}"), &pulled_dir, tag);
    }
    let pulled = OciLayout::open(&pulled_dir);
    for tag in ["tiny:v1", "tiny:v2"] {
        assert_eq!(pulled.manifest_bytes(tag), src.manifest_bytes(tag), "{tag}");
        for l in src.layers(tag) {
            assert_eq!(pulled.blob(&l.digest), src.blob(&l.digest), "{tag} layer");
        }
        let c = src.config_descriptor(tag).digest;
        assert_eq!(pulled.blob(&c), src.blob(&c), "{tag} config");
    }

    // PostgreSQL down: not ready (saying why), manifest requests fail
    // with 5xx; back up: ready again and served, no restart of the registry.
    assert_eq!(readyz(&reg).0, 200);
    pg.stop_server();
    let (status, body) = readyz(&reg);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("metadata store"), "{body}");
    let head = request(reg.addr(), "GET", "/v2/pg/tiny/manifests/v1", &[], b"");
    assert!(
        head.status >= 500,
        "GET manifest with the database down: {}",
        head.status
    );
    pg.start_server();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while readyz(&reg).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready again: {}",
            readyz(&reg).1
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let again = tmp.path().join("again");
    skopeo_pull(&reg, "pg/tiny:v2", &again, "tiny:v2");
    assert_eq!(
        OciLayout::open(&again).manifest_bytes("tiny:v2"),
        src.manifest_bytes("tiny:v2")
    );

    // Offline commands read the same database with --config; without it
    // they refuse instead of seeing empty embedded metadata.
    let stats = reg.stats();
    assert_eq!(stats["tags"].as_u64(), Some(2), "{stats}");
    assert_eq!(stats["manifests"].as_u64(), Some(2), "{stats}");
    let out = layerlink_tests::run(
        Command::new(registry_bin())
            .args(["gc", "--dry-run", "--data"])
            .arg(reg.data_dir()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PostgreSQL") && err.contains("--config"),
        "{err}"
    );
    // `edit --data` refuses too; `gc --config` reads the same database
    // (both images are tagged: nothing to collect, nothing kept back).
    let config_path = reg.config_path().expect("config file").to_owned();
    let _reg = reg.restart_after(|data| {
        let out = layerlink_tests::run(
            Command::new(registry_bin())
                .args(["edit", "--data"])
                .arg(data)
                .args(["pg/tiny:v1", "--tag", "v1-edited", "--rm", "/nothing"]),
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("PostgreSQL"), "{err}");
        let out = layerlink_tests::run(
            Command::new(registry_bin())
                .args(["gc", "--dry-run", "--json", "--data"])
                .arg(data)
                .arg("--config")
                .arg(&config_path),
        );
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["manifests_deleted"].as_u64(), Some(0), "{report}");
        assert_eq!(report["manifests_kept"].as_u64(), Some(2), "{report}");
    });
}

/// `GET /readyz`: status and body.
fn readyz(reg: &Registry) -> (u16, String) {
    let r = request(reg.addr(), "GET", "/readyz", &[], b"");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// An unreachable database stops `serve` at start with the reason.
#[test]
fn serve_refuses_an_unreachable_database() {
    let pg = TestPostgres::start();
    let url = format!(
        "postgresql://postgres@/test0?host={}/nowhere",
        pg.socket_dir().display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("registry.toml");
    std::fs::write(&config, format!("[storage]\nmetadata = \"{url}\"\n")).unwrap();
    let out = layerlink_tests::run(
        Command::new(registry_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(tmp.path().join("data"))
            .arg("--config")
            .arg(&config),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PostgreSQL"), "{err}");
}
