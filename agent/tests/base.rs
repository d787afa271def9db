//! Layer sections built on a held layer (archive feature `layer-base`):
//! the result equals the layer sent whole, and a hostile or stale base
//! marker cannot reach outside the staging tree. Runs as root.

mod common;

use common::{as_new, describe_tree, Archive, Entry, TempDir};
use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::error::exit;
use layerlink_agent::store::{Access, Store};
use layerlink_agent::Error;
use layerlink_proto::Digest;
use std::fs;

fn apply(store: &Store, layers: &[Digest], archive: &[u8]) -> Result<(), Error> {
    let mut a = Applier::new(store, ApplyOptions::new(layers.to_vec()))?;
    a.apply_archive(archive)?;
    assert!(a.pending_digests().is_empty());
    Ok(())
}

fn v1() -> Vec<Entry> {
    vec![
        Entry::dir("./").mtime(1_500_000_000),
        Entry::dir("etc/").mtime(1_400_000_001),
        Entry::file("etc/hosts", b"127.0.0.1 localhost\n"),
        Entry::file("etc/motd", b"v1 motd\n").owner(1000, 1000),
        Entry::file("etc/empty", b"").mode(0o600),
        Entry::file("etc/xattr", b"with xattr\n").xattr("user.note", b"v1"),
        Entry::dir("bin/").mtime(1_400_000_002),
        Entry::file("bin/tool", b"#!/bin/sh\necho tool\n").mode(0o755),
        Entry::hardlink("bin/tool-link", "bin/tool"),
        Entry::symlink("bin/sh", "/bin/busybox"),
        Entry::dir("dev/"),
        Entry::chardev("dev/null", 1, 3),
        Entry::fifo("dev/fifo"),
        Entry::dir("gone/"),
        Entry::dir("gone/deep/"),
        Entry::file("gone/deep/file", b"removed with its directory\n"),
        Entry::file("etc/remove-me", b"only in v1\n"),
        Entry::file(".wh.deleted-below", b""),
        Entry::dir("opq/").mtime(1_400_000_003),
        Entry::file("opq/.wh..wh..opq", b""),
        Entry::file("kind", b"a file in v1, a directory in v2\n"),
    ]
}

/// v2 whole; `changed` are the entries of v2 that differ from v1 (what a
/// registry sends after the base marker), `removed` v1's paths v2 lacks.
fn v2() -> (Vec<Entry>, Vec<Entry>, Vec<&'static str>) {
    let keep = |p: &str| v1().into_iter().find(|e| e.path == p.as_bytes()).unwrap();
    let changed = vec![
        Entry::dir("./").mtime(1_600_000_000),
        Entry::file("etc/motd", b"v2 motd\n").owner(1000, 1000),
        Entry::file("etc/xattr", b"with xattr\n").xattr("user.note", b"v2"),
        Entry::dir("bin/").mtime(1_600_000_002),
        Entry::hardlink("bin/tool-link", "bin/tool"),
        Entry::file("bin/new", b"new in v2\n").mode(0o700),
        Entry::dir("kind/"),
        Entry::file("kind/inside", b"inside the new directory\n"),
    ];
    let whole = vec![
        changed[0].clone(),
        keep("etc/"),
        keep("etc/hosts"),
        changed[1].clone(),
        keep("etc/empty"),
        changed[2].clone(),
        changed[3].clone(),
        keep("bin/tool"),
        changed[4].clone(),
        keep("bin/sh"),
        changed[5].clone(),
        keep("dev/"),
        keep("dev/null"),
        keep("dev/fifo"),
        keep(".wh.deleted-below"),
        keep("opq/"),
        changed[6].clone(),
        changed[7].clone(),
    ];
    let removed = vec!["gone", "etc/remove-me", "opq/.wh..wh..opq", "kind"];
    (whole, changed, removed)
}

/// Whiteout nodes carry no metadata of their own: compare them by path.
fn tree(root: &std::path::Path) -> Vec<String> {
    describe_tree(root)
        .into_iter()
        .map(|l| match l.find(" special mode=20000 rdev=0") {
            Some(i) => l[..i].to_string() + " whiteout",
            None => l,
        })
        .collect()
}

