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
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

    // Read-only: a read-only overlayfs of the layers; the same tree as
    // umoci's (directories from the skeleton, no implied marks), the files
    // the store's, and no write through it reaches the store.
    let ro = t.path().join("ro");
    checkout(&store, &image, &ro, true).unwrap();
    let ro_tree = describe_tree(&ro.join("rootfs"));
    let unmount = || {
        let st = Command::new("umount")
            .arg(ro.join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
    };
    if ro_tree != got {
        unmount();
        panic!("read-only checkout differs:\nro: {ro_tree:#?}\ncopy: {got:#?}");
    }
    let tool_path = ro.join("rootfs/bin/tool");
    let before = fs::read(store.layer_path(&diff_ids[0]).join("bin/tool")).unwrap();
    let attempts: Vec<std::io::Result<()>> = vec![
        fs::OpenOptions::new()
            .append(true)
            .open(&tool_path)
            .map(drop),
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&tool_path)
            .map(drop),
        fs::set_permissions(&tool_path, fs::Permissions::from_mode(0o777)),
        fs::rename(ro.join("rootfs/etc/motd"), &tool_path),
        fs::write(ro.join("rootfs/new"), b"x"),
        fs::remove_file(&tool_path),
    ];
    let cfg_text = fs::read(ro.join("config.json"));
    unmount();
    for (i, a) in attempts.iter().enumerate() {
        let e = a
            .as_ref()
            .expect_err(&format!("write attempt {i} succeeded"));
        assert_eq!(e.raw_os_error(), Some(30), "attempt {i}: {e}"); // EROFS
    }
    assert_eq!(
        fs::read(store.layer_path(&diff_ids[0]).join("bin/tool")).unwrap(),
        before
    );
    assert_eq!(store.verify(|p| panic!("{p}")).unwrap().problems, 0);
    // Unmounted, the rootfs is an empty directory, not store links.
    assert_eq!(fs::read_dir(ro.join("rootfs")).unwrap().count(), 0);
    let ro_cfg = json::parse(&cfg_text.unwrap()).unwrap();
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

/// Directories of `layers` that some layer lists (tar entries of type
/// directory), as `describe_tree` names them ("/" for "./").
fn listed_dirs(layers: &[&Vec<Entry>]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for l in layers {
        for e in l.iter() {
            if e.kind == b'5' {
                let p = String::from_utf8_lossy(&e.path);
                let p = p.trim_start_matches("./").trim_end_matches('/');
                out.insert(format!("/{p}"));
            }
        }
    }
    out
}

