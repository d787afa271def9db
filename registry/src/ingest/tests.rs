use super::testutil::{gzip, sample_tar, MemBlobs, TarBuilder, TestStore};
use super::*;
use crate::store::index::{self, EntryKind, EntryRecord, RawHeader};
use crate::store::objects::read_object;
use layerlink_proto::Sha256;
use redb::ReadableDatabase as _;
use sha2::Digest as _;
use std::io::Write;

fn ingest(ts: &TestStore, blob: &[u8], diff_id: &Digest) -> Result<LayerOutcome, IngestError> {
    ingest_layer(&ts.db, &ts.objects, &Digest::of(blob), "", diff_id, blob)
}

fn records(ts: &TestStore, diff_id: &Digest) -> Vec<EntryRecord> {
    let txn = ts.db.begin_read().unwrap();
    index::layer_entries(&txn, diff_id)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn rebuild(ts: &TestStore, diff_id: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    index::rebuild_layer_tar_with(&ts.db, &ts.objects, diff_id, &mut out).unwrap();
    out
}

/// Compare tars without printing megabytes: length and first difference.
fn assert_same_tar(got: &[u8], want: &[u8]) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "tars differ: lengths {} vs {}, first difference at {:?}",
            got.len(),
            want.len(),
            first
        );
    }
}

#[test]
fn ingest_records_every_entry_kind() {
    let ts = TestStore::new();
    let tar = sample_tar();
    let diff_id = Digest::of(&tar);
    let LayerOutcome::Ingested(meta) = ingest(&ts, &gzip(&tar), &diff_id).unwrap() else {
        panic!("not ingested");
    };
    assert_eq!(meta.compression, index::Compression::Gzip);
    assert_eq!(meta.tar_size, tar.len() as u64);
    assert!(meta.exact);
    let recs = records(&ts, &diff_id);
    assert_eq!(recs.len() as u32, meta.records);
    assert_eq!(meta.entries, meta.records);
    let by_path = |p: &[u8]| {
        recs.iter()
            .find(|r| r.path == p)
            .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(p)))
    };
    assert_eq!(recs[0].path, b"etc/");
    assert_eq!(recs[0].kind, EntryKind::Dir);
    assert_eq!(recs[0].mode, 0o755);
    let host = by_path(b"etc/hostname");
    assert_eq!(host.kind, EntryKind::File);
    assert_eq!(
        (host.uid, host.gid, host.mtime, host.size),
        (1000, 1000, 1_700_000_000, 5)
    );
    assert_eq!(host.object, Some(Digest::of(b"edge\n")));
    assert_eq!(by_path(b"etc/hostname.copy").object, host.object);
    assert_eq!(by_path(b"etc/empty").object, None);
    let sym = by_path(b"etc/localtime");
    assert_eq!(
        (sym.kind, &sym.link[..]),
        (EntryKind::Symlink, &b"/usr/share/zoneinfo/UTC"[..])
    );
    let hard = by_path(b"etc/hostname.hard");
    assert_eq!(
        (hard.kind, &hard.link[..]),
        (EntryKind::HardLink, &b"etc/hostname"[..])
    );
    let long = format!("usr/share/{}/file.txt", "long-directory-name".repeat(8));
    assert_eq!(
        by_path(long.as_bytes()).object,
        Some(Digest::of(b"long name content"))
    );
    assert_eq!(
        by_path(b"caf\xe9.bin").object,
        Some(Digest::of(b"latin-1 name"))
    );
    let ping = by_path(b"bin/ping");
    let xattrs: Vec<_> = ping.xattrs().collect();
    assert_eq!(
        xattrs,
        vec![
            (
                &b"security.capability"[..],
                &b"\x01\x00\x00\x02\x0a\x00"[..]
            ),
            (&b"user.note"[..], &b"hello"[..]),
        ]
    );
    assert!(
        ping.pax.iter().all(|(k, _)| !k.starts_with(b"LAYERLINK.")),
        "LAYERLINK keys dropped"
    );
    let null = by_path(b"dev/null");
    assert_eq!(
        (null.kind, null.dev_major, null.dev_minor),
        (EntryKind::Char, 1, 3)
    );
    assert_eq!(by_path(b"run/fifo").kind, EntryKind::Fifo);
    assert_eq!(by_path(b"var/.wh.cache").kind, EntryKind::File);
    assert_eq!(by_path(b"opt/.wh..wh..opq").kind, EntryKind::File);

    // Objects: distinct non-empty contents, stored once, readable.
    let distinct: std::collections::HashSet<_> = recs.iter().filter_map(|r| r.object).collect();
    assert_eq!(meta.distinct_objects as usize, distinct.len());
    assert_eq!(ts.object_files(), distinct.len());
    assert_eq!(
        read_object(&ts.objects, &Digest::of(b"edge\n")).unwrap(),
        b"edge\n"
    );
    let stats = index::dedup_stats_db(&ts.db).unwrap();
    assert_eq!(stats.layers, 1);
    assert_eq!(stats.distinct_objects as usize, distinct.len());
    assert_eq!(stats.regular_files, u64::from(meta.regular_files));
    assert!(stats.stored_bytes > 0);
    // The blob is linked to its diff_id.
    assert_eq!(
        index::diff_id_for_blob(&ts.db, &Digest::of(&gzip(&tar))).unwrap(),
        Some(diff_id)
    );
}