#[test]
fn a_layer_built_on_a_held_layer_equals_the_layer_sent_whole() {
    let (whole, changed, removed) = v2();
    let (d1, d2) = (Digest::of(b"v1"), Digest::of(b"v2"));

    // Reference: a store that receives v2 whole.
    let t = TempDir::new("base-ref");
    let reference = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut a = Archive::new();
    a.layer(&d2, &as_new(&whole)).end();
    apply(&reference, &[d2], &a.finish()).unwrap();

    // A store holding v1 receives v2 as v1 + differences.
    let store = Store::open(&t.path().join("based"), Access::Exclusive).unwrap();
    let mut a = Archive::new();
    a.layer(&d1, &as_new(&v1())).end();
    apply(&store, &[d1], &a.finish()).unwrap();
    let v1_before = tree(&store.layer_path(&d1));
    let mut a = Archive::new();
    a.layer_start(&d2).base(&d1, &removed, removed.len());
    for e in as_new(&changed) {
        a.entry(&e);
    }
    a.layer_end(&d2, changed.len() as u64).end();
    apply(&store, &[d2], &a.finish()).unwrap();

    assert_eq!(
        tree(&store.layer_path(&d2)),
        tree(&reference.layer_path(&d2))
    );
    // The held layer is untouched, and shares its file inodes.
    assert_eq!(tree(&store.layer_path(&d1)), v1_before);
    use std::os::unix::fs::MetadataExt;
    let ino = |d: &Digest, p: &str| fs::metadata(store.layer_path(d).join(p)).unwrap().ino();
    assert_eq!(ino(&d1, "etc/hosts"), ino(&d2, "etc/hosts"));
    assert_ne!(ino(&d1, "etc/empty"), ino(&d2, "etc/empty"));
    let mut problems = Vec::new();
    store.verify(|p| problems.push(p.to_string())).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_base_the_store_does_not_hold_is_rejected_and_nothing_is_committed() {
    let t = TempDir::new("base-missing");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let (d1, d2) = (Digest::of(b"v1"), Digest::of(b"v2"));
    let mut a = Archive::new();
    a.layer_start(&d2).base(&d1, &[], 0).layer_end(&d2, 0).end();
    let err = apply(&store, &[d2], &a.finish()).unwrap_err();
    assert_eq!(err.exit_code(), exit::INTEGRITY, "{err}");
    assert!(err.to_string().contains("does not hold"), "{err}");
    assert!(store.committed_layers().unwrap().is_empty());
}

#[test]
fn removed_paths_stay_inside_the_staging_tree() {
    let t = TempDir::new("base-hostile");
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"keep me").unwrap();
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let (d1, d2) = (Digest::of(b"v1"), Digest::of(b"v2"));
    let mut a = Archive::new();
    let link = outside.to_str().unwrap().to_string();
    a.layer(
        &d1,
        &as_new(&[
            Entry::dir("a/"),
            Entry::file("a/f", b"f\n"),
            Entry::symlink("a/out", &link),
        ]),
    )
    .end();
    apply(&store, &[d1], &a.finish()).unwrap();

    // Through a symlink: ignored (nothing is followed), the layer commits.
    let mut a = Archive::new();
    a.layer_start(&d2)
        .base(&d1, &["a/out/precious"], 1)
        .layer_end(&d2, 0)
        .end();
    apply(&store, &[d2], &a.finish()).unwrap();
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
    assert_eq!(fs::read(store.layer_path(&d2).join("a/f")).unwrap(), b"f\n");

    // `..` and absolute paths, a wrong count, a missing NUL: rejected.
    let d3 = Digest::of(b"v3");
    for (removed, count) in [
        (&["../outside/precious"][..], 1),
        (&["/etc/passwd"][..], 1),
        (&["a/f"][..], 2),
    ] {
        let mut a = Archive::new();
        a.layer_start(&d3)
            .base(&d1, removed, count)
            .layer_end(&d3, 0)
            .end();
        let err = apply(&store, &[d3], &a.finish()).unwrap_err();
        assert_eq!(err.exit_code(), exit::INTEGRITY, "{removed:?}: {err}");
        assert!(!store.has_layer(&d3).unwrap());
    }
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
    assert!(store.layer_path(&d1).join("a/f").exists());
}

// ---- compact metadata (feature `compact-meta`) ----

