//! Layer editing in the registry's store: a real `layerlink-registry serve`
//! process, the fixture image pushed with skopeo, edited with
//! `layerlink-registry edit --data` while the registry serves and over
//! `POST /layerlink/v1/edit`, then pulled back with skopeo and unpacked
//! with umoci.

mod edit_util;
mod serve;

use base64::Engine as _;
use edit_util::*;
use layerlink_proto::Digest;
use serve::{bin, Served};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A registry process on a free loopback port, killed on drop.
struct Registry {
    _served: Served,
    host: String,
    data: PathBuf,
}

const CREDS: &str = "ci:s3cret";

impl Registry {
    fn start(auth: bool) -> Registry {
        let served = Served::start(
            auth.then_some("[[publishers]]\nuser = \"ci\"\npassword = \"s3cret\"\n"),
            None,
        );
        let base = &served.base;
        let host = base
            .strip_prefix("http://")
            .unwrap()
            .trim_end_matches('/')
            .to_owned();
        Registry {
            host,
            data: served.data.clone(),
            _served: served,
        }
    }

    fn push(&self, layout: &Path, tag: &str, image: &str, auth: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if auth {
            cmd.arg("--dest-creds").arg(CREDS);
        }
        run(cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{image}", self.host)));
    }

    fn pull(&self, image: &str, into: &Path, tag: &str, auth: bool) -> PathBuf {
        let layout = into.join(format!("pulled-{tag}"));
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--src-tls-verify=false"]);
        if auth {
            cmd.arg("--src-creds").arg(CREDS);
        }
        run(cmd
            .arg(format!("docker://{}/{image}", self.host))
            .arg(format!("oci:{}:{tag}", layout.display())));
        layout
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn manifest_digest(r: &Registry, image: &str, tag: &str, auth: bool) -> String {
    let mut req = agent()
        .get(&r.url(&format!("/v2/{image}/manifests/{tag}")))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json");
    if auth {
        let b = base64::engine::general_purpose::STANDARD.encode(CREDS);
        req = req.header("Authorization", &format!("Basic {b}"));
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()
        .get("Docker-Content-Digest")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn edit_command_on_a_serving_registry() {
    let fx = fixture();
    let before = unpack(&fx.layout, "t", fx.dir.path());
    let old_layers = layer_digests(&fx.layout, "t");
    let reg = Registry::start(false);
    reg.push(&fx.layout, "t", "edge/app:v1", false);
    reg.push(&fx.layout, "t", "edge/other:v1", false);

    let src = fx.dir.path().join("hostname");
    fs::write(&src, b"edited in the registry\n").unwrap();
    let out = Command::new(bin())
        .args(["edit", "--data"])
        .arg(&reg.data)
        .args(["edge/app:v1", "--layer", "1", "--put"])
        .arg(format!("{}:/etc/hostname", src.display()))
        .args([
            "--mode",
            "0600",
            "--uid",
            "0",
            "--gid",
            "0",
            "--mtime",
            "1700000000",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        stderr.contains("also used by edge/other:v1"),
        "shared-layer warning: {stderr}"
    );

    // The serving registry answers with the new manifest at once.
    assert_eq!(manifest_digest(&reg, "edge/app", "v1", false), digest);
    let pulled = reg.pull("edge/app:v1", fx.dir.path(), "v1", false);
    let new_layers = layer_digests(&pulled, "v1");
    assert_eq!(
        (new_layers[0].as_str(), new_layers[2].as_str()),
        (old_layers[0].as_str(), old_layers[2].as_str())
    );
    assert_ne!(new_layers[1], old_layers[1]);
    assert_consistent(&pulled, "v1");
    let after = unpack(&pulled, "v1", fx.dir.path());
    let expected = fx.dir.path().join("expected");
    copy_tree(&before, &expected);
    write_file(
        &expected.join("etc/hostname"),
        b"edited in the registry\n",
        0o600,
        0,
        0,
        1_700_000_000,
    );
    assert_trees(&expected, &after, &[]);

    // The other repository keeps the old image.
    let other = reg.pull("edge/other:v1", fx.dir.path(), "other", false);
    assert_eq!(layer_digests(&other, "other"), old_layers);

    // The dedup index learned the rebuilt layer.
    let (_, config) = image(&pulled, "v1");
    let diff_id = Digest::parse(config["rootfs"]["diff_ids"][1].as_str().unwrap()).unwrap();
    let storage = layerlink_registry::store::storage::Storage::open(&reg.data).unwrap();
    assert!(
        layerlink_registry::store::index::layer_meta(storage.db(), &diff_id)
            .unwrap()
            .is_some(),
        "edited layer {diff_id} ingested"
    );
    drop(storage);

    // Bad input: exit status 2, tag unchanged.
    let out = Command::new(bin())
        .args(["edit", "--data"])
        .arg(&reg.data)
        .args(["edge/app:v1", "--delete-layer", "9"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    assert_eq!(manifest_digest(&reg, "edge/app", "v1", false), digest);
}

#[test]
fn edit_over_http_needs_publisher_auth() {
    let fx = fixture();
    let old_layers = layer_digests(&fx.layout, "t");
    let reg = Registry::start(true);
    reg.push(&fx.layout, "t", "edge/app:v1", true);
    let before_digest = manifest_digest(&reg, "edge/app", "v1", true);
    let body = serde_json::json!({
        "repository": "edge/app",
        "reference": "v1",
        "tag": "v2",
        "layer": 2,
        "put": [{"path": "/etc/motd", "content_base64": base64::engine::general_purpose::STANDARD.encode("over http\n"), "mode": 0o644, "mtime": 1_700_000_000u64}],
        "rm": ["/opt/app"]
    });
    let post = |auth: bool, body: &serde_json::Value| {
        let mut req = agent()
            .post(&reg.url("/layerlink/v1/edit"))
            .header("Content-Type", "application/json");
        if auth {
            let b = base64::engine::general_purpose::STANDARD.encode(CREDS);
            req = req.header("Authorization", &format!("Basic {b}"));
        }
        let mut resp = req.send(serde_json::to_vec(body).unwrap()).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or(serde_json::Value::String(text)),
        )
    };
    let (status, _) = post(false, &body);
    assert_eq!(status, 401);

    let (status, outcome) = post(true, &body);
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["tag"], "v2");
    // Layer 1 has /opt/app too, so it shows through (and layer 2's whiteout
    // of /opt/app/sub went with the removal).
    assert_eq!(
        outcome["warnings"],
        serde_json::json!([{"kind": "still_visible", "path": "/opt/app", "layer": 1}]),
        "{outcome}"
    );
    assert_eq!(
        manifest_digest(&reg, "edge/app", "v2", true),
        outcome["digest"].as_str().unwrap()
    );
    assert_eq!(
        manifest_digest(&reg, "edge/app", "v1", true),
        before_digest,
        "v1 untouched"
    );

    let pulled = reg.pull("edge/app:v2", fx.dir.path(), "v2", true);
    assert_eq!(&layer_digests(&pulled, "v2")[..2], &old_layers[..2]);
    assert_consistent(&pulled, "v2");
    let rootfs = unpack(&pulled, "v2", fx.dir.path());
    assert_eq!(fs::read(rootfs.join("etc/motd")).unwrap(), b"over http\n");
    assert!(
        rootfs.join("opt/app/a").exists(),
        "/opt/app of layers 0 and 1 shows through"
    );
    assert!(
        rootfs.join("opt/app/sub/c").exists(),
        "layer 2's whiteout of /opt/app/sub was removed with /opt/app"
    );

    let (status, err) = post(
        true,
        &serde_json::json!({"repository": "edge/app", "reference": "v1", "delete_layers": [7]}),
    );
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("out of range"),
        "{err}"
    );
    let (status, _) = post(
        true,
        &serde_json::json!({"repository": "edge/nothing", "reference": "v1", "delete_layers": [0]}),
    );
    assert_eq!(status, 404);
    let (status, _) = post(
        true,
        &serde_json::json!({"repository": "edge/app", "reference": "v1", "bogus": 1}),
    );
    assert_eq!(status, 400);
    let missing = format!("sha256:{}", "0".repeat(64));
    let (status, _) = post(
        true,
        &serde_json::json!({"repository": "edge/app", "reference": "v1", "insert_layers": [{"at": 0, "blob": missing}]}),
    );
    assert_eq!(status, 404);
}
