//! Layer editing on a real OCI image layout made by umoci. For every
//! operation: `umoci unpack` of the edited image equals the unedited
//! unpack plus exactly the intended change, untouched layer blobs keep
//! their digests, `skopeo copy` accepts the result, and the warnings fire.
//! Bad input leaves index.json and the blobs as they were.

mod edit_util;

use edit_util::*;
use layerlink_proto::Digest;
use layerlink_registry::edit::{
    edit_image, edit_layout, Backend, Commit, EditError, EditRequest, InsertOp, InsertSource,
    Layout, PutOp, PutSource, Resolved, Scratch, ShadowHow, Warning,
};
use std::fs;
use std::path::Path;
use std::process::Command;

fn put(dest: &str, src: &Path) -> PutOp {
    PutOp {
        dest: dest.into(),
        source: PutSource::File(src.into()),
        mode: None,
        uid: None,
        gid: None,
        mtime: None,
    }
}

fn put_meta(dest: &str, src: &Path, mode: u32, uid: u64, gid: u64, mtime: u64) -> PutOp {
    PutOp {
        dest: dest.into(),
        source: PutSource::File(src.into()),
        mode: Some(mode),
        uid: Some(uid),
        gid: Some(gid),
        mtime: Some(mtime),
    }
}

fn edit_req(layer: usize, puts: Vec<PutOp>, removes: &[&str]) -> EditRequest {
    EditRequest {
        layer: Some(layer),
        puts,
        removes: removes.iter().map(|s| s.to_string()).collect(),
        ..EditRequest::default()
    }
}

/// Unpack the original before editing, in the fixture's temp dir.
fn original(fx: &Fixture) -> std::path::PathBuf {
    unpack(&fx.layout, "t", fx.dir.path())
}

#[test]
fn put_replaces_a_file_in_a_middle_layer_in_place() {
    let fx = fixture();
    let before = original(&fx);
    let old_layers = layer_digests(&fx.layout, "t");
    let old_entries = layer_entries(&fx.layout, &old_layers[1]);
    let src = fx.dir.path().join("hostname");
    fs::write(&src, b"edited-host\n").unwrap();

    let out = edit_layout(
        &fx.layout,
        "t",
        &edit_req(
            1,
            vec![put_meta("/etc/hostname", &src, 0o640, 7, 8, 1_234_567)],
            &[],
        ),
    )
    .unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(out.tag, "t");

    let new_layers = layer_digests(&fx.layout, "t");
    assert_eq!(new_layers.len(), 3);
    assert_eq!(new_layers[0], old_layers[0], "layer 0 untouched");
    assert_eq!(new_layers[2], old_layers[2], "layer 2 untouched");
    assert_ne!(new_layers[1], old_layers[1]);
    assert_eq!(
        out.digest,
        descriptor(&fx.layout, "t")["digest"].as_str().unwrap()
    );
    assert_consistent(&fx.layout, "t");

    // Same entries in the same order; only the file's content changed.
    let new_entries = layer_entries(&fx.layout, &new_layers[1]);
    let names = |e: &[(String, u8, Vec<u8>)]| e.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&new_entries), names(&old_entries));
    for (o, n) in old_entries.iter().zip(&new_entries) {
        if o.0 == "etc/hostname" {
            assert_eq!(n.2, b"edited-host\n");
        } else {
            assert_eq!(o, n);
        }
    }

    let (_, config) = image(&fx.layout, "t");
    let by = config["history"][1]["created_by"].as_str().unwrap();
    assert!(
        by.starts_with("umoci repack ; layerlink edit: put /etc/hostname"),
        "{by}"
    );

    let after = unpack(&fx.layout, "t", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    write_file(
        &expected.join("etc/hostname"),
        b"edited-host\n",
        0o640,
        7,
        8,
        1_234_567,
    );
    assert_trees(&expected, &after, &[]);
    skopeo_copy(&fx.layout, "t", fx.dir.path());
}

#[test]
fn put_new_files_creates_only_missing_parents() {
    let fx = fixture();
    let before = original(&fx);
    let old_layers = layer_digests(&fx.layout, "t");
    let old2 = layer_entries(&fx.layout, &old_layers[2]);
    let src = fx.dir.path().join("f");
    fs::write(&src, b"fresh\n").unwrap();

    // /etc exists in layer 0 only; /new/deep does not exist anywhere.
    let out = edit_layout(
        &fx.layout,
        "t",
        &edit_req(
            2,
            vec![
                put_meta("/etc/added.conf", &src, 0o600, 0, 0, 1_700_000_000),
                put_meta("/new/deep/file", &src, 0o644, 1, 1, 1_700_000_001),
            ],
            &[],
        ),
    )
    .unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let new_layers = layer_digests(&fx.layout, "t");
    assert_eq!(&new_layers[..2], &old_layers[..2]);
    let new2 = layer_entries(&fx.layout, &new_layers[2]);
    let names: Vec<&str> = new2.iter().map(|e| e.0.as_str()).collect();
    let old_names: Vec<&str> = old2.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        &names[..old_names.len()],
        &old_names[..],
        "old entries first, unchanged order"
    );
    assert_eq!(
        &names[old_names.len()..],
        &["etc/added.conf", "new/", "new/deep/", "new/deep/file"]
    );
    assert_consistent(&fx.layout, "t");

    let after = unpack(&fx.layout, "t", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    write_file(
        &expected.join("etc/added.conf"),
        b"fresh\n",
        0o600,
        0,
        0,
        1_700_000_000,
    );
    fs::create_dir_all(expected.join("new/deep")).unwrap();
    write_file(
        &expected.join("new/deep/file"),
        b"fresh\n",
        0o644,
        1,
        1,
        1_700_000_001,
    );
    set_mtime(&expected.join("new/deep"), 1_700_000_001);
    set_mtime(&expected.join("new"), 1_700_000_001);
    assert_trees(&expected, &after, &[]);
    skopeo_copy(&fx.layout, "t", fx.dir.path());
}