use layerlink_proto::compact::{tree_order, MetaEncoder, MetaRecord};

/// v1's tree order (`proto/SPEC.md`, "Compact metadata") and its hash.
fn v1_order() -> (Vec<String>, Digest) {
    let mut nodes: Vec<String> = v1()
        .iter()
        .map(|e| String::from_utf8(e.path.clone()).unwrap())
        .map(|p| p.trim_end_matches('/').to_string())
        .filter(|p| p != "." && !p.ends_with(".wh..wh..opq"))
        .map(|p| p.replace(".wh.", ""))
        .collect();
    nodes.sort_by(|a, b| tree_order(a.as_bytes(), b.as_bytes()));
    let mut all = Vec::new();
    for n in &nodes {
        all.extend_from_slice(n.as_bytes());
        all.push(0);
    }
    (nodes, Digest::of(&all))
}

fn index_of(nodes: &[String], p: &str) -> u64 {
    nodes.iter().position(|n| n == p).unwrap() as u64
}

/// A store holding v1 (and the tree and a file's mtime before anything).
fn holding_v1(t: &TempDir, name: &str) -> (Store, Digest) {
    let store = Store::open(&t.path().join(name), Access::Exclusive).unwrap();
    let d1 = Digest::of(b"v1");
    let mut a = Archive::new();
    a.layer(&d1, &as_new(&v1())).end();
    apply(&store, &[d1], &a.finish()).unwrap();
    (store, d1)
}

