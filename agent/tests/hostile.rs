//! A hand-made hostile-input corpus for the agent's archive reader, plus the
//! replay of crash inputs kept by the fuzzers under `fuzz/regressions/`.
//!
//! Every case is applied into a fresh store inside a scratch tree that also
//! holds a sentinel directory reachable from the staging depth
//! (`../../../sentinel`); after each case every directory the agent could
//! reach (the store's tmp/, objects/, layers/, images/ and root, the scratch
//! root, the private parents, the sentinel) must hold only what the agent
//! legitimately puts there (`Scratch::stray`; a test shows it catching what
//! a naive extractor does with each escaping case). Rejected cases must fail with a
//! clear integrity error (exit 5; exit 3 when the stream
//! ends inside an entry, as a cut download) and commit nothing. Runs as root.

mod common;

use common::{Archive, Entry, TempDir};
use flate2::write::GzEncoder;
use flate2::Compression;
use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::checkout::checkout;
use layerlink_agent::error::exit;
use layerlink_agent::store::record::{parse_image_ref, ImageRecord, FORMAT_VERSION};
use layerlink_agent::store::{Access, Store};
use layerlink_agent::Error;
use layerlink_proto::Digest;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Names a hostile case could create outside the scratch tree (in the shared
/// temp dir or `/`), where the tree cannot be listed exactly.
const HOSTILE_NAMES: &[&str] = &["x", "abs", "abs-hostile", "pwned", "pwned2", "sub"];

/// A scratch tree in which every directory the agent could reach is
/// checked after each case:
///
/// ```text
/// T/                         private: holds only `p/`
/// T/p/                       private: holds only `scratch/`
/// T/p/scratch/               sentinel/, store-N/, checkout/
/// T/p/scratch/sentinel/keep  reached from a layer as ../../../sentinel
/// T/p/scratch/store-N/       objects/ layers/ images/ tmp/ lock
/// T/p/scratch/store-N/tmp/layer-<hex>/   where a layer is staged
/// ```
///
/// From the staging depth `../x` is `store-N/tmp/x`, `a/b/../../../x` is
/// `store-N/x`, four `..` reach `scratch/`, five `T/p/`, six `T/`: each of
/// those directories is listed exactly; beyond `T` (shared directories)
/// [`HOSTILE_NAMES`] must not appear.
struct Scratch {
    t: TempDir,
    n: u32,
}

/// What the store's own directories may hold (the agent's naming).
fn store_entry_ok(dir: &str, name: &str, meta: &fs::Metadata) -> bool {
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ft = meta.file_type();
    match dir {
        "" => match name {
            "objects" | "layers" | "images" | "tmp" => ft.is_dir(),
            "lock" => ft.is_file(),
            _ => false,
        },
        "tmp" => {
            if let Some(rest) = name.strip_prefix("layer-") {
                (hex64(rest) && ft.is_dir())
                    || (rest.strip_suffix(".dirs").is_some_and(hex64) && ft.is_file())
            } else if let Some(n) = name.strip_prefix("obj-") {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && ft.is_file()
            } else if let Some((obj, n)) = name.split_once('~') {
                // A staged object declaring its digest and variant key.
                obj.len() == 81
                    && hex64(&obj[..64])
                    && obj.as_bytes()[64] == b'.'
                    && obj[65..].bytes().all(|b| b.is_ascii_hexdigit())
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && ft.is_file()
            } else {
                false
            }
        }
        "layers" => hex64(name) && ft.is_dir(),
        "images" => name.ends_with(".rec") && ft.is_file(),
        "objects" => name.len() == 2 && hex64(&format!("{name:0<64}")) && ft.is_dir(),
        _ => false,
    }
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let t = TempDir::new(tag);
        let sc = Scratch { t, n: 0 };
        fs::create_dir_all(sc.root().join("sentinel")).unwrap();
        fs::write(sc.root().join("sentinel/keep"), b"keep").unwrap();
        sc
    }
    /// `T/p/scratch`: holds the sentinel, the stores and checkouts.
    fn root(&self) -> PathBuf {
        self.t.path().join("p/scratch")
    }
    fn sentinel(&self) -> String {
        self.root().join("sentinel").to_str().unwrap().to_string()
    }
    fn store(&mut self) -> (PathBuf, Store) {
        self.n += 1;
        let p = self.root().join(format!("store-{}", self.n));
        let s = Store::open(&p, Access::Exclusive).unwrap();
        (p, s)
    }
    /// Everything unexpected anywhere the agent could reach, as readable
    /// lines (empty: nothing escaped).
    fn stray(&self) -> Vec<String> {
        let mut out = Vec::new();
        let list = |dir: &Path| -> Vec<(String, fs::Metadata)> {
            let mut v: Vec<_> = fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| {
                    let e = e.unwrap();
                    let m = fs::symlink_metadata(e.path()).unwrap();
                    (e.file_name().to_string_lossy().into_owned(), m)
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        // The private ancestors hold exactly the path down to the scratch.
        for (dir, only) in [
            (self.t.path().to_owned(), "p"),
            (self.t.path().join("p"), "scratch"),
        ] {
            for (n, m) in list(&dir) {
                if n != only || !m.is_dir() {
                    out.push(format!("{}/{n}", dir.display()));
                }
            }
        }
        // Shared ancestors: no name a hostile case writes.
        for dir in self.t.path().ancestors().skip(1) {
            for n in HOSTILE_NAMES {
                if fs::symlink_metadata(dir.join(n)).is_ok() {
                    out.push(format!("{}", dir.join(n).display()));
                }
            }
        }
        // The scratch root: sentinel, stores made so far, a checkout.
        let root = self.root();
        for (n, m) in list(&root) {
            let ok = match n.as_str() {
                "sentinel" | "checkout" => m.is_dir(),
                _ => n
                    .strip_prefix("store-")
                    .and_then(|k| k.parse::<u32>().ok())
                    .is_some_and(|k| k >= 1 && k <= self.n && m.is_dir()),
            };
            if !ok {
                out.push(format!("{}/{n}", root.display()));
            }
        }
        // The sentinel: one unlinked-elsewhere file, unchanged.
        let sentinel = root.join("sentinel");
        for (n, m) in list(&sentinel) {
            use std::os::unix::fs::MetadataExt;
            if n != "keep" || !m.is_file() {
                out.push(format!("{}/{n}", sentinel.display()));
            } else if m.nlink() != 1 {
                out.push(format!(
                    "{}/keep has {} links",
                    sentinel.display(),
                    m.nlink()
                ));
            }
        }
        if fs::read(sentinel.join("keep")).ok().as_deref() != Some(b"keep".as_slice()) {
            out.push(format!("{}/keep changed or gone", sentinel.display()));
        }
        // Every store: its root and each of its directories by the agent's
        // naming; object fan-out directories hold only object files.
        for k in 1..=self.n {
            let store = root.join(format!("store-{k}"));
            if !store.is_dir() {
                continue;
            }
            for (n, _) in list(&store)
                .into_iter()
                .filter(|(n, m)| !store_entry_ok("", n, m))
            {
                out.push(format!("{}/{n}", store.display()));
            }
            for sub in ["tmp", "layers", "images", "objects"] {
                let dir = store.join(sub);
                if !dir.is_dir() || fs::symlink_metadata(&dir).unwrap().is_symlink() {
                    continue;
                }
                for (n, m) in list(&dir) {
                    if !store_entry_ok(sub, &n, &m) {
                        out.push(format!("{}/{n}", dir.display()));
                    } else if sub == "objects" {
                        for (o, om) in list(&dir.join(&n)) {
                            let named = o.len() > 65
                                && o.as_bytes()[64] == b'.'
                                && o[..64].bytes().all(|b| b.is_ascii_hexdigit())
                                && o.starts_with(&n);
                            if !named || !om.is_file() {
                                out.push(format!("{}/{n}/{o}", dir.display()));
                            }
                        }
                    }
                }
            }
        }
        out
    }
    /// Nothing escaped: see [`Scratch::stray`].
    fn check_outside(&self, name: &str) {
        let stray = self.stray();
        assert!(
            stray.is_empty(),
            "{name}: found outside the layers: {stray:#?}"
        );
    }
}

fn opts(layers: &[Digest]) -> ApplyOptions {
    let mut o = ApplyOptions::new(layers.to_vec());
    o.image_layers = layers.to_vec();
    o
}

fn apply_with(store: &Store, o: ApplyOptions, archive: impl Read) -> Result<(), Error> {
    let mut a = Applier::new(store, o)?;
    a.apply_archive(archive)?;
    let p = a.pending_digests();
    if !p.is_empty() {
        return Err(Error::integrity(format!("{} unresolved", p.len())));
    }
    Ok(())
}

/// Apply `entries` as one layer; the result and the store.
fn one_layer(
    s: &mut Scratch,
    entries: &[Entry],
    o: Option<ApplyOptions>,
) -> (Result<(), Error>, Store) {
    let (_, store) = s.store();
    let d = Digest::of(format!("{entries:?}").as_bytes());
    let mut arch = Archive::new();
    arch.layer(&d, entries).end();
    let o = o.map(|mut o| {
        o.layers = vec![d];
        o
    });
    let r = apply_with(
        &store,
        o.unwrap_or_else(|| opts(&[d])),
        arch.finish().as_slice(),
    );
    (r, store)
}

fn assert_rejected(name: &str, r: Result<(), Error>, store: &Store) {
    let err = r.expect_err(name);
    // A stream that ends inside an entry reads as a cut download (exit 3,
    // retried by sync); everything else hostile is an integrity error.
    let m = err.to_string();
    let cut =
        err.exit_code() == exit::NETWORK && (m.contains("ended") || m.contains("interrupted"));
    assert!(
        err.exit_code() == exit::INTEGRITY || cut,
        "{name}: exit {}: {err}",
        err.exit_code()
    );
    assert!(!err.to_string().is_empty());
    assert!(store.committed_layers().unwrap().is_empty(), "{name}");
}

/// Single-layer cases that must be rejected: (name, entries, whether a
/// naive extractor working in the staging directory would write or link
/// something into the scratch tree outside the layer, which
/// [`Scratch::stray`] must then see; see
/// `the_escape_check_sees_what_a_naive_extractor_does`).
fn rejected_cases(s: &str) -> Vec<(&'static str, Vec<Entry>, bool)> {
    let f = |p: &str| Entry::file(p, b"x").with_digest();
    vec![
        // From store-N/tmp/layer-<hex>/: one `..` is tmp/, two the store,
        // three the scratch root, four and five the private parents.
        ("parent dir", vec![f("../x")], true),
        ("dot then parent", vec![f("./../x")], true),
        ("deep parent", vec![Entry::dir("a/"), f("a/../../x")], true),
        ("parent inside", vec![f("a/b/../../../x")], true),
        ("to the store root", vec![f("../../x")], true),
        ("to the scratch root", vec![f("../../../x")], true),
        ("to the parent", vec![f("../../../../x")], true),
        ("to the grandparent", vec![f("../../../../../x")], true),
        ("absolute", vec![f(&format!("{s}/abs"))], true),
        // (a naive write would land in `/`, shared with other tests)
        ("absolute root", vec![f("/abs-hostile")], false),
        (
            "symlink then write through",
            vec![Entry::symlink("link", s), f("link/pwned")],
            true,
        ),
        (
            "relative symlink then write through",
            vec![Entry::symlink("link", "../../../sentinel"), f("link/pwned")],
            true,
        ),
        (
            "symlink then dir through",
            vec![Entry::symlink("link", s), Entry::dir("link/sub/")],
            true,
        ),
        (
            "symlink then hard link through",
            vec![
                Entry::symlink("link", s),
                f("f"),
                Entry::hardlink("link/h", "f"),
            ],
            true,
        ),
        (
            "hard link to ../../etc/passwd",
            vec![Entry::hardlink("h", "../../etc/passwd")],
            false,
        ),
        (
            "hard link to /etc/passwd relative",
            vec![Entry::hardlink(
                "h",
                &format!("{}etc/passwd", "../".repeat(40)),
            )],
            false,
        ),
        (
            "hard link to sentinel relative",
            vec![Entry::hardlink("h", "../../../sentinel/keep")],
            true,
        ),
        (
            "hard link absolute",
            vec![Entry::hardlink("h", "/etc/passwd")],
            false,
        ),
        (
            "hard link to a symlink",
            vec![
                Entry::symlink("sym", &format!("{s}/keep")),
                Entry::hardlink("h", "sym"),
            ],
            false,
        ),
        (
            "hard link through a symlink",
            vec![Entry::symlink("sym", s), Entry::hardlink("h", "sym/keep")],
            true,
        ),
        (
            "hard link to missing",
            vec![Entry::hardlink("h", "nope")],
            false,
        ),
        ("NUL in pax path", vec![f("a").pax("path", b"a\0b")], false),
        ("empty pax path", vec![f("a").pax("path", b"")], false),
        (
            "whiteout of parent",
            vec![Entry::file("a/.wh...", b"")],
            false,
        ),
        (
            "wrong digest",
            vec![Entry::file("a", b"x").pax("LAYERLINK.digest", &[b'0'; 64])],
            false,
        ),
        (
            "malformed digest",
            vec![Entry::file("a", b"x").pax("LAYERLINK.digest", b"zz")],
            false,
        ),
        (
            "reference with bad link",
            vec![Entry::hardlink("a", "layerlink:sha256:nothex")],
            false,
        ),
        (
            "huge pax header",
            vec![f("a").pax("comment", &vec![b'a'; 2 << 20])],
            false,
        ),
        (
            "pax size disagrees",
            vec![f("a").pax("size", b"1099511627776")],
            false,
        ),
        (
            "sparse",
            vec![Entry::file("a", b"x").pax("GNU.sparse.major", b"1")],
            false,
        ),
        (
            "path too long",
            vec![Entry::file(&"a/".repeat(3000), b"x").with_digest()],
            false,
        ),
    ]
}

#[test]
fn hostile_corpus_is_rejected_or_handled_without_writing_outside() {
    let mut sc = Scratch::new("hostile-corpus");
    let s = sc.sentinel();
    let mut rejected = 0;
    let mut handled = 0;

    for (name, entries, _) in rejected_cases(&s) {
        let (r, store) = one_layer(&mut sc, &entries, None);
        assert_rejected(name, r, &store);
        sc.check_outside(name);
        rejected += 1;
    }

    // Device nodes and FIFOs with --no-devices.
    let nodev = || {
        let mut o = ApplyOptions::new(Vec::new());
        o.allow_devices = false;
        o
    };
    let mut blk = Entry::chardev("dev/sda", 8, 0);
    blk.kind = b'4';
    for (name, e) in [
        ("chardev with --no-devices", Entry::chardev("dev/mem", 1, 1)),
        ("blockdev with --no-devices", blk),
    ] {
        let (r, store) = one_layer(&mut sc, &[e], Some(nodev()));
        let err = r.expect_err(name);
        assert_eq!(err.exit_code(), exit::INTEGRITY, "{name}: {err}");
        assert!(store.committed_layers().unwrap().is_empty(), "{name}");
        sc.check_outside(name);
        rejected += 1;
    }

    // FIFOs are not device nodes: created even with --no-devices (the
    // code's deliberate choice; SPEC.md's wording is looser).
    {
        let (r, store) = one_layer(&mut sc, &[Entry::fifo("run/fifo")], Some(nodev()));
        r.expect("fifo with --no-devices");
        let layer = store.committed_layers().unwrap()[0];
        use std::os::unix::fs::FileTypeExt;
        let ft = fs::symlink_metadata(store.layer_path(&layer).join("run/fifo"))
            .unwrap()
            .file_type();
        assert!(ft.is_fifo());
        sc.check_outside("fifo");
        handled += 1;
    }

    // Duplicate entries: handled, the last one wins (tar semantics), or
    // rejected; never anything else.
    let dups: Vec<(&str, Vec<Entry>, &[u8])> = vec![
        (
            "duplicate file",
            vec![
                Entry::file("a", b"first").with_digest(),
                Entry::file("a", b"second").with_digest(),
            ],
            b"second",
        ),
        (
            "file replaced by dir then file",
            vec![
                Entry::file("a", b"first").with_digest(),
                Entry::dir("a/"),
                Entry::file("a/b", b"inner").with_digest(),
            ],
            b"",
        ),
        (
            "symlink replaced by file",
            vec![
                Entry::symlink("a", &format!("{s}/keep")),
                Entry::file("a", b"second").with_digest(),
            ],
            b"second",
        ),
    ];
    for (name, entries, want) in dups {
        let d = Digest::of(name.as_bytes());
        let (_, store) = sc.store();
        let mut arch = Archive::new();
        arch.layer(&d, &entries).end();
        match apply_with(&store, opts(&[d]), arch.finish().as_slice()) {
            Ok(()) => {
                let root = store.layer_path(&d);
                if want.is_empty() {
                    assert_eq!(fs::read(root.join("a/b")).unwrap(), b"inner", "{name}");
                } else {
                    assert_eq!(fs::read(root.join("a")).unwrap(), want, "{name}");
                    assert!(!fs::symlink_metadata(root.join("a")).unwrap().is_symlink());
                }
                handled += 1;
            }
            Err(e) => {
                assert_eq!(e.exit_code(), exit::INTEGRITY, "{name}: {e}");
                rejected += 1;
            }
        }
        sc.check_outside(name);
    }

    // Invalid UTF-8 names are legitimate: applied byte for byte.
    {
        let name = "invalid utf-8 names";
        let d = Digest::of(name.as_bytes());
        let (_, store) = sc.store();
        let mut arch = Archive::new();
        arch.layer(
            &d,
            &[
                Entry::file("x", b"latin-1")
                    .with_digest()
                    .raw_path(b"caf\xe9"),
                Entry::dir("x").raw_path(b"\xff\xfe/"),
                Entry::symlink("x", "caf\u{e9}").raw_path(b"\xff\xfe/\x80"),
            ],
        )
        .end();
        apply_with(&store, opts(&[d]), arch.finish().as_slice()).expect(name);
        use std::os::unix::ffi::OsStrExt;
        let root = store.layer_path(&d);
        let p = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        assert_eq!(fs::read(p).unwrap(), b"latin-1");
        assert!(root.join(std::ffi::OsStr::from_bytes(b"\xff\xfe")).is_dir());
        sc.check_outside(name);
        handled += 1;
    }

    println!("hostile inputs rejected: {rejected}, handled correctly: {handled}");
    assert!(rejected >= 28, "{rejected}");
}

/// What a naive extractor (plain paths, following symlinks, no checks)
/// would do with `entries` in `staging`; errors are ignored.
fn naive_extract(staging: &Path, entries: &[Entry]) {
    let at = |p: &[u8]| {
        let p = String::from_utf8_lossy(p).into_owned();
        if p.starts_with('/') {
            PathBuf::from(p)
        } else {
            staging.join(p)
        }
    };
    for e in entries {
        let path = at(&e.path);
        match e.kind {
            b'5' => {
                let _ = fs::create_dir_all(&path);
            }
            b'0' => {
                if let Some(parent) = path.parent() {
                    let _ = fs::create_dir_all(parent);
                }
                let _ = fs::write(&path, &e.data);
            }
            b'2' => {
                let _ =
                    std::os::unix::fs::symlink(String::from_utf8_lossy(&e.link).as_ref(), &path);
            }
            b'1' => {
                let _ = fs::hard_link(at(&e.link), &path);
            }
            _ => {}
        }
    }
}

/// The escape check is not blind: planted strays are seen at every level
/// the agent could reach, and so is what a naive extractor does with each
/// escaping case of the corpus, staged where the agent stages layers.
#[test]
fn the_escape_check_sees_what_a_naive_extractor_does() {
    // A clean scratch with a used store passes.
    let mut sc = Scratch::new("escape-check");
    let (store_dir, _store) = sc.store();
    sc.check_outside("clean");
    let staging = store_dir
        .join("tmp")
        .join(format!("layer-{}", Digest::of(b"l").hex()));
    fs::create_dir_all(&staging).unwrap();
    sc.check_outside("staging dir");
    // One stray at a time, at each level.
    let root = sc.root();
    for p in [
        store_dir.join("tmp/x"),
        store_dir.join("tmp/layer-1234"),
        store_dir.join("x"),
        store_dir.join("objects/x"),
        store_dir.join("objects/ab"),
        store_dir.join("layers/x"),
        store_dir.join("images/x"),
        root.join("x"),
        root.join("store-9"),
        root.join("sentinel/pwned"),
        sc.t.path().join("p/x"),
        sc.t.path().join("x"),
    ] {
        fs::write(&p, b"x").unwrap();
        let stray = sc.stray();
        assert!(
            stray.iter().any(|l| l.starts_with(p.to_str().unwrap())),
            "{} not seen: {stray:?}",
            p.display()
        );
        fs::remove_file(&p).unwrap();
        sc.check_outside("after removing the stray");
    }
    fs::hard_link(root.join("sentinel/keep"), staging.join("h")).unwrap();
    assert!(
        !sc.stray().is_empty(),
        "a hard link to the sentinel is not seen"
    );
    fs::remove_file(staging.join("h")).unwrap();
    fs::write(root.join("sentinel/keep"), b"pwned").unwrap();
    assert!(!sc.stray().is_empty(), "a changed sentinel is not seen");
    drop(sc);

    // Every escaping case, done naively from the staging depth.
    let mut escaping = 0;
    for (name, _, escapes) in rejected_cases("/names-only") {
        if !escapes {
            continue;
        }
        let mut sc = Scratch::new("escape-naive");
        // The case names the sentinel of its own scratch.
        let entries: Vec<Entry> = rejected_cases(&sc.sentinel())
            .into_iter()
            .find(|c| c.0 == name)
            .unwrap()
            .1;
        let (store_dir, _store) = sc.store();
        let staging = store_dir
            .join("tmp")
            .join(format!("layer-{}", Digest::of(name.as_bytes()).hex()));
        fs::create_dir_all(&staging).unwrap();
        naive_extract(&staging, &entries);
        let stray = sc.stray();
        assert!(
            !stray.is_empty(),
            "{name}: a naive extraction escaped unseen"
        );
        escaping += 1;
    }
    assert!(escaping >= 15, "{escaping}");
}

#[test]
fn symlink_in_a_lower_layer_is_not_written_through_in_store_or_checkout() {
    let mut sc = Scratch::new("hostile-cross");
    let s = sc.sentinel();
    let (l1, l2) = (Digest::of(b"lower"), Digest::of(b"upper"));
    let (_, store) = sc.store();
    let mut arch = Archive::new();
    arch.layer(
        &l1,
        &[
            Entry::symlink("link", &s),
            Entry::symlink("rel", "../../../sentinel"),
        ],
    )
    .layer(
        &l2,
        &[
            Entry::file("link/pwned", b"pwned").with_digest(),
            Entry::dir("rel/"),
            Entry::file("rel/pwned2", b"pwned").with_digest(),
            Entry::hardlink("h", "link/keep"),
        ],
    )
    .end();
    let r = apply_with(&store, opts(&[l1, l2]), arch.finish().as_slice());
    sc.check_outside("cross-layer apply");
    match r {
        Err(e) => assert_eq!(e.exit_code(), exit::INTEGRITY, "{e}"),
        Ok(()) => {
            // Handled: the upper layer holds real directories.
            let up = store.layer_path(&l2);
            assert!(fs::symlink_metadata(up.join("link")).unwrap().is_dir());
            assert_eq!(fs::read(up.join("link/pwned")).unwrap(), b"pwned");
        }
    }

    // Whatever was committed, checking it out must not write through.
    let upper_only = vec![
        Entry::file("link/pwned", b"pwned").with_digest(),
        Entry::file("rel/pwned2", b"pwned").with_digest(),
    ];
    let (_, store) = sc.store();
    let mut arch = Archive::new();
    arch.layer(
        &l1,
        &[
            Entry::symlink("link", &s),
            Entry::symlink("rel", "../../../sentinel"),
        ],
    )
    .end();
    apply_with(&store, opts(&[l1]), arch.finish().as_slice()).unwrap();
    let mut arch = Archive::new();
    arch.layer(&l2, &upper_only).end();
    let mut o = opts(&[l2]);
    o.image_layers = vec![l1, l2];
    apply_with(&store, o, arch.finish().as_slice()).unwrap();
    let image = parse_image_ref("hostile:v1").unwrap();
    let config = common::image_config(&[l1, l2], "");
    store
        .write_record(&ImageRecord {
            version: FORMAT_VERSION,
            image: image.clone(),
            manifest_digest: Digest::of(b"m"),
            config_digest: Digest::of(&config),
            manifest: b"{}".to_vec(),
            config,
            layers: vec![l1, l2],
            synced_at: 1,
        })
        .unwrap();
    let dest = sc.root().join("checkout");
    let r = checkout(&store, &image, &dest, false);
    sc.check_outside("cross-layer checkout");
    if r.is_ok() {
        let rootfs = dest.join("rootfs");
        assert!(fs::symlink_metadata(rootfs.join("link")).unwrap().is_dir());
        assert_eq!(fs::read(rootfs.join("link/pwned")).unwrap(), b"pwned");
    }
    let _ = fs::remove_dir_all(&dest);
}

/// Appends one raw tar header (size field as given) and `body` to `out`.
fn raw_entry(out: &mut Vec<u8>, path: &str, size: u64, pax: &[(&str, &[u8])], body: &[u8]) {
    if !pax.is_empty() {
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
        raw_entry_typed(out, "PaxHeaders/x", rec.len() as u64, b'x', &rec);
    }
    raw_entry_typed(out, path, size, b'0', body);
}

fn raw_entry_typed(out: &mut Vec<u8>, path: &str, size: u64, kind: u8, body: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(body);
    let pad = (512 - body.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn marker_entry(out: &mut Vec<u8>, kind: &str, extra: &[(&str, &[u8])]) {
    let mut pax: Vec<(&str, &[u8])> = vec![("LAYERLINK.marker", kind.as_bytes())];
    pax.extend_from_slice(extra);
    raw_entry(out, &format!(".layerlink/{kind}"), 0, &pax, b"");
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A gzip stream made on demand: `prefix`, then `zeros` zero bytes.
struct Bomb {
    enc: Option<GzEncoder<Vec<u8>>>,
    zeros_left: u64,
    out: Vec<u8>,
    pos: usize,
    produced: u64,
}

impl Bomb {
    fn new(prefix: &[u8], zeros: u64) -> Bomb {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(prefix).unwrap();
        Bomb {
            enc: Some(enc),
            zeros_left: zeros,
            out: Vec::new(),
            pos: 0,
            produced: 0,
        }
    }
}

impl Read for Bomb {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
        while self.pos == self.out.len() {
            let Some(enc) = self.enc.as_mut() else {
                return Ok(0);
            };
            if self.zeros_left > 0 {
                let n = self.zeros_left.min(ZEROS.len() as u64);
                enc.write_all(&ZEROS[..n as usize])?;
                self.zeros_left -= n;
                self.produced += n;
                self.out = std::mem::take(enc.get_mut());
            } else {
                self.out = self.enc.take().unwrap().finish()?;
            }
            self.pos = 0;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn huge_declared_sizes_and_decompression_bombs_stop_quickly() {
    let mut sc = Scratch::new("hostile-sizes");
    let d = Digest::of(b"sizes");
    let id = d.to_string();
    let start =
        |out: &mut Vec<u8>| marker_entry(out, "layer", &[("LAYERLINK.diff_id", id.as_bytes())]);
    let mut rejected = 0;

    // Size field claims 1 TiB, the body is short and the stream ends.
    let mut t = Vec::new();
    start(&mut t);
    raw_entry(
        &mut t,
        "big",
        1 << 40,
        &[("LAYERLINK.digest", &[b'a'; 64])],
        b"short body",
    );
    let (_, store) = sc.store();
    let r = apply_with(&store, opts(&[d]), gz(&t).as_slice());
    assert_rejected("1 TiB declared, short body", r, &store);
    sc.check_outside("1 TiB");
    rejected += 1;

    // The same through a PAX size record.
    let mut t = Vec::new();
    start(&mut t);
    raw_entry(
        &mut t,
        "big",
        10,
        &[("size", b"1099511627776")],
        b"short body",
    );
    let (_, store) = sc.store();
    let r = apply_with(&store, opts(&[d]), gz(&t).as_slice());
    assert_rejected("1 TiB pax size", r, &store);
    rejected += 1;

    // A gzip of GBs of zeros behind a file entry declaring 1 TiB: the
    // agent stops at its bound, quickly, with a clear error.
    let mut t = Vec::new();
    start(&mut t);
    raw_entry(
        &mut t,
        "bomb",
        1 << 40,
        &[("LAYERLINK.digest", &[b'a'; 64])],
        b"",
    );
    t.truncate(t.len()); // header only, the zeros are the body
    for (what, new, stream) in [
        ("max_new_bytes", 64u64 << 20, u64::MAX),
        ("max_stream_bytes", u64::MAX, 64 << 20),
    ] {
        let (_, store) = sc.store();
        let mut o = opts(&[d]);
        o.max_new_bytes = new;
        o.max_stream_bytes = stream;
        let mut bomb = Bomb::new(&t, 8 << 30);
        let t0 = Instant::now();
        let r = apply_with(&store, o, &mut bomb);
        let took = t0.elapsed();
        let err = r.expect_err(what);
        assert_eq!(err.exit_code(), exit::INTEGRITY, "{what}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("bomb")
                || msg.contains("announced")
                || msg.contains("bound")
                || msg.contains("larger")
                || msg.contains("exceed")
                || msg.contains("more than"),
            "{what}: unclear error {msg:?}"
        );
        assert!(
            bomb.produced <= 256 << 20,
            "{what}: read {} bytes past the bound",
            bomb.produced
        );
        assert!(took < Duration::from_secs(30), "{what}: took {took:?}");
        assert!(store.committed_layers().unwrap().is_empty());
        sc.check_outside(what);
        rejected += 1;
    }

    // Plain gzip of zeros (1 GiB): zero blocks end the tar at once; the
    // stream lacks every marker and is rejected without reading it all.
    let (_, store) = sc.store();
    let mut o = ApplyOptions::new(Vec::new());
    o.any_layers = true;
    let mut bomb = Bomb::new(b"", 1 << 30);
    let t0 = Instant::now();
    let r = apply_with(&store, o, &mut bomb);
    assert!(r.is_err(), "zeros accepted");
    assert!(t0.elapsed() < Duration::from_secs(30));
    sc.check_outside("zeros");
    rejected += 1;

    // Not gzip at all, and a truncated gzip.
    for (name, bytes) in [
        ("not gzip", b"this is not a gzip stream".to_vec()),
        ("truncated gzip", {
            let mut a = Archive::new();
            a.layer(&d, &[Entry::file("f", &[7u8; 5000]).with_digest()])
                .end();
            let mut b = a.finish();
            b.truncate(b.len() / 2);
            b
        }),
    ] {
        let (_, store) = sc.store();
        let r = apply_with(&store, opts(&[d]), bytes.as_slice());
        assert_rejected(name, r, &store);
        rejected += 1;
    }
    println!("hostile inputs rejected (sizes/bombs): {rejected}");
    assert_eq!(rejected, 7);
}

#[test]
fn a_100k_entry_directory_is_handled_in_flat_memory() {
    const N: usize = 100_000;
    let mut sc = Scratch::new("hostile-100k");
    let d = Digest::of(b"100k");
    // Build the archive streaming, compressed as it is written.
    let mut arch = Archive::new();
    arch.layer_start(&d).entry(&Entry::dir("big/"));
    for i in 0..N {
        arch.entry(&Entry::file(&format!("big/f{i:06}"), b""));
    }
    arch.layer_end(&d, N as u64 + 1).end();
    let bytes = arch.finish();
    // The real agent binary, alone in its process, under GNU time: the
    // device budget (4 MiB peak RSS) is the bound.
    let (path, store) = sc.store();
    drop(store);
    let elsewhere = TempDir::new("hostile-100k-archive");
    let file = elsewhere.path().join("100k.archive");
    fs::write(&file, &bytes).unwrap();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak-rss-kib=%M"])
        .args(common::agent_argv())
        .args(["apply-archive", "-q", "--store"])
        .arg(&path)
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apply-archive of 100k entries: {err}");
    let kib: u64 = err
        .lines()
        .filter_map(|l| l.strip_prefix("peak-rss-kib="))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .expect("GNU time's peak RSS");
    let store = Store::open(&path, Access::Exclusive).unwrap();
    let n = fs::read_dir(store.layer_path(&d).join("big"))
        .unwrap()
        .count();
    assert_eq!(n, N);
    eprintln!("100k entries applied at a peak RSS of {kib} KiB");
    // Under an emulator (cross tests) the figure is the emulator's; the
    // bound is checked by the native run of the same test.
    if !common::agent_emulated() {
        assert!(
            kib <= 4096,
            "applying 100k entries peaked at {kib} KiB (device budget 4096 KiB)"
        );
    }
    sc.check_outside("100k");
}

/// The fuzz target's seeds (`fuzz/seeds/<target>/`) and every crash input
/// ever kept (`fuzz/regressions/<target>/`). Fails when there are none: a
/// replay of nothing proves nothing.
fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut v = Vec::new();
    for dir in [
        root.join("seeds").join(target),
        root.join("regressions").join(target),
    ] {
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().is_file() && !e.file_name().to_string_lossy().starts_with('.') {
                    v.push((e.path(), fs::read(e.path()).unwrap()));
                }
            }
        }
    }
    assert!(
        !v.is_empty(),
        "no seeds or regressions for fuzz target {target}"
    );
    v.sort();
    v
}

/// The bodies of the `compact_meta` and `delta_apply` fuzz targets, shared
/// with `fuzz/fuzz_targets/` (which `include!` the same files).
mod compact_meta_target {
    include!("../../fuzz/harness/compact_meta.rs");
}
mod delta_apply_target {
    include!("../../fuzz/harness/delta_apply.rs");
}
mod layer_framing_target {
    include!("../../fuzz/harness/layer_framing.rs");
}

/// Replays every seed and kept crash of `layer_framing` (no framing makes
/// the tampered tree verify), and checks that the honest framing does
/// verify the honest tree (so the seeds exercise a real match).
#[test]
fn fuzz_regressions_layer_framing() {
    for (path, data) in regressions("layer_framing") {
        eprintln!("{}", path.display());
        layer_framing_target::run(&data);
    }
    let (tar, framing) = layer_framing_target::reference();
    let t = common::TempDir::new("framing-honest");
    std::fs::create_dir_all(t.path().join("tree/d")).unwrap();
    std::fs::write(t.path().join("tree/a"), b"hello").unwrap();
    let store = layerlink_agent::store::Store::open(
        &t.path().join("store"),
        layerlink_agent::store::Access::Exclusive,
    )
    .unwrap();
    let root = layerlink_agent::fsops::open_dir_path(&t.path().join("tree")).unwrap();
    let v = layerlink_agent::tarsplit::verify_tree(
        &store,
        &Digest::of(&tar),
        std::os::fd::AsFd::as_fd(&root),
        &framing[..],
    )
    .unwrap();
    assert_eq!(v.digest, Digest::of(&tar));
}

/// Replays every seed and kept crash of `compact_meta` through the fuzz
/// target's own body (the store must verify clean, the held layer stay
/// unchanged).
#[test]
fn fuzz_regressions_compact_meta() {
    for (path, data) in regressions("compact_meta") {
        eprintln!("{}", path.display());
        compact_meta_target::run(&data);
    }
}

/// Replays every seed and kept crash of `delta_apply` through the fuzz
/// target's own body (a stored result is exactly the declared size and
/// digest; anything else ends as a fallback or an error).
#[test]
fn fuzz_regressions_delta_apply() {
    for (path, data) in regressions("delta_apply") {
        eprintln!("{}", path.display());
        delta_apply_target::run(&data);
    }
}

/// Replays `fuzz/regressions/archive_apply/*` as the fuzz target does.
#[test]
fn fuzz_regressions_archive_apply() {
    for (path, data) in regressions("archive_apply") {
        let name = path.display().to_string();
        let Some((&mode, rest)) = data.split_first() else {
            continue;
        };
        let bytes = if mode & 1 == 0 {
            rest.to_vec()
        } else if mode & 4 != 0 {
            // As the fuzz target: zstd frames of at most 509 bytes.
            let mut out = Vec::new();
            for chunk in rest.chunks(509) {
                out.extend(zstd::bulk::compress(chunk, 1).unwrap());
            }
            out
        } else {
            gz(rest)
        };
        let mut sc = Scratch::new("hostile-fuzz");
        let (_, store) = sc.store();
        let mut o = ApplyOptions::new(Vec::new());
        o.any_layers = true;
        o.allow_devices = mode & 2 == 0;
        o.max_new_bytes = 16 << 20;
        o.max_stream_bytes = 64 << 20;
        let mut a = Applier::new(&store, o).unwrap();
        let r = a.apply_archive(bytes.as_slice());
        drop(a);
        // The zstd seeds are valid archives: the zstd path must take them.
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let in_seeds = path
            .parent()
            .and_then(|p| p.parent())
            .is_some_and(|p| p.ends_with("seeds"));
        if in_seeds && file.contains("zstd") {
            r.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(store.committed_layers().unwrap().len(), 1, "{name}");
        }
        let mut problems = Vec::new();
        let stats = store.verify(|p| problems.push(p.to_owned())).unwrap();
        assert_eq!(stats.problems, 0, "{name}: store damaged: {problems:?}");
        sc.check_outside(&name);
    }
}

/// Replays `fuzz/regressions/postcard_msgs/*`: decoding never panics and
/// whatever decodes round-trips.
#[test]
fn fuzz_regressions_postcard_msgs() {
    use layerlink_proto::msg::{ArchiveRequest, PlanRequest, PlanResponse, Report};
    fn rt<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        d: &[u8],
    ) {
        if let Ok((v, _)) = postcard::take_from_bytes::<T>(d) {
            let enc = postcard::to_allocvec(&v).unwrap();
            assert_eq!(postcard::from_bytes::<T>(&enc).unwrap(), v);
        }
    }
    for (_, data) in regressions("postcard_msgs") {
        rt::<PlanRequest>(&data);
        rt::<PlanResponse>(&data);
        rt::<ArchiveRequest>(&data);
        rt::<Report>(&data);
    }
}

/// Replays `fuzz/{seeds,regressions}/agent_json/*` as the fuzz target does:
/// the parser accepts only JSON (serde_json as the oracle) and takes every
/// document serde_json reads; what parses is written back (compact and
/// pretty) as JSON that reads back the same; a hand-built number that is
/// not a JSON number is written as `null`.
#[test]
fn fuzz_regressions_agent_json() {
    use layerlink_agent::json::{parse, Value};
    use serde::de::IgnoredAny;
    for (path, data) in regressions("agent_json") {
        let name = path.display();
        match parse(&data) {
            Ok(v) => {
                serde_json::from_slice::<IgnoredAny>(&data)
                    .unwrap_or_else(|e| panic!("{name}: accepted non-JSON: {e}"));
                for text in [v.to_compact(), v.to_pretty()] {
                    serde_json::from_str::<IgnoredAny>(&text)
                        .unwrap_or_else(|e| panic!("{name}: wrote invalid JSON {text:?}: {e}"));
                    assert_eq!(parse(text.as_bytes()).as_ref(), Ok(&v), "{name}");
                }
            }
            Err(e) => assert!(
                serde_json::from_slice::<serde_json::Value>(&data).is_err(),
                "{name}: refused JSON that serde_json reads: {e}"
            ),
        }
        let s = String::from_utf8_lossy(&data).into_owned();
        let hand = Value::Obj(vec![
            ("s".into(), Value::str(s.clone())),
            ("n".into(), Value::Num(s.clone())),
            (s.clone(), Value::Null),
        ]);
        let text = hand.to_compact();
        serde_json::from_str::<IgnoredAny>(&text)
            .unwrap_or_else(|e| panic!("{name}: wrote invalid JSON {text:?}: {e}"));
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(back.get("s").and_then(Value::as_str), Some(s.as_str()));
        let n = if parse(s.as_bytes()) == Ok(Value::Num(s.clone())) {
            Value::Num(s)
        } else {
            Value::Null
        };
        assert_eq!(back.get("n"), Some(&n), "{name}");
    }
}

/// Replays `fuzz/{seeds,regressions}/agent_config/*`: the config parser
/// never panics and an error names a line of the file; the seeds that are
/// valid configs parse (and `errors` does not).
#[test]
fn fuzz_regressions_agent_config() {
    use layerlink_agent::cli::parse_config;
    for (path, data) in regressions("agent_config") {
        let text = String::from_utf8_lossy(&data);
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        match parse_config(&text) {
            Ok(cfg) => {
                assert_ne!(file, "errors", "{}", path.display());
                if file == "every-key" {
                    assert_eq!(cfg.images.as_ref().map(Vec::len), Some(3));
                    assert_eq!(cfg.store.as_deref(), Some("/var/lib/ll # not a comment"));
                    assert_eq!(cfg.token_file.as_deref(), Some("/etc/ll/tok\"en"));
                    assert_eq!(
                        (cfg.keep, cfg.force_platform, cfg.deltas),
                        (Some(0), Some(true), Some(false))
                    );
                    assert_eq!(cfg.trust_key.as_deref(), Some("/etc/layerlink/cosign.pub"));
                }
            }
            Err(e) => {
                assert!(
                    !file.starts_with("agent.toml") && file != "every-key",
                    "{}: {e}",
                    path.display()
                );
                let n: usize = e
                    .strip_prefix("line ")
                    .and_then(|r| r.split_once(": "))
                    .and_then(|(n, _)| n.parse().ok())
                    .unwrap_or_else(|| panic!("{}: error without a line: {e}", path.display()));
                assert!(n >= 1 && n <= text.lines().count().max(1), "{e}");
                assert!(!e.contains('\n'), "{e}");
            }
        }
    }
}

/// Replays `fuzz/{seeds,regressions}/agent_trust/*` through the trust
/// parsers: no panic; the seed key parses, the seed payload passes for
/// what it names and for nothing else, the seed config gives its diff_id.
#[test]
fn fuzz_regressions_agent_trust() {
    use layerlink_agent::trust::{
        base64_decode, check_payload, config_diff_ids, parse_docker_reference, Policy,
    };
    let m = Digest::of(b"m");
    for (path, data) in regressions("agent_trust") {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = String::from_utf8_lossy(&data);
        let key = Policy::from_pem(&data);
        assert_eq!(key.is_ok(), file == "cosign.pub", "{file}: {key:?}");
        assert_eq!(
            base64_decode(&text).is_some(),
            file == "signature.b64",
            "{file}"
        );
        let _ = parse_docker_reference(&text);
        let ok = check_payload(&data, "test/tiny", Some("v1"), &m);
        assert_eq!(ok.is_ok(), file == "payload.json", "{file}: {ok:?}");
        if file == "payload.json" {
            assert!(check_payload(&data, "test/tiny", Some("v2"), &m).is_err());
            assert!(check_payload(&data, "test/tiny", None, &Digest::of(b"x")).is_err());
        }
        let ids = config_diff_ids(&data);
        if file == "config.json" {
            assert_eq!(ids, Ok(vec![m]));
        }
    }
}
