//! Shared helpers of the `edit_*` tests: a real three-layer OCI layout made
//! with umoci, tree comparison of `umoci unpack` results, and independent
//! readers of layouts (serde_json, flate2, tar — not the editor's code).

#![allow(dead_code)]

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Run a command; panic with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fixture script: three layers made by umoci from three bundles.
/// Layer 0: a base tree (hard link, symlink, long path, xattr, owners).
/// Layer 1: changes /etc/hostname, whites out /opt/app/a2, adds /srv/www.
/// Layer 2: changes /etc/motd, whites out /opt/app/sub.
const FIXTURE: &str = r#"
set -eu
umoci init --layout X
umoci new --image X:t
umoci unpack --image X:t B0 >/dev/null
R=B0/rootfs
mkdir -p $R/etc $R/opt/app/sub $R/usr/bin $R/var/empty
printf 'base motd\n' > $R/etc/motd
printf 'h0\n' > $R/etc/hostname
printf 'c\n' > $R/opt/app/sub/c
chown 123:456 $R/opt/app/sub/c
printf 'a\n' > $R/opt/app/a
ln $R/opt/app/a $R/opt/app/a2
ln -s a $R/opt/app/lnk
printf '#!/bin/sh\necho tool\n' > $R/usr/bin/tool
chmod 0755 $R/usr/bin/tool
head -c 200000 /dev/urandom > $R/usr/bin/blob
LONG=$R/opt/dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff.txt
mkdir -p $(dirname $LONG)
printf 'long\n' > $LONG
setfattr -n user.color -v blue $R/etc/motd
find $R -exec touch -h -d @1600000000 {} +
touch -d @1000000 $R/etc/motd
umoci repack --image X:t B0

umoci unpack --image X:t B1 >/dev/null
R=B1/rootfs
printf 'h1\n' > $R/etc/hostname
rm $R/opt/app/a2
mkdir -p $R/srv/www
printf 'www\n' > $R/srv/www/index.html
touch -d @1600000100 $R/etc/hostname $R/srv/www/index.html $R/srv/www $R/srv $R/opt/app $R/opt/app/a
umoci repack --image X:t B1

umoci unpack --image X:t B2 >/dev/null
R=B2/rootfs
rm -r $R/opt/app/sub
printf 'motd 2\n' > $R/etc/motd
touch -d @1600000200 $R/etc/motd $R/opt/app
umoci repack --image X:t B2
"#;

/// A private copy of the fixture layout (tag `t`, three layers).
pub struct Fixture {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The layout.
    pub layout: PathBuf,
}

fn fixture_master() -> &'static Path {
    static MASTER: OnceLock<PathBuf> = OnceLock::new();
    MASTER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        run(Command::new("bash")
            .arg("-c")
            .arg(FIXTURE)
            .current_dir(&dir));
        dir
    })
}

/// A fresh copy of the three-layer layout.
pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("X");
    run(Command::new("cp")
        .arg("-a")
        .arg(fixture_master().join("X"))
        .arg(&layout));
    Fixture { dir, layout }
}

/// `umoci unpack` of `layout:tag` into a new bundle; the rootfs path.
pub fn unpack(layout: &Path, tag: &str, into: &Path) -> PathBuf {
    let bundle = into.join(format!("bundle-{tag}-{}", rand_suffix()));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `skopeo copy oci:layout:tag oci:<tmp>:tag` must succeed (valid image).
pub fn skopeo_copy(layout: &Path, tag: &str, tmp: &Path) {
    let dst = tmp.join(format!("skopeo-{}", rand_suffix()));
    run(Command::new("skopeo")
        .arg("copy")
        .arg("--all")
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("oci:{}:{tag}", dst.display())));
}

/// One file system node, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `d`, `f`, `l`, `c`, `b`, `p`, `s`.
    pub kind: char,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// mtime (seconds); `None` for directories whose mtime is not compared.
    pub mtime: Option<i64>,
    /// sha256 of a file's content.
    pub content: Option<String>,
    /// Symlink target.
    pub target: Option<String>,
    /// `getfattr -d` of a regular file.
    pub xattrs: String,
}

fn sha_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn xattrs(p: &Path) -> String {
    let out = Command::new("getfattr")
        .arg("--absolute-names")
        .arg("-d")
        .arg("-m")
        .arg("-")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(";")
}