#[test]
fn rebuild_reproduces_the_tar_crate_layer() {
    let ts = TestStore::new();
    let tar = sample_tar();
    let diff_id = Digest::of(&tar);
    ingest(&ts, &gzip(&tar), &diff_id).unwrap();
    let out = rebuild(&ts, &diff_id);
    assert_eq!(Digest::of(&out), diff_id);
    assert_same_tar(&out, &tar);
    // Most entries need no stored header bytes; those that do (GNU long
    // names, dropped LAYERLINK keys) are few.
    let recs = records(&ts, &diff_id);
    let verbatim = recs
        .iter()
        .filter(|r| matches!(r.raw, RawHeader::Verbatim(_)))
        .count();
    assert!(verbatim <= 2, "{verbatim} verbatim headers");
}

#[test]
fn canonical_headers_need_no_raw_bytes() {
    // A tar written by our own header renderer is stored without raw bytes.
    let mut tar = Vec::new();
    let rec = EntryRecord {
        path: b"a/b".to_vec(),
        kind: EntryKind::File,
        type_flag: b'0',
        mode: 0o640,
        uid: 5,
        gid: 6,
        uname: b"u".to_vec(),
        gname: b"g".to_vec(),
        mtime: 7,
        link: Vec::new(),
        dev_major: 0,
        dev_minor: 0,
        size: 3,
        object: None,
        pax: vec![(b"SCHILY.xattr.user.x".to_vec(), b"1".to_vec())],
        raw: RawHeader::Canonical,
    };
    tar.extend_from_slice(&rec.canonical_header());
    tar.extend_from_slice(b"abc");
    tar.resize(1024 + 512 + 512 + 1024, 0);
    let ts = TestStore::new();
    let diff_id = Digest::of(&tar);
    ingest(&ts, &tar, &diff_id).unwrap();
    let got = records(&ts, &diff_id);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].raw, RawHeader::Canonical);
    assert_eq!(got[0].object, Some(Digest::of(b"abc")));
    assert_same_tar(&rebuild(&ts, &diff_id), &tar);
}