/// `describe_tree` lines, with the mtime of directories no layer lists
/// masked: the image does not define it (umoci gives them the time of the
/// unpack). So is the mtime of their parents: umoci's MkdirAll of an
/// unlisted directory touches its parent after that parent's metadata was
/// applied, so umoci shows the unpack time there too, where the image
/// defines the lister's (which is what we keep). Everything else is
/// compared exactly.
fn masked(lines: &[String], listed: &std::collections::BTreeSet<String>) -> Vec<String> {
    let dir_path = |l: &String| {
        l.contains(" dir ")
            .then(|| l.split(" dir ").next().unwrap_or("").to_owned())
    };
    let mut undefined: std::collections::BTreeSet<String> = lines
        .iter()
        .filter_map(dir_path)
        .filter(|p| !listed.contains(p))
        .collect();
    let parents: Vec<String> = undefined
        .iter()
        .filter_map(|p| {
            p.rsplit_once('/').map(|(a, _)| {
                if a.is_empty() {
                    "/".to_owned()
                } else {
                    a.to_owned()
                }
            })
        })
        .collect();
    undefined.extend(parents);
    lines
        .iter()
        .map(|l| {
            let path = l.split(" dir ").next().unwrap_or("");
            if l.contains(" dir ") && undefined.contains(path) {
                l.split(' ')
                    .map(|w| {
                        if w.starts_with("mtime=") {
                            "mtime=*"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                l.clone()
            }
        })
        .collect()
}

/// Issue 18: a layer that only implies its parent directories is applied
/// once, under its first parent, then reused when an edit restacks it (a
/// layer inserted below it; the base deleted; both). Each checkout must be
/// `umoci unpack` of the same image: a directory takes the metadata of the
/// topmost layer that lists it; one no layer lists is 0755, owned by the
/// unpacking user, with an undefined mtime (ARCHITECTURE.md).
#[test]
fn restacked_layers_take_directory_metadata_from_their_new_parents() {
    assert!(
        umoci(),
        "umoci is not installed: run scripts/install-deps.sh"
    );
    let base = vec![
        Entry::dir("./").mtime(1_500_000_000),
        Entry::dir("usr/").mtime(1_500_000_010),
        Entry::dir("usr/local/").mtime(1_500_000_020),
        Entry::file("usr/readme", b"base"),
        Entry::dir("var/").mtime(1_500_000_030),
        Entry::dir("var/lib/").mtime(1_500_000_040).mode(0o700),
        Entry::dir("opq/").mtime(1_500_000_060),
        Entry::file("opq/old", b"old"),
    ];
    // The app layer lists none of usr/, usr/local/, var/, var/lib/ or the root.
    let app = vec![
        Entry::file("usr/local/bin/hello", b"#!/bin/sh\necho hello\n").mode(0o755),
        Entry::dir("var/lib/app/").mtime(1_500_000_050),
        Entry::file("var/lib/app/state", b"s"),
        Entry::file("opq/new", b"new"),
    ];
    // Inserted between them: lists usr/ and usr/local/ with other metadata,
    // implies etc/, and makes opq/ opaque below the app layer.
    let extra = vec![
        Entry::dir("./").mtime(1_600_000_000),
        Entry::dir("usr/").mtime(1_600_000_010).mode(0o750),
        Entry::dir("usr/local/")
            .mtime(1_600_000_020)
            .owner(1000, 1000),
        Entry::file("etc/extra.conf", b"x=1\n"),
        Entry::dir("opq/").mtime(1_600_000_030),
        Entry::file("opq/.wh..wh..opq", b""),
        Entry::file("opq/inserted", b"i"),
    ];
    let id = |l: &Vec<Entry>| layer_tar(l).1;
    let t = TempDir::new("restack");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let images: Vec<(&str, Vec<&Vec<Entry>>)> = vec![
        ("v1", vec![&base, &app]),
        ("ins", vec![&base, &extra, &app]),
        ("del", vec![&app]),
        ("insdel", vec![&extra, &app]),
    ];
    let mut compared = 0;
    for (tag, layers) in &images {
        let tars: Vec<(Vec<u8>, Digest)> = layers.iter().map(|l| layer_tar(l)).collect();
        let diff_ids: Vec<Digest> = tars.iter().map(|(_, d)| *d).collect();
        let config = image_config(&diff_ids, "\"Cmd\":[\"/bin/sh\"]");
        let oci = t.path().join(format!("oci-{tag}"));
        let (manifest, config) = oci_layout(
            &oci,
            tag,
            &tars.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            &config,
        );
        // The device receives only the layers it lacks (as a sync would).
        let missing: Vec<(&Vec<Entry>, Digest)> = layers
            .iter()
            .map(|l| (*l, id(l)))
            .filter(|(_, d)| !store.has_layer(d).unwrap())
            .collect();
        if !missing.is_empty() {
            let mut arch = Archive::new();
            for (l, d) in &missing {
                arch.layer(d, &as_new(l));
            }
            arch.end();
            let mut opts = ApplyOptions::new(missing.iter().map(|(_, d)| *d).collect());
            opts.image_layers = diff_ids.clone();
            let mut a = Applier::new(&store, opts).unwrap();
            a.apply_archive(arch.finish().as_slice()).unwrap();
        }
        let image = parse_image_ref(&format!("app:{tag}")).unwrap();
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
        let bundle = t.path().join(format!("umoci-{tag}"));
        let out = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", oci.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = t.path().join(format!("ours-{tag}"));
        checkout(&store, &image, &ours, false).unwrap();
        let listed = listed_dirs(layers);
        let want = masked(&describe_tree(&bundle.join("rootfs")), &listed);
        let got = masked(&describe_tree(&ours.join("rootfs")), &listed);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w, g, "image {tag}");
        }
        assert_eq!(
            want.len(),
            got.len(),
            "image {tag}: umoci {want:#?}\nours {got:#?}"
        );
        // The read-only checkout (an overlay of the restacked layers with
        // the directory skeleton on top) shows the same tree.
        let ro = t.path().join(format!("ro-{tag}"));
        checkout(&store, &image, &ro, true).unwrap();
        let ro_got = masked(&describe_tree(&ro.join("rootfs")), &listed);
        let st = Command::new("umount")
            .arg(ro.join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(ro_got, got, "image {tag}: read-only checkout");
        compared += 1;
    }
    assert_eq!(compared, 4);
    // The app layer was received once, for v1, and reused by every edit.
    assert!(store.has_layer(&id(&app)).unwrap());
}