#[test]
fn put_under_a_layer_that_overwrites_the_path_warns_and_changes_nothing_visible() {
    let fx = fixture();
    let before = original(&fx);
    let src = fx.dir.path().join("motd");
    fs::write(&src, b"never seen\n").unwrap();
    let out = edit_layout(
        &fx.layout,
        "t",
        &edit_req(0, vec![put("/etc/motd", &src)], &[]),
    )
    .unwrap();
    assert_eq!(
        out.warnings,
        vec![Warning::Shadowed {
            path: "/etc/motd".into(),
            layer: 2,
            how: ShadowHow::Overwritten,
            put: true
        }]
    );
    let after = unpack(&fx.layout, "t", fx.dir.path());
    assert_trees(&before, &after, &[]);
    assert_consistent(&fx.layout, "t");
}

#[test]
fn put_into_a_whited_out_directory_warns() {
    let fx = fixture();
    let src = fx.dir.path().join("c2");
    fs::write(&src, b"c2\n").unwrap();
    let out = edit_layout(
        &fx.layout,
        "t",
        &edit_req(0, vec![put("/opt/app/sub/c2", &src)], &[]),
    )
    .unwrap();
    assert_eq!(
        out.warnings,
        vec![Warning::Shadowed {
            path: "/opt/app/sub/c2".into(),
            layer: 2,
            how: ShadowHow::WhitedOut,
            put: true
        }]
    );
}

#[test]
fn rm_from_the_base_warns_about_the_whiteout_left_pointing_at_nothing() {
    let fx = fixture();
    let before = original(&fx);
    let old_layers = layer_digests(&fx.layout, "t");
    let out = edit_layout(&fx.layout, "t", &edit_req(0, vec![], &["/opt/app/sub"])).unwrap();
    assert_eq!(
        out.warnings,
        vec![Warning::DanglingWhiteout {
            path: "/opt/app/.wh.sub".into(),
            layer: 2
        }],
    );
    let new_layers = layer_digests(&fx.layout, "t");
    assert_eq!(&new_layers[1..], &old_layers[1..]);
    let names: Vec<String> = layer_entries(&fx.layout, &new_layers[0])
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("opt/app/sub")),
        "{names:?}"
    );
    // Layer 2 removed it anyway: the image looks the same.
    let after = unpack(&fx.layout, "t", fx.dir.path());
    assert_trees(&before, &after, &[]);
    assert_consistent(&fx.layout, "t");
    skopeo_copy(&fx.layout, "t", fx.dir.path());
}