#[test]
fn gnu_tar_pax_layer_rebuilds_exactly() {
    // A layer written by GNU tar in PAX format (atime/ctime records, its
    // own header conventions), if GNU tar is installed.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("d/sub")).unwrap();
    std::fs::write(src.path().join("d/a.txt"), b"alpha").unwrap();
    std::fs::write(src.path().join("d/sub/b.bin"), vec![9u8; 70_000]).unwrap();
    std::os::unix::fs::symlink("a.txt", src.path().join("d/link")).unwrap();
    let out = std::process::Command::new("tar")
        .args(["--format=pax", "-cf", "-", "-C"])
        .arg(src.path())
        .arg("d")
        .output();
    let Ok(out) = out else {
        eprintln!("GNU tar not available; skipped");
        return;
    };
    assert!(out.status.success());
    let tar = out.stdout;
    let ts = TestStore::new();
    let diff_id = Digest::of(&tar);
    let LayerOutcome::Ingested(meta) = ingest(&ts, &tar, &diff_id).unwrap() else {
        panic!()
    };
    assert_eq!(meta.compression, index::Compression::None);
    assert!(meta.trailer.len >= 1024);
    assert_same_tar(&rebuild(&ts, &diff_id), &tar);
    let recs = records(&ts, &diff_id);
    assert!(recs
        .iter()
        .any(|r| r.path.ends_with(b"sub/b.bin") && r.size == 70_000));
}

#[test]
fn zstd_and_plain_layers_ingest() {
    let ts = TestStore::new();
    let tar = TarBuilder::new().file("x", b"zstd content").finish_ref();
    let diff_id = Digest::of(&tar);
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    let LayerOutcome::Ingested(m) = ingest(&ts, &z, &diff_id).unwrap() else {
        panic!()
    };
    assert_eq!(m.compression, index::Compression::Zstd);
    assert_eq!(
        records(&ts, &diff_id)[0].object,
        Some(Digest::of(b"zstd content"))
    );
}

#[test]
fn dedup_across_layers_and_repush_adds_nothing() {
    let ts = TestStore::new();
    let big = vec![42u8; 3 * 1024 * 1024]; // streamed path
    let l1 = TarBuilder::new()
        .file("a", b"shared")
        .file("big", &big)
        .file("only1", b"one")
        .finish_ref();
    let l2 = TarBuilder::new()
        .file("b", b"shared")
        .file("big2", &big)
        .file("only2", b"two")
        .finish_ref();
    ingest(&ts, &gzip(&l1), &Digest::of(&l1)).unwrap();
    assert_eq!(ts.object_files(), 3);
    let LayerOutcome::Ingested(m2) = ingest(&ts, &gzip(&l2), &Digest::of(&l2)).unwrap() else {
        panic!()
    };
    assert_eq!(m2.distinct_objects, 3);
    assert_eq!(m2.new_objects, 1);
    assert_eq!(ts.object_files(), 4);
    let stats = index::dedup_stats_db(&ts.db).unwrap();
    assert_eq!(stats.distinct_objects, 4);
    assert_eq!(stats.logical_bytes, 2 * (6 + big.len() as u64 + 3));
    assert!(
        stats.stored_bytes < 100_000,
        "big object compressed once: {}",
        stats.stored_bytes
    );
    {
        let txn = ts.db.begin_read().unwrap();
        let shared = index::object_meta(&txn, &Digest::of(b"shared"))
            .unwrap()
            .unwrap();
        assert_eq!((shared.size, shared.layers), (6, 2));
    }
    // Re-push of the same layer under another blob (zstd): linked, nothing added.
    let z = zstd::encode_all(&l2[..], 3).unwrap();
    let blobs = MemBlobs::default();
    let zd = blobs.put(z);
    ingest_one(&ts.db, &ts.objects, &blobs, None, &zd, "", &Digest::of(&l2)).unwrap();
    assert_eq!(
        index::diff_id_for_blob(&ts.db, &zd).unwrap(),
        Some(Digest::of(&l2))
    );
    assert_eq!(index::dedup_stats_db(&ts.db).unwrap(), stats);
    assert_eq!(ts.object_files(), 4);
    assert_same_tar(&rebuild(&ts, &Digest::of(&l2)), &l2);
}

fn assert_nothing_recorded(ts: &TestStore) {
    assert_eq!(
        index::dedup_stats_db(&ts.db).unwrap(),
        index::DedupStats::default()
    );
    assert_eq!(ts.object_files(), 0);
    let staging = ts.objects.root().join(".staging");
    let left = std::fs::read_dir(&staging)
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "staging left behind");
}