/// Every node under `root` (root excluded), by relative path.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                'f'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_fifo() {
                'p'
            } else {
                's'
            };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(
                rel,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: Some(m.mtime()),
                    content: (kind == 'f').then(|| sha_file(&p)),
                    target: (kind == 'l')
                        .then(|| fs::read_link(&p).unwrap().to_string_lossy().into_owned()),
                    xattrs: if kind == 'f' {
                        xattrs(&p)
                    } else {
                        String::new()
                    },
                },
            );
            if kind == 'd' {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Assert two trees are equal (paths, types, content, mode, owner, mtime,
/// symlink targets, xattrs), except the mtime of the directories listed.
pub fn assert_trees(expected: &Path, got: &Path, ignore_dir_mtime: &[&str]) {
    let strip = |mut t: BTreeMap<String, Node>| {
        for d in ignore_dir_mtime {
            if let Some(n) = t.get_mut(*d) {
                n.mtime = None;
            }
        }
        t
    };
    let e = strip(tree(expected));
    let g = strip(tree(got));
    let mut diffs = Vec::new();
    for (p, n) in &e {
        match g.get(p) {
            None => diffs.push(format!("missing {p}: {n:?}")),
            Some(m) if m != n => {
                diffs.push(format!("differs {p}:\n  expected {n:?}\n  got      {m:?}"))
            }
            _ => {}
        }
    }
    for p in g.keys() {
        if !e.contains_key(p) {
            diffs.push(format!("unexpected {p}: {:?}", g[p]));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

/// `cp -a` a tree.
pub fn copy_tree(src: &Path, dst: &Path) {
    run(Command::new("cp").arg("-a").arg(src).arg(dst));
}

/// Set a node's mtime (not following symlinks).
pub fn set_mtime(p: &Path, secs: i64) {
    run(Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(p));
}

/// Write a file with exact metadata, keeping its parent directory's mtime.
pub fn write_file(p: &Path, content: &[u8], mode: u32, uid: u32, gid: u32, mtime: i64) {
    let parent = p.parent().unwrap();
    let parent_mtime = fs::metadata(parent).unwrap().mtime();
    fs::write(p, content).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    set_mtime(p, mtime);
    set_mtime(parent, parent_mtime);
}

/// `rm -rf` keeping the parent directory's mtime.
pub fn remove(p: &Path) {
    let parent = p.parent().unwrap();
    let parent_mtime = fs::metadata(parent).unwrap().mtime();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        fs::remove_dir_all(p).unwrap();
    } else {
        fs::remove_file(p).unwrap();
    }
    set_mtime(parent, parent_mtime);
}

/// A layout's parsed index.json.
pub fn index_json(layout: &Path) -> Value {
    serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap()
}

/// A blob's bytes.
pub fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
}

/// The index.json descriptor of `tag`.
pub fn descriptor(layout: &Path, tag: &str) -> Value {
    index_json(layout)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))
        .clone()
}

/// (manifest, config) of `tag` (an image manifest).
pub fn image(layout: &Path, tag: &str) -> (Value, Value) {
    let d = descriptor(layout, tag);
    let manifest: Value =
        serde_json::from_slice(&blob(layout, d["digest"].as_str().unwrap())).unwrap();
    let config: Value = serde_json::from_slice(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    (manifest, config)
}

/// The layer digests of `tag`.
pub fn layer_digests(layout: &Path, tag: &str) -> Vec<String> {
    let (m, _) = image(layout, tag);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// The uncompressed tar of a layer blob (gzip, zstd or plain).
pub fn layer_tar(layout: &Path, digest: &str) -> Vec<u8> {
    let raw = blob(layout, digest);
    let mut out = Vec::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(&raw[..]).unwrap();
    } else {
        out = raw;
    }
    out
}

/// sha256 of bytes as `sha256:<hex>`.
pub fn sha(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Every entry of a layer: (path, type byte, content).
pub fn layer_entries(layout: &Path, digest: &str) -> Vec<(String, u8, Vec<u8>)> {
    let tar = layer_tar(layout, digest);
    let mut ar = tar::Archive::new(&tar[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let t = e.header().entry_type().as_byte();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, t, data)
        })
        .collect()
}

/// Every diff_id of the config equals the sha256 of the layer's tar, and
/// every blob's digest and size match its descriptor.
pub fn assert_consistent(layout: &Path, tag: &str) {
    let (m, c) = image(layout, tag);
    let layers = m["layers"].as_array().unwrap();
    let diff_ids = c["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (l, d) in layers.iter().zip(diff_ids) {
        let digest = l["digest"].as_str().unwrap();
        let raw = blob(layout, digest);
        assert_eq!(sha(&raw), digest);
        assert_eq!(raw.len() as u64, l["size"].as_u64().unwrap());
        assert_eq!(sha(&layer_tar(layout, digest)), d.as_str().unwrap());
    }
    let non_empty = c["history"].as_array().map_or(0, |h| {
        h.iter()
            .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
            .count()
    });
    assert_eq!(
        non_empty,
        layers.len(),
        "one non-empty history entry per layer"
    );
}

/// The state a failed edit must leave: index.json bytes and blob names.
pub fn snapshot(layout: &Path) -> (Vec<u8>, Vec<String>) {
    let mut names: Vec<String> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut top: Vec<String> = fs::read_dir(layout)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    names.extend(top.into_iter().map(|n| format!("top:{n}")));
    (fs::read(layout.join("index.json")).unwrap(), names)
}
