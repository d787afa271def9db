//! Layer verification (`tarsplit`): a tree checked against a framing made
//! from a real tar (the `tar` crate as the independent writer), and hostile
//! framings — lengths that disagree with the tree, truncation at every
//! byte, two entries in one header record, huge lengths, false `shadowed`
//! claims, hidden trailers — each refused, never a panic, never a match.

mod common;

use common::TempDir;
use layerlink_agent::fsops;
use layerlink_agent::store::{Access, Store};
use layerlink_agent::tarsplit::verify_tree;
use layerlink_proto::framing as fr;
use layerlink_proto::Digest;
use std::os::fd::AsFd;
use std::path::Path;

struct Layer {
    tar: Vec<u8>,
    /// (header bytes, Some((content, digest)) for regular files with content)
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    trailer: Vec<u8>,
}

fn layer(long: bool) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, path, l).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    add("./", tar::EntryType::Directory, b"", None);
    add("etc/", tar::EntryType::Directory, b"", None);
    add("etc/a", tar::EntryType::Regular, b"hello", None);
    add("etc/b", tar::EntryType::Regular, &[7u8; 600], None);
    add("etc/s", tar::EntryType::Symlink, b"", Some("a"));
    add("etc/empty", tar::EntryType::Regular, b"", None);
    if long {
        let p = format!("etc/{}", "x".repeat(150));
        add(&p, tar::EntryType::Regular, b"long name", None);
    }
    let tar = b.into_inner().unwrap();
    let mut entries = Vec::new();
    let mut a = tar::Archive::new(&tar[..]);
    let mut end = 0usize;
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let h0 = e.raw_header_position() as usize;
        let f0 = e.raw_file_position() as usize;
        let size = e.size() as usize;
        // GNU long names come as their own entries in `raw_header_position`
        // order: start at the previous end to keep them with the entry.
        let hdr = tar[end.min(h0)..f0].to_vec();
        let content = (size > 0).then(|| tar[f0..f0 + size].to_vec());
        end = f0 + size.div_ceil(512) * 512;
        entries.push((hdr, content));
    }
    let trailer = tar[end..].to_vec();
    Layer {
        tar,
        entries,
        trailer,
    }
}

fn framing(l: &Layer, diff_id: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    fr::write_start(&mut out, diff_id);
    for (h, c) in &l.entries {
        fr::write_header(&mut out, h);
        if let Some(c) = c {
            fr::write_content(&mut out, c.len() as u64, None);
        }
    }
    let zero = l.trailer.iter().all(|&b| b == 0);
    fr::write_end(
        &mut out,
        l.trailer.len() as u64,
        (!zero).then_some(&l.trailer[..]),
    );
    out
}

fn tree(dir: &Path, long: bool) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/a"), b"hello").unwrap();
    std::fs::write(dir.join("etc/b"), [7u8; 600]).unwrap();
    std::os::unix::fs::symlink("a", dir.join("etc/s")).unwrap();
    std::fs::write(dir.join("etc/empty"), b"").unwrap();
    if long {
        std::fs::write(dir.join(format!("etc/{}", "x".repeat(150))), b"long name").unwrap();
    }
}

struct Fx {
    _t: TempDir,
    store: Store,
    root: std::os::fd::OwnedFd,
    dir: std::path::PathBuf,
    layer: Layer,
    diff_id: Digest,
}

fn fx(long: bool) -> Fx {
    let t = TempDir::new("tarsplit");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let dir = t.path().join("tree");
    tree(&dir, long);
    let root = fsops::open_dir_path(&dir).unwrap();
    let layer = layer(long);
    let diff_id = Digest::of(&layer.tar);
    Fx {
        _t: t,
        store,
        root,
        dir,
        layer,
        diff_id,
    }
}

impl Fx {
    fn check(&self, framing: &[u8]) -> layerlink_agent::error::Result<Digest> {
        verify_tree(&self.store, &self.diff_id, self.root.as_fd(), framing).map(|v| v.digest)
    }
}

#[test]
fn framing_plus_tree_hashes_to_the_diff_id() {
    for long in [false, true] {
        let f = fx(long);
        let fr = framing(&f.layer, &f.diff_id);
        assert_eq!(f.check(&fr).unwrap(), f.diff_id, "long names: {long}");
    }
}

#[test]
fn a_swapped_file_changes_the_digest() {
    let f = fx(false);
    std::fs::write(f.dir.join("etc/a"), b"HELLO").unwrap();
    let fr = framing(&f.layer, &f.diff_id);
    assert_ne!(f.check(&fr).unwrap(), f.diff_id);
}

