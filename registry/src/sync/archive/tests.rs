use super::*;
use crate::ingest::testutil::{gunzip, sample_tar, TarBuilder};
use crate::sync::plan::{plan_image, MemRegistry};
use crate::tar::parse_pax;
use layerlink_proto::archive::parse_reference_link;
use layerlink_proto::msg::{ImageRef, LayerState};
use std::io::Read;

/// One entry of a parsed archive: header fields plus its PAX records.
#[derive(Debug)]
struct Parsed {
    path: Vec<u8>,
    type_flag: u8,
    link: Vec<u8>,
    size: u64,
    mode: u32,
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    data: Vec<u8>,
    /// Bytes the entry took in the uncompressed tar (headers + data).
    raw_len: u64,
}

impl Parsed {
    fn pax(&self, k: &str) -> Option<&[u8]> {
        self.pax
            .iter()
            .find(|(kk, _)| kk == k.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
    fn marker(&self) -> Option<Marker> {
        self.pax(PAX_MARKER).and_then(Marker::parse)
    }
}

/// Parse an uncompressed archive with the tar crate in raw mode, applying
/// PAX headers (parsed by length) to the next entry.
fn parse(tar_bytes: &[u8]) -> Vec<Parsed> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    let mut pending: Option<(crate::store::index::PaxRecords, u64)> = None;
    for e in a.entries().unwrap().raw(true) {
        let mut e = e.unwrap();
        let start = e.raw_header_position();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let t = h.as_bytes()[156];
        if t == b'x' {
            pending = Some((parse_pax(&data).unwrap(), start));
            continue;
        }
        if t == b'L' || t == b'K' {
            // GNU long name / link (only in pushed layers, never written by us).
            let key = if t == b'L' {
                b"path".to_vec()
            } else {
                b"linkpath".to_vec()
            };
            let value = data.strip_suffix(b"\0").unwrap_or(&data).to_vec();
            let p = pending.get_or_insert_with(|| (Vec::new(), start));
            p.0.push((key, value));
            continue;
        }
        let (pax, first) = pending.take().unwrap_or((Vec::new(), start));
        let get = |k: &[u8]| pax.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        let end = e.raw_file_position() + data.len() as u64;
        let end = end.div_ceil(512) * 512;
        out.push(Parsed {
            path: get(b"path").unwrap_or_else(|| h.path_bytes().into_owned()),
            type_flag: t,
            link: get(b"linkpath").unwrap_or_else(|| {
                h.link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default()
            }),
            size: data.len() as u64,
            mode: h.mode().unwrap(),
            pax,
            data,
            raw_len: end - first,
        });
    }
    out
}

fn write(
    r: &MemRegistry,
    meta: Option<Metadata<'_>>,
    layers: &[Digest],
    held: &HeldSet,
) -> Vec<u8> {
    let gz = write_image_archive(&r.ts.db, &r.ts.objects, meta, layers, held, Vec::new()).unwrap();
    gunzip(&gz)
}

/// Check markers and counts; return the sections: (diff_id, entries).
fn sections(entries: &[Parsed]) -> Vec<(Digest, Vec<&Parsed>)> {
    let mut out: Vec<(Digest, Vec<&Parsed>)> = Vec::new();
    let mut open: Option<(Digest, Vec<&Parsed>)> = None;
    for e in entries {
        match e.marker() {
            Some(Marker::Layer) => {
                assert!(open.is_none());
                let d = Digest::parse(std::str::from_utf8(e.pax(PAX_DIFF_ID).unwrap()).unwrap())
                    .unwrap();
                open = Some((d, Vec::new()));
            }
            Some(Marker::LayerEnd) => {
                let (d, es) = open.take().unwrap();
                assert_eq!(e.pax(PAX_DIFF_ID).unwrap(), d.to_string().as_bytes());
                let n: usize = std::str::from_utf8(e.pax(PAX_ENTRIES).unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(n, es.len());
                out.push((d, es));
            }
            Some(Marker::End) => assert!(open.is_none()),
            Some(_) => {}
            None => open.as_mut().expect("entry outside a layer").1.push(e),
        }
    }
    assert_eq!(entries.last().and_then(Parsed::marker), Some(Marker::End));
    out
}

fn img(repo: &str, r: &str) -> ImageRef {
    ImageRef {
        repository: repo.into(),
        reference: r.into(),
    }
}

#[test]
fn full_archive_carries_every_entry_and_dedups_within_the_stream() {
    let r = MemRegistry::new();
    let base = sample_tar();
    let app = TarBuilder::new()
        .file("app/hostname-again", b"edge\n")
        .file("app/new", b"brand new")
        .finish_ref();
    let (md, ids) = r.push("edge/app", "v1", &[base.clone(), app]);
    let manifest = r.manifest_bytes("edge/app", "v1");
    let meta = Metadata {
        manifest: &manifest,
        config: b"{\"config\":1}",
    };
    let tar_bytes = write(&r, Some(meta), &ids, &HeldSet::default());
    let entries = parse(&tar_bytes);
    assert_eq!(entries[0].marker(), Some(Marker::Manifest));
    assert_eq!(entries[0].data, manifest);
    assert_eq!(entries[1].marker(), Some(Marker::Config));
    assert_eq!(entries[1].data, b"{\"config\":1}");
    let secs = sections(&entries);
    assert_eq!(secs.len(), 2);
    assert_eq!((secs[0].0, secs[1].0), (ids[0], ids[1]));

    // Layer 1: same entries, same order, as the pushed tar.
    let original = parse(&base);
    let l1 = &secs[0].1;
    assert_eq!(l1.len(), original.len());
    for (a, o) in l1.iter().zip(&original) {
        assert_eq!(a.path, o.path, "order and names (long, non-UTF-8) kept");
        assert_eq!(a.mode, o.mode);
    }
    let by = |p: &[u8]| *l1.iter().find(|e| e.path == p).unwrap();
    let host = by(b"etc/hostname");
    assert_eq!(host.type_flag, b'0');
    assert_eq!(
        host.pax(PAX_DIGEST).unwrap(),
        Digest::of(b"edge\n").hex().as_bytes()
    );
    assert_eq!(host.data, b"edge\n");
    // The second file with the same content is a reference, one header.
    let copy = by(b"etc/hostname.copy");
    assert_eq!(copy.type_flag, b'1');
    assert_eq!(
        parse_reference_link(&copy.link),
        Some(Digest::of(b"edge\n"))
    );
    assert_eq!((copy.size, copy.raw_len), (0, 512));
    // Everything else exactly as in the layer.
    assert_eq!(by(b"etc/hostname.hard").link, b"etc/hostname");
    assert_eq!(by(b"etc/hostname.hard").type_flag, b'1');
    assert_eq!(by(b"etc/localtime").link, b"/usr/share/zoneinfo/UTC");
    assert_eq!(by(b"dev/null").type_flag, b'3');
    assert_eq!(by(b"run/fifo").type_flag, b'6');
    let empty = by(b"etc/empty");
    assert_eq!((empty.type_flag, empty.pax(PAX_DIGEST)), (b'0', None));
    assert_eq!(by(b"opt/.wh..wh..opq").type_flag, b'0');
    let ping = by(b"bin/ping");
    assert_eq!(
        ping.pax("SCHILY.xattr.security.capability"),
        Some(&b"\x01\x00\x00\x02\x0a\x00"[..])
    );
    assert_eq!(ping.pax("SCHILY.xattr.user.note"), Some(&b"hello"[..]));
    let layerlink_keys = ping
        .pax
        .iter()
        .filter(|(k, _)| k.starts_with(b"LAYERLINK."))
        .count();
    assert_eq!(layerlink_keys, 1, "only our own digest key");
    assert_eq!(by(b"caf\xe9.bin").data, b"latin-1 name");
    // No PAX header where none is needed.
    let dir = by(b"etc/");
    assert!(dir.pax.is_empty());
    assert_eq!(dir.raw_len, 512);

    // Layer 2: content seen in layer 1 of this stream is a reference.
    let l2 = &secs[1].1;
    assert_eq!(l2[0].type_flag, b'1');
    assert_eq!(
        parse_reference_link(&l2[0].link),
        Some(Digest::of(b"edge\n"))
    );
    assert_eq!(l2[1].data, b"brand new");

    // The plan's costs agree with what was written.
    let p = plan_image(
        &r,
        &img("edge/app", "v1"),
        &crate::sync::plan::amd64(),
        &HeldSet::default(),
    )
    .unwrap();
    assert_eq!(p.manifest_digest, md);
    let mut new_bytes = 0;
    for (lp, (_, es)) in p.layers.iter().zip(&secs) {
        let LayerState::Needed(c) = lp.state else {
            panic!()
        };
        assert_eq!(c.entries as usize, es.len());
        let new: Vec<_> = es.iter().filter(|e| e.pax(PAX_DIGEST).is_some()).collect();
        assert_eq!(c.new_files as usize, new.len());
        assert_eq!(c.new_bytes, new.iter().map(|e| e.size).sum::<u64>());
        let refs = es
            .iter()
            .filter(|e| parse_reference_link(&e.link).is_some())
            .count();
        assert_eq!(c.referenced_files as usize, refs);
        new_bytes += c.new_bytes;
    }
    assert!(new_bytes > 0);
}

#[test]
fn held_layers_make_references_at_one_header_each() {
    let r = MemRegistry::new();
    let base = TarBuilder::new()
        .file("a", b"A")
        .file("b", b"B")
        .file("c", b"C")
        .finish_ref();
    let same = TarBuilder::new()
        .file("x", b"A")
        .file("y", b"B")
        .file("z", b"C")
        .finish_ref();
    let (_, ids) = r.push("r", "1", &[base, same]);
    let held = HeldSet {
        layers: vec![ids[0]],
        objects: vec![],
    };
    let tar_bytes = write(&r, None, &ids[1..], &held);
    let entries = parse(&tar_bytes);
    let secs = sections(&entries);
    assert_eq!(secs.len(), 1);
    for (e, want) in secs[0].1.iter().zip([b"A", b"B", b"C"]) {
        assert_eq!(e.type_flag, b'1');
        assert_eq!(parse_reference_link(&e.link), Some(Digest::of(want)));
        assert_eq!(e.raw_len, 512);
    }
    // layer marker (PAX header + data + ustar) + 3 references + layer-end
    // marker + end marker + two zero blocks.
    assert_eq!(tar_bytes.len(), 1536 + 3 * 512 + 1536 + 1536 + 1024);

    // Loose objects count as held too.
    let held = HeldSet {
        layers: vec![],
        objects: vec![Digest::of(b"B")],
    };
    let entries = parse(&write(&r, None, &ids[..1], &held));
    let secs = sections(&entries);
    let kinds: Vec<u8> = secs[0].1.iter().map(|e| e.type_flag).collect();
    assert_eq!(kinds, vec![b'0', b'1', b'0']);
}

#[test]
fn long_names_and_links_use_pax() {
    let r = MemRegistry::new();
    let long_dir = "d".repeat(150);
    let long_name = format!("{long_dir}/{}", "n".repeat(120));
    let long_target = format!("{}/target", "t".repeat(120));
    let l = TarBuilder::new()
        .file(long_name.as_bytes(), b"long")
        .link(tar::EntryType::Symlink, "s", &long_target)
        .finish_ref();
    let (_, ids) = r.push("r", "1", &[l]);
    let entries = parse(&write(&r, None, &ids, &HeldSet::default()));
    let secs = sections(&entries);
    assert_eq!(secs[0].1[0].path, long_name.as_bytes());
    assert_eq!(secs[0].1[0].data, b"long");
    assert_eq!(secs[0].1[1].link, long_target.as_bytes());
}

#[test]
fn objects_archive_carries_object_markers() {
    let r = MemRegistry::new();
    let l = TarBuilder::new()
        .file("a", b"alpha")
        .file("b", &[7u8; 100_000])
        .finish_ref();
    r.push("r", "1", &[l]);
    let wanted = [
        (Digest::of(b"alpha"), 5),
        (Digest::of(&[7u8; 100_000]), 100_000),
    ];
    let gz = write_objects_archive(&r.ts.objects, &wanted, Vec::new()).unwrap();
    let entries = parse(&gunzip(&gz));
    assert_eq!(entries.len(), 3);
    for (e, (d, size)) in entries.iter().zip(&wanted) {
        assert_eq!(e.marker(), Some(Marker::Object));
        assert_eq!(e.pax(PAX_DIGEST).unwrap(), d.hex().as_bytes());
        assert_eq!(e.size, *size);
        assert_eq!(Digest::of(&e.data), *d);
    }
    assert_eq!(entries[2].marker(), Some(Marker::End));
}

#[test]
fn gnu_tar_lists_the_archive() {
    let r = MemRegistry::new();
    let (_, ids) = r.push("r", "1", &[sample_tar()]);
    let gz = write_image_archive(
        &r.ts.db,
        &r.ts.objects,
        None,
        &ids,
        &HeldSet::default(),
        Vec::new(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar.gz");
    std::fs::write(&path, &gz).unwrap();
    let Ok(out) = std::process::Command::new("tar")
        .arg("-tzvf")
        .arg(&path)
        .output()
    else {
        eprintln!("tar not installed; skipped");
        return;
    };
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains("etc/hostname.copy link to layerlink:sha256:"),
        "{listing}"
    );
    assert!(listing.contains(".layerlink/layer-end"), "{listing}");
}

/// A layer tar with dirs `a/`, `a/b/` and 20 filler files, plus whatever
/// `extra` adds.
fn based_layer(extra: impl FnOnce(&mut TarBuilder)) -> Vec<u8> {
    let mut b = TarBuilder::new();
    b.dir("a/").dir("a/b/");
    for i in 0..20 {
        b.file(format!("a/f{i:02}"), format!("filler {i}\n").as_bytes());
    }
    b.link(tar::EntryType::Symlink, "a/l", "f00");
    extra(&mut b);
    b.finish_ref()
}

fn write_based(r: &MemRegistry, layers: &[Digest], held: &HeldSet) -> Vec<u8> {
    let f = Features::parse("something-else, layer-base");
    assert!(f.layer_base);
    let gz = write_image_archive_with(&r.ts.db, &r.ts.objects, None, layers, held, f, Vec::new())
        .unwrap();
    gunzip(&gz)
}

fn removed_paths(base: &Parsed) -> Vec<&[u8]> {
    base.data
        .split(|&c| c == 0)
        .filter(|p| !p.is_empty())
        .collect()
}

#[test]
fn a_layer_like_a_held_one_is_sent_as_that_layer_plus_its_differences() {
    let r = MemRegistry::new();
    let v1 = based_layer(|b| {
        b.file("a/y", b"old y\n")
            .file("a/gone", b"gone\n")
            .file("a/b/z", b"z\n")
            .file("a/kind", b"a file in v1\n")
            .dir("d/")
            .file("d/f", b"in d\n")
            .file("a/.wh.was-deleted", b"");
    });
    let v2 = based_layer(|b| {
        b.file("a/y", b"new y\n")
            .file("a/b/z", b"z\n")
            .dir("a/kind/")
            .file("a/new", b"brand new\n")
            .file("a/.wh.was-deleted", b"");
    });
    let (_, ids1) = r.push("edge/app", "v1", &[v1]);
    let (_, ids2) = r.push("edge/app", "v2", &[v2]);
    let held = HeldSet {
        layers: vec![ids1[0]],
        objects: Vec::new(),
    };
    let entries = parse(&write_based(&r, &ids2, &held));
    let base = entries
        .iter()
        .find(|e| e.marker() == Some(Marker::Base))
        .expect("a base marker");
    assert_eq!(
        base.pax(PAX_DIFF_ID).unwrap(),
        ids1[0].to_string().as_bytes()
    );
    // The directory d goes with d/f; a/kind changes kind, so goes first.
    assert_eq!(
        removed_paths(base),
        vec![&b"a/gone"[..], b"a/kind", b"d"],
        "{:?}",
        String::from_utf8_lossy(&base.data)
    );
    assert_eq!(base.pax(PAX_ENTRIES), Some(&b"3"[..]));
    let secs = sections(&entries);
    let sent: Vec<&[u8]> = secs[0].1.iter().map(|e| e.path.as_slice()).collect();
    assert_eq!(sent, vec![&b"a/y"[..], b"a/kind/", b"a/new"]);
    assert_eq!(secs[0].1[0].pax(PAX_DIGEST).map(|d| d.len()), Some(64));

    // Without the feature (an older agent): every entry, no base marker.
    let plain = parse(&write(&r, None, &ids2, &held));
    assert!(plain.iter().all(|e| e.marker() != Some(Marker::Base)));
    assert_eq!(sections(&plain)[0].1.len(), 2 + 20 + 1 + 5);
}

#[test]
fn no_base_for_layers_with_implicit_directories_or_repeated_paths() {
    let r = MemRegistry::new();
    let implicit = |extra: &'static [u8]| {
        based_layer(move |b| {
            b.file("q/x", extra); // no "q/" entry
        })
    };
    let (_, ids1) = r.push("edge/app", "v1", &[implicit(b"one\n")]);
    let (_, ids2) = r.push("edge/app", "v2", &[implicit(b"two\n")]);
    let held = HeldSet {
        layers: vec![ids1[0]],
        objects: Vec::new(),
    };
    let entries = parse(&write_based(&r, &ids2, &held));
    assert!(entries.iter().all(|e| e.marker() != Some(Marker::Base)));
    assert_eq!(sections(&entries)[0].1.len(), 2 + 20 + 1 + 1);

    let twice = |c: &'static [u8]| {
        based_layer(move |b| {
            b.file("a/dup", b"first\n").file("a/dup", c);
        })
    };
    let (_, ids1) = r.push("edge/dup", "v1", &[twice(b"one\n")]);
    let (_, ids2) = r.push("edge/dup", "v2", &[twice(b"two\n")]);
    let held = HeldSet {
        layers: vec![ids1[0]],
        objects: Vec::new(),
    };
    let entries = parse(&write_based(&r, &ids2, &held));
    assert!(entries.iter().all(|e| e.marker() != Some(Marker::Base)));

    // A held layer that shares too little is not used either.
    let small = TarBuilder::new()
        .dir("a/")
        .file("a/f00", b"filler 0\n")
        .finish_ref();
    let (_, ids3) = r.push("edge/small", "v1", &[small]);
    let held = HeldSet {
        layers: vec![ids3[0]],
        objects: Vec::new(),
    };
    let (_, ids4) = r.push("edge/small", "v2", &[based_layer(|_| {})]);
    let entries = parse(&write_based(&r, &ids4, &held));
    assert!(entries.iter().all(|e| e.marker() != Some(Marker::Base)));
}

/// The zstd archive of `layers` for `held`, with header frames batched or
/// one per entry; returns (bytes, header frames, content frames, header
/// frame bytes).
fn write_zstd(
    r: &MemRegistry,
    layers: &[Digest],
    held: &HeldSet,
    per_entry: bool,
) -> (Vec<u8>, u64, u64, u64) {
    let txn = r.ts.db.begin_read().unwrap();
    let held_objects = HeldObjects::load(&txn, held, 1000).unwrap();
    let mut dedup = Dedup::new(&held_objects);
    let fw = FrameWriter::with_batch(Vec::new(), zstd::HEADER_BATCH, per_entry).unwrap();
    let mut w = ArchiveWriter::new(fw, r.ts.objects.clone());
    for d in layers {
        w.layer(&txn, d, &mut dedup).unwrap();
    }
    let fw = w.finish().unwrap();
    let (h, c, hb) = (fw.frames.0, fw.frames.1, fw.header_bytes);
    (fw.finish().unwrap(), h, c, hb)
}

#[test]
fn zstd_archive_is_the_same_tar_with_content_frames_spliced() {
    let r = MemRegistry::new();
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 % 7)
        .collect();
    let base = TarBuilder::new()
        .file("etc/hostname", b"edge\n")
        .file("big", &big)
        .finish_ref();
    let (md, ids) = r.push("r", "1", &[sample_tar(), base]);
    let _ = md;
    let gz = write(&r, None, &ids, &HeldSet::default());
    let z = write_image_archive_with(
        &r.ts.db,
        &r.ts.objects,
        None,
        &ids,
        &HeldSet::default(),
        Features::parse("zstd"),
        Vec::new(),
    )
    .unwrap();
    // Same tar stream.
    assert_eq!(::zstd::decode_all(&z[..]).unwrap(), gz);
    // A big new file's cached frame appears verbatim in the archive (small
    // ones travel inside the header frames).
    let content = &big[..];
    let d = Digest::of(content);
    let (mut f, len) = zstd::open_frame(&r.ts.objects, &d, content.len() as u64).unwrap();
    let mut frame = vec![0u8; len as usize];
    f.read_exact(&mut frame).unwrap();
    assert!(
        z.windows(frame.len()).any(|w| w == frame),
        "frame of {d} not spliced verbatim"
    );
    // Window within the limit, content size declared.
    assert_eq!(
        ::zstd::zstd_safe::get_frame_content_size(&frame).unwrap(),
        Some(content.len() as u64)
    );
    // GNU tar lists it with zstd.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar.zst");
    std::fs::write(&path, &z).unwrap();
    let out = std::process::Command::new("tar")
        .arg("--zstd")
        .arg("-tvf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(".layerlink/end"));
    // Objects responses too.
    let wanted = [(Digest::of(&big), big.len() as u64)];
    let zo =
        write_objects_archive_with(&r.ts.objects, &wanted, Features::parse("zstd"), Vec::new())
            .unwrap();
    let go = write_objects_archive(&r.ts.objects, &wanted, Vec::new()).unwrap();
    assert_eq!(::zstd::decode_all(&zo[..]).unwrap(), gunzip(&go));
}

#[test]
fn batched_header_frames_cost_less_than_one_per_entry() {
    // A layer of 400 references (held objects): only headers travel.
    let r = MemRegistry::new();
    let mut b = TarBuilder::new();
    for i in 0..400 {
        b.file(
            format!("usr/share/doc/pkg{i}/copyright"),
            format!("c{i}").as_bytes(),
        );
    }
    let base = b.finish_ref();
    let mut b = TarBuilder::new();
    for i in 0..400 {
        b.file(
            format!("usr/share/doc/pkg{i}/copyright.moved"),
            format!("c{i}").as_bytes(),
        );
    }
    let app = b.finish_ref();
    let (_, ids) = r.push("r", "1", &[base, app]);
    let held = HeldSet {
        layers: vec![ids[0]],
        objects: vec![],
    };
    let (batched, hf, _, hb) = write_zstd(&r, &ids[1..], &held, false);
    let (single, hf1, _, hb1) = write_zstd(&r, &ids[1..], &held, true);
    assert_eq!(
        ::zstd::decode_all(&batched[..]).unwrap(),
        ::zstd::decode_all(&single[..]).unwrap()
    );
    let gz = write(&r, None, &ids[1..], &held);
    let gz_len = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
        e.write_all(&gz).unwrap();
        e.finish().unwrap().len()
    };
    eprintln!(
        "400 reference entries: batched {} B in {hf} header frames ({hb} B), one frame per entry {} B in {hf1} frames ({hb1} B), gzip {gz_len} B",
        batched.len(),
        single.len()
    );
    assert!(hf < 10 && hf1 >= 400, "{hf} {hf1}");
    assert!(batched.len() * 3 < single.len());
}

