//! One contract for every [`MetadataStore`] and every [`DeviceStore`]: the
//! same tests run against [`RedbMetadata`]/[`RedbDevices`] and against
//! [`PgMetadata`]/[`PgDevices`] on a real PostgreSQL server
//! the harness starts (`tests/src/postgres.rs`; installed by
//! `scripts/install-deps.sh`, so a missing server fails, never skips).

use super::devices::{HoldingsSummary, ImagesRecord, LastSync};
use super::{
    DeviceStore, MetadataStore, Pg, PgDevices, PgMetadata, RedbDevices, RedbMetadata, Storage,
    StoredManifest, UploadSession,
};
use layerlink_proto::msg::{HeldImage, HeldSet, ImageRef};
use layerlink_proto::Digest;
use std::collections::HashSet;
use std::sync::Arc;

#[allow(dead_code)]
#[path = "../../../../tests/src/postgres.rs"]
mod harness;
use harness::TestPostgres;

fn manifest(body: &str) -> StoredManifest {
    StoredManifest {
        digest: Digest::of(body.as_bytes()),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: body.as_bytes().to_vec(),
    }
}

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn redb_store(dir: &std::path::Path) -> Arc<redb::Database> {
    Arc::new(
        redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(dir.join("registry.redb"))
            .unwrap(),
    )
}