#[test]
fn truncated_gzip_records_nothing() {
    let ts = TestStore::new();
    let tar = sample_tar();
    let gz = gzip(&tar);
    let err = ingest(&ts, &gz[..gz.len() / 2], &Digest::of(&tar)).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
    assert_nothing_recorded(&ts);
}

#[test]
fn truncated_tar_records_nothing() {
    let ts = TestStore::new();
    let tar = TarBuilder::new()
        .file("a", b"first")
        .file("b", &vec![1u8; 10_000])
        .finish_ref();
    let cut = &tar[..2048];
    let err = ingest(&ts, cut, &Digest::of(&tar)).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_nothing_recorded(&ts);
    // Cut at an entry boundary: the tar reads fine, the diff_id catches it.
    let cut = &tar[..1024];
    let err = ingest(&ts, &gzip(cut), &Digest::of(&tar)).unwrap_err();
    assert!(matches!(err, IngestError::DiffIdMismatch { .. }), "{err}");
    assert_nothing_recorded(&ts);
}

#[test]
fn diff_id_mismatch_names_both_digests() {
    let ts = TestStore::new();
    let tar = sample_tar();
    let wrong = Digest::of(b"not this");
    let err = ingest(&ts, &gzip(&tar), &wrong).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong.to_string()) && msg.contains(&Digest::of(&tar).to_string()),
        "{msg}"
    );
    assert_nothing_recorded(&ts);
}

#[test]
fn corrupt_tar_header_is_rejected() {
    let ts = TestStore::new();
    let mut tar = sample_tar();
    tar[148] ^= 0x01; // checksum of the first header
    let err = ingest(&ts, &tar, &Digest::of(&tar)).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
    assert_nothing_recorded(&ts);
}

