//! The registry with its metadata in a real PostgreSQL (`[storage]
//! metadata`): a cluster started by the harness (`tests/src/postgres.rs`),
//! the real registry process, skopeo pushing and pulling. The oracles are
//! the OCI layout skopeo pushed from and `psql` reading the tables — not
//! the registry's code. Device records are in PostgreSQL too, so a device
//! may move between replicas (two registry processes on one database and
//! one bucket), and replicas share the layer index and the file objects (a
//! layer is ingested once, by the replica it was pushed to; the others
//! import it).

use layerlink_registry::config::S3Config;
use layerlink_registry::store::storage::S3BlobStore;
use layerlink_tests::bins::registry_bin;
use layerlink_tests::fixture::{assert_checkout_matches_umoci, test_repo, DEVICE_CONFIG, TOKEN};
use layerlink_tests::garage::Garage;
use layerlink_tests::http::request;
use layerlink_tests::layers::image_files;
use layerlink_tests::pki::Pki;
use layerlink_tests::postgres::TestPostgres;
use layerlink_tests::registry::gc_json;
use layerlink_tests::{
    skopeo_pull, skopeo_push, test_images, Agent, CountingProxy, OciLayout, Registry,
};
use std::collections::BTreeSet;
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

/// `serve` with metadata at `url`, expected to fail at start: exit 1, and
/// its stderr.
fn serve_fails(url: &str) -> String {
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
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An unreachable database stops `serve` at start with the reason.
#[test]
fn serve_refuses_an_unreachable_database() {
    let pg = TestPostgres::start();
    let url = format!(
        "postgresql://postgres@/test0?host={}/nowhere",
        pg.socket_dir().display()
    );
    let err = serve_fails(&url);
    assert!(err.contains("PostgreSQL"), "{err}");
}

/// Metadata over TLS: a PostgreSQL that accepts TCP connections only with
/// TLS (`hostssl`), its certificate signed by a test CA. With
/// `sslmode=require&sslrootcert=CA` the registry serves (an image pushed
/// and pulled back byte for byte) and the *server* reports every registry
/// connection encrypted (`pg_stat_ssl`); without `sslmode` the server
/// refuses the plain connection, and with another CA the registry refuses
/// the server's certificate — `serve` exits 1 naming why, both times.
#[test]
fn metadata_over_tls() {
    let pki = Pki::new();
    let mut pg = TestPostgres::start();
    let port = pg.enable_tls(&pki.path("server.crt"), &pki.path("server.key"));
    pg.create_database();
    let url = format!("postgresql://postgres@127.0.0.1:{port}/test0");
    let tls_url =
        |ca: &std::path::Path| format!("{url}?sslmode=require&sslrootcert={}", ca.display());
    let reg = Registry::start(Some(&format!(
        "[storage]\nmetadata = \"{}\"\n",
        tls_url(&pki.path("ca.pem"))
    )));
    let images = test_images();
    skopeo_push(&images.oci_dir, "tiny:v1", &reg, &test_repo("tiny:v1"));
    let tmp = tempfile::tempdir().unwrap();
    skopeo_pull(&reg, &test_repo("tiny:v1"), &tmp.path().join("p"), "x");
    assert_eq!(
        OciLayout::open(tmp.path().join("p")).manifest_bytes("x"),
        images.layout().manifest_bytes("tiny:v1")
    );
    let conns = pg.psql(
        "test0",
        "SELECT count(*) || ' ' || bool_and(s.ssl) FROM pg_stat_ssl s
         JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'layerlink-registry'",
    );
    let (n, all_tls) = conns.trim().split_once(' ').unwrap();
    assert!(n.parse::<u32>().unwrap() > 0, "{conns}");
    assert_eq!(
        all_tls, "true",
        "a registry connection without TLS: {conns}"
    );
    drop(reg);

    let err = serve_fails(&url);
    assert!(
        err.contains("PostgreSQL") && err.contains("no encryption"),
        "a plain connection: {err}"
    );
    let other = Pki::new();
    let err = serve_fails(&tls_url(&other.path("ca.pem")));
    assert!(
        err.contains("PostgreSQL") && err.to_lowercase().contains("certificate"),
        "a certificate from another CA: {err}"
    );
}

/// The servers two replicas share (one PostgreSQL database, one Garage
/// bucket) and the `[storage]` section naming them.
fn shared_backends(bucket: &str) -> (Garage, TestPostgres, String) {
    let g = Garage::start(bucket);
    let pg = TestPostgres::start();
    let url = pg.create_database();
    let storage = g.storage_toml_with_metadata("fleet", &url);
    (g, pg, storage)
}

/// The registry's JSON log lines whose message is `message`.
fn log_lines(reg: &Registry, message: &str) -> Vec<serde_json::Value> {
    reg.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == message)
        .collect()
}