/// Everything the trait promises, on an empty store.
fn contract(m: &dyn MetadataStore) {
    let (m1, m2) = (manifest("{\"one\":1}"), manifest("{\"two\":2}"));
    let (b1, b2) = (d("blob1"), d("blob2"));
    assert!(m.manifest("r", &m1.digest).unwrap().is_none());
    assert!(m.tag("r", "v1").unwrap().is_none());
    assert!(!m.repository_exists("r").unwrap());

    m.commit_manifest("r", &m1, Some("v1"), &[(b1, 10), (b2, 20), (b1, 10)])
        .unwrap();
    let got = m.manifest("r", &m1.digest).unwrap().unwrap();
    assert_eq!(
        (got.digest, got.media_type.as_str(), got.bytes.as_slice()),
        (m1.digest, m1.media_type.as_str(), m1.bytes.as_slice())
    );
    assert!(m.manifest("other", &m1.digest).unwrap().is_none());
    assert_eq!(m.tag("r", "v1").unwrap(), Some(m1.digest));
    assert!(m.repository_exists("r").unwrap());
    assert!(m.blob_linked("r", &b1).unwrap() && m.blob_linked("r", &b2).unwrap());
    assert!(!m.blob_linked("s", &b1).unwrap());
    let mut blobs = vec![b1, b2];
    blobs.sort();
    assert_eq!(m.repository_blobs("r").unwrap(), blobs);

    // Re-committing is idempotent; a tag moves to the newest commit.
    m.commit_manifest("r", &m1, Some("v1"), &[(b1, 10)])
        .unwrap();
    m.commit_manifest("r", &m2, Some("v1"), &[]).unwrap();
    assert_eq!(m.tag("r", "v1").unwrap(), Some(m2.digest));
    m.commit_manifest("r", &m1, Some("v1"), &[]).unwrap();
    let now = crate::clock::now_secs();
    let mut mans = m.manifests_of("r").unwrap();
    assert_eq!(mans.len(), 2);
    assert!(mans.windows(2).all(|w| w[0].0 < w[1].0), "digest order");
    assert!(mans.iter().all(|(_, t)| now.abs_diff(*t) < 60), "{mans:?}");
    mans.sort_by_key(|(d, _)| *d);

    // Tags and repositories in byte order ("B" < "a" < "é"), paged.
    for t in ["é", "a", "B", "a.1"] {
        m.commit_manifest("r", &m2, Some(t), &[]).unwrap();
    }
    assert_eq!(
        m.tags("r", None, 100).unwrap(),
        ["B", "a", "a.1", "v1", "é"]
    );
    assert_eq!(m.tags("r", Some("a"), 2).unwrap(), ["a.1", "v1"]);
    assert_eq!(m.tags("r", Some("é"), 10).unwrap(), Vec::<String>::new());
    assert_eq!(m.tags("r", None, usize::MAX).unwrap().len(), 5);
    assert!(m.tags("nope", None, 10).unwrap().is_empty());
    let tagged = m.tagged("r").unwrap();
    assert_eq!(tagged.len(), 5);
    assert_eq!(tagged[0], ("B".to_owned(), m2.digest));
    assert_eq!(tagged[3], ("v1".to_owned(), m1.digest));
    m.link_blob("r/sub", &b1, 10).unwrap();
    m.link_blob("Q", &b1, 10).unwrap();
    assert_eq!(m.repositories(None, 10).unwrap(), ["Q", "r", "r/sub"]);
    assert_eq!(m.repositories(Some("Q"), 1).unwrap(), ["r"]);
    assert_eq!(
        m.repositories(Some("r/sub"), 10).unwrap(),
        Vec::<String>::new()
    );

    let c = m.counts().unwrap();
    assert_eq!(
        (c.repositories, c.manifests, c.tags, c.tagged_images),
        (3, 2, 5, 2)
    );

    // Referrers: digest order of the referrer; forgotten with it.
    let (ra, rb) = (manifest("{\"sig\":1}"), manifest("{\"sbom\":1}"));
    for r in [&ra, &rb] {
        m.commit_manifest("r", r, None, &[]).unwrap();
        m.add_referrer("r", &m1.digest, &r.digest, r.digest.to_string().as_bytes())
            .unwrap();
    }
    let mut want = [ra.digest, rb.digest];
    want.sort();
    let want: Vec<Vec<u8>> = want.iter().map(|d| d.to_string().into_bytes()).collect();
    assert_eq!(m.referrers("r", &m1.digest).unwrap(), want);
    assert!(m.referrers("s", &m1.digest).unwrap().is_empty());
    assert!(m.delete_manifest("r", &ra.digest).unwrap());
    assert_eq!(
        m.referrers("r", &m1.digest).unwrap(),
        [rb.digest.to_string().into_bytes()]
    );

    // Deleting a manifest removes the tags naming it, not the others.
    assert!(m.delete_manifest("r", &m1.digest).unwrap());
    assert!(!m.delete_manifest("r", &m1.digest).unwrap());
    assert!(m.tag("r", "v1").unwrap().is_none());
    assert_eq!(m.tags("r", None, 10).unwrap(), ["B", "a", "a.1", "é"]);
    assert!(m.delete_tag("r", "B").unwrap());
    assert!(!m.delete_tag("r", "B").unwrap());
    assert!(m.manifest("r", &m2.digest).unwrap().is_some());
    // Blob links outlive manifests; the repository stays known.
    assert!(m.unlink_blob("r", &b2).unwrap());
    assert!(!m.unlink_blob("r", &b2).unwrap());
    assert_eq!(m.repository_blobs("r").unwrap(), [b1]);
    assert!(m.repository_exists("r").unwrap());

    // Upload sessions.
    let s1 = UploadSession {
        id: "u1".into(),
        repository: "r".into(),
        started: 5,
    };
    let s2 = UploadSession {
        id: "u2".into(),
        repository: "q".into(),
        started: u64::MAX / 2,
    };
    m.create_upload(&s1).unwrap();
    m.create_upload(&s2).unwrap();
    assert_eq!(m.upload("u1").unwrap(), Some(s1.clone()));
    assert_eq!(m.upload("u3").unwrap(), None);
    let mut all = m.uploads().unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(all, [s1, s2.clone()]);
    m.delete_upload("u1").unwrap();
    m.delete_upload("u1").unwrap();
    assert_eq!(m.uploads().unwrap(), [s2]);
}

/// Two stores on one database, several threads each, racing on the same
/// manifest, tag and blob link (two replicas pushing one image).
fn concurrent(a: Arc<dyn MetadataStore>, b: Arc<dyn MetadataStore>) {
    const THREADS: usize = 8;
    const ROUNDS: usize = 20;
    let blobs: Vec<(Digest, u64)> = (0..30).map(|i| (d(&format!("layer{i}")), i)).collect();
    let image = manifest("{\"image\":\"same\"}");
    let others: Vec<StoredManifest> = (0..THREADS)
        .map(|i| manifest(&format!("{{\"other\":{i}}}")))
        .collect();
    std::thread::scope(|scope| {
        for (t, other) in others.iter().enumerate() {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            let (blobs, image) = (&blobs, &image);
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    // Same manifest, same tag, blobs in varying order.
                    let mut mine = blobs.clone();
                    let n = mine.len();
                    mine.rotate_left((t * 7 + round) % n);
                    store
                        .commit_manifest("race/img", image, Some("latest"), &mine)
                        .unwrap();
                    store
                        .link_blob("race/img", &blobs[round % 30].0, round as u64 % 30)
                        .unwrap();
                    // Different manifests, one tag: any of them may win.
                    store
                        .commit_manifest("race/img", other, Some("moving"), &mine[..3])
                        .unwrap();
                    store
                        .commit_manifest("race/img", other, Some(&format!("t{t}")), &[])
                        .unwrap();
                    assert!(store.blob_linked("race/img", &blobs[0].0).unwrap());
                }
            });
        }
    });
    for m in [&a, &b] {
        assert_eq!(m.tag("race/img", "latest").unwrap(), Some(image.digest));
        let moving = m.tag("race/img", "moving").unwrap().unwrap();
        assert!(others.iter().any(|o| o.digest == moving));
        for (t, other) in others.iter().enumerate() {
            assert_eq!(
                m.tag("race/img", &format!("t{t}")).unwrap(),
                Some(other.digest)
            );
        }
        let mut want: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        want.sort();
        assert_eq!(m.repository_blobs("race/img").unwrap(), want);
        assert_eq!(m.manifests_of("race/img").unwrap().len(), 1 + THREADS);
        let c = m.counts().unwrap();
        assert_eq!(
            (c.repositories, c.manifests, c.tags, c.tagged_images),
            (
                1,
                1 + THREADS as u64,
                2 + THREADS as u64,
                1 + THREADS as u64
            )
        );
        assert_eq!(m.repositories(None, 10).unwrap(), ["race/img"]);
    }
}

