//! Edit, then sync: an image is edited in the registry's store while the
//! registry serves (`layerlink-registry edit --data`), and a device that
//! held the old image syncs the edited one. It must download only what
//! changed — the edited file and the entry headers of the rebuilt layer,
//! not the layer — and its checkout must equal `umoci unpack` of the
//! edited image pulled back with skopeo.

use layerlink_tests::bins::registry_bin;
use layerlink_tests::layers::{image_files, largest_file_in};
use layerlink_tests::{
    assert_trees_equal, run, skopeo_pull, skopeo_push, test_images, umoci_unpack, Agent,
    CountingProxy, OciLayout, Registry,
};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "tok-dev1";
// Content frames at zstd level 3, not 19: the cold syncs of these tests
// would spend most of their time making level-19 frames, and what is
// measured here (which files travel) does not depend on the level.
const DEVICE_CONFIG: &str = r#"
zstd_level = 3

[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["*"]
"#;
const IMAGE: &str = "test/base-b:v1";

struct Fixture {
    reg: Registry,
    proxy: CountingProxy,
}

/// base-b:v1 (a Debian base layer and a small /app layer) in a registry.
fn fixture() -> Fixture {
    let images = test_images();
    let reg = Registry::start(Some(DEVICE_CONFIG));
    skopeo_push(&images.oci_dir, "base-b:v1", &reg, IMAGE);
    let deadline = Instant::now() + Duration::from_secs(120);
    while reg.stat("layers") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let proxy = CountingProxy::start(reg.addr());
    Fixture { reg, proxy }
}

impl Fixture {
    /// Sync and return the bytes on the wire (both ways).
    fn sync(&self, agent: &Agent, image: &str) -> u64 {
        self.proxy.reset();
        agent.sync(&self.proxy.url(), &[image]);
        self.proxy.bytes_total()
    }

    /// `layerlink-registry edit --data DATA IMAGE ARGS…`; the new digest.
    fn edit(&self, args: &[&str]) -> String {
        let out = run(Command::new(registry_bin())
            .arg("edit")
            .arg("--data")
            .arg(self.reg.data_dir())
            .args(self.reg.storage_config_arg())
            .arg(IMAGE)
            .args(args));
        assert!(
            out.status.success(),
            "edit {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Pull `image` back with skopeo; the layout holding it as `tag`.
    fn pull(&self, agent: &Agent, image: &str, tag: &str) -> OciLayout {
        let dir = agent.scratch(&format!("pulled-{tag}"));
        skopeo_pull(&self.reg, image, &dir, tag);
        OciLayout::open(dir)
    }
}

/// The agent's checkout of `image` equals `umoci unpack` of `tag` in `layout`.
fn assert_checkout_matches_umoci(agent: &Agent, image: &str, layout: &OciLayout, tag: &str) {
    let reference = agent.scratch(&format!("umoci-{tag}"));
    umoci_unpack(&layout.dir, tag, &reference);
    let checkout = agent.scratch(&format!("checkout-{tag}"));
    agent.checkout(image, &checkout);
    assert_trees_equal(&reference.join("rootfs"), &checkout.join("rootfs"));
}

/// The intended result of replacing one file of base-b:v1, built without
/// the registry: `umoci unpack` of the original image from the test
/// layout, then the file replaced by hand (content, owner, mode, mtime) and
/// its directory's mtime put back. Returns the rootfs.
struct Put<'a> {
    path: &'a str,
    content: &'a [u8],
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

fn original_with(agent: &Agent, name: &str, put: &Put) -> std::path::PathBuf {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let at = |secs: i64| std::time::UNIX_EPOCH + Duration::from_secs(secs as u64);
    let bundle = agent.scratch(&format!("oracle-{name}"));
    umoci_unpack(&test_images().oci_dir, "base-b:v1", &bundle);
    let rootfs = bundle.join("rootfs");
    let file = rootfs.join(put.path);
    let parent = file.parent().unwrap().to_path_buf();
    let parent_mtime = std::fs::symlink_metadata(&parent).unwrap().mtime();
    let _ = std::fs::remove_file(&file);
    std::fs::write(&file, put.content).unwrap();
    std::os::unix::fs::chown(&file, Some(put.uid), Some(put.gid)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(put.mode)).unwrap();
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(at(put.mtime as i64)).unwrap();
    std::fs::File::open(&parent)
        .unwrap()
        .set_modified(at(parent_mtime))
        .unwrap();
    rootfs
}

/// The agent's checkout of `image` equals the intended result.
fn assert_checkout_is(agent: &Agent, image: &str, tag: &str, oracle: &Path) {
    let checkout = agent.scratch(&format!("checkout-{tag}"));
    if !checkout.join("rootfs").exists() {
        agent.checkout(image, &checkout);
    }
    assert_trees_equal(oracle, &checkout.join("rootfs"));
}

/// `n` bytes that do not compress (a sha256 chain).
fn incompressible(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut block = Sha256::digest(b"layerlink edit e2e");
    while out.len() < n {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(n);
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_device_downloads_only_the_file_edited_inside_the_base_layer() {
    let fx = fixture();
    let agent = Agent::new(TOKEN);
    fx.sync(&agent, IMAGE);

    // Replace /etc/motd inside layer 0 (the ~60 MB Debian base) with 100 kB
    // that cannot compress, while the registry serves.
    let content = incompressible(100_000);
    let src = agent.scratch("motd");
    write(&src, &content);
    let put = format!("{}:/etc/motd", src.display());
    let args = [
        "--tag", "edited", "--layer", "0", "--put", &put, "--mode", "0644",
    ];
    fx.edit(
        &[
            &args[..],
            &["--uid", "0", "--gid", "0", "--mtime", "1700000000"],
        ]
        .concat(),
    );

    let edited = "test/base-b:edited";
    let layout = fx.pull(&agent, edited, "edited");
    let original = test_images().layout();
    let old = original.layers("base-b:v1");
    let new = layout.layers("edited");
    assert_eq!(new.len(), 2);
    assert_ne!(new[0].digest, old[0].digest, "layer 0 was rebuilt");
    assert_eq!(new[1].digest, old[1].digest, "layer 1 is byte-identical");

    let cost = fx.sync(&agent, edited);
    let entries = image_files(&layout, &["edited"]).entries;
    let budget = content.len() as u64 + entries * 256 + 64 * 1024;
    eprintln!(
        "edited base layer: sync cost {cost} B; layer 0 is {} B compressed, {entries} entries",
        new[0].size
    );
    assert!(
        cost >= content.len() as u64,
        "the edited file ({} B, incompressible) cannot have travelled in {cost} B",
        content.len()
    );
    assert!(
        cost <= budget,
        "sync after the edit cost {cost} B, more than the edited file + headers ({budget} B)"
    );
    assert!(
        cost < new[0].size / 10,
        "sync after the edit cost {cost} B: not much less than the rebuilt layer ({} B)",
        new[0].size
    );
    assert_checkout_matches_umoci(&agent, edited, &layout, "edited");
    // And it is what the edit meant, by an oracle that does not go through
    // the registry.
    let put = Put {
        path: "etc/motd",
        content: &content,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    };
    assert_checkout_is(
        &agent,
        edited,
        "edited",
        &original_with(&agent, "edited", &put),
    );
    let checkout = agent.scratch("checkout-edited");
    assert_eq!(
        std::fs::read(checkout.join("rootfs/etc/motd")).unwrap(),
        content
    );

    let again = fx.sync(&agent, edited);
    assert!(again < 2 * 1024, "a no-op re-sync cost {again} B");
}

/// Issue 12's target: a small change inside a large file, made with
/// `layerlink-registry edit`, costs at most twice the change plus headers.
/// The headers are measured, not guessed: the same edit putting the file
/// back with its content unchanged (only its mtime moves) syncs first, and
/// what that costs — the rebuilt layer's metadata, the archive framing, the
/// HTTP exchange — is what the changed file's sync costs besides its bytes.
#[test]
fn a_small_change_inside_a_large_file_travels_as_a_patch() {
    const CHANGE: usize = 4096;
    let fx = fixture();
    let agent = Agent::new(TOKEN);
    fx.sync(&agent, IMAGE);

    // The largest file of the Debian base layer that is not compressed data
    // (the registry sends those whole: patches do not pay on them).
    let original = test_images().layout();
    let base = &original.layers("base-b:v1")[0];
    let compressed = [".gz", ".xz", ".zst", ".bz2", ".png", ".deb"];
    let file = largest_file_in(&original, base, |p| {
        !compressed.iter().any(|ext| p.ends_with(ext))
    })
    .expect("a regular file in layer 0");
    let whole = zstd::bulk::compress(&file.data, 3).unwrap().len();
    assert!(
        whole > 8 * CHANGE,
        "{} compresses to {whole} B: too small to tell a patch from the whole file",
        file.path
    );
    // 4 KiB in the middle overwritten with bytes that do not compress.
    let mut changed = file.data.clone();
    let mid = changed.len() / 2;
    changed[mid..mid + CHANGE].copy_from_slice(&incompressible(CHANGE));

    let put = |tag: &str, content: &[u8]| {
        let src = agent.scratch(&format!("put-{tag}"));
        write(&src, content);
        let put = format!("{}:/{}", src.display(), file.path);
        let (mode, uid, gid) = (
            format!("{:04o}", file.mode & 0o7777),
            file.uid.to_string(),
            file.gid.to_string(),
        );
        let mtime = (file.mtime + 1).to_string();
        fx.edit(&[
            "--tag", tag, "--layer", "0", "--put", &put, "--mode", &mode, "--uid", &uid, "--gid",
            &gid, "--mtime", &mtime,
        ]);
        format!("test/base-b:{tag}")
    };
    let control = put("same", &file.data);
    let headers = fx.sync(&agent, &control);
    let patched = put("patched", &changed);
    let deltas_before = fx.reg.deltas_sent();
    let cost = fx.sync(&agent, &patched);
    let deltas = fx.reg.deltas_sent() - deltas_before;
    eprintln!(
        "{} ({} B, {whole} B at zstd -3) with {CHANGE} B changed: sync {cost} B; \
         the same edit without the change {headers} B; {deltas} delta entries",
        file.path,
        file.data.len()
    );
    assert_eq!(deltas, 1, "the changed file travels as one delta entry");
    assert!(
        cost >= CHANGE as u64,
        "{CHANGE} incompressible bytes cannot have travelled in {cost} B"
    );
    assert!(
        cost <= 2 * CHANGE as u64 + headers,
        "the change cost {cost} B: more than 2 x {CHANGE} B + {headers} B of headers"
    );

    let layout = fx.pull(&agent, &patched, "patched");
    assert_checkout_matches_umoci(&agent, &patched, &layout, "patched");
    let put = Put {
        path: &file.path,
        content: &changed,
        mode: file.mode & 0o7777,
        uid: file.uid as u32,
        gid: file.gid as u32,
        mtime: file.mtime + 1,
    };
    assert_checkout_is(
        &agent,
        &patched,
        "patched",
        &original_with(&agent, "patched", &put),
    );
    let checkout = agent.scratch("checkout-patched");
    assert_eq!(
        std::fs::read(checkout.join("rootfs").join(&file.path)).unwrap(),
        changed
    );
}

#[test]
fn deleting_or_inserting_a_layer_costs_only_the_new_layer() {
    let fx = fixture();
    let agent = Agent::new(TOKEN);
    fx.sync(&agent, IMAGE);

    // Without /app: every remaining layer is held.
    fx.edit(&["--tag", "no-app", "--delete-layer", "1"]);
    let image = "test/base-b:no-app";
    let cost = fx.sync(&agent, image);
    assert!(
        cost < 16 * 1024,
        "deleting a layer cost {cost} B on the wire"
    );
    let layout = fx.pull(&agent, image, "no-app");
    assert_eq!(layout.layers("no-app").len(), 1);
    assert_checkout_matches_umoci(&agent, image, &layout, "no-app");

    // A small layer inserted between the two: only it travels.
    let dir = agent.scratch("insert");
    std::fs::create_dir_all(dir.join("etc/layerlink")).unwrap();
    let content = incompressible(20_000);
    write(&dir.join("etc/layerlink/inserted.bin"), &content);
    let spec = format!("1:{}", dir.display());
    fx.edit(&["--tag", "inserted", "--insert-layer", &spec]);
    let image = "test/base-b:inserted";
    let cost = fx.sync(&agent, image);
    assert!(
        cost >= content.len() as u64 && cost < content.len() as u64 + 16 * 1024,
        "inserting a {} B layer cost {cost} B on the wire",
        content.len()
    );
    let layout = fx.pull(&agent, image, "inserted");
    assert_eq!(layout.layers("inserted").len(), 3);
    assert_checkout_matches_umoci(&agent, image, &layout, "inserted");
}

// ---- issue 18: held layers restacked by edits ------------------------------

/// A tar of `files` (path, content) with no directory entries: its parent
/// directories are only implied. `dirs` are listed (path, mtime, mode).
fn layer_tar_file(path: &Path, dirs: &[(&str, u64, u32)], files: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(Vec::new());
    for (d, mtime, mode) in dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(*mtime);
        h.set_cksum();
        b.append_data(&mut h, d, &[][..]).unwrap();
    }
    for (f, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_650_000_000);
        h.set_cksum();
        b.append_data(&mut h, f, *data).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// The directories whose metadata `tag`'s layers define: each layer, bottom
/// up, adds the directories it lists and removes what its whiteouts and
/// opaque markers hide. Read from the pulled blobs with the tar crate.
fn defined_dirs(layout: &OciLayout, tag: &str) -> std::collections::BTreeSet<String> {
    let mut set = std::collections::BTreeSet::new();
    for l in layout.layers(tag) {
        let mut a = tar::Archive::new(layerlink_tests::layers::layer_reader(layout, &l));
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let p = p.trim_start_matches("./").trim_end_matches('/').to_owned();
            let (parent, leaf) = p.rsplit_once('/').unwrap_or(("", &p));
            if leaf == ".wh..wh..opq" {
                let hidden: Vec<String> = set
                    .iter()
                    .filter(|x: &&String| x.starts_with(&format!("{parent}/")))
                    .cloned()
                    .collect();
                for h in hidden {
                    set.remove(&h);
                }
            } else if let Some(name) = leaf.strip_prefix(".wh.") {
                let gone = if parent.is_empty() {
                    name.to_owned()
                } else {
                    format!("{parent}/{name}")
                };
                let hidden: Vec<String> = set
                    .iter()
                    .filter(|x| **x == gone || x.starts_with(&format!("{gone}/")))
                    .cloned()
                    .collect();
                for h in hidden {
                    set.remove(&h);
                }
            } else if e.header().entry_type() == tar::EntryType::Directory {
                set.insert(p);
            }
        }
    }
    set
}

/// Checkout of `image` equals `umoci unpack`, exactly, except for the mtime
/// of directories the image does not define (no layer lists them, or a
/// later opaque marker or whiteout hid the listing) and of their parents
/// (umoci's MkdirAll of such a directory touches the parent after its
/// metadata was applied).
fn assert_checkout_matches_umoci_where_defined(
    agent: &Agent,
    image: &str,
    layout: &OciLayout,
    tag: &str,
) {
    let reference = agent.scratch(&format!("umoci-{tag}"));
    umoci_unpack(&layout.dir, tag, &reference);
    let checkout = agent.scratch(&format!("checkout-{tag}"));
    agent.checkout(image, &checkout);
    let defined = defined_dirs(layout, tag);
    let rootfs = reference.join("rootfs");
    let is_dir = |p: &Path| {
        std::fs::symlink_metadata(rootfs.join(p))
            .map(|m| m.is_dir())
            .unwrap_or(false)
    };
    let key = |p: &Path| p.to_string_lossy().trim_start_matches("./").to_owned();
    let undefined = |p: &Path| {
        let k = key(p);
        is_dir(p) && !defined.contains(if k == "." { "" } else { k.as_str() })
    };
    let diffs: Vec<_> = layerlink_tests::tree::compare_trees(&rootfs, &checkout.join("rootfs"))
        .into_iter()
        .filter(|d| {
            if d.what != "mtime" {
                return true;
            }
            let has_undefined_child = std::fs::read_dir(rootfs.join(&d.path))
                .map(|rd| rd.flatten().any(|c| undefined(&d.path.join(c.file_name()))))
                .unwrap_or(false);
            !(undefined(&d.path) || has_undefined_child)
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{tag}: checkout differs from umoci where the image defines the result:\n{}",
        diffs
            .iter()
            .take(20)
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

impl Fixture {
    /// `layerlink-registry edit --data DATA IMAGE ARGS…` on any image.
    fn edit_image(&self, image: &str, args: &[&str]) {
        let out = run(Command::new(registry_bin())
            .arg("edit")
            .arg("--data")
            .arg(self.reg.data_dir())
            .args(self.reg.storage_config_arg())
            .arg(image)
            .args(args));
        assert!(
            out.status.success(),
            "edit {image} {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 18: the device holds an image whose top layer only implies its
/// parent directories; the registry inserts a layer (listing those
/// directories with other metadata, with an opaque directory crossing the
/// edited position) at each position, deletes each layer, and both. The
/// device syncs each result (only new layers travel) and every checkout
/// equals `umoci unpack` of the same image wherever the image defines it.
#[test]
fn restacked_layers_check_out_like_umoci_at_every_position() {
    let fx = fixture();
    let agent = Agent::new(TOKEN);
    fx.sync(&agent, IMAGE);
    let scratch = agent.scratch("restack");
    std::fs::create_dir_all(&scratch).unwrap();
    // The implying layer: /usr/local/bin, /usr/share/doc and /var/lib/dpkg
    // exist in the Debian base, none is listed here.
    let implying = scratch.join("implying.tar");
    layer_tar_file(
        &implying,
        &[],
        &[
            ("usr/local/bin/hello", b"#!/bin/sh\necho hello\n"),
            ("usr/share/doc/restack/README", b"restacked\n"),
            ("var/lib/dpkg/restack-marker", b"m"),
        ],
    );
    let spec = format!("2:{}", implying.display());
    fx.edit_image(IMAGE, &["--tag", "imp", "--insert-layer", &spec]);
    let imp = "test/base-b:imp";
    fx.sync(&agent, imp);
    let layout = fx.pull(&agent, imp, "imp");
    assert_eq!(layout.layers("imp").len(), 3);
    assert_checkout_matches_umoci_where_defined(&agent, imp, &layout, "imp");

    // The lister: usr/, usr/local/, var/, var/lib/ with other metadata, and
    // usr/share/doc/ made opaque below the implying layer.
    let lister = scratch.join("lister.tar");
    layer_tar_file(
        &lister,
        &[
            ("usr/", 1_600_000_010, 0o750),
            ("usr/local/", 1_600_000_020, 0o755),
            ("var/", 1_600_000_030, 0o711),
            ("var/lib/", 1_600_000_040, 0o755),
            ("usr/share/", 1_600_000_050, 0o755),
            ("usr/share/doc/", 1_600_000_060, 0o755),
        ],
        &[
            ("usr/share/doc/.wh..wh..opq", b""),
            ("etc/restack.conf", b"x=1\n"),
        ],
    );
    let mut cases: Vec<(String, Vec<String>)> = Vec::new();
    for k in 0..=3 {
        cases.push((
            format!("ins{k}"),
            vec!["--insert-layer".into(), format!("{k}:{}", lister.display())],
        ));
    }
    for k in 0..3 {
        cases.push((
            format!("del{k}"),
            vec!["--delete-layer".into(), k.to_string()],
        ));
    }
    cases.push((
        "both".into(),
        vec![
            "--delete-layer".into(),
            "0".into(),
            "--insert-layer".into(),
            format!("1:{}", lister.display()),
        ],
    ));
    for (tag, args) in &cases {
        let mut a: Vec<&str> = vec!["--tag", tag];
        a.extend(args.iter().map(String::as_str));
        fx.edit_image(imp, &a);
        let image = format!("test/base-b:{tag}");
        let cost = fx.sync(&agent, &image);
        assert!(
            cost < 64 * 1024,
            "{tag}: restacking cost {cost} B on the wire"
        );
        let layout = fx.pull(&agent, &image, tag);
        assert_checkout_matches_umoci_where_defined(&agent, &image, &layout, tag);
    }
}