#[test]
fn compact_records_give_the_layer_sent_whole() {
    let t = TempDir::new("compact-ok");
    let (nodes, order) = v1_order();
    // v3: v1 with new metadata only (and one removed path, one new file).
    let changed_meta = |e: Entry, p: &str| -> Entry {
        match p {
            "etc/" => e.mtime(1_700_000_000),
            "etc/hosts" => e.mtime(1_700_000_000),
            "etc/empty" => e.mode(0o644).mtime(1_700_000_000),
            "bin/tool" => e.mode(0o4755).owner(7, 8).mtime(1_690_000_000),
            "bin/sh" => e.owner(1, 2),
            "dev/fifo" => e.mode(0o600),
            _ => e,
        }
    };
    let mut whole = Vec::new();
    for e in v1() {
        let p = String::from_utf8(e.path.clone()).unwrap();
        if p == "etc/remove-me" {
            continue;
        }
        whole.push(changed_meta(e, &p));
    }
    whole.push(Entry::file("etc/new", b"new in v3\n"));
    let d3 = Digest::of(b"v3");

    let reference = Store::open(&t.path().join("ref"), Access::Exclusive).unwrap();
    let mut a = Archive::new();
    a.layer(&d3, &as_new(&whole)).end();
    apply(&reference, &[d3], &a.finish()).unwrap();

    let (store, d1) = holding_v1(&t, "based");
    let v1_before = tree(&store.layer_path(&d1));
    let rec = |p: &str, mtime, mode, ids: Option<(u32, u32)>| MetaRecord {
        index: index_of(&nodes, p),
        mtime,
        mode,
        uid: ids.map(|i| i.0),
        gid: ids.map(|i| i.1),
    };
    let mut recs = vec![
        rec("etc", Some(1_700_000_000), None, None),
        rec("etc/hosts", Some(1_700_000_000), None, None),
        rec("etc/empty", Some(1_700_000_000), Some(0o644), None),
        rec("bin/tool", Some(1_690_000_000), Some(0o4755), Some((7, 8))),
        rec("bin/sh", None, None, Some((1, 2))),
        rec("dev/fifo", None, Some(0o600), None),
    ];
    recs.sort_by_key(|r| r.index);
    let mut enc = MetaEncoder::new();
    for r in &recs {
        enc.push(r);
    }
    let (n, size) = (enc.count.to_string(), enc.out.len().to_string());
    let mut a = Archive::new();
    a.layer_start(&d3).base_compact(
        &d1,
        &["etc/remove-me"],
        Some(&n),
        Some(&size),
        Some(&order),
        &enc.out,
    );
    // The layer root is always sent.
    a.entry(&Entry::dir("./").mtime(1_500_000_000));
    a.entry(&as_new(&[Entry::file("etc/new", b"new in v3\n")])[0]);
    // bin/tool-link is a hard link to bin/tool: sent again, as the
    // registry does (it links to the new variant).
    a.entry(&Entry::hardlink("bin/tool-link", "bin/tool"));
    a.layer_end(&d3, 3).end();
    apply(&store, &[d3], &a.finish()).unwrap();

    assert_eq!(
        tree(&store.layer_path(&d3)),
        tree(&reference.layer_path(&d3))
    );
    assert_eq!(tree(&store.layer_path(&d1)), v1_before);
    let mut problems = Vec::new();
    store.verify(|p| problems.push(p.to_string())).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn hostile_compact_records_are_rejected_and_nothing_is_committed() {
    let t = TempDir::new("compact-hostile");
    let (nodes, order) = v1_order();
    let (store, d1) = holding_v1(&t, "store");
    let v1_before = tree(&store.layer_path(&d1));
    let d3 = Digest::of(b"v3");
    let one = |r: MetaRecord| {
        let mut e = MetaEncoder::new();
        e.push(&r);
        e.out
    };
    let mtime_of = |p: &str| MetaRecord {
        index: index_of(&nodes, p),
        mtime: Some(1),
        ..Default::default()
    };
    let good = one(mtime_of("etc/hosts"));
    let past_end = one(MetaRecord {
        index: nodes.len() as u64,
        mtime: Some(1),
        ..Default::default()
    });
    let whiteout = one(mtime_of("deleted-below"));
    // Flags 2 (mode) with 0o100644: a mode that would make a regular file.
    let varint = |out: &mut Vec<u8>, mut v: u64| {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    let mut type_change = Vec::new();
    varint(&mut type_change, index_of(&nodes, "etc/hosts") << 4 | 2);
    varint(&mut type_change, 0o100644);
    let other_order = Digest::of(b"not v1's order");
    let long = |extra: &[u8]| [&good[..], extra].concat();
    type Case<'a> = (&'a str, Option<&'a str>, &'a Digest, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "index past",
            Some("1"),
            &order,
            past_end,
            "node 19 of a base with 19",
        ),
        (
            "whiteout",
            Some("1"),
            &order,
            whiteout,
            "record for a whiteout",
        ),
        (
            "type",
            Some("1"),
            &order,
            type_change,
            "mode outside 0o7777",
        ),
        (
            "truncated",
            Some("2"),
            &order,
            long(&[0x01]),
            "ends inside a record",
        ),
        ("left over", Some("1"), &order, long(b"xx"), "do not match"),
        (
            "absurd count",
            Some("1000000000"),
            &order,
            good.clone(),
            "bad compact",
        ),
        (
            "tree order",
            Some("1"),
            &other_order,
            good.clone(),
            "tree order differs",
        ),
        (
            "key missing",
            None,
            &order,
            good.clone(),
            "bad compact metadata keys",
        ),
        (
            "bad varint",
            Some("1"),
            &order,
            vec![0xff; 11],
            "bad varint",
        ),
    ];
    for (what, meta, ord, records, says) in cases {
        let size = records.len().to_string();
        let mut a = Archive::new();
        a.layer_start(&d3)
            .base_compact(&d1, &[], meta, Some(&size), Some(ord), &records)
            .layer_end(&d3, 0)
            .end();
        let err = apply(&store, &[d3], &a.finish()).unwrap_err();
        assert_eq!(err.exit_code(), exit::INTEGRITY, "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
        assert!(!store.has_layer(&d3).unwrap(), "{what}: committed");
        assert_eq!(tree(&store.layer_path(&d1)), v1_before, "{what}");
    }
    // Indexes strictly increase: a node named twice cannot be encoded (a
    // second record for it is a record for a later node).
    // The good record itself applies.
    let mut a = Archive::new();
    let size = good.len().to_string();
    a.layer_start(&d3)
        .base_compact(&d1, &[], Some("1"), Some(&size), Some(&order), &good)
        .layer_end(&d3, 0)
        .end();
    apply(&store, &[d3], &a.finish()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let m = |d: &Digest| fs::metadata(store.layer_path(d).join("etc/hosts")).unwrap();
    assert_eq!(m(&d3).mtime(), 1);
    assert_ne!(m(&d1).mtime(), 1);
    assert_eq!(tree(&store.layer_path(&d1)), v1_before);
}