#[test]
fn redb_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb_store(dir.path());
    contract(&RedbMetadata::new(db.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = redb_store(dir.path());
    concurrent(
        Arc::new(RedbMetadata::new(db.clone()).unwrap()),
        Arc::new(RedbMetadata::new(db).unwrap()),
    );
}

#[test]
fn postgres_meets_the_contract() {
    let pg = TestPostgres::start();
    let url = pg.create_database();
    contract(&PgMetadata::connect(&url).unwrap());
    // Two stores (two replicas) on one fresh database.
    let url = pg.create_database();
    let a = PgMetadata::connect(&url).unwrap();
    let b = PgMetadata::connect(&url).unwrap();
    concurrent(Arc::new(a), Arc::new(b));
}

#[test]
fn postgres_schema_is_versioned() {
    let pg = TestPostgres::start();
    let url = pg.create_database();
    let db = "test0";
    // Replicas starting together migrate once.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| PgMetadata::connect(&url).unwrap());
        }
    });
    assert_eq!(
        pg.psql(db, "SELECT component, version FROM layerlink_schema")
            .trim(),
        "oci|1"
    );
    let m = PgMetadata::connect(&url).unwrap();
    m.link_blob("kept", &d("b"), 1).unwrap();
    drop(m);
    // Reopening keeps the data.
    assert!(PgMetadata::connect(&url)
        .unwrap()
        .blob_linked("kept", &d("b"))
        .unwrap());
    // A database migrated by a newer registry is refused.
    pg.psql(db, "UPDATE layerlink_schema SET version = 99");
    let e = format!("{:#}", PgMetadata::connect(&url).err().unwrap());
    assert!(e.contains("version 99") && e.contains("upgrade"), "{e}");
    // An unreachable server is an error, not a hang.
    let bad = format!(
        "postgresql://postgres@/x?host={}/nowhere",
        pg.socket_dir().display()
    );
    assert!(PgMetadata::connect(&bad).is_err());
}

/// The blocking methods work on any thread: inside an async task of
/// another runtime (where the sync `postgres` crate would panic), and the
/// store may be dropped there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_works_inside_a_runtime() {
    let pg = TestPostgres::start();
    let url = pg.create_database();
    let m = PgMetadata::connect(&url).unwrap();
    m.link_blob("a", &d("x"), 3).unwrap();
    assert!(m.blob_linked("a", &d("x")).unwrap());
    let m = Arc::new(m);
    let m2 = m.clone();
    let linked = tokio::task::spawn_blocking(move || m2.blob_linked("a", &d("x")))
        .await
        .unwrap()
        .unwrap();
    assert!(linked);
    drop(m);
}

