//! Applying dedup archives to a store: every entry kind, references,
//! integrity failures, cut streams, hostile archives, repair, gc, verify,
//! locking and start-up recovery. Runs as root (mknod, chown, trusted.*).

mod common;

use common::{as_new, layer_tar, Archive, Entry, TempDir};
use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::error::exit;
use layerlink_agent::store::record::{parse_image_ref, ImageRecord, FORMAT_VERSION};
use layerlink_agent::store::{Access, Store};
use layerlink_agent::Error;
use layerlink_proto::Digest;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

fn apply(store: &Store, layers: &[Digest], archive: &[u8]) -> Result<Vec<Digest>, Error> {
    let mut a = Applier::new(store, ApplyOptions::new(layers.to_vec()))?;
    a.apply_archive(archive)?;
    Ok(a.pending_digests())
}

fn pseudo_random(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn layer1() -> Vec<Entry> {
    vec![
        Entry::dir("./").mtime(1_500_000_000),
        Entry::dir("etc/"),
        Entry::file("etc/hosts", b"127.0.0.1 localhost\n"),
        Entry::file("etc/motd", b"hello\n"),
        Entry::file("etc/empty", b""),
        Entry::dir("bin/").mtime(1_400_000_000),
        Entry::file("bin/tool", b"#!/bin/sh\necho tool\n").mode(0o755),
        Entry::file("bin/tool-copy", b"#!/bin/sh\necho tool\n").mode(0o700),
        Entry::hardlink("bin/tool-link", "bin/tool"),
        Entry::symlink("bin/sh", "/bin/busybox"),
        Entry::dir("data/")
            .owner(1000, 1000)
            .xattr("user.test", b"hello"),
        Entry::file("data/x", b"some data")
            .owner(1000, 1000)
            .mtime(1_234_567_890)
            .xattr("user.k", b"v"),
        Entry::file("data/latin", b"non-utf8 name").raw_path(b"data/caf\xe9"),
        Entry::fifo("run/fifo"),
        Entry::chardev("dev/null", 1, 3),
        Entry::dir("opq/"),
        Entry::file("opq/lower", b"lower file"),
        Entry::dir("gone/"),
        Entry::file("gone/f", b"gone file"),
        Entry::file("suid", b"setuid binary")
            .mode(0o4755)
            .owner(0, 0),
    ]
}

fn layer2() -> Vec<Entry> {
    vec![
        Entry::dir("./").mtime(1_500_000_001),
        Entry::file(".wh.gone", b""),
        Entry::dir("etc/"),
        Entry::file("etc/.wh.motd", b""),
        Entry::dir("opq/"),
        Entry::file("opq/.wh..wh..opq", b""),
        Entry::file("opq/upper", b"upper file"),
        Entry::file("etc/hosts", b"127.0.0.1 localhost\n").mtime(1_700_000_000),
        Entry::file("new/deep/file", b"implicit parents"),
    ]
}

#[test]
fn applies_every_entry_kind_and_references_across_layers() {
    let t = TempDir::new("kinds");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let (_, d1) = layer_tar(&layer1());
    let (_, d2) = layer_tar(&layer2());
    let mut arch = Archive::new();
    arch.metadata(b"{\"manifest\":1}", b"{\"config\":1}");
    arch.layer(&d1, &as_new(&layer1()));
    // Layer 2 as the registry sends it: hosts is held (earlier in stream).
    let l2: Vec<Entry> = layer2()
        .into_iter()
        .map(|e| {
            if e.path == b"etc/hosts" {
                e.into_reference()
            } else {
                e.with_digest()
            }
        })
        .collect();
    arch.layer(&d2, &l2).end();
    let bytes = arch.finish();

    let mut opts = ApplyOptions::new(vec![d1, d2]);
    opts.metadata = true;
    let mut a = Applier::new(&store, opts).unwrap();
    a.apply_archive(bytes.as_slice()).unwrap();
    assert!(a.pending_digests().is_empty());
    assert_eq!(a.manifest.as_deref(), Some(&b"{\"manifest\":1}"[..]));
    assert_eq!(a.config.as_deref(), Some(&b"{\"config\":1}"[..]));
    let committed = a.committed();
    assert_eq!(committed.len(), 2);
    // tool-copy repeats tool's content: a reference to an earlier entry of
    // the same stream, with another mode.
    assert_eq!(
        (committed[0].1.new_files, committed[0].1.referenced_files),
        (8, 1),
        "{:?}",
        committed[0].1
    );
    assert_eq!(committed[1].1.referenced_files, 1);
    drop(a);

    let mut want = vec![d1, d2];
    want.sort();
    assert_eq!(store.committed_layers().unwrap(), want);
    let l1 = store.layer_path(&d1);
    let l2 = store.layer_path(&d2);

    // Regular files are links to objects, with their metadata.
    let hosts = fs::metadata(l1.join("etc/hosts")).unwrap();
    assert_eq!(
        fs::read(l1.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    assert!(hosts.nlink() >= 2);
    assert_eq!(hosts.mode() & 0o7777, 0o644);
    assert_eq!(hosts.mtime(), 1_600_000_000);
    // Same content, different mode: two variants, two inodes.
    let tool = fs::metadata(l1.join("bin/tool")).unwrap();
    let copy = fs::metadata(l1.join("bin/tool-copy")).unwrap();
    assert_ne!(tool.ino(), copy.ino());
    assert_eq!((tool.mode() & 0o7777, copy.mode() & 0o7777), (0o755, 0o700));
    assert_eq!(
        fs::read(l1.join("bin/tool")).unwrap(),
        fs::read(l1.join("bin/tool-copy")).unwrap()
    );
    // Intra-layer hard link: same inode.
    assert_eq!(
        fs::metadata(l1.join("bin/tool-link")).unwrap().ino(),
        tool.ino()
    );
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    // Owners, mtimes, xattrs.
    let x = fs::metadata(l1.join("data/x")).unwrap();
    assert_eq!((x.uid(), x.gid(), x.mtime()), (1000, 1000, 1_234_567_890));
    assert_eq!(
        xattr(&l1.join("data/x"), "user.k").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        xattr(&l1.join("data"), "user.test").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(fs::metadata(l1.join("data")).unwrap().uid(), 1000);
    // Directory mtimes survive the creation of their contents.
    assert_eq!(fs::metadata(l1.join("bin")).unwrap().mtime(), 1_400_000_000);
    assert_eq!(fs::metadata(&l1).unwrap().mtime(), 1_500_000_000);
    // Non-UTF-8 names.
    let latin = l1.join(std::ffi::OsStr::from_bytes(b"data/caf\xe9"));
    assert_eq!(fs::read(latin).unwrap(), b"non-utf8 name");
    // Empty files are not objects.
    let empty = fs::metadata(l1.join("etc/empty")).unwrap();
    assert_eq!((empty.len(), empty.nlink()), (0, 1));
    // Special files; set-uid bit kept (chown before chmod).
    assert!(fs::symlink_metadata(l1.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = fs::symlink_metadata(l1.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(
        fs::metadata(l1.join("suid")).unwrap().mode() & 0o7777,
        0o4755
    );

    // Layer 2: overlayfs forms of whiteouts and opaque directories.
    for w in ["gone", "etc/motd"] {
        let m = fs::symlink_metadata(l2.join(w)).unwrap();
        assert!(
            m.file_type().is_char_device() && m.rdev() == 0,
            "{w} is not a whiteout"
        );
    }
    assert_eq!(
        xattr(&l2.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("opq/.wh..wh..opq").exists());
    // The reference made a local variant (other mtime), not a download.
    let hosts2 = fs::metadata(l2.join("etc/hosts")).unwrap();
    assert_eq!(hosts2.mtime(), 1_700_000_000);
    assert_ne!(hosts2.ino(), hosts.ino());
    assert_eq!(
        fs::read(l2.join("new/deep/file")).unwrap(),
        b"implicit parents"
    );
    // An implicit directory copies the lower layer's metadata (root here).
    assert_eq!(fs::metadata(&l2).unwrap().mtime(), 1_500_000_001);

    // Nothing is loose: every object is linked from a committed layer.
    let held = store.held_set().unwrap();
    assert_eq!(held.layers, want);
    assert!(held.objects.is_empty(), "{:?}", held.objects);
    let mut problems = Vec::new();
    let stats = store.verify(|p| problems.push(p.to_string())).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(stats.objects >= 10);
}

#[test]
fn digest_mismatch_is_an_integrity_error_and_commits_nothing() {
    let t = TempDir::new("mismatch");
    let root = t.path().join("store");
    let store = Store::open(&root, Access::Exclusive).unwrap();
    let entries = vec![
        Entry::file("a", b"good").with_digest(),
        Entry::file("b", b"evil").pax("LAYERLINK.digest", Digest::of(b"nice").hex().as_bytes()),
    ];
    let d = Digest::of(b"layer");
    let mut arch = Archive::new();
    arch.layer(&d, &entries).end();
    let err = apply(&store, &[d], &arch.finish()).unwrap_err();
    assert_eq!(err.exit_code(), exit::INTEGRITY, "{err}");
    assert!(store.committed_layers().unwrap().is_empty());
    drop(store);
    // Restart: staging is gone, the verified object stays loose.
    let store = Store::open(&root, Access::Exclusive).unwrap();
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert_eq!(store.held_set().unwrap().objects, vec![Digest::of(b"good")]);
}

#[test]
fn cut_stream_commits_nothing_and_keeps_verified_objects_loose() {
    let t = TempDir::new("cut");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let files: Vec<Vec<u8>> = (0..4).map(|i| pseudo_random(i, 64 * 1024)).collect();
    let entries: Vec<Entry> = files
        .iter()
        .enumerate()
        .map(|(i, f)| Entry::file(&format!("f{i}"), f))
        .collect();
    let (_, d) = layer_tar(&entries);
    let mut arch = Archive::new();
    arch.layer(&d, &as_new(&entries)).end();
    let full = arch.finish();
    let cut = &full[..full.len() * 3 / 5];
    let err = apply(&store, &[d], cut).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(store.committed_layers().unwrap().is_empty());
    let loose = store.held_set().unwrap().objects;
    assert!(loose.contains(&Digest::of(&files[0])), "{loose:?}");
    assert!(!loose.contains(&Digest::of(&files[3])));

    // The retry sends what the device reported as references.
    let retry: Vec<Entry> = entries
        .iter()
        .map(|e| {
            if loose.contains(&Digest::of(&e.data)) {
                e.clone().into_reference()
            } else {
                e.clone().with_digest()
            }
        })
        .collect();
    let mut arch = Archive::new();
    arch.layer(&d, &retry).end();
    assert!(apply(&store, &[d], &arch.finish()).unwrap().is_empty());
    assert_eq!(store.committed_layers().unwrap(), vec![d]);
    assert_eq!(fs::read(store.layer_path(&d).join("f3")).unwrap(), files[3]);
    assert!(store.held_set().unwrap().objects.is_empty());
}

#[test]
fn missing_layer_end_or_wrong_count_commits_nothing() {
    let t = TempDir::new("noend");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let d = Digest::of(b"l");
    let mut arch = Archive::new();
    arch.layer_start(&d)
        .entry(&Entry::file("a", b"a").with_digest())
        .layer_end(&d, 2)
        .end();
    let err = apply(&store, &[d], &arch.finish()).unwrap_err();
    assert_eq!(err.exit_code(), exit::INTEGRITY);
    let mut arch = Archive::new();
    arch.layer_start(&d)
        .entry(&Entry::file("a", b"a").with_digest())
        .end();
    assert!(apply(&store, &[d], &arch.finish()).is_err());
    assert!(store.committed_layers().unwrap().is_empty());
}

/// Every hostile archive fails with an integrity error, and nothing is
/// written outside the store (a sentinel directory stays untouched).
#[test]
fn hostile_archives_are_rejected_without_writing_outside() {
    let t = TempDir::new("hostile");
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("keep"), b"keep").unwrap();
    let s = sentinel.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("parent dir", vec![Entry::file("../x", b"x").with_digest()]),
        (
            "deep parent dir",
            vec![
                Entry::dir("a/"),
                Entry::file("a/../../x", b"x").with_digest(),
            ],
        ),
        (
            "absolute",
            vec![Entry::file(&format!("{s}/abs"), b"x").with_digest()],
        ),
        (
            "write through symlink",
            vec![
                Entry::symlink("link", &s),
                Entry::file("link/pwned", b"x").with_digest(),
            ],
        ),
        (
            "dir through symlink",
            vec![Entry::symlink("link", &s), Entry::dir("link/sub/")],
        ),
        (
            "symlink in deeper parent",
            vec![
                Entry::dir("d/"),
                Entry::symlink("d/l", &s),
                Entry::file("d/l/x/y", b"x"),
            ],
        ),
        (
            "hard link outside",
            vec![Entry::hardlink("h", "../../sentinel/keep")],
        ),
        (
            "hard link absolute",
            vec![Entry::hardlink("h", &format!("{s}/keep"))],
        ),
        (
            "hard link to symlink",
            vec![
                Entry::symlink("sym", &format!("{s}/keep")),
                Entry::hardlink("h", "sym"),
            ],
        ),
        (
            "hard link through symlink",
            vec![Entry::symlink("sym", &s), Entry::hardlink("h", "sym/keep")],
        ),
        ("hard link to missing", vec![Entry::hardlink("h", "nope")]),
        ("whiteout of parent", vec![Entry::file("a/.wh...", b"")]),
        (
            "NUL in name",
            vec![Entry::file("a", b"x").with_digest().pax("path", b"a\0b")],
        ),
        (
            "sparse file",
            vec![Entry::file("a", b"x").pax("GNU.sparse.major", b"1")],
        ),
        (
            "huge pax header",
            vec![Entry::file("a", b"x").pax("comment", &vec![b'a'; 2 << 20])],
        ),
    ];
    for (name, entries) in cases {
        let store = Store::open(
            &t.path().join(format!("store-{}", name.replace(' ', "-"))),
            Access::Exclusive,
        )
        .unwrap();
        let d = Digest::of(name.as_bytes());
        let mut arch = Archive::new();
        arch.layer(&d, &entries).end();
        let err = apply(&store, &[d], &arch.finish()).expect_err(name);
        assert_eq!(err.exit_code(), exit::INTEGRITY, "{name}: {err}");
        assert!(store.committed_layers().unwrap().is_empty(), "{name}");
        let mut names: Vec<_> = fs::read_dir(&sentinel)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("keep")],
            "{name}: wrote into the sentinel"
        );
        assert_eq!(fs::read(sentinel.join("keep")).unwrap(), b"keep", "{name}");
    }
    assert!(!t.path().join("x").exists() && !t.path().join("abs").exists());
}

#[test]
fn devices_can_be_refused() {
    let t = TempDir::new("nodev");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let d = Digest::of(b"dev");
    let mut arch = Archive::new();
    arch.layer(&d, &[Entry::chardev("dev/sda", 8, 0)]).end();
    let mut opts = ApplyOptions::new(vec![d]);
    opts.allow_devices = false;
    let mut a = Applier::new(&store, opts).unwrap();
    let err = a.apply_archive(arch.finish().as_slice()).unwrap_err();
    assert_eq!(err.exit_code(), exit::INTEGRITY);
}

#[test]
fn unexpected_layers_and_bombs_are_rejected() {
    let t = TempDir::new("unexpected");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let (d, other) = (Digest::of(b"a"), Digest::of(b"b"));
    let mut arch = Archive::new();
    arch.layer(&other, &[Entry::file("a", b"x").with_digest()])
        .end();
    assert_eq!(
        apply(&store, &[d], &arch.finish()).unwrap_err().exit_code(),
        exit::INTEGRITY
    );

    let big = vec![0u8; 4 << 20];
    let mut arch = Archive::new();
    arch.layer(&d, &[Entry::file("big", &big).with_digest()])
        .end();
    let bytes = arch.finish();
    let mut opts = ApplyOptions::new(vec![d]);
    opts.max_new_bytes = 1 << 20;
    let err = Applier::new(&store, opts.clone())
        .unwrap()
        .apply_archive(bytes.as_slice())
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::INTEGRITY, "{err}");
    opts.max_new_bytes = u64::MAX;
    opts.max_stream_bytes = 1 << 20;
    let err = Applier::new(&store, opts)
        .unwrap()
        .apply_archive(bytes.as_slice())
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::INTEGRITY, "{err}");
    assert!(store.committed_layers().unwrap().is_empty());
}

#[test]
fn unresolved_references_are_collected_and_repaired_before_commit() {
    let t = TempDir::new("repair");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let lost = b"content the registry thinks we hold".to_vec();
    let entries = vec![
        Entry::file("have", b"new content").with_digest(),
        Entry::file("lost", &lost).mode(0o600).into_reference(),
        Entry::hardlink("lost-link", "lost"),
    ];
    let d = Digest::of(b"layer");
    let mut arch = Archive::new();
    arch.layer(&d, &entries).end();
    let mut a = Applier::new(&store, ApplyOptions::new(vec![d])).unwrap();
    a.apply_archive(arch.finish().as_slice()).unwrap();
    assert_eq!(a.pending_digests(), vec![Digest::of(&lost)]);
    assert!(
        store.committed_layers().unwrap().is_empty(),
        "committed with a placeholder"
    );

    let mut objs = Archive::new();
    objs.object(&lost).end();
    a.repair(objs.finish().as_slice()).unwrap();
    assert_eq!(a.committed()[0].1.repaired, 2);
    drop(a);
    let l = store.layer_path(&d);
    assert_eq!(fs::read(l.join("lost")).unwrap(), lost);
    let m = fs::metadata(l.join("lost")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(l.join("lost-link")).unwrap().ino(), m.ino());
    assert!(m.nlink() >= 3);
}

#[test]
fn repair_with_wrong_content_fails() {
    let t = TempDir::new("repair-bad");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let d = Digest::of(b"layer");
    let mut arch = Archive::new();
    arch.layer(&d, &[Entry::file("lost", b"right").into_reference()])
        .end();
    let mut a = Applier::new(&store, ApplyOptions::new(vec![d])).unwrap();
    a.apply_archive(arch.finish().as_slice()).unwrap();
    let mut objs = Archive::new();
    objs.object(b"wrong").end();
    assert_eq!(
        a.repair(objs.finish().as_slice()).unwrap_err().exit_code(),
        exit::INTEGRITY
    );
    assert!(store.committed_layers().unwrap().is_empty());
}

fn record(store: &Store, image: &str, layers: Vec<Digest>) {
    store
        .write_record(&ImageRecord {
            version: FORMAT_VERSION,
            image: parse_image_ref(image).unwrap(),
            manifest_digest: Digest::of(image.as_bytes()),
            config_digest: Digest::of(b"{}"),
            manifest: image.as_bytes().to_vec(),
            config: b"{}".to_vec(),
            layers,
            synced_at: 1,
        })
        .unwrap();
}

#[test]
fn gc_removes_unused_layers_and_objects_and_verify_finds_damage() {
    let t = TempDir::new("gc");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let (da, db) = (Digest::of(b"a"), Digest::of(b"b"));
    let mut arch = Archive::new();
    arch.layer(
        &da,
        &[
            Entry::file("shared", b"shared").with_digest(),
            Entry::file("only-a", b"only a").with_digest(),
        ],
    );
    arch.layer(
        &db,
        &[
            Entry::file("shared", b"shared").into_reference(),
            Entry::file("only-b", b"only b").with_digest(),
        ],
    );
    arch.end();
    apply(&store, &[da, db], &arch.finish()).unwrap();
    record(&store, "app:v1", vec![da]);
    let stats = store.gc().unwrap();
    assert_eq!(
        (
            stats.layers_removed,
            stats.objects_removed,
            stats.bytes_freed
        ),
        (1, 1, 6)
    );
    assert_eq!(store.committed_layers().unwrap(), vec![da]);
    assert!(store.held_set().unwrap().objects.is_empty());
    let mut problems = Vec::new();
    store.verify(|p| problems.push(p.to_string())).unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    // Damage an object in place: verify reports it.
    fs::write(store.layer_path(&da).join("only-a"), b"tampered").unwrap();
    let stats = store.verify(|p| problems.push(p.to_string())).unwrap();
    assert_eq!(stats.problems, 2, "{problems:?}"); // content and mtime
    assert!(
        problems.iter().any(|p| p.contains("hashes to")),
        "{problems:?}"
    );
}

#[test]
fn a_second_exclusive_open_is_refused_and_tmp_is_recovered() {
    let t = TempDir::new("lock");
    let root = t.path().join("store");
    let store = Store::open(&root, Access::Exclusive).unwrap();
    fs::create_dir_all(root.join("tmp/layer-x/sub")).unwrap();
    fs::write(root.join("tmp/obj-1"), b"partial").unwrap();
    let err = Store::open(&root, Access::Exclusive)
        .err()
        .expect("second lock");
    assert_eq!(err.exit_code(), exit::LOCKED);
    // Read-only commands do not need the lock.
    Store::open(&root, Access::ReadOnly).unwrap();
    drop(store);
    let _store = Store::open(&root, Access::Exclusive).unwrap();
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

/// A small tmpfs, unmounted on drop (`None` when mounting is not allowed).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_exit_6_and_commits_nothing() {
    let t = TempDir::new("enospc");
    let Some(fs_) = Tmpfs::mount(&t.path().join("small"), "1m") else {
        panic!(
            "cannot mount a 1 MiB tmpfs on {}: this test needs root and tmpfs (it does not skip)",
            t.path().join("small").display()
        );
    };
    let store = Store::open(&fs_.0.join("store"), Access::Exclusive).unwrap();
    let big = pseudo_random(7, 3 << 20);
    let d = Digest::of(b"big");
    let mut arch = Archive::new();
    arch.layer(&d, &[Entry::file("big", &big).with_digest()])
        .end();
    let err = apply(&store, &[d], &arch.finish()).unwrap_err();
    assert_eq!(err.exit_code(), exit::DISK_FULL, "{err}");
    assert!(store.committed_layers().unwrap().is_empty());
}

#[test]
fn a_reference_resolved_by_content_later_in_the_stream_needs_no_fetch() {
    let t = TempDir::new("late");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let (d1, d2) = (Digest::of(b"one"), Digest::of(b"two"));
    let mut arch = Archive::new();
    arch.layer(
        &d1,
        &[Entry::file("early-ref", b"late content").into_reference()],
    );
    arch.layer(&d2, &[Entry::file("late", b"late content").with_digest()]);
    arch.end();
    let mut a = Applier::new(&store, ApplyOptions::new(vec![d1, d2])).unwrap();
    a.apply_archive(arch.finish().as_slice()).unwrap();
    assert!(a.pending_digests().is_empty());
    assert_eq!(
        store.committed_layers().unwrap(),
        vec![d2].into_iter().collect::<Vec<_>>()
    );
    a.resolve_pending().unwrap();
    drop(a);
    let mut want = vec![d1, d2];
    want.sort();
    assert_eq!(store.committed_layers().unwrap(), want);
    assert_eq!(
        fs::read(store.layer_path(&d1).join("early-ref")).unwrap(),
        b"late content"
    );
}