#[test]
fn rm_of_a_path_a_lower_layer_also_has_lets_it_show_through() {
    let fx = fixture();
    let before = original(&fx);
    let out = edit_layout(&fx.layout, "t", &edit_req(2, vec![], &["/etc/motd"])).unwrap();
    assert_eq!(
        out.warnings,
        vec![Warning::StillVisible {
            path: "/etc/motd".into(),
            layer: 0
        }]
    );
    let after = unpack(&fx.layout, "t", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    // Layer 0's /etc/motd (content, mtime and xattr) is what remains.
    write_file(
        &expected.join("etc/motd"),
        b"base motd\n",
        0o644,
        0,
        0,
        1_000_000,
    );
    assert_trees(&expected, &after, &[]);
}

#[test]
fn rm_of_a_hard_link_target_keeps_the_other_name() {
    let fx = fixture();
    // Layer 0 has opt/app/a and its hard link a2. Remove a (and delete the
    // upper layers, so layer 0 alone shows what happened).
    let req = EditRequest {
        layer: Some(0),
        removes: vec!["/opt/app/a".into()],
        delete_layers: vec![1, 2],
        tag: Some("base".into()),
        ..EditRequest::default()
    };
    edit_layout(&fx.layout, "t", &req).unwrap();
    let rootfs = unpack(&fx.layout, "base", fx.dir.path());
    assert!(!rootfs.join("opt/app/a").exists());
    assert_eq!(fs::read(rootfs.join("opt/app/a2")).unwrap(), b"a\n");
    assert_eq!(
        fs::read_link(rootfs.join("opt/app/lnk")).unwrap(),
        Path::new("a")
    );
    assert_consistent(&fx.layout, "base");
    assert_eq!(layer_digests(&fx.layout, "base").len(), 1);
}

#[test]
fn delete_middle_layer() {
    let fx = fixture();
    let before = original(&fx);
    let old_layers = layer_digests(&fx.layout, "t");
    let req = EditRequest {
        delete_layers: vec![1],
        ..EditRequest::default()
    };
    let out = edit_layout(&fx.layout, "t", &req).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let new_layers = layer_digests(&fx.layout, "t");
    assert_eq!(
        new_layers,
        vec![old_layers[0].clone(), old_layers[2].clone()]
    );
    assert_consistent(&fx.layout, "t");
    let (_, config) = image(&fx.layout, "t");
    assert_eq!(config["history"].as_array().unwrap().len(), 2);

    // Without layer 1: hostname is layer 0's, a2 is back, /srv is gone.
    let after = unpack(&fx.layout, "t", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    write_file(
        &expected.join("etc/hostname"),
        b"h0\n",
        0o644,
        0,
        0,
        1_600_000_000,
    );
    remove(&expected.join("srv"));
    let parent = fs::metadata(expected.join("opt/app")).unwrap();
    fs::hard_link(expected.join("opt/app/a"), expected.join("opt/app/a2")).unwrap();
    set_mtime(&expected.join("opt/app/a"), 1_600_000_000);
    set_mtime(
        &expected.join("opt/app"),
        std::os::unix::fs::MetadataExt::mtime(&parent),
    );
    assert_trees(&expected, &after, &[]);
    skopeo_copy(&fx.layout, "t", fx.dir.path());
}

#[test]
fn delete_base_layer_warns_about_whiteouts_that_now_remove_nothing() {
    let fx = fixture();
    let req = EditRequest {
        delete_layers: vec![0],
        tag: Some("nobase".into()),
        ..EditRequest::default()
    };
    let out = edit_layout(&fx.layout, "t", &req).unwrap();
    let mut w = out.warnings.clone();
    w.sort_by_key(|w| format!("{w:?}"));
    assert_eq!(
        w,
        vec![
            Warning::DanglingWhiteout {
                path: "/opt/app/.wh.a2".into(),
                layer: 1
            },
            Warning::DanglingWhiteout {
                path: "/opt/app/.wh.sub".into(),
                layer: 2
            },
        ]
    );
    assert_eq!(layer_digests(&fx.layout, "nobase").len(), 2);
    assert_consistent(&fx.layout, "nobase");
    let rootfs = unpack(&fx.layout, "nobase", fx.dir.path());
    assert_eq!(fs::read(rootfs.join("etc/hostname")).unwrap(), b"h1\n");
    assert_eq!(fs::read(rootfs.join("etc/motd")).unwrap(), b"motd 2\n");
    assert!(!rootfs.join("usr").exists());
    // The original tag is untouched.
    assert_eq!(layer_digests(&fx.layout, "t").len(), 3);
}

fn setfattr(p: &Path, name: &str, value: &str) {
    run(Command::new("setfattr")
        .args(["-n", name, "-v", value])
        .arg(p));
}

fn insert_dir(base: &Path) -> std::path::PathBuf {
    let d = base.join("insert");
    fs::create_dir_all(d.join("etc")).unwrap();
    fs::create_dir_all(d.join("usr/local/bin")).unwrap();
    write_file(
        &d.join("etc/extra.conf"),
        b"extra\n",
        0o600,
        5,
        6,
        1_650_000_000,
    );
    setfattr(&d.join("etc/extra.conf"), "user.color", "red");
    write_file(
        &d.join("etc/hostname"),
        b"inserted host\n",
        0o644,
        0,
        0,
        1_650_000_000,
    );
    write_file(
        &d.join("usr/local/bin/run"),
        b"#!/bin/sh\n",
        0o755,
        0,
        0,
        1_650_000_000,
    );
    fs::hard_link(d.join("usr/local/bin/run"), d.join("usr/local/bin/run2")).unwrap();
    std::os::unix::fs::symlink("run", d.join("usr/local/bin/r")).unwrap();
    set_mtime(&d.join("usr/local/bin/r"), 1_650_000_000);
    for p in ["usr/local/bin", "usr/local", "usr", "etc"] {
        set_mtime(&d.join(p), 1_650_000_100);
    }
    d
}

/// The expected tree after inserting `insert_dir` below layer 1 (whose
/// /etc/hostname wins over the inserted one).
fn expected_after_insert(before: &Path, dir: &Path, expected: &Path) {
    copy_tree(before, expected);
    write_file(
        &expected.join("etc/extra.conf"),
        b"extra\n",
        0o600,
        5,
        6,
        1_650_000_000,
    );
    setfattr(&expected.join("etc/extra.conf"), "user.color", "red");
    // /usr came from layer 0; the inserted layer's usr/ entry now sets its metadata.
    let usr = expected.join("usr");
    fs::create_dir_all(usr.join("local/bin")).unwrap();
    copy_tree(&dir.join("usr/local/bin/run"), &usr.join("local/bin/run"));
    fs::hard_link(usr.join("local/bin/run"), usr.join("local/bin/run2")).unwrap();
    copy_tree(&dir.join("usr/local/bin/r"), &usr.join("local/bin/r"));
    for p in ["usr/local/bin", "usr/local", "usr", "etc"] {
        set_mtime(&expected.join(p), 1_650_000_100);
    }
}

#[test]
fn insert_layer_from_a_directory() {
    let fx = fixture();
    let before = original(&fx);
    let old_layers = layer_digests(&fx.layout, "t");
    let dir = insert_dir(fx.dir.path());
    let req = EditRequest {
        inserts: vec![InsertOp {
            at: 1,
            source: InsertSource::Dir(dir.clone()),
        }],
        ..EditRequest::default()
    };
    let out = edit_layout(&fx.layout, "t", &req).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let new_layers = layer_digests(&fx.layout, "t");
    assert_eq!(new_layers.len(), 4);
    assert_eq!(new_layers[0], old_layers[0]);
    assert_eq!(&new_layers[2..], &old_layers[1..]);
    assert_consistent(&fx.layout, "t");
    let (_, config) = image(&fx.layout, "t");
    let by = config["history"][1]["created_by"].as_str().unwrap();
    assert_eq!(by, format!("layerlink insert: from dir {}", dir.display()));
    let entries: Vec<String> = layer_entries(&fx.layout, &new_layers[1])
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        entries,
        [
            "etc/",
            "etc/extra.conf",
            "etc/hostname",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/r",
            "usr/local/bin/run",
            "usr/local/bin/run2"
        ]
    );

    let after = unpack(&fx.layout, "t", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    expected_after_insert(&before, &dir, &expected);
    assert_trees(&expected, &after, &[]);
    skopeo_copy(&fx.layout, "t", fx.dir.path());
}

#[test]
fn insert_layer_from_a_tar_on_top() {
    let fx = fixture();
    let before = original(&fx);
    let old_layers = layer_digests(&fx.layout, "t");
    let dir = fx.dir.path().join("tarsrc");
    fs::create_dir_all(dir.join("opt")).unwrap();
    write_file(
        &dir.join("opt/top.txt"),
        b"on top\n",
        0o644,
        0,
        0,
        1_650_000_000,
    );
    let tarball = fx.dir.path().join("layer.tar.gz");
    run(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("--numeric-owner")
        .arg("-czf")
        .arg(&tarball)
        .arg("opt/top.txt"));
    let req = EditRequest {
        inserts: vec![InsertOp {
            at: 3,
            source: InsertSource::Tar(tarball.clone()),
        }],
        ..EditRequest::default()
    };
    edit_layout(&fx.layout, "t", &req).unwrap();
    let new_layers = layer_digests(&fx.layout, "t");
    assert_eq!(&new_layers[..3], &old_layers[..]);
    assert_eq!(new_layers.len(), 4);
    assert_consistent(&fx.layout, "t");
    let (_, config) = image(&fx.layout, "t");
    assert_eq!(
        config["history"][3]["created_by"],
        format!("layerlink insert: from tar {}", tarball.display())
    );

    let after = unpack(&fx.layout, "t", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    write_file(
        &expected.join("opt/top.txt"),
        b"on top\n",
        0o644,
        0,
        0,
        1_650_000_000,
    );
    assert_trees(&expected, &after, &[]);
}

#[test]
fn several_operations_at_once() {
    let fx = fixture();
    let old_layers = layer_digests(&fx.layout, "t");
    let src = fx.dir.path().join("tool");
    fs::write(&src, b"new tool\n").unwrap();
    let dir = insert_dir(fx.dir.path());
    let req = EditRequest {
        layer: Some(0),
        puts: vec![put_meta("/usr/bin/tool", &src, 0o755, 0, 0, 1_600_000_500)],
        removes: vec!["/var/empty".into()],
        delete_layers: vec![2],
        inserts: vec![InsertOp {
            at: 2,
            source: InsertSource::Dir(dir),
        }],
        tag: Some("multi-op".into()),
        ..EditRequest::default()
    };
    let out = edit_layout(&fx.layout, "t", &req).unwrap();
    assert_eq!(
        out.layers.iter().map(|l| l.change).collect::<Vec<_>>(),
        ["edited", "kept", "inserted"]
    );
    let new_layers = layer_digests(&fx.layout, "multi-op");
    assert_eq!(new_layers[1], old_layers[1]);
    assert_consistent(&fx.layout, "multi-op");
    let (_, config) = image(&fx.layout, "multi-op");
    let by = config["history"][0]["created_by"].as_str().unwrap();
    assert!(
        by.ends_with("layerlink edit: rm /var/empty, put /usr/bin/tool"),
        "{by}"
    );
    let rootfs = unpack(&fx.layout, "multi-op", fx.dir.path());
    assert_eq!(
        fs::read(rootfs.join("usr/bin/tool")).unwrap(),
        b"new tool\n"
    );
    assert!(!rootfs.join("var/empty").exists());
    assert_eq!(
        fs::read(rootfs.join("etc/motd")).unwrap(),
        b"base motd\n",
        "layer 2 deleted"
    );
    assert_eq!(
        fs::read(rootfs.join("etc/hostname")).unwrap(),
        b"inserted host\n",
        "inserted above layer 1"
    );
    skopeo_copy(&fx.layout, "multi-op", fx.dir.path());
}

#[test]
fn editing_a_layer_other_tags_use_warns_and_leaves_them_alone() {
    let fx = fixture();
    run(Command::new("umoci")
        .arg("tag")
        .arg("--image")
        .arg(format!("{}:t", fx.layout.display()))
        .arg("other"));
    let other_before = descriptor(&fx.layout, "other");
    let old_layers = layer_digests(&fx.layout, "t");
    let src = fx.dir.path().join("x");
    fs::write(&src, b"x").unwrap();
    let out = edit_layout(
        &fx.layout,
        "t",
        &edit_req(1, vec![put("/etc/x", &src)], &[]),
    )
    .unwrap();
    assert_eq!(
        out.warnings,
        vec![Warning::SharedBlob {
            layer: 1,
            digest: old_layers[1].clone(),
            users: vec!["other".into()]
        }]
    );
    assert_eq!(descriptor(&fx.layout, "other"), other_before);
    assert_eq!(layer_digests(&fx.layout, "other"), old_layers);
}

#[test]
fn new_tag_keeps_the_original() {
    let fx = fixture();
    let t_before = descriptor(&fx.layout, "t");
    let src = fx.dir.path().join("x");
    fs::write(&src, b"x").unwrap();
    let mut req = edit_req(2, vec![put("/etc/x", &src)], &[]);
    req.tag = Some("edited".into());
    let out = edit_layout(&fx.layout, "t", &req).unwrap();
    assert_eq!(descriptor(&fx.layout, "t"), t_before);
    assert_eq!(
        descriptor(&fx.layout, "edited")["digest"],
        out.digest.as_str()
    );
    assert_eq!(
        index_json(&fx.layout)["manifests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    skopeo_copy(&fx.layout, "edited", fx.dir.path());
}

/// Write `v` as a blob of the layout; its descriptor's digest and size.
fn put_blob(layout: &Path, v: &serde_json::Value) -> (String, usize) {
    let bytes = serde_json::to_vec(v).unwrap();
    let digest = sha(&bytes);
    fs::write(layout.join("blobs/sha256").join(&digest[7..]), &bytes).unwrap();
    (digest, bytes.len())
}

#[test]
fn an_edit_keeps_every_field_it_does_not_own() {
    // Unknown and vendor fields, annotations, Docker-era config keys: an
    // edit rewrites config/layers/diff_ids/history and nothing else.
    let fx = fixture();
    let (mut manifest, mut config) = image(&fx.layout, "t");
    config["x-vendor-config"] = serde_json::json!({"keep": [1, 2, 3]});
    config["container_config"] = serde_json::json!({"Hostname": "builder"});
    let (cd, cn) = put_blob(&fx.layout, &config);
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cn.into();
    manifest["config"]["annotations"] = serde_json::json!({"config.note": "kept"});
    manifest["layers"][0]["annotations"] = serde_json::json!({"layer0.note": "kept"});
    manifest["layers"][2]["annotations"] = serde_json::json!({"layer2.note": "old bytes"});
    manifest["annotations"] = serde_json::json!({"org.example.built-by": "ci"});
    manifest["x-vendor-manifest"] = "kept".into();
    let (md, mn) = put_blob(&fx.layout, &manifest);
    let mut top = index_json(&fx.layout);
    for m in top["manifests"].as_array_mut().unwrap() {
        if m["annotations"]["org.opencontainers.image.ref.name"] == "t" {
            m["digest"] = md.clone().into();
            m["size"] = mn.into();
            m["annotations"]["org.example.entry"] = "kept".into();
        }
    }
    fs::write(
        fx.layout.join("index.json"),
        serde_json::to_vec(&top).unwrap(),
    )
    .unwrap();

    let src = fx.dir.path().join("x");
    fs::write(&src, b"x").unwrap();
    edit_layout(
        &fx.layout,
        "t",
        &edit_req(2, vec![put("/etc/x", &src)], &[]),
    )
    .unwrap();
    let (m2, c2) = image(&fx.layout, "t");
    assert_eq!(m2["x-vendor-manifest"], "kept");
    assert_eq!(m2["annotations"], manifest["annotations"]);
    assert_eq!(m2["config"]["annotations"]["config.note"], "kept");
    assert_eq!(
        m2["layers"][0], manifest["layers"][0],
        "kept layer as it was"
    );
    assert!(
        m2["layers"][2].get("annotations").is_none(),
        "the edited layer's annotations described the old bytes"
    );
    assert_eq!(c2["x-vendor-config"], config["x-vendor-config"]);
    assert_eq!(c2["container_config"], config["container_config"]);
    assert_eq!(c2["config"], config["config"]);
    assert_eq!(
        descriptor(&fx.layout, "t")["annotations"]["org.example.entry"],
        "kept"
    );
    assert_consistent(&fx.layout, "t");
}

#[test]
fn dry_run_stores_nothing() {
    let fx = fixture();
    let snap = snapshot(&fx.layout);
    let src = fx.dir.path().join("x");
    fs::write(&src, b"x").unwrap();
    let mut req = edit_req(0, vec![put("/etc/motd", &src)], &[]);
    req.dry_run = true;
    let out = edit_layout(&fx.layout, "t", &req).unwrap();
    assert!(!out.committed);
    assert_eq!(out.warnings.len(), 1, "warnings are still computed");
    assert_eq!(snapshot(&fx.layout), snap);
}

/// Build an index with two platforms over the fixture's manifest.
fn make_index(layout: &Path) -> String {
    let d = descriptor(layout, "t");
    let entry = |arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d["digest"], "size": d["size"],
            "platform": {"os": "linux", "architecture": arch}
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("amd64"), entry("arm64")]
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = sha(&bytes);
    fs::write(layout.join("blobs/sha256").join(&digest[7..]), &bytes).unwrap();
    let mut top = index_json(layout);
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest, "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}
        }));
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    d["digest"].as_str().unwrap().to_owned()
}

#[test]
fn index_needs_a_platform_and_only_that_entry_changes() {
    let fx = fixture();
    let manifest = make_index(&fx.layout);
    let src = fx.dir.path().join("x");
    fs::write(&src, b"arm only\n").unwrap();
    let snap = snapshot(&fx.layout);
    let err = edit_layout(
        &fx.layout,
        "multi",
        &edit_req(1, vec![put("/etc/arch", &src)], &[]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, EditError::Invalid(_))
            && msg.contains("--platform")
            && msg.contains("linux/arm64"),
        "{msg}"
    );
    assert_eq!(snapshot(&fx.layout), snap);

    let mut req = edit_req(1, vec![put("/etc/arch", &src)], &[]);
    req.platform = Some("linux/arm64".into());
    let out = edit_layout(&fx.layout, "multi", &req).unwrap();
    let top = descriptor(&fx.layout, "multi");
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(top["digest"], out.digest.as_str());
    let index: serde_json::Value = serde_json::from_slice(&blob(&fx.layout, &out.digest)).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        manifest.as_str(),
        "amd64 untouched"
    );
    assert_eq!(
        index["manifests"][1]["digest"],
        out.manifest_digest.as_str()
    );
    assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
    skopeo_copy(&fx.layout, "multi", fx.dir.path());

    let mut req = edit_req(1, vec![put("/etc/arch", &src)], &[]);
    req.platform = Some("linux/s390x".into());
    assert!(matches!(
        edit_layout(&fx.layout, "multi", &req),
        Err(EditError::NotFound(_))
    ));
}