/// `[storage] metadata` selects PostgreSQL; the data dir then refuses to
/// open without it (a `gc` without the config must not see empty metadata).
#[test]
fn storage_selects_postgres_and_guards_the_data_dir() {
    let pg = TestPostgres::start();
    let url = pg.create_database();
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::StorageConfig {
        metadata: Some(url.clone()),
        ..Default::default()
    };
    let s = Storage::open_with(dir.path(), &config).unwrap();
    let (blob, size) = s.put_blob("a/b", &b"layer"[..], None).unwrap();
    s.put_manifest(
        "a/b",
        Some("v1"),
        "application/x",
        b"{}".to_vec(),
        &[(blob, size)],
    )
    .unwrap();
    drop(s);
    assert_eq!(pg.psql("test0", "SELECT tag FROM oci_tags").trim(), "v1");
    let e = format!("{:#}", Storage::open(dir.path()).err().unwrap());
    assert!(e.contains("PostgreSQL") && e.contains("--config"), "{e}");
    let s = Storage::open_with(dir.path(), &config).unwrap();
    assert_eq!(
        s.resolve_manifest("a/b", "v1").unwrap().unwrap().bytes,
        b"{}"
    );
    // A data dir with embedded metadata is not silently switched over.
    let embedded = tempfile::tempdir().unwrap();
    Storage::open(embedded.path())
        .unwrap()
        .put_blob("old/repo", &b"x"[..], None)
        .unwrap();
    let e = format!(
        "{:#}",
        Storage::open_with(embedded.path(), &config).err().unwrap()
    );
    assert!(e.contains("embedded metadata (1 repositories)"), "{e}");
    assert!(!embedded.path().join(super::POSTGRES_MARKER).exists());
    // The device records are in PostgreSQL too (one pool for both).
    let set = held(&[1], &[]);
    s.devices()
        .record_holdings("gw-1", &set.hash(), &set, 5)
        .unwrap();
    assert_eq!(
        pg.psql("test0", "SELECT device, layers FROM devices_holdings")
            .trim(),
        "gw-1|1"
    );
    assert_eq!(
        pg.psql(
            "test0",
            "SELECT component, version FROM layerlink_schema ORDER BY 1"
        )
        .trim(),
        "devices|1\noci|1"
    );
}

fn held(layers: &[u8], objects: &[u8]) -> HeldSet {
    let mut s = HeldSet {
        layers: layers.iter().map(|&b| Digest([b; 32])).collect(),
        objects: objects.iter().map(|&b| Digest([b; 32])).collect(),
    };
    s.canonicalize();
    s
}

fn layer_set(layers: &[u8]) -> HashSet<Digest> {
    layers.iter().map(|&b| Digest([b; 32])).collect()
}

/// Everything [`DeviceStore`] promises, on an empty database that `a` and
/// `b` share (two replicas).
fn device_contract(a: &dyn DeviceStore, b: &dyn DeviceStore) {
    assert!(a.holdings_hash("gw-1").unwrap().is_none());
    assert!(a.holdings("gw-1").unwrap().is_none());
    assert!(a.records().unwrap().is_empty());
    assert!(a.layers_held_since(0).unwrap().is_empty());

    let s1 = held(&[2, 1], &[9]);
    a.record_holdings("gw-1", &s1.hash(), &s1, 1000).unwrap();
    // The other replica sees it at once: no caches.
    assert_eq!(b.holdings_hash("gw-1").unwrap(), Some(s1.hash()));
    assert_eq!(b.holdings("gw-1").unwrap(), Some((s1.hash(), s1.clone())));
    // A noted time is written only by a flush.
    a.note_seen("gw-1", 2000);
    let r = b.records().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].id.as_str(), r[0].seen), ("gw-1", Some(1000)));
    assert_eq!(
        r[0].holdings,
        Some(HoldingsSummary {
            hash: s1.hash(),
            layers: 2,
            loose_objects: 1
        })
    );
    assert_eq!(a.flush_seen().unwrap(), 1);
    assert_eq!(a.flush_seen().unwrap(), 0);
    assert_eq!(b.records().unwrap()[0].seen, Some(2000));
    // An earlier time — a replica flushing late, or a holdings write with
    // an older clock — never moves the recorded one back.
    b.note_seen("gw-1", 1500);
    assert_eq!(b.flush_seen().unwrap(), 1);
    let s2 = held(&[3], &[]);
    b.record_holdings("gw-1", &s2.hash(), &s2, 1700).unwrap();
    let r = a.records().unwrap();
    assert_eq!(r[0].seen, Some(2000));
    assert_eq!(r[0].holdings.map(|h| h.hash), Some(s2.hash()));
    assert_eq!(a.holdings("gw-1").unwrap(), Some((s2.hash(), s2.clone())));

    // The garbage collector's view: layers of devices seen after T.
    a.record_holdings("gw-old", &s1.hash(), &s1, 500).unwrap();
    assert_eq!(a.layers_held_since(1999).unwrap(), layer_set(&[3]));
    assert_eq!(a.layers_held_since(499).unwrap(), layer_set(&[1, 2, 3]));
    assert!(b.layers_held_since(2000).unwrap().is_empty());
    // It flushes the store's own noted times first.
    a.note_seen("gw-old", 3000);
    assert_eq!(a.layers_held_since(2500).unwrap(), layer_set(&[1, 2]));

    // Reported images and last syncs, replaced by the next ones.
    let images = ImagesRecord {
        reported_at: 10,
        images: vec![HeldImage {
            image: ImageRef {
                repository: "edge/app".into(),
                reference: "v1".into(),
            },
            manifest_digest: Digest([7; 32]),
        }],
    };
    a.record_images("gw-2", &images).unwrap();
    let mut last = LastSync {
        at: 11,
        image: "edge/app@sha256:x".into(),
        request: "archive".into(),
        outcome: "complete".into(),
        bytes: 42,
    };
    b.record_last_sync("gw-3", &last).unwrap();
    last.outcome = "refused (401): no".into();
    last.bytes = 0;
    a.record_last_sync("gw-3", &last).unwrap();
    let r = b.records().unwrap();
    let ids: Vec<&str> = r.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["gw-1", "gw-2", "gw-3", "gw-old"]);
    assert_eq!(r[1].images.as_ref(), Some(&images));
    assert_eq!(
        (r[1].seen, r[1].holdings, &r[1].last_sync),
        (None, None, &None)
    );
    assert_eq!(r[2].last_sync.as_ref(), Some(&last));
    assert_eq!(r[3].seen, Some(3000));
}

