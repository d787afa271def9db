//! Delta entries in real archives written from an in-memory registry.

use super::*;
use crate::ingest::testutil::TarBuilder;
use crate::sync::archive::{write_image_archive_with, Features};
use crate::sync::plan::MemRegistry;
use layerlink_proto::archive::{PAX_DELTA_BASE, PAX_DELTA_SIZE, PAX_DIGEST};
use layerlink_proto::msg::HeldSet;
use redb::ReadableDatabase as _;

/// Pseudo-random bytes (xorshift), `n` of them.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text(version: u32) -> Vec<u8> {
    (0..400)
        .map(|i| {
            format!(
                "line {i}: package foo version {}\n",
                if i == 200 { version } else { 1 }
            )
        })
        .collect::<String>()
        .into_bytes()
}

fn program(version: u8) -> Vec<u8> {
    let mut p = noise(7, 96 * 1024);
    for i in (0..p.len()).step_by(4096) {
        p[i] = version; // scattered small changes, like relocated addresses
    }
    p
}

fn layer(version: u8) -> Vec<u8> {
    let mut b = TarBuilder::new();
    b.dir("usr/")
        .file("usr/prog", &program(version))
        .file(format!("usr/libfoo.so.1.{version}"), &program(version + 10))
        .file("usr/notes.txt", &text(u32::from(version)))
        .file("usr/doc.gz", &noise(u64::from(version) + 100, 8192))
        .file("usr/small", format!("small {version}\n").as_bytes());
    b.finish_ref()
}

/// PAX records of an entry.
type Pax = Vec<(Vec<u8>, Vec<u8>)>;

/// Decode an archive (gzip or zstd), return (path, pax, data) per entry.
fn entries(archive: &[u8]) -> Vec<(String, Pax, Vec<u8>)> {
    let raw = if archive.starts_with(&[0x1f, 0x8b]) {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(archive)
            .read_to_end(&mut v)
            .unwrap();
        v
    } else {
        zstd::stream::decode_all(archive).unwrap()
    };
    let mut out = Vec::new();
    let mut a = tar::Archive::new(&raw[..]);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let pax: Pax = match e.pax_extensions().unwrap() {
            Some(x) => x
                .map(|p| {
                    let p = p.unwrap();
                    (p.key_bytes().to_vec(), p.value_bytes().to_vec())
                })
                .collect(),
            None => Vec::new(),
        };
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, pax, data));
    }
    out
}

