//! A hand-made hostile-layer corpus for registry ingest, plus the replay of
//! crash inputs kept by the fuzzer under `fuzz/regressions/registry_ingest/`.
//!
//! A pushed layer is data: the registry never creates its entries' paths,
//! so traversal, absolute paths, symlink tricks, devices, duplicates and
//! non-UTF-8 names are ingested as they are (and must rebuild byte for
//! byte). Malformed or unsupported layers must fail with a clear error and
//! record nothing. Either way nothing may appear outside the data dir.

use flate2::write::GzEncoder;
use flate2::Compression;
use layerlink_proto::Digest;
use layerlink_registry::ingest::{ingest_layer, IngestError, LayerOutcome};
use layerlink_registry::store::index;
use layerlink_registry::store::objects::ObjectStore;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Data {
    dir: tempfile::TempDir,
    db: redb::Database,
    objects: ObjectStore,
}

impl Data {
    fn new() -> Data {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sentinel")).unwrap();
        fs::write(dir.path().join("sentinel/keep"), b"keep").unwrap();
        fs::create_dir(dir.path().join("data")).unwrap();
        let db = redb::Database::create(dir.path().join("data/index.redb")).unwrap();
        let objects = ObjectStore::new(dir.path().join("data/objects"));
        Data { dir, db, objects }
    }

    fn sentinel(&self) -> PathBuf {
        self.dir.path().join("sentinel")
    }

    fn ingest(
        &self,
        blob: &[u8],
        media: &str,
        diff_id: &Digest,
    ) -> Result<LayerOutcome, IngestError> {
        ingest_layer(
            &self.db,
            &self.objects,
            &Digest::of(blob),
            media,
            diff_id,
            blob,
        )
    }

    /// Published object files (staging excluded).
    fn object_files(&self) -> usize {
        let Ok(rd) = fs::read_dir(self.objects.root()) else {
            return 0;
        };
        rd.flatten()
            .filter(|e| e.file_name() != ".staging")
            .filter_map(|e| fs::read_dir(e.path()).ok())
            .map(|s| s.flatten().count())
            .sum()
    }

    fn check_outside(&self, name: &str) {
        let mut top: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, vec!["data", "sentinel"], "{name}");
        let s: Vec<_> = fs::read_dir(self.sentinel())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(s, vec![std::ffi::OsString::from("keep")], "{name}");
        assert_eq!(fs::read(self.sentinel().join("keep")).unwrap(), b"keep");
        assert!(!Path::new("/x").exists());
    }
}

fn pax_records(pax: &[(&str, &[u8])]) -> Vec<u8> {
    let mut rec = Vec::new();
    for (k, v) in pax {
        let body_len = k.len() + v.len() + 3;
        let mut len = body_len + 1;
        while body_len + len.to_string().len() != len {
            len = body_len + len.to_string().len();
        }
        rec.extend_from_slice(format!("{len} {k}=").as_bytes());
        rec.extend_from_slice(v);
        rec.push(b'\n');
    }
    rec
}