/// Replicas flushing the same devices at once leave each device's latest
/// time, whatever order the flushes commit in.
fn seen_flush_race(stores: &[Arc<dyn DeviceStore>]) {
    let n = stores.len() as u64;
    std::thread::scope(|s| {
        for (i, st) in stores.iter().enumerate() {
            s.spawn(move || {
                for round in 0..20u64 {
                    for dev in 0..10 {
                        st.note_seen(&format!("gw-{dev}"), 10_000 + round * n + i as u64);
                    }
                    st.flush_seen().unwrap();
                }
            });
        }
    });
    let r = stores[0].records().unwrap();
    assert_eq!(r.len(), 10);
    for d in r {
        assert_eq!(d.seen, Some(10_000 + 19 * n + n - 1), "{}", d.id);
    }
}

#[test]
fn redb_devices_meet_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb_store(dir.path());
    device_contract(&RedbDevices::new(db.clone()), &RedbDevices::new(db));
    let dir = tempfile::tempdir().unwrap();
    let db = redb_store(dir.path());
    let stores: Vec<Arc<dyn DeviceStore>> = (0..6)
        .map(|_| Arc::new(RedbDevices::new(db.clone())) as Arc<dyn DeviceStore>)
        .collect();
    seen_flush_race(&stores);
}

#[test]
fn postgres_devices_meet_the_contract() {
    let pg = TestPostgres::start();
    let url = pg.create_database();
    // Two replicas: two pools on one database.
    let pool = Pg::connect(&url).unwrap();
    let timeout = pool
        .read("SHOW statement_timeout", (), |rows| {
            Ok(rows[0].get::<_, String>(0))
        })
        .unwrap();
    assert_eq!(timeout, "30s", "every connection has a statement timeout");
    let a = PgDevices::open(pool).unwrap();
    let b = PgDevices::open(Pg::connect(&url).unwrap()).unwrap();
    device_contract(&a, &b);
    let url = pg.create_database();
    let stores: Vec<Arc<dyn DeviceStore>> = (0..6)
        .map(|_| {
            Arc::new(PgDevices::open(Pg::connect(&url).unwrap()).unwrap()) as Arc<dyn DeviceStore>
        })
        .collect();
    seen_flush_race(&stores);
    // A holdings record that does not decode: the set is an error for that
    // device, and the collector counts it as holding nothing.
    drop(stores);
    let c = PgDevices::open(Pg::connect(&url).unwrap()).unwrap();
    let (ok, bad) = (held(&[4], &[]), held(&[5], &[]));
    c.record_holdings("gw-ok", &ok.hash(), &ok, 20_000).unwrap();
    c.record_holdings("gw-bad", &bad.hash(), &bad, 20_000)
        .unwrap();
    pg.psql(
        "test1",
        "UPDATE devices_holdings SET held = '\\xff' WHERE device = 'gw-bad'",
    );
    assert!(c.holdings("gw-ok").unwrap().is_some());
    assert!(c.holdings("gw-bad").is_err());
    assert_eq!(c.layers_held_since(0).unwrap(), layer_set(&[4]));
}