#[test]
fn tree_files_that_are_missing_symlinks_or_wrong_sized_are_refused() {
    let f = fx(false);
    let fr = framing(&f.layer, &f.diff_id);
    std::fs::remove_file(f.dir.join("etc/a")).unwrap();
    std::os::unix::fs::symlink("b", f.dir.join("etc/a")).unwrap();
    let e = f.check(&fr).unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    std::fs::remove_file(f.dir.join("etc/a")).unwrap();
    assert_eq!(f.check(&fr).unwrap_err().exit_code(), 5);
    std::fs::write(f.dir.join("etc/a"), b"hello!").unwrap();
    let e = f.check(&fr).unwrap_err();
    assert!(e.to_string().contains("regular file of 5 bytes"), "{e}");
}

#[test]
fn lengths_that_disagree_with_the_headers_are_refused() {
    let f = fx(false);
    let mut l = layer(false);
    // etc/a's content record says 6 bytes, its header 5.
    let mut out = Vec::new();
    fr::write_start(&mut out, &f.diff_id);
    for (h, c) in &l.entries {
        fr::write_header(&mut out, h);
        if let Some(c) = c {
            fr::write_content(&mut out, c.len() as u64 + 1, None);
        }
    }
    fr::write_end(&mut out, l.trailer.len() as u64, None);
    let e = f.check(&out).unwrap_err();
    assert!(e.to_string().contains("whose header says 5"), "{e}");
    // A content record missing: the next header comes instead.
    let mut out = Vec::new();
    fr::write_start(&mut out, &f.diff_id);
    for (h, _) in &l.entries {
        fr::write_header(&mut out, h);
    }
    fr::write_end(&mut out, l.trailer.len() as u64, None);
    assert!(f
        .check(&out)
        .unwrap_err()
        .to_string()
        .contains("no content record"));
    // Two entries in one header record (a directory and a symlink).
    let second = l.entries[1].0.clone();
    l.entries[0].0.extend_from_slice(&second);
    l.entries.remove(1);
    let e = f.check(&framing(&l, &f.diff_id)).unwrap_err();
    assert!(e.to_string().contains("more than one entry"), "{e}");
}

#[test]
fn truncated_framings_are_refused_at_every_length() {
    let f = fx(true);
    let fr = framing(&f.layer, &f.diff_id);
    for n in 0..fr.len() {
        match f.check(&fr[..n]) {
            Err(e) => assert_eq!(e.exit_code(), 5, "at {n}: {e}"),
            Ok(d) => panic!("a framing cut at {n} of {} verified as {d}", fr.len()),
        }
    }
    // And bytes after the end record.
    let mut more = fr.clone();
    more.push(0);
    assert!(f
        .check(&more)
        .unwrap_err()
        .to_string()
        .contains("after the end"));
}

#[test]
fn hostile_records_are_refused() {
    let f = fx(false);
    let start = |d: &Digest| {
        let mut v = Vec::new();
        fr::write_start(&mut v, d);
        v
    };
    // Another layer's framing.
    let e = f.check(&framing(&f.layer, &Digest([1; 32]))).unwrap_err();
    assert!(e.to_string().contains("framing of layer"), "{e}");
    // A huge header length (no allocation, refused by the bound).
    let mut v = start(&f.diff_id);
    v.extend_from_slice(&[
        fr::TAG_HEADER,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0x7f,
    ]);
    assert_eq!(f.check(&v).unwrap_err().exit_code(), 5);
    // A header length beyond the data.
    let mut v = start(&f.diff_id);
    v.extend_from_slice(&[fr::TAG_HEADER, 0x80, 0x10]);
    v.extend_from_slice(&[0u8; 100]);
    assert_eq!(f.check(&v).unwrap_err().exit_code(), 5);
    // A content record with no header before it.
    let mut v = start(&f.diff_id);
    fr::write_content(&mut v, 5, None);
    assert!(f
        .check(&v)
        .unwrap_err()
        .to_string()
        .contains("without a file header"));
    // An end-of-archive block as a header record.
    let mut v = start(&f.diff_id);
    fr::write_header(&mut v, &[0u8; 512]);
    assert!(f
        .check(&v)
        .unwrap_err()
        .to_string()
        .contains("end-of-archive"));
    // A trailer that hides an entry after the last one.
    let mut l = layer(false);
    let hidden = l.entries[2].0.clone();
    l.trailer = [hidden, vec![0; 1024]].concat();
    assert!(f
        .check(&framing(&l, &f.diff_id))
        .unwrap_err()
        .to_string()
        .contains("end-of-archive blocks"));
}

#[test]
fn a_false_shadowed_claim_is_refused() {
    let f = fx(false);
    let mut out = Vec::new();
    fr::write_start(&mut out, &f.diff_id);
    for (h, c) in &f.layer.entries {
        fr::write_header(&mut out, h);
        if let Some(c) = c {
            // Claims no file of the tree: every content "replaced later".
            fr::write_content(&mut out, c.len() as u64, Some(&Digest::of(c)));
        }
    }
    fr::write_end(&mut out, f.layer.trailer.len() as u64, None);
    // The objects are not in this store: refused either way.
    assert_eq!(f.check(&out).unwrap_err().exit_code(), 5);
}
