//! `checkout` against the oracle: the same layers as an OCI image layout,
//! unpacked by `umoci unpack`, must give the same rootfs (paths, types,
//! content, mode, owner, mtime, symlink targets, xattrs) and the same
//! `config.json`. Fails when umoci is not installed (scripts/install-deps.sh
//! installs it): a missing oracle is not a pass.

mod common;

use common::{as_new, describe_tree, image_config, layer_tar, oci_layout, Archive, Entry, TempDir};
use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::checkout::{checkout, lowerdir};
use layerlink_agent::json;
use layerlink_agent::store::record::{parse_image_ref, ImageRecord, FORMAT_VERSION};
use layerlink_agent::store::{Access, Store};
use layerlink_proto::Digest;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn umoci() -> bool {
    Command::new("umoci")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn layers() -> Vec<Vec<Entry>> {
    vec![
        vec![
            Entry::dir("./").mtime(1_500_000_000),
            Entry::dir("etc/").mtime(1_500_000_100),
            Entry::file(
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            ),
            Entry::file("etc/group", b"root:x:0:\napp:x:1000:\nwheel:x:10:app\n"),
            Entry::file("etc/motd", b"welcome\n"),
            Entry::file("etc/empty", b""),
            Entry::dir("bin/"),
            Entry::file("bin/tool", b"#!/bin/sh\necho tool\n").mode(0o755),
            Entry::file("bin/tool-copy", b"#!/bin/sh\necho tool\n")
                .mode(0o750)
                .mtime(1_600_000_500),
            Entry::hardlink("bin/tool-link", "bin/tool"),
            Entry::symlink("bin/sh", "/bin/busybox"),
            Entry::dir("lib64/"),
            Entry::file("lib64/ld.so", b"loader"),
            Entry::dir("data/")
                .owner(1000, 1000)
                .xattr("user.dir", b"d"),
            Entry::file("data/x", b"some data")
                .owner(1000, 1000)
                .mtime(1_234_567_890)
                .xattr("user.k", b"v"),
            Entry::file("data/latin", b"non-utf8").raw_path(b"data/caf\xe9"),
            Entry::dir("opq/"),
            Entry::file("opq/lower", b"lower"),
            Entry::dir("opq/sub/"),
            Entry::file("opq/sub/deep", b"deep"),
            Entry::dir("gone/"),
            Entry::file("gone/f", b"gone"),
            Entry::dir("dev/"),
            Entry::chardev("dev/null", 1, 3),
            Entry::fifo("dev/fifo"),
            Entry::symlink("link-to-dir", "etc"),
            Entry::file("suid", b"setuid").mode(0o4755),
            Entry::dir("home/"),
            Entry::dir("home/app/").owner(1000, 1000),
        ],
        vec![
            Entry::dir("./").mtime(1_500_000_200),
            Entry::file(".wh.gone", b""),
            Entry::dir("etc/").mtime(1_500_000_300),
            Entry::file("etc/.wh.motd", b""),
            Entry::file("etc/hosts", b"127.0.0.1 localhost\n"),
            Entry::dir("opq/"),
            Entry::file("opq/.wh..wh..opq", b""),
            Entry::file("opq/upper", b"upper"),
            // A symlink in the lower layer replaced by a directory.
            Entry::dir("link-to-dir/"),
            Entry::file("link-to-dir/file", b"in a real directory"),
            // A file replaced by a symlink, a directory by a file.
            Entry::symlink("suid", "bin/tool"),
            Entry::file("lib64", b"now a file"),
            // Implicit parent (bin/ has no entry here): keeps layer 1's metadata.
            Entry::file("bin/new", b"new in layer 2").mode(0o700),
            Entry::file("data/x", b"some data")
                .owner(1000, 1000)
                .mtime(1_700_000_000),
        ],
        vec![
            Entry::dir("etc/").mtime(1_500_000_400),
            Entry::file("etc/motd", b"back again\n"),
            Entry::file("bin/.wh.tool-copy", b""),
            Entry::dir("gone/"),
            Entry::file("gone/again", b"recreated"),
        ],
    ]
}

const CONFIG_BODY: &str = "\"User\":\"app\",\"Env\":[\"PATH=/usr/bin:/bin\",\"A=1\"],\
    \"Entrypoint\":[\"/bin/tool\"],\"Cmd\":[\"--flag\",\"x y\"],\"WorkingDir\":\"/srv\",\
    \"Labels\":{\"org.example\":\"label <&>\"},\"ExposedPorts\":{\"80/tcp\":{},\"443/tcp\":{}},\
    \"Volumes\":{\"/data\":{}},\"StopSignal\":\"SIGTERM\"";

#[test]
fn checkout_matches_umoci_unpack() {
    assert!(
        umoci(),
        "umoci is not installed: run scripts/install-deps.sh (this test never skips)"
    );
    let t = TempDir::new("checkout");
    let tars: Vec<(Vec<u8>, Digest)> = layers().iter().map(|l| layer_tar(l)).collect();
    let diff_ids: Vec<Digest> = tars.iter().map(|(_, d)| *d).collect();
    let config = image_config(&diff_ids, CONFIG_BODY);
    let (manifest, config) = oci_layout(
        &t.path().join("oci"),
        "t",
        &tars.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
        &config,
    );

    // The oracle.
    let bundle = t.path().join("umoci");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", t.path().join("oci").display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Our side: a dedup archive of the same layers, applied, checked out.
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut arch = Archive::new();
    for (l, d) in layers().iter().zip(&diff_ids) {
        arch.layer(d, &as_new(l));
    }
    arch.end();
    let mut opts = ApplyOptions::new(diff_ids.clone());
    opts.image_layers = diff_ids.clone();
    let mut a = Applier::new(&store, opts).unwrap();
    a.apply_archive(arch.finish().as_slice()).unwrap();
    drop(a);
    let image = parse_image_ref("app:v1").unwrap();
    store
        .write_record(&ImageRecord {
            version: FORMAT_VERSION,
            image: image.clone(),
            manifest_digest: Digest::of(&manifest),
            config_digest: Digest::of(&config),
            manifest,
            config,
            layers: diff_ids.clone(),
            synced_at: 1,
        })
        .unwrap();

    let ours = t.path().join("ours");
    checkout(&store, &image, &ours, false).unwrap();
    let want = describe_tree(&bundle.join("rootfs"));
    let got = describe_tree(&ours.join("rootfs"));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(want.len(), got.len(), "umoci: {want:#?}\nours: {got:#?}");
    // The interesting cases are really there.
    let has = |prefix: &str| got.iter().any(|l| l.starts_with(prefix));
    assert!(has("/link-to-dir dir") && has("/link-to-dir/file file"));
    assert!(has("/opq/upper") && !has("/opq/lower") && !has("/opq/sub"));
    assert!(has("/gone/again") && !has("/gone/f"));
    assert!(has("/lib64 file") && has("/suid symlink->bin/tool"));
    assert!(!has("/bin/tool-copy") && has("/etc/motd file 11"));
    assert!(has("/dev/null special") && has("/data/x file 9"));

    // A writable checkout does not share inodes with the store.
    let tool = fs::metadata(ours.join("rootfs/bin/tool")).unwrap();
    assert_eq!(tool.nlink(), 1);

    // config.json: the same document as umoci's (created is copied as is).
    let theirs = json::parse(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let mine = json::parse(&fs::read(ours.join("config.json")).unwrap()).unwrap();
    assert_eq!(mine.get("process"), theirs.get("process"));
    assert_eq!(mine.get("root"), theirs.get("root"));
    assert_eq!(mine.get("mounts"), theirs.get("mounts"));
    assert_eq!(mine.get("linux"), theirs.get("linux"));
    let strip_created = |v: &json::Value| match v.get("annotations") {
        Some(json::Value::Obj(m)) => m
            .iter()
            .filter(|(k, _)| k != "org.opencontainers.image.created")
            .cloned()
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    assert_eq!(strip_created(&mine), strip_created(&theirs));

    // Read-only: regular files are the store's inodes; tree otherwise equal.
    let ro = t.path().join("ro");
    checkout(&store, &image, &ro, true).unwrap();
    assert_eq!(describe_tree(&ro.join("rootfs")), got);
    let tool_ro = fs::metadata(ro.join("rootfs/bin/tool")).unwrap();
    let in_layer = fs::metadata(store.layer_path(&diff_ids[0]).join("bin/tool")).unwrap();
    assert_eq!(tool_ro.ino(), in_layer.ino());
    let ro_cfg = json::parse(&fs::read(ro.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        ro_cfg.get("root").and_then(|r| r.get("readonly")),
        Some(&json::Value::Bool(true))
    );

    // overlayfs lower dirs: top layer first.
    let lower = lowerdir(&store, &image).unwrap();
    let parts: Vec<&str> = lower.trim_start_matches("lowerdir=").split(':').collect();
    assert_eq!(parts.len(), 3);
    assert!(parts[0].ends_with(&diff_ids[2].hex()) && parts[2].ends_with(&diff_ids[0].hex()));

    // The destination must be empty.
    assert!(checkout(&store, &image, &ours, false).is_err());
}