/// Appends a raw entry: header with the given type, size field and link
/// name, then `body` padded (the size field may lie).
fn raw(out: &mut Vec<u8>, kind: u8, path: &[u8], link: &[u8], size: u64, body: &[u8]) {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    if kind == b'3' || kind == b'4' {
        h.set_device_major(8).unwrap();
        h.set_device_minor(1).unwrap();
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(body);
    out.extend(std::iter::repeat_n(0u8, (512 - body.len() % 512) % 512));
}

fn file(out: &mut Vec<u8>, path: &[u8], body: &[u8]) {
    raw(out, b'0', path, b"", body.len() as u64, body);
}

fn with_pax(out: &mut Vec<u8>, pax: &[(&str, &[u8])]) {
    let rec = pax_records(pax);
    raw(out, b'x', b"PaxHeaders/x", b"", rec.len() as u64, &rec);
}

fn end(mut t: Vec<u8>) -> Vec<u8> {
    t.extend_from_slice(&[0u8; 1024]);
    t
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Layers the registry must store as they are.
fn handled_cases(sentinel: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut t = Vec::new();
    file(&mut t, b"../x", b"x");
    file(&mut t, b"a/../../x", b"y");
    v.push(("path traversal", end(t)));
    let mut t = Vec::new();
    file(&mut t, format!("{sentinel}/abs").as_bytes(), b"x");
    v.push(("absolute path", end(t)));
    let mut t = Vec::new();
    raw(&mut t, b'2', b"link", sentinel.as_bytes(), 0, b"");
    file(&mut t, b"link/pwned", b"pwned");
    v.push(("symlink then write through", end(t)));
    let mut t = Vec::new();
    raw(&mut t, b'1', b"h", b"../../etc/passwd", 0, b"");
    raw(&mut t, b'2', b"s", b"/etc/passwd", 0, b"");
    raw(&mut t, b'1', b"h2", b"s", 0, b"");
    v.push(("hard link escapes", end(t)));
    let mut t = Vec::new();
    raw(&mut t, b'3', b"dev/sda", b"", 0, b"");
    raw(&mut t, b'4', b"dev/sdb", b"", 0, b"");
    raw(&mut t, b'6', b"fifo", b"", 0, b"");
    v.push(("device nodes", end(t)));
    let mut t = Vec::new();
    file(&mut t, b"dup", b"first");
    file(&mut t, b"dup", b"second");
    raw(&mut t, b'5', b"dup/", b"", 0, b"");
    v.push(("duplicate entries", end(t)));
    let mut t = Vec::new();
    file(&mut t, b"caf\xe9", b"latin-1");
    file(&mut t, b"\xff\xfe\x80", b"junk name");
    v.push(("invalid utf-8 names", end(t)));
    let mut t = Vec::new();
    with_pax(
        &mut t,
        &[
            ("LAYERLINK.digest", &[b'0'; 64]),
            ("LAYERLINK.marker", b"end"),
        ],
    );
    file(&mut t, b"spoof", b"spoofed markers");
    v.push(("spoofed LAYERLINK keys", end(t)));
    // Read as Go's archive/tar (and containerd, umoci, the agent) reads
    // them: a link's or directory's size field is not data, and two PAX
    // headers before one entry add up.
    let mut t = Vec::new();
    file(&mut t, b"f", b"data");
    raw(&mut t, b'1', b"h", b"f", 4, b"");
    raw(&mut t, b'5', b"d/", b"", 1024, b"");
    file(&mut t, b"after", b"still an entry");
    v.push(("size fields of links and directories", end(t)));
    let mut t = Vec::new();
    with_pax(&mut t, &[("SCHILY.xattr.user.a", b"1")]);
    with_pax(&mut t, &[("mtime", b"1600000001.5")]);
    file(&mut t, b"two-pax", b"x");
    v.push(("two PAX headers before one entry", end(t)));
    v
}

/// Layers the registry must refuse.
fn rejected_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let tar = "application/vnd.oci.image.layer.v1.tar";
    let mut v = Vec::new();
    let mut t = Vec::new();
    raw(&mut t, b'0', b"big", b"", 1 << 40, b"short body");
    v.push(("1 TiB declared, short body", t, tar));
    let mut t = Vec::new();
    with_pax(&mut t, &[("size", b"1099511627776")]);
    file(&mut t, b"big", b"short body");
    v.push(("1 TiB pax size", end(t), tar));
    let mut t = Vec::new();
    raw(&mut t, b'S', b"sparse", b"", 0, b"");
    v.push(("GNU sparse type", end(t), tar));
    let mut t = Vec::new();
    with_pax(
        &mut t,
        &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
    );
    file(&mut t, b"sparse", b"x");
    v.push(("PAX sparse", end(t), tar));
    let mut t = Vec::new();
    with_pax(&mut t, &[("comment", &vec![b'a'; 4 << 20])]);
    file(&mut t, b"a", b"x");
    v.push(("huge pax header", end(t), tar));
    let mut t = Vec::new();
    for _ in 0..=layerlink_proto::limits::MAX_EXTENSION_HEADERS {
        with_pax(&mut t, &[("comment", b"again")]);
    }
    file(&mut t, b"a", b"x");
    v.push(("PAX headers in a row", end(t), tar));
    let mut t = Vec::new();
    file(&mut t, b"a", b"x");
    t[148..156].copy_from_slice(b"0000000\0");
    v.push(("bad header checksum", end(t), tar));
    v.push((
        "random bytes",
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        tar,
    ));
    let mut t = Vec::new();
    file(&mut t, b"f", &[7u8; 100_000]);
    let mut g = gz(&end(t));
    g.truncate(g.len() / 2);
    v.push((
        "truncated gzip",
        g,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    ));
    let mut g = gz(b"x");
    let n = g.len();
    g[n / 2] ^= 0xff;
    g[n - 5] ^= 0xff;
    v.push((
        "corrupt gzip",
        g,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    ));
    v.push((
        "corrupt zstd",
        vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff, 0, 1, 2, 3],
        "application/vnd.oci.image.layer.v1.tar+zstd",
    ));
    v
}