/// Two replicas — two registry processes sharing one PostgreSQL database
/// and one Garage bucket, each with its own data directory — and one real
/// device. It syncs through A, then through B: B knows the holdings A
/// recorded (the agent's hash is accepted: no 409), plans up to date and
/// sends no archive; the next update through B costs about the change, not
/// the image; A's fleet view shows the sync B served.
#[test]
fn a_device_moves_between_replicas() {
    let (_g, pg, storage) = shared_backends("replicas");
    let config = format!("log_format = \"json\"\n{DEVICE_CONFIG}\n{storage}");
    let a = Registry::start(Some(&config));
    let b = Registry::start(Some(&config));
    assert_ne!(a.data_dir(), b.data_dir());
    let images = test_images();
    let (v1, v2) = (test_repo("tiny:v1"), test_repo("tiny:v2"));
    // Pushed through A only: B learns of them from the shared stores.
    skopeo_push(&images.oci_dir, "tiny:v1", &a, &v1);
    skopeo_push(&images.oci_dir, "tiny:v2", &a, &v2);

    let agent = Agent::new(TOKEN);
    agent.sync(&a.url, &[&v1]);
    assert_checkout_matches_umoci(&agent, &v1, &images.oci_dir, "tiny:v1");
    let first = log_lines(&a, "device sync");
    assert_eq!(first.len(), 1, "{first:?}");
    let first_bytes = first[0]["bytes"].as_u64().unwrap();

    // Through B: up to date, nothing but the plan on the wire.
    let proxy = CountingProxy::start(b.addr());
    agent.sync(&proxy.url(), &[&v1]);
    let plans = log_lines(&b, "device plan");
    assert_eq!(plans.len(), 1, "{}", b.log());
    assert_eq!(plans[0]["outcome"], "up_to_date", "{plans:?}");
    assert!(
        log_lines(&b, "request refused").is_empty(),
        "B refused a request (a 409 would mean A's holdings were unknown to it):\n{}",
        b.log()
    );
    assert!(log_lines(&b, "device sync").is_empty(), "{}", b.log());
    assert!(
        proxy.bytes_total() < 4096,
        "an up-to-date check through B cost {} bytes",
        proxy.bytes_total()
    );

    // The update through B costs the change, not the image.
    proxy.reset();
    agent.sync(&proxy.url(), &[&v2]);
    assert_checkout_matches_umoci(&agent, &v2, &images.oci_dir, "tiny:v2");
    let synced = log_lines(&b, "device sync");
    assert_eq!(synced.len(), 1, "{}", b.log());
    let update_bytes = synced[0]["bytes"].as_u64().unwrap();
    assert!(
        update_bytes < 16 * 1024 && update_bytes * 4 < first_bytes,
        "tiny:v1 -> v2 through B sent {update_bytes} B (the first sync of v1: {first_bytes} B)"
    );
    assert!(proxy.bytes_total() < update_bytes + 16 * 1024);

    // A's fleet view shows what B served (one set of device records).
    let f = request(a.addr(), "GET", "/layerlink/v1/fleet", &[], b"").json();
    let dev = f["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "dev1")
        .unwrap_or_else(|| panic!("dev1 missing: {f}"));
    assert_eq!(
        dev["last_sync"]["image"]
            .as_str()
            .map(|i| i.contains("tiny")),
        Some(true),
        "{f}"
    );
    assert_eq!(
        dev["last_sync"]["bytes"].as_u64(),
        Some(update_bytes),
        "{f}"
    );
    assert_eq!(dev["last_sync"]["outcome"], "complete", "{f}");
    assert_eq!(
        pg.psql("test0", "SELECT count(*) FROM devices_holdings")
            .trim(),
        "1"
    );
}

/// Two of the races replicas must survive, on one database and one bucket:
/// the same images pushed to both replicas at once (every blob, manifest
/// and tag written twice concurrently), and a replica killed right after a
/// push, while it ingests. Oracles: the OCI layout pushed from (digests),
/// umoci (the device's checkout) and `psql` (one row per tag).
#[test]
fn replicas_survive_concurrent_pushes_and_a_kill_mid_ingest() {
    let (g, pg, storage) = shared_backends("races");
    let config = format!("{DEVICE_CONFIG}\n{storage}");
    let a = Registry::start(Some(&config));
    let b = Registry::start(Some(&config));
    let images = test_images();
    let src = images.layout();
    let tags = ["tiny:v1", "base-a:v1"];
    std::thread::scope(|s| {
        for reg in [&a, &b] {
            for tag in tags {
                let oci_dir = &images.oci_dir;
                s.spawn(move || skopeo_push(oci_dir, tag, reg, &test_repo(tag)));
            }
        }
    });
    assert_eq!(
        pg.psql("test0", "SELECT count(*) FROM oci_tags").trim(),
        "2",
        "one row per tag"
    );
    // The same layers ingested by both replicas at once (or imported by
    // one from the other): one shared row per layer, one bucket object
    // per distinct file content.
    let layers: BTreeSet<String> = tags
        .iter()
        .flat_map(|t| src.layers(t))
        .map(|l| l.digest)
        .collect();
    assert_eq!(
        pg.psql("test0", "SELECT count(*) FROM index_layer_records")
            .trim(),
        layers.len().to_string()
    );
    assert_eq!(bucket_objects(&g, "fleet"), contents(&src, &tags));
    let tmp = tempfile::tempdir().unwrap();
    for (name, reg) in [("a", &a), ("b", &b)] {
        let dir = tmp.path().join(name);
        for tag in tags {
            skopeo_pull(reg, &test_repo(tag), &dir, tag);
        }
        let pulled = OciLayout::open(&dir);
        for tag in tags {
            assert_eq!(
                pulled.manifest_descriptor(tag).digest,
                src.manifest_descriptor(tag).digest,
                "{tag} pulled from replica {name}"
            );
        }
    }

    // Replica A killed right after a push (its ingest in flight): a device
    // syncs through B, and A, restarted, serves the same tree.
    skopeo_push(&images.oci_dir, "base-b:v1", &a, &test_repo("base-b:v1"));
    a.signal("KILL");
    let image = test_repo("base-b:v1");
    let agent = Agent::new(TOKEN);
    agent.sync(&b.url, &[&image]);
    assert_checkout_matches_umoci(&agent, &image, &images.oci_dir, "base-b:v1");
    let a = a.restart();
    let fresh = Agent::new(TOKEN);
    fresh.sync(&a.url, &[&image]);
    assert_checkout_matches_umoci(&fresh, &image, &images.oci_dir, "base-b:v1");
    // The first device, now through A: up to date.
    let proxy = CountingProxy::start(a.addr());
    agent.sync(&proxy.url(), &[&image]);
    assert!(
        proxy.bytes_total() < 4096,
        "an up-to-date check through the restarted replica cost {} B",
        proxy.bytes_total()
    );
}

/// The bucket under `prefix`, through the S3 API.
fn bucket(g: &Garage, prefix: &str) -> S3BlobStore {
    let config = S3Config {
        endpoint: Some(g.endpoint.clone()),
        region: Some(g.region.clone()),
        access_key_id: Some(g.access_key_id.clone()),
        secret_access_key: Some(g.secret_access_key.clone()),
        virtual_hosted_style: false,
    };
    S3BlobStore::open(&format!("s3://{}/{prefix}", g.bucket), &config).unwrap()
}

/// sha256 (hex) of every file object in the shared bucket.
fn bucket_objects(g: &Garage, prefix: &str) -> BTreeSet<String> {
    bucket(g, prefix)
        .list_objects()
        .unwrap()
        .into_iter()
        .map(|(d, _, _)| d.hex())
        .collect()
}

/// sha256 (hex) of every object file in a data directory.
fn data_dir_objects(data: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for shard in std::fs::read_dir(data.join("objects")).unwrap() {
        let shard = shard.unwrap();
        if shard.file_name().to_string_lossy().starts_with('.') {
            continue; // staging
        }
        for f in std::fs::read_dir(shard.path()).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".zst") {
                out.insert(hex.to_owned());
            }
        }
    }
    out
}

