//! The harness checks itself: the oracles must see real differences, the
//! proxy must count what crosses it. These need neither registry nor agent.

use layerlink_tests::layers::{image_files, layer_files};
use layerlink_tests::{compare_trees, test_images, umoci_unpack, CountingProxy};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[test]
fn two_umoci_unpacks_of_one_image_compare_equal_and_edits_are_seen() {
    let images = test_images();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    umoci_unpack(&images.oci_dir, "tiny:v2", &a);
    umoci_unpack(&images.oci_dir, "tiny:v2", &b);
    let (ra, rb) = (a.join("rootfs"), b.join("rootfs"));
    assert_eq!(compare_trees(&ra, &rb), vec![]);

    // tiny:v2 has what the build script put there.
    assert_eq!(
        xattr::get(ra.join("data/a.txt"), "user.test").unwrap(),
        Some(b"tiny".to_vec())
    );
    assert!(!ra.join("data/remove-me.txt").exists(), "whiteout applied");
    assert_eq!(std::fs::read(ra.join("data/changes.txt")).unwrap(), b"v2\n");

    // Every kind of edit is reported, at the right path.
    std::fs::write(rb.join("data/changes.txt"), b"v3\n").unwrap();
    std::fs::set_permissions(rb.join("bin/hello"), std::fs::Permissions::from_mode(0o700)).unwrap();
    xattr::set(rb.join("data/a.txt"), "user.test", b"other").unwrap();
    std::fs::remove_file(rb.join("data/motd-link")).unwrap();
    std::os::unix::fs::symlink("../etc/other", rb.join("data/motd-link")).unwrap();
    std::os::unix::fs::chown(rb.join("data/added.txt"), Some(7), None).unwrap();
    std::fs::remove_file(rb.join("data/empty")).unwrap();
    std::fs::write(rb.join("data/extra"), b"").unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(rb.join("etc/motd"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();

    let diffs = compare_trees(&ra, &rb);
    let found = |path: &str, what: &str| {
        diffs
            .iter()
            .any(|d| d.path == Path::new(".").join(path) && d.what == what)
    };
    for (path, what) in [
        ("data/changes.txt", "content"),
        ("bin/hello", "mode"),
        ("data/a.txt", "xattrs"),
        ("data/a-hardlink.txt", "xattrs"),
        ("data/motd-link", "symlink target"),
        ("data/added.txt", "uid"),
        ("data/empty", "missing"),
        ("data/extra", "missing"),
        ("etc/motd", "mtime"),
    ] {
        assert!(
            found(path, what),
            "{what} of {path} not reported; got {diffs:#?}"
        );
    }
}

#[test]
fn layer_oracle_counts_what_umoci_unpacks() {
    let images = test_images();
    let layout = images.layout();
    let files = layer_files(&layout, &layout.layers("tiny:v1")[0]);
    // tiny:v1: motd, hello, a-hardlink.txt (a.txt is a hard-link entry),
    // same-content-other-mode, empty, random.bin, remove-me, changes.
    assert_eq!(files.regular_files, 8, "{files:?}");
    assert!(files.has_empty_file());
    // a.txt and same-content-other-mode.txt share content.
    assert_eq!(files.digests.len(), 7);
    assert_eq!(files.distinct_nonempty(), 6);

    let tmp = tempfile::tempdir().unwrap();
    umoci_unpack(&images.oci_dir, "tiny:v1", &tmp.path().join("b"));
    let random = std::fs::read(tmp.path().join("b/rootfs/data/random.bin")).unwrap();
    assert!(files
        .digests
        .contains(&layerlink_tests::sha256_hex(&random)));

    // tiny:v2 adds a layer with one changed and one added file.
    let both = image_files(&layout, &["tiny:v1", "tiny:v2"]);
    assert_eq!(both.digests.len(), 9);
}

#[test]
fn test_images_have_the_promised_shape() {
    let images = test_images();
    let layout = images.layout();
    for tag in layerlink_tests::images::TAGS {
        let info = images.info(tag);
        assert_eq!(layout.layers(tag).len(), info.layers, "{tag}");
        assert_eq!(layout.diff_ids(tag).len(), info.layers, "{tag}");
    }
    assert_eq!(images.info("base-a:v1").layers, 1);
    assert_eq!(images.info("base-a:v2").layers, 1);
    assert_eq!(images.info("base-b:v1").layers, 2);
    let a1 = layout.layers("base-a:v1");
    let a2 = layout.layers("base-a:v2");
    let b1 = layout.layers("base-b:v1");
    assert_ne!(
        a1[0].digest, a2[0].digest,
        "v2 is a rebuild: new layer digest"
    );
    // The benchmark's pairs: base + app layers, every layer rebuilt.
    for tag in layerlink_tests::images::BENCH_TAGS {
        assert_eq!(images.info(tag).layers, 2, "{tag}");
    }
    let (u1, u2, s1) = (
        layout.layers("upd:v1"),
        layout.layers("upd:v2"),
        layout.layers("sib:v1"),
    );
    for (a, b) in [(&u1, &u2), (&u1, &s1), (&u2, &s1)] {
        assert!(
            a.iter().all(|l| b.iter().all(|m| m.digest != l.digest)),
            "independent builds share no layer"
        );
    }
    // upd:v2 upgraded packages in both layers (the build script checks
    // perl-base in the base, python and libssl in the app, and lists them).
    let upgraded = std::fs::read_to_string(images.oci_dir.join("../packages-upd.txt"))
        .expect("packages-upd.txt next to the layout");
    for p in ["perl-base ", "libpython3.11-stdlib ", "libssl3 "] {
        assert!(
            upgraded.lines().any(|l| l.starts_with(p)),
            "{p} not upgraded: {upgraded}"
        );
    }
    assert!(
        b1.iter().all(|l| l.digest != a1[0].digest),
        "base-b shares no layer"
    );
    // ...but most files are shared by content.
    let fa = layer_files(&layout, &a1[0]);
    let fb = layer_files(&layout, &b1[0]);
    let shared = fa.digests.intersection(&fb.digests).count();
    assert!(
        shared * 10 >= fa.digests.len() * 8,
        "base-a and base-b share only {shared} of {} contents",
        fa.digests.len()
    );
}

#[test]
fn counting_proxy_counts_both_directions_and_cuts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            std::thread::spawn(move || {
                // Read 100 bytes, answer 10_000.
                let mut buf = [0u8; 100];
                if conn.read_exact(&mut buf).is_ok() {
                    let _ = conn.write_all(&[7u8; 10_000]);
                }
            });
        }
    });
    let proxy = CountingProxy::start(upstream);
    let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
    c.write_all(&[1u8; 100]).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 10_000);
    assert_eq!(proxy.bytes_up(), 100);
    assert_eq!(proxy.bytes_down(), 10_000);
    assert_eq!(proxy.connections(), 1);

    proxy.reset();
    proxy.cut_after(1_000);
    let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
    c.write_all(&[1u8; 100]).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert_eq!(got.len(), 1_000, "cut after exactly 1000 bytes");
    assert!(!proxy.cut_pending());
}

#[test]
fn counting_proxy_releases_closed_connections() {
    // A client that opens thousands of short connections (OSTree pulling
    // objects) must not exhaust the process' descriptors through the proxy.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let _ = conn.write_all(b"hi");
        }
    });
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let proxy = CountingProxy::start(upstream);
    let before = fds();
    for _ in 0..300 {
        let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hi");
    }
    // The pumps finish just after the client sees EOF.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fds() > before + 50 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        fds() <= before + 50,
        "300 closed connections left {} descriptors open",
        fds() - before
    );
    assert_eq!(proxy.connections(), 300);
}