#[test]
fn hostile_layers_are_rejected_or_stored_as_they_are() {
    let d = Data::new();
    let s = d.sentinel().to_str().unwrap().to_string();
    let mut rejected = 0;
    let mut handled = 0;

    for (name, blob, media) in rejected_cases() {
        let objects = d.object_files();
        let diff_id = Digest::of(name.as_bytes());
        let err = d.ingest(&blob, media, &diff_id).expect_err(name);
        println!("rejected {name}: {err}");
        assert!(err.is_client_error(), "{name}: {err}");
        assert!(!err.to_string().is_empty());
        assert!(
            index::layer_meta(&d.db, &diff_id).unwrap().is_none(),
            "{name}"
        );
        assert_eq!(d.object_files(), objects, "{name}: published objects");
        d.check_outside(name);
        rejected += 1;
    }

    // A good layer under a wrong diff_id: rejected, nothing recorded.
    let mut t = Vec::new();
    file(&mut t, b"ok", b"fine");
    let t = end(t);
    let wrong = Digest::of(b"wrong");
    let err = d.ingest(&t, "", &wrong).unwrap_err();
    assert!(matches!(err, IngestError::DiffIdMismatch { .. }), "{err}");
    assert!(index::layer_meta(&d.db, &wrong).unwrap().is_none());
    assert!(index::layer_meta(&d.db, &Digest::of(&t)).unwrap().is_none());
    assert_eq!(d.object_files(), 0);
    rejected += 1;

    for (name, tar) in handled_cases(&s) {
        let diff_id = Digest::of(&tar);
        d.ingest(&tar, "", &diff_id).expect(name);
        assert!(
            index::layer_meta(&d.db, &diff_id).unwrap().is_some(),
            "{name}"
        );
        let mut out = Vec::new();
        index::rebuild_layer_tar_with(&d.db, &d.objects, &diff_id, &mut out).unwrap();
        assert!(out == tar, "{name}: rebuilt tar differs");
        d.check_outside(name);
        handled += 1;
    }
    println!("hostile inputs rejected: {rejected}, stored as they are: {handled}");
    assert_eq!(rejected, 12);
}

#[test]
fn a_gzip_of_zeros_and_a_100k_entry_layer_are_handled() {
    let d = Data::new();
    // 512 MiB of zeros: ends the tar at once, the rest is trailer. Must
    // finish in bounded time either way and record only a correct layer.
    let zeros = vec![0u8; 512 << 20];
    let diff_id = Digest::of(&zeros);
    let blob = gz(&zeros);
    drop(zeros);
    let t0 = Instant::now();
    let r = d.ingest(
        &blob,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &diff_id,
    );
    assert!(t0.elapsed() < Duration::from_secs(120));
    if r.is_err() {
        assert!(index::layer_meta(&d.db, &diff_id).unwrap().is_none());
    }
    d.check_outside("zeros");

    let mut t = Vec::with_capacity(110_000 * 512);
    raw(&mut t, b'5', b"big/", b"", 0, b"");
    for i in 0..100_000 {
        file(&mut t, format!("big/f{i:06}").as_bytes(), b"");
    }
    let t = end(t);
    let diff_id = Digest::of(&t);
    match d.ingest(&t, "", &diff_id).unwrap() {
        LayerOutcome::Ingested(meta) => assert_eq!(meta.entries, 100_001),
        o => panic!("{o:?}"),
    }
    d.check_outside("100k");
}

/// Replays `fuzz/regressions/registry_ingest/*` as the fuzz target does.
#[test]
fn fuzz_regressions_registry_ingest() {
    // The target's seeds and every crash input ever kept; none is a failure.
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["seeds/registry_ingest", "regressions/registry_ingest"] {
        if let Ok(rd) = fs::read_dir(fuzz.join(dir)) {
            files.extend(rd.flatten().map(|e| e.path()).filter(|p| {
                p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.')
            }));
        }
    }
    assert!(
        !files.is_empty(),
        "no seeds or regressions for registry_ingest"
    );
    files.sort();
    for path in files {
        let data = fs::read(&path).unwrap();
        let Some((&mode, blob)) = data.split_first() else {
            continue;
        };
        let media = match mode % 3 {
            0 => "application/vnd.oci.image.layer.v1.tar",
            1 => "application/vnd.oci.image.layer.v1.tar+gzip",
            _ => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        let d = Data::new();
        let _ = d.ingest(blob, media, &Digest::of(blob));
        d.check_outside(&path.display().to_string());
    }
}