#[test]
fn entries_differing_only_in_metadata_become_compact_records() {
    use layerlink_proto::archive::{PAX_BASE_ORDER, PAX_META, PAX_META_SIZE};
    use layerlink_proto::compact::{decode_all, MetaRecord};
    let r = MemRegistry::new();
    let v1 = based_layer(|b| {
        b.file_meta("a/m1", b"m1\n", 0o644, 1_700_000_000)
            .file_meta("a/m2", b"m2\n", 0o644, 1_700_000_000)
            .file_meta("a/x", b"old x\n", 0o644, 1_700_000_000);
    });
    let v2 = based_layer(|b| {
        b.file_meta("a/m1", b"m1\n", 0o644, 1_700_000_100)
            .file_meta("a/m2", b"m2\n", 0o600, 1_700_000_000)
            .file_meta("a/x", b"new x\n", 0o644, 1_700_000_100);
    });
    let (_, ids1) = r.push("edge/app", "v1", &[v1]);
    let (_, ids2) = r.push("edge/app", "v2", &[v2]);
    let held = HeldSet {
        layers: vec![ids1[0]],
        objects: Vec::new(),
    };
    let f = Features::parse("layer-base,compact-meta");
    let gz = write_image_archive_with(&r.ts.db, &r.ts.objects, None, &ids2, &held, f, Vec::new())
        .unwrap();
    let entries = parse(&gunzip(&gz));
    let base = entries
        .iter()
        .find(|e| e.marker() == Some(Marker::Base))
        .expect("a base marker");
    assert_eq!(base.pax(PAX_META), Some(&b"2"[..]));
    let size: usize = std::str::from_utf8(base.pax(PAX_META_SIZE).unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let recs = decode_all(&base.data[..size], 2).unwrap();
    // Tree order of v1: a, a/b, a/f00 … a/f19, a/l, a/m1, a/m2, a/x.
    let rec = |index, mtime, mode| MetaRecord {
        index,
        mtime,
        mode,
        ..Default::default()
    };
    assert_eq!(
        recs,
        vec![
            rec(23, Some(1_700_000_100), None),
            rec(24, None, Some(0o600))
        ]
    );
    // index 23 + mtime flag, the first mtime (5 bytes), gap 0 + mode, 0o600.
    assert_eq!(size, 2 + 5 + 1 + 2, "{recs:?}");
    let mut order = Vec::new();
    let mut nodes = vec!["a".to_string(), "a/b".into()];
    nodes.extend((0..20).map(|i| format!("a/f{i:02}")));
    nodes.extend(["a/l".into(), "a/m1".into(), "a/m2".into(), "a/x".into()]);
    for n in &nodes {
        order.extend_from_slice(n.as_bytes());
        order.push(0);
    }
    assert_eq!(
        base.pax(PAX_BASE_ORDER).unwrap(),
        Digest::of(&order).hex().as_bytes()
    );
    assert!(base.data[size..].is_empty(), "no removed paths");
    // Only the changed file travels (and the layer root, if any).
    let secs = sections(&entries);
    let sent: Vec<&[u8]> = secs[0].1.iter().map(|e| e.path.as_slice()).collect();
    assert_eq!(sent, vec![&b"a/x"[..]]);

    // With `layer-base` alone: the two entries are sent whole.
    let secs_plain = parse(&write_based(&r, &ids2, &held));
    let base = secs_plain
        .iter()
        .find(|e| e.marker() == Some(Marker::Base))
        .unwrap();
    assert_eq!(base.pax(PAX_META), None);
    let sent: Vec<Vec<u8>> = sections(&secs_plain)[0]
        .1
        .iter()
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        sent,
        vec![b"a/m1".to_vec(), b"a/m2".to_vec(), b"a/x".to_vec()]
    );
}