/// Distinct non-empty regular-file contents of `tags`' layers, counted
/// from the OCI layout (not by the registry).
fn contents(src: &OciLayout, tags: &[&str]) -> BTreeSet<String> {
    let empty = layerlink_tests::sha256_hex(b"");
    image_files(src, tags)
        .digests
        .into_iter()
        .filter(|d| *d != empty)
        .collect()
}

/// Replicas share the layer index (PostgreSQL) and the file objects (the
/// bucket): images pushed through A are ingested there once and published;
/// a device syncing through B makes B *import* each layer — no ingest of
/// its own — and B's data directory then holds exactly that image's file
/// contents, downloaded and checked. A tag deleted through B and an offline
/// `gc` on A forget the shared rows and bucket objects only it used, and B
/// still serves the live image to a new device. Oracles: the OCI layout
/// (layers, file contents), umoci, `psql`, the bucket listing.
#[test]
fn replicas_share_the_layer_index_and_objects() {
    let (g, pg, storage) = shared_backends("shared-index");
    let config = format!("log_format = \"json\"\n{DEVICE_CONFIG}\n{storage}");
    let a = Registry::start(Some(&config));
    let b = Registry::start(Some(&config));
    let images = test_images();
    let src = images.layout();
    let (gone, live) = ("tiny:v1", "base-a:v1");
    for tag in [gone, live] {
        skopeo_push(&images.oci_dir, tag, &a, &test_repo(tag));
    }
    let layers_of = |tags: &[&str]| -> BTreeSet<String> {
        tags.iter()
            .flat_map(|t| src.layers(t))
            .map(|l| l.digest)
            .collect()
    };
    let pushed = layers_of(&[gone, live]);
    assert_eq!(
        log_lines(&a, "layer published to the shared index").len(),
        pushed.len(),
        "{}",
        a.log()
    );
    let records = || {
        pg.psql("test0", "SELECT count(*) FROM index_layer_records")
            .trim()
            .to_owned()
    };
    assert_eq!(records(), pushed.len().to_string());
    assert_eq!(
        bucket_objects(&g, "fleet"),
        contents(&src, &[gone, live]),
        "the bucket holds every distinct file content once"
    );

    // A device syncs `live` through B, which has ingested nothing.
    let image = test_repo(live);
    let agent = Agent::new(TOKEN);
    agent.sync(&b.url, &[&image]);
    assert_checkout_matches_umoci(&agent, &image, &images.oci_dir, live);
    assert_eq!(
        log_lines(&b, "layer imported from the shared index").len(),
        layers_of(&[live]).len(),
        "{}",
        b.log()
    );
    assert!(
        !b.log().contains("ingested layer"),
        "B ingested a layer A had published:\n{}",
        b.log()
    );
    assert_eq!(
        data_dir_objects(b.data_dir()),
        contents(&src, &[live]),
        "B holds exactly the imported image's contents"
    );

    // `gone` deleted through B; A's offline collection forgets what only
    // it used, in PostgreSQL and in the bucket.
    let (repo, tag) = test_repo(gone)
        .split_once(':')
        .map(|(r, t)| (r.to_owned(), t.to_owned()))
        .unwrap();
    let r = request(
        b.addr(),
        "DELETE",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "DELETE tag: {}", r.text());
    std::thread::sleep(std::time::Duration::from_millis(1100)); // --grace 0: strictly older
    let cfg = a.config_path().unwrap().to_owned();
    let mut report = serde_json::Value::Null;
    let _a = a.restart_after(|data| {
        report = gc_json(
            data,
            &[
                "--grace".as_ref(),
                "0".as_ref(),
                "--config".as_ref(),
                cfg.as_os_str(),
            ],
        );
    });
    let only_gone = layers_of(&[gone]).difference(&layers_of(&[live])).count();
    assert!(only_gone > 0, "tiny:v1 shares every layer with base-a:v1");
    assert_eq!(
        report["shared_layers_forgotten"].as_u64(),
        Some(only_gone as u64),
        "{report}"
    );
    assert_eq!(records(), layers_of(&[live]).len().to_string());
    let live_contents = contents(&src, &[live]);
    let freed = contents(&src, &[gone]).difference(&live_contents).count();
    assert_eq!(
        report["shared_objects_deleted"].as_u64(),
        Some(freed as u64),
        "{report}"
    );
    assert_eq!(
        bucket_objects(&g, "fleet"),
        live_contents,
        "bucket after gc"
    );

    // B still serves the live image, from its own copy, to a new device.
    let fresh = Agent::new(TOKEN);
    fresh.sync(&b.url, &[&image]);
    assert_checkout_matches_umoci(&fresh, &image, &images.oci_dir, live);

    // A bucket object overwritten with other content: a third replica's
    // import sees the wrong digest, ingests the layer from its blob instead
    // (the device still gets the right tree) and repairs the bucket.
    let victim = live_contents.iter().next().unwrap().clone();
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("bogus.zst");
    std::fs::write(
        &bogus,
        zstd::encode_all(&b"not the content"[..], 3).unwrap(),
    )
    .unwrap();
    let victim_digest = layerlink_proto::Digest::parse(&format!("sha256:{victim}")).unwrap();
    bucket(&g, "fleet")
        .put_objects(vec![(victim_digest, bogus)])
        .unwrap();
    let c = Registry::start(Some(&config));
    let third = Agent::new(TOKEN);
    third.sync(&c.url, &[&image]);
    assert_checkout_matches_umoci(&third, &image, &images.oci_dir, live);
    let failed = log_lines(
        &c,
        "importing a layer from the shared index failed; ingesting it from its blob",
    );
    assert_eq!(failed.len(), 1, "{}", c.log());
    assert!(
        failed[0]["error"].as_str().unwrap().contains(&victim),
        "{failed:?}"
    );
    let got = bucket(&g, "fleet")
        .get_objects(vec![(victim_digest, tmp.path().join("back.zst"))])
        .unwrap();
    assert!(got > 0);
    let back = zstd::decode_all(std::fs::File::open(tmp.path().join("back.zst")).unwrap()).unwrap();
    assert_eq!(
        layerlink_tests::sha256_hex(&back),
        victim,
        "the bucket object was not repaired"
    );
}