fn get<'a>(pax: &'a [(Vec<u8>, Vec<u8>)], k: &str) -> Option<&'a [u8]> {
    pax.iter()
        .find(|(kk, _)| kk == k.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn write(r: &MemRegistry, layers: &[Digest], held: &HeldSet, features: &str) -> Vec<u8> {
    let f = Features::parse(features);
    write_image_archive_with(&r.ts.db, &r.ts.objects, None, layers, held, f, Vec::new()).unwrap()
}

fn cached_files(objects: &ObjectStore) -> usize {
    let mut n = 0;
    for d in fs::read_dir(cache_dir(objects))
        .into_iter()
        .flatten()
        .flatten()
    {
        n += fs::read_dir(d.path()).unwrap().count();
    }
    n
}

#[test]
fn modified_files_go_as_patches_that_rebuild_them() {
    let r = MemRegistry::new();
    let (_, v1) = r.push("app", "v1", &[layer(1)]);
    let (_, v2) = r.push("app", "v2", &[layer(2)]);
    let held = HeldSet {
        layers: v1.clone(),
        objects: vec![],
    };
    assert_eq!(
        Features::parse("layer-base, file-delta").file_delta,
        Some(PatchFormat::Bidiff)
    );
    for both in ["file-delta,file-delta2", "file-delta2, file-delta"] {
        assert_eq!(
            Features::parse(both).file_delta,
            Some(PatchFormat::Blocks),
            "{both}"
        );
    }
    // The zstd archive splices cached patches of 16 KiB or more (the
    // programs' patches) and writes smaller ones (the text's) inline.
    let zstd = write(&r, &v2, &held, "layer-base,file-delta,zstd");
    let with = write(&r, &v2, &held, "layer-base,file-delta");
    let without = write(&r, &v2, &held, "layer-base");
    // Format 2, as today's agents ask.
    let zstd2 = write(&r, &v2, &held, "layer-base,file-delta,file-delta2,zstd");
    let with2 = write(&r, &v2, &held, "layer-base,file-delta2");
    assert!(with2.len() < without.len() / 3);
    assert!(
        with.len() * 3 < without.len(),
        "deltas: {} bytes, whole files: {}",
        with.len(),
        without.len()
    );
    let old_of = |path: &str| -> Vec<u8> {
        match path {
            "usr/prog" => program(1),
            "usr/libfoo.so.1.2" => program(11),
            "usr/notes.txt" => text(1),
            p => panic!("no delta expected for {p}"),
        }
    };
    let new_of = |path: &str| -> Vec<u8> {
        match path {
            "usr/prog" => program(2),
            "usr/libfoo.so.1.2" => program(12),
            "usr/notes.txt" => text(2),
            p => panic!("{p}"),
        }
    };
    let mut deltas = Vec::new();
    let all = [&with, &zstd, &with2, &zstd2]
        .into_iter()
        .flat_map(|a| entries(a));
    for (path, pax, data) in all {
        let Some(base) = get(&pax, PAX_DELTA_BASE) else {
            continue;
        };
        let old = old_of(&path);
        let new = new_of(&path);
        assert_eq!(base, Digest::of(&old).hex().as_bytes(), "{path}");
        assert_eq!(
            get(&pax, PAX_DIGEST).unwrap(),
            Digest::of(&new).hex().as_bytes()
        );
        assert_eq!(
            get(&pax, PAX_DELTA_SIZE).unwrap(),
            new.len().to_string().as_bytes()
        );
        let mut rebuilt = Vec::new();
        if data.starts_with(&layerlink_proto::archive::DELTA_PATCH_HEADER) {
            bipatch::Reader::new(&data[..], io::Cursor::new(&old))
                .unwrap()
                .read_to_end(&mut rebuilt)
                .unwrap();
        } else {
            assert!(data.starts_with(&layerlink_proto::patch::MAGIC), "{path}");
            layerlink_proto::patch::Reader::new(&data[..], io::Cursor::new(&old))
                .read_to_end(&mut rebuilt)
                .unwrap();
        }
        assert!(rebuilt == new, "{path}: patch does not rebuild the file");
        deltas.push(path);
    }
    assert_eq!(deltas.len(), 12, "three delta entries in each archive");
    deltas.sort();
    deltas.dedup();
    // Same path; versioned name (libfoo.so.1.1 -> 1.2); text. Not the
    // compressed doc.gz nor the small file.
    assert_eq!(deltas, ["usr/libfoo.so.1.2", "usr/notes.txt", "usr/prog"]);
    // Cached (per format): a second archive is the same and computes
    // nothing new.
    let cached = cached_files(&r.ts.objects);
    assert_eq!(cached, 6);
    assert_eq!(write(&r, &v2, &held, "layer-base,file-delta"), with);
    assert_eq!(cached_files(&r.ts.objects), cached);
    // Without the feature, or holding nothing, no delta entries.
    for (features, held) in [
        ("layer-base", held.clone()),
        ("file-delta", HeldSet::default()),
    ] {
        let a = write(&r, &v2, &held, features);
        assert!(entries(&a)
            .iter()
            .all(|(_, pax, _)| get(pax, PAX_DELTA_BASE).is_none()));
    }
}

#[test]
fn a_patch_that_does_not_pay_is_cached_as_such_and_sent_whole() {
    let r = MemRegistry::new();
    let mk = |seed| {
        let mut b = TarBuilder::new();
        b.file("data.bin", &noise(seed, 64 * 1024));
        b.finish_ref()
    };
    let (_, v1) = r.push("app", "v1", &[mk(1)]);
    let (_, v2) = r.push("app", "v2", &[mk(2)]);
    let held = HeldSet {
        layers: v1,
        objects: vec![],
    };
    let a = write(&r, &v2, &held, "file-delta");
    assert!(entries(&a)
        .iter()
        .all(|(_, pax, _)| get(pax, PAX_DELTA_BASE).is_none()));
    assert_eq!(cached_files(&r.ts.objects), 1, "the 'not worth it' record");
}

#[test]
fn the_request_budget_stops_computing() {
    let r = MemRegistry::new();
    let (_, v1) = r.push("app", "v1", &[layer(1)]);
    let (_, v2) = r.push("app", "v2", &[layer(2)]);
    let txn = r.ts.db.begin_read().unwrap();
    let mut p = DeltaPlanner::new(&txn, &r.ts.objects, &v1, PatchFormat::Blocks)
        .unwrap()
        .with_budget(Duration::ZERO);
    let new = Digest::of(&program(2));
    assert_eq!(p.patch_for(b"usr/prog", &new, 96 * 1024), None);
    assert_eq!(p.stats.computed, 0);
    assert_eq!(p.stats.whole, 1);
    let _ = v2;
}