#[test]
fn a_cached_cold_archive_is_the_same_tar_and_serves_only_devices_holding_nothing() {
    let r = MemRegistry::new();
    let big: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 % 7)
        .collect();
    let base = TarBuilder::new()
        .file("etc/hostname", b"edge\n")
        .file("big", &big)
        .file(
            "big-copy-with-a-twist",
            &[&big[..300_000], b"twist"].concat(),
        )
        .finish_ref();
    let (_, ids) = r.push("r", "1", &[sample_tar(), base]);
    let meta = Metadata {
        manifest: b"{\"manifest\":1}",
        config: b"{\"config\":1}",
    };
    let every = Features::parse("zstd,layer-base,file-delta");
    let archive = |held: &HeldSet, features: Features| {
        write_image_archive_with(
            &r.ts.db,
            &r.ts.objects,
            Some(meta),
            &ids,
            held,
            features,
            Vec::new(),
        )
        .unwrap()
    };
    let spliced = archive(&HeldSet::default(), every);
    let tar = ::zstd::decode_all(&spliced[..]).unwrap();

    let (len, made) = cold::make(&r.ts.db, &r.ts.objects, Some(meta), &ids).unwrap();
    assert!(made);
    assert_eq!(
        cold::make(&r.ts.db, &r.ts.objects, Some(meta), &ids).unwrap(),
        (len, false),
        "made once"
    );
    // Served for a device that holds nothing, with any features: the same
    // tar stream, smaller than the spliced one (the copy shares a window
    // with the original).
    let cached = archive(&HeldSet::default(), every);
    assert_eq!(cached.len() as u64, len);
    assert_ne!(cached, spliced);
    assert_eq!(::zstd::decode_all(&cached[..]).unwrap(), tar);
    assert!(
        cached.len() < spliced.len(),
        "{} vs {}",
        cached.len(),
        spliced.len()
    );
    // Its frames stay within the window limit.
    let mut rest = &cached[..];
    while !rest.is_empty() {
        let n = ::zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
        let mut window = [0u8; 1];
        // Frame header: magic, descriptor, then the window descriptor
        // unless single-segment.
        let desc = rest[4];
        if desc & 0x20 == 0 {
            window[0] = rest[5];
            let exp = u64::from(window[0] >> 3);
            assert!(1u64 << (10 + exp) <= 256 * 1024, "window {:#x}", window[0]);
        }
        rest = &rest[n..];
    }
    // Not for a device that holds something, nor without metadata, nor for
    // gzip.
    let held = HeldSet {
        layers: vec![ids[0]],
        objects: Vec::new(),
    };
    assert_ne!(archive(&held, every), cached);
    let without_meta = write_image_archive_with(
        &r.ts.db,
        &r.ts.objects,
        None,
        &ids,
        &HeldSet::default(),
        every,
        Vec::new(),
    )
    .unwrap();
    assert_ne!(without_meta, cached);
    let gz = archive(&HeldSet::default(), Features::default());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, tar, "gzip: the same tar, not the cold archive");
    // A torn cache file is ignored (and remade).
    let p = cold::path(&r.ts.objects, &cold::key(Some(&meta), &ids));
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    assert_eq!(
        ::zstd::decode_all(&archive(&HeldSet::default(), every)[..]).unwrap(),
        tar
    );
    assert!(
        cold::make(&r.ts.db, &r.ts.objects, Some(meta), &ids)
            .unwrap()
            .1
    );
}