/// A device that synced one image through replica A asks replica B — which
/// has served nothing yet — for another image that shares most files but
/// no layer with it (base-b, then base-a: two separate debootstrap runs).
/// B imports the device's held layers from the shared index (they are in a
/// repository the device may read), so their files count for dedup there:
/// the second sync costs what differs, not the image. Oracles: umoci, the
/// bytes each replica logs for the device's syncs.
#[test]
fn a_replica_imports_the_layers_a_device_brought_from_another() {
    let (_g, _pg, storage) = shared_backends("held-layers");
    let config = format!("log_format = \"json\"\n{DEVICE_CONFIG}\n{storage}");
    let a = Registry::start(Some(&config));
    let b = Registry::start(Some(&config));
    let images = test_images();
    let src = images.layout();
    let (first, second) = ("base-b:v1", "base-a:v1");
    for tag in [first, second] {
        skopeo_push(&images.oci_dir, tag, &a, &test_repo(tag));
    }
    let agent = Agent::new(TOKEN);
    agent.sync(&a.url, &[&test_repo(first)]);
    assert_checkout_matches_umoci(&agent, &test_repo(first), &images.oci_dir, first);
    let synced = log_lines(&a, "device sync");
    assert_eq!(synced.len(), 1, "{}", a.log());
    let first_bytes = synced[0]["bytes"].as_u64().unwrap();

    agent.sync(&b.url, &[&test_repo(second)]);
    assert_checkout_matches_umoci(&agent, &test_repo(second), &images.oci_dir, second);
    let synced = log_lines(&b, "device sync");
    assert_eq!(synced.len(), 1, "{}", b.log());
    let second_bytes = synced[0]["bytes"].as_u64().unwrap();
    assert!(
        second_bytes * 4 < first_bytes,
        "{second} through B sent {second_bytes} B to a device holding {first} \
         (which cost {first_bytes} B): B did not use the files the device holds"
    );
    let layers: BTreeSet<String> = [first, second]
        .iter()
        .flat_map(|t| src.layers(t))
        .map(|l| l.digest)
        .collect();
    assert_eq!(
        log_lines(&b, "layer imported from the shared index").len(),
        layers.len(),
        "{}",
        b.log()
    );
    assert!(!b.log().contains("ingested layer"), "{}", b.log());
}