#[test]
fn manifest_ingest_and_concurrent_pushes() {
    let ts = std::sync::Arc::new(TestStore::new());
    let blobs = std::sync::Arc::new(MemBlobs::default());
    let l1 = sample_tar();
    let l2 = TarBuilder::new()
        .file("app/main", b"main binary")
        .finish_ref();
    let (manifest, _, diff_ids) = blobs.image(&[l1, l2]);
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (ts, blobs, manifest) = (ts.clone(), blobs.clone(), manifest.clone());
            std::thread::spawn(move || {
                ingest_manifest_with(
                    &ts.db,
                    &ts.objects,
                    &*blobs,
                    &manifest,
                    crate::oci::OCI_MANIFEST,
                )
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let stats = index::dedup_stats_db(&ts.db).unwrap();
    assert_eq!(stats.layers, 2);
    for d in &diff_ids {
        assert!(index::layer_meta(&ts.db, d).unwrap().is_some());
    }
    assert_eq!(stats.distinct_objects as usize, ts.object_files());
    // An index is a no-op; a config whose diff_ids disagree is an error.
    let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
    ingest_manifest_with(&ts.db, &ts.objects, &*blobs, idx, crate::oci::OCI_INDEX).unwrap();
    let (m, _, _) = blobs.image(&[TarBuilder::new().file("q", b"q").finish_ref()]);
    let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let first = v["layers"][0].clone();
    v["layers"].as_array_mut().unwrap().push(first);
    let err = ingest_manifest_with(
        &ts.db,
        &ts.objects,
        &*blobs,
        &serde_json::to_vec(&v).unwrap(),
        "",
    )
    .unwrap_err();
    assert!(matches!(err, IngestError::Invalid(_)), "{err}");
}

#[test]
fn missing_blob_is_reported() {
    let ts = TestStore::new();
    let blobs = MemBlobs::default();
    let (m, _, _) = blobs.image(&[TarBuilder::new().file("q", b"q").finish_ref()]);
    let layer: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&m).unwrap()["layers"][0].clone();
    let d = Digest::parse(layer["digest"].as_str().unwrap()).unwrap();
    blobs.0.lock().unwrap().remove(&d);
    let err = ingest_manifest_with(&ts.db, &ts.objects, &blobs, &m, "").unwrap_err();
    assert!(
        matches!(err, IngestError::MissingBlob(x) if x == d),
        "{err}"
    );
}

#[test]
fn trailing_garbage_after_end_is_kept_for_rebuild() {
    let ts = TestStore::new();
    let mut tar = TarBuilder::new().file("a", b"a").finish_ref();
    tar.write_all(b"junk after the end").unwrap();
    let diff_id = Digest::of(&tar);
    ingest(&ts, &tar, &diff_id).unwrap();
    assert_same_tar(&rebuild(&ts, &diff_id), &tar);
}

/// Blobs of an OCI image layout directory.
struct LayoutBlobs(std::path::PathBuf);

impl BlobSource for LayoutBlobs {
    fn open(&self, d: &Digest) -> std::io::Result<Option<Box<dyn std::io::Read + '_>>> {
        match std::fs::File::open(self.0.join("blobs/sha256").join(d.hex())) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Real layers (written by umoci / Go's archive/tar) from the cached test
/// images: every layer ingests, rebuilds to its diff_id, and most headers
/// need no stored bytes. Needs `scripts/build-test-images.sh`; run with
/// `cargo test --release -p layerlink-registry real_layers -- --ignored --nocapture`
/// (`LAYERLINK_TEST_OCI` overrides the layout path).
#[test]
#[ignore]
fn real_layers_ingest_and_rebuild_exactly() {
    let dir = std::env::var_os("LAYERLINK_TEST_OCI")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/layerlink/images/oci".into());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("test image cache"))
            .unwrap();
    let ts = TestStore::new();
    let blobs = LayoutBlobs(dir.clone());
    let mut diff_ids = Vec::new();
    let t0 = std::time::Instant::now();
    for m in index["manifests"].as_array().unwrap() {
        let d = Digest::parse(m["digest"].as_str().unwrap()).unwrap();
        let bytes = std::fs::read(dir.join("blobs/sha256").join(d.hex())).unwrap();
        ingest_manifest_with(
            &ts.db,
            &ts.objects,
            &blobs,
            &bytes,
            m["mediaType"].as_str().unwrap_or(""),
        )
        .unwrap();
        let crate::oci::ParsedManifest::Image(im) = crate::oci::parse_manifest(&bytes, "").unwrap()
        else {
            continue;
        };
        let config = read_config(&blobs, &im.config.digest).unwrap();
        diff_ids.extend(crate::oci::config_diff_ids(&config).unwrap());
    }
    diff_ids.sort();
    diff_ids.dedup();
    eprintln!("ingested {} layers in {:?}", diff_ids.len(), t0.elapsed());
    let stats = index::dedup_stats_db(&ts.db).unwrap();
    eprintln!("{stats:?}");
    for d in &diff_ids {
        let meta = index::layer_meta(&ts.db, d).unwrap().unwrap();
        let recs = records(&ts, d);
        let (mut canonical, mut patch, mut patch_bytes, mut verbatim) = (0, 0, 0, 0);
        for r in &recs {
            match &r.raw {
                RawHeader::Canonical => canonical += 1,
                RawHeader::Patch(p) => {
                    patch += 1;
                    patch_bytes += p.iter().map(|(_, b)| b.len() + 4).sum::<usize>();
                }
                RawHeader::Verbatim(_) => verbatim += 1,
            }
        }
        let mut h = Sha256::new();
        index::rebuild_layer_tar_with(&ts.db, &ts.objects, d, HashWriter(&mut h)).unwrap();
        let rebuilt = Digest::from_hasher(h);
        eprintln!(
            "layer {d}: {} entries, canonical {canonical}, patched {patch} ({patch_bytes} B), verbatim {verbatim}, exact {}",
            recs.len(),
            meta.exact
        );
        assert!(meta.exact);
        assert_eq!(rebuilt, *d, "rebuild of {d}");
        assert!(verbatim * 10 <= recs.len(), "too many verbatim headers");
    }
    assert!(
        stats.distinct_objects < stats.regular_files,
        "files shared between images are stored once"
    );
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
