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