#[test]
fn zstd_and_plain_layers_keep_their_compression() {
    let fx = fixture();
    let z = fx.dir.path().join("Z");
    run(Command::new("skopeo")
        .args(["copy", "--dest-compress-format", "zstd", "--dest-compress"])
        .arg(format!("oci:{}:t", fx.layout.display()))
        .arg(format!("oci:{}:t", z.display())));
    let src = fx.dir.path().join("x");
    fs::write(&src, b"zstd edit\n").unwrap();
    edit_layout(&z, "t", &edit_req(1, vec![put("/etc/hostname", &src)], &[])).unwrap();
    let (m, _) = image(&z, "t");
    assert_eq!(
        m["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let d = m["layers"][1]["digest"].as_str().unwrap();
    assert!(blob(&z, d).starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
    assert!(layer_entries(&z, d)
        .iter()
        .any(|e| e.0 == "etc/hostname" && e.2 == b"zstd edit\n"));
    assert_consistent(&z, "t");
    skopeo_copy(&z, "t", fx.dir.path());
}

#[test]
fn docker_schema2_manifests_stay_docker() {
    let fx = fixture();
    let d = fx.dir.path().join("D");
    run(Command::new("skopeo")
        .args(["copy", "--format", "v2s2"])
        .arg(format!("oci:{}:t", fx.layout.display()))
        .arg(format!("oci:{}:t", d.display())));
    let src = fx.dir.path().join("x");
    fs::write(&src, b"docker\n").unwrap();
    let out = edit_layout(&d, "t", &edit_req(0, vec![put("/etc/docker", &src)], &[])).unwrap();
    let top = descriptor(&d, "t");
    assert_eq!(
        top["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let m: serde_json::Value = serde_json::from_slice(&blob(&d, &out.digest)).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    assert_consistent(&d, "t");
}

fn assert_refused(layout: &Path, reference: &str, req: &EditRequest, what: &str) -> EditError {
    let snap = snapshot(layout);
    let err = edit_layout(layout, reference, req).expect_err(what);
    assert_eq!(snapshot(layout), snap, "{what}: nothing changed");
    err
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let fx = fixture();
    let src = fx.dir.path().join("x");
    fs::write(&src, b"x").unwrap();
    let l = &fx.layout;
    let cases: Vec<(&str, EditRequest, &str)> = vec![
        (
            "layer out of range",
            edit_req(3, vec![put("/etc/x", &src)], &[]),
            "out of range",
        ),
        (
            "dot-dot path",
            edit_req(0, vec![put("/etc/../../x", &src)], &[]),
            "..",
        ),
        ("root path", edit_req(0, vec![], &["/"]), "root"),
        (
            "missing source",
            edit_req(0, vec![put("/etc/x", &fx.dir.path().join("nope"))], &[]),
            "nope",
        ),
        (
            "rm of a missing path",
            edit_req(1, vec![], &["/etc/nothing"]),
            "no such path",
        ),
        (
            "rm of a path of another layer",
            edit_req(1, vec![], &["/usr/bin/tool"]),
            "--layer 0",
        ),
        (
            "put over a directory",
            edit_req(1, vec![put("/opt/app", &src)], &[]),
            "directory",
        ),
        (
            "put through a symlink",
            edit_req(2, vec![put("/opt/app/lnk/x", &src)], &[]),
            "symlink",
        ),
        (
            "put of a whiteout name",
            edit_req(0, vec![put("/etc/.wh.motd", &src)], &[]),
            ".wh.",
        ),
        (
            "put over a lower layer's directory",
            edit_req(1, vec![put("/usr/bin", &src)], &[]),
            "directory (from layer 0)",
        ),
        ("no operation", EditRequest::default(), "nothing to do"),
        (
            "put without layer",
            EditRequest {
                puts: vec![put("/x", &src)],
                ..EditRequest::default()
            },
            "--layer",
        ),
        (
            "delete out of range",
            EditRequest {
                delete_layers: vec![5],
                ..EditRequest::default()
            },
            "out of range",
        ),
        (
            "delete every layer",
            EditRequest {
                delete_layers: vec![0, 1, 2],
                ..EditRequest::default()
            },
            "without layers",
        ),
        (
            "insert out of range",
            EditRequest {
                inserts: vec![InsertOp {
                    at: 4,
                    source: InsertSource::Dir(fx.dir.path().to_owned()),
                }],
                ..EditRequest::default()
            },
            "out of range",
        ),
        (
            "insert of a missing dir",
            EditRequest {
                inserts: vec![InsertOp {
                    at: 0,
                    source: InsertSource::Tar(fx.dir.path().join("none.tar")),
                }],
                ..EditRequest::default()
            },
            "none.tar",
        ),
        (
            "edit and delete one layer",
            EditRequest {
                delete_layers: vec![1],
                ..edit_req(1, vec![], &["/etc/hostname"])
            },
            "both",
        ),
    ];
    for (what, req, needle) in cases {
        let err = assert_refused(l, "t", &req, what);
        assert!(matches!(err, EditError::Invalid(_)), "{what}: {err:?}");
        assert!(err.to_string().contains(needle), "{what}: {err}");
    }
    let err = assert_refused(
        l,
        "nosuchtag",
        &edit_req(0, vec![put("/etc/x", &src)], &[]),
        "unknown tag",
    );
    assert!(matches!(err, EditError::NotFound(_)), "{err:?}");
    let digest = descriptor(l, "t")["digest"].as_str().unwrap().to_owned();
    let err = assert_refused(
        l,
        &digest,
        &edit_req(0, vec![put("/etc/x", &src)], &[]),
        "digest without --tag",
    );
    assert!(err.to_string().contains("--tag"), "{err}");
}

#[test]
fn a_corrupt_layer_blob_is_detected_before_anything_is_stored() {
    let fx = fixture();
    let layers = layer_digests(&fx.layout, "t");
    let path = fx.layout.join("blobs/sha256").join(&layers[2][7..]);
    // Same length, different bytes: still gzip, wrong digest.
    let mut other = fs::read(fx.layout.join("blobs/sha256").join(&layers[2][7..])).unwrap();
    let n = other.len();
    other[n - 5] ^= 0xff;
    fs::write(&path, &other).unwrap();
    let src = fx.dir.path().join("x");
    fs::write(&src, b"x").unwrap();
    let err = assert_refused(
        &fx.layout,
        "t",
        &edit_req(0, vec![put("/etc/x", &src)], &[]),
        "corrupt layer",
    );
    assert!(matches!(err, EditError::Corrupt(_)), "{err:?}");
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: layerlink_registry::edit::EditArgs,
}

fn cli(args: &[&str]) -> layerlink_registry::edit::EditArgs {
    use clap::Parser as _;
    let mut all = vec!["edit"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).unwrap().args
}

#[test]
fn command_line() {
    use layerlink_registry::edit::cli::exit_code;
    let fx = fixture();
    let before = original(&fx);
    let src = fx.dir.path().join("hostname");
    fs::write(&src, b"from the cli\n").unwrap();
    let layout = fx.layout.to_str().unwrap();
    let put = format!("{}:/etc/hostname", src.display());
    let args = cli(&[
        "--layout",
        layout,
        "t",
        "--layer",
        "1",
        "--put",
        &put,
        "--mode",
        "0600",
        "--uid",
        "0",
        "--gid",
        "0",
        "--mtime",
        "1700000000",
        "--tag",
        "cli",
    ]);
    let out = args.run().unwrap();
    assert_eq!(descriptor(&fx.layout, "cli")["digest"], out.digest.as_str());
    let after = unpack(&fx.layout, "cli", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    write_file(
        &expected.join("etc/hostname"),
        b"from the cli\n",
        0o600,
        0,
        0,
        1_700_000_000,
    );
    assert_trees(&expected, &after, &[]);

    let ins = format!("0:{}", fx.dir.path().join("hostname").display());
    assert!(
        cli(&["--layout", layout, "t", "--insert-layer", &ins, "--dry-run"])
            .run()
            .is_err(),
        "not a tar"
    );
    let snap = snapshot(&fx.layout);
    let err =
        layerlink_registry::edit::cli_main(cli(&["--layout", layout, "t", "--delete-layer", "7"]))
            .unwrap_err();
    assert_eq!(exit_code(&err), 2, "{err}");
    let err = layerlink_registry::edit::cli_main(cli(&[
        "--layout",
        layout,
        "nope",
        "--delete-layer",
        "0",
    ]))
    .unwrap_err();
    assert_eq!(exit_code(&err), 3, "{err}");
    assert!(
        cli(&["--layout", layout, "t", "--put", "no-colon", "--layer", "0"])
            .run()
            .is_err()
    );
    assert!(cli(&[
        "--layout",
        layout,
        "t",
        "--mode",
        "0644",
        "--delete-layer",
        "0"
    ])
    .run()
    .is_err());
    assert_eq!(snapshot(&fx.layout), snap);
    use clap::Parser as _;
    assert!(
        Cli::try_parse_from(["edit", "t", "--delete-layer", "0"]).is_err(),
        "--layout or --data is required"
    );
}

#[test]
fn deleting_the_layer_an_upper_hard_link_points_into_warns() {
    let fx = fixture();
    // A layer on top with a hard link to layer 0's /usr/bin/tool.
    let tarball = fx.dir.path().join("link.tar");
    let mut b = tar::Builder::new(fs::File::create(&tarball).unwrap());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o755);
    b.append_link(&mut h, "usr/bin/tool-link", "usr/bin/tool")
        .unwrap();
    b.into_inner().unwrap();
    let req = EditRequest {
        inserts: vec![InsertOp {
            at: 3,
            source: InsertSource::Tar(tarball),
        }],
        tag: Some("linked".into()),
        ..EditRequest::default()
    };
    edit_layout(&fx.layout, "t", &req).unwrap();
    let rootfs = unpack(&fx.layout, "linked", fx.dir.path());
    assert_eq!(
        fs::read(rootfs.join("usr/bin/tool-link")).unwrap(),
        fs::read(rootfs.join("usr/bin/tool")).unwrap()
    );

    let req = EditRequest {
        delete_layers: vec![0],
        tag: Some("broken".into()),
        dry_run: true,
        ..EditRequest::default()
    };
    let out = edit_layout(&fx.layout, "linked", &req).unwrap();
    assert!(
        out.warnings.contains(&Warning::DanglingHardLink {
            path: "/usr/bin/tool-link".into(),
            target: "/usr/bin/tool".into(),
            layer: 3
        }),
        "{:?}",
        out.warnings
    );
}

/// A layout whose tag `t` is moved by someone else just before the commit.
struct Racing(Layout, std::path::PathBuf);

impl Backend for Racing {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn resolve(&self, r: &str) -> Result<Option<Resolved>, EditError> {
        self.0.resolve(r)
    }
    fn manifest(&self, d: &Digest, mt: &str) -> Result<Option<(Vec<u8>, String)>, EditError> {
        self.0.manifest(d, mt)
    }
    fn blob_path(&self, d: &Digest) -> Result<Option<std::path::PathBuf>, EditError> {
        self.0.blob_path(d)
    }
    fn scratch(&self) -> Result<Scratch, EditError> {
        self.0.scratch()
    }
    fn check_tag(&self, tag: &str) -> Result<(), EditError> {
        self.0.check_tag(tag)
    }
    fn blob_users(&self, b: &Digest, skip: &[&str]) -> Result<Vec<String>, EditError> {
        self.0.blob_users(b, skip)
    }
    fn commit(&self, c: Commit) -> Result<(), EditError> {
        let other = descriptor(&self.1, "other");
        let mut index = index_json(&self.1);
        for e in index["manifests"].as_array_mut().unwrap() {
            if e["annotations"]["org.opencontainers.image.ref.name"] == "t" {
                e["digest"] = other["digest"].clone();
                e["size"] = other["size"].clone();
            }
        }
        fs::write(
            self.1.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        self.0.commit(c)
    }
}

#[test]
fn a_tag_moved_during_the_edit_is_not_overwritten() {
    let fx = fixture();
    // "other": the image without its top layer.
    let req = EditRequest {
        delete_layers: vec![2],
        tag: Some("other".into()),
        ..EditRequest::default()
    };
    edit_layout(&fx.layout, "t", &req).unwrap();
    let backend = Racing(Layout::open(&fx.layout).unwrap(), fx.layout.clone());
    let src = fx.dir.path().join("x");
    fs::write(&src, b"x").unwrap();
    let err = edit_image(&backend, "t", &edit_req(0, vec![put("/etc/x", &src)], &[])).unwrap_err();
    assert!(matches!(err, EditError::Conflict(_)), "{err:?}");
    assert_eq!(
        descriptor(&fx.layout, "t")["digest"],
        descriptor(&fx.layout, "other")["digest"],
        "the other writer's tag stays"
    );
}

#[test]
fn rm_then_put_replaces_a_directory_tree_with_a_file() {
    let fx = fixture();
    let before = original(&fx);
    let src = fx.dir.path().join("empty-file");
    fs::write(&src, b"now a file\n").unwrap();
    let req = edit_req(
        0,
        vec![put_meta("/var/empty", &src, 0o644, 0, 0, 1_600_000_000)],
        &["/var/empty"],
    );
    let out = edit_layout(&fx.layout, "t", &req).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let after = unpack(&fx.layout, "t", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    remove(&expected.join("var/empty"));
    write_file(
        &expected.join("var/empty"),
        b"now a file\n",
        0o644,
        0,
        0,
        1_600_000_000,
    );
    assert_trees(&expected, &after, &[]);
}
