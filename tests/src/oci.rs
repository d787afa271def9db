//! The real OCI peers: skopeo and umoci, and reading an OCI image layout.

use crate::registry::Registry;
use crate::{run, run_ok};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A layer, config or manifest descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`, …
    pub media_type: String,
    /// `sha256:<hex>`
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    fn from_json(v: &Value) -> Descriptor {
        Descriptor {
            media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: v["digest"].as_str().expect("descriptor digest").to_string(),
            size: v["size"].as_u64().expect("descriptor size"),
        }
    }
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
#[derive(Debug, Clone)]
pub struct OciLayout {
    /// The layout dir.
    pub dir: PathBuf,
}

impl OciLayout {
    /// Open a layout dir (panics if it has no `index.json`).
    pub fn open(dir: impl Into<PathBuf>) -> OciLayout {
        let dir = dir.into();
        assert!(
            dir.join("index.json").is_file(),
            "{} is not an OCI layout",
            dir.display()
        );
        OciLayout { dir }
    }

    /// `index.json`.
    pub fn index(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).expect("index.json"))
            .expect("index.json is JSON")
    }

    /// The tags (`org.opencontainers.image.ref.name`) in `index.json`.
    pub fn tags(&self) -> Vec<String> {
        self.index()["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .map(str::to_string)
            .collect()
    }

    /// The manifest descriptor tagged `tag`.
    pub fn manifest_descriptor(&self, tag: &str) -> Descriptor {
        let index = self.index();
        let m = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag))
            .unwrap_or_else(|| panic!("no tag {tag} in {}", self.dir.display()));
        Descriptor::from_json(m)
    }

    /// Path of a blob (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
        self.dir.join("blobs").join(alg).join(hex)
    }

    /// A blob's bytes.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(self.blob_path(digest))
            .unwrap_or_else(|e| panic!("blob {digest} in {}: {e}", self.dir.display()))
    }

    /// The manifest tagged `tag`, raw bytes.
    pub fn manifest_bytes(&self, tag: &str) -> Vec<u8> {
        self.blob(&self.manifest_descriptor(tag).digest)
    }

    /// The manifest tagged `tag`, parsed.
    pub fn manifest(&self, tag: &str) -> Value {
        serde_json::from_slice(&self.manifest_bytes(tag)).expect("manifest is JSON")
    }

    /// The config descriptor of `tag`.
    pub fn config_descriptor(&self, tag: &str) -> Descriptor {
        Descriptor::from_json(&self.manifest(tag)["config"])
    }

    /// The config of `tag`, parsed.
    pub fn config(&self, tag: &str) -> Value {
        serde_json::from_slice(&self.blob(&self.config_descriptor(tag).digest))
            .expect("config is JSON")
    }

    /// The layer descriptors of `tag`, bottom first.
    pub fn layers(&self, tag: &str) -> Vec<Descriptor> {
        self.manifest(tag)["layers"]
            .as_array()
            .expect("manifest has layers")
            .iter()
            .map(Descriptor::from_json)
            .collect()
    }

    /// The config's `rootfs.diff_ids` of `tag`, bottom first.
    pub fn diff_ids(&self, tag: &str) -> Vec<String> {
        self.config(tag)["rootfs"]["diff_ids"]
            .as_array()
            .expect("config has diff_ids")
            .iter()
            .map(|d| d.as_str().expect("diff_id string").to_string())
            .collect()
    }
}

fn skopeo() -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy");
    cmd
}

/// `skopeo copy oci:DIR:TAG docker://REGISTRY/DEST` (plain HTTP, with the
/// registry's publisher credentials when it has some), returning the output.
pub fn skopeo_push_output(oci_dir: &Path, tag: &str, registry: &Registry, dest: &str) -> Output {
    skopeo_push_with(oci_dir, tag, registry, dest, &[])
}

/// `skopeo copy --all`: an image index with every manifest it names.
pub fn skopeo_push_all(oci_dir: &Path, tag: &str, registry: &Registry, dest: &str) {
    let out = skopeo_push_with(oci_dir, tag, registry, dest, &["--all"]);
    assert!(
        out.status.success(),
        "skopeo copy --all {tag} → {dest} failed:\n{}\n--- registry log\n{}",
        String::from_utf8_lossy(&out.stderr),
        registry.log()
    );
}

fn skopeo_push_with(
    oci_dir: &Path,
    tag: &str,
    registry: &Registry,
    dest: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = skopeo();
    cmd.args(["copy", "--dest-tls-verify=false"]).args(extra);
    if let Some(creds) = registry.creds() {
        cmd.arg("--dest-creds").arg(creds);
    }
    cmd.arg(format!("oci:{}:{tag}", oci_dir.display()))
        .arg(format!("docker://{}/{dest}", registry.host));
    run(&mut cmd)
}

/// Push `oci_dir:tag` to `registry` as `dest` (`repo:tag`); panics on failure.
pub fn skopeo_push(oci_dir: &Path, tag: &str, registry: &Registry, dest: &str) {
    let out = skopeo_push_output(oci_dir, tag, registry, dest);
    assert!(
        out.status.success(),
        "skopeo push {tag} → {dest} failed:\n{}\n--- registry log\n{}",
        String::from_utf8_lossy(&out.stderr),
        registry.log()
    );
}

/// Pull `src` (`repo:tag`) from `registry` into the layout `oci_dir` as `tag`.
pub fn skopeo_pull(registry: &Registry, src: &str, oci_dir: &Path, tag: &str) {
    let mut cmd = skopeo();
    cmd.args(["copy", "--src-tls-verify=false"]);
    if let Some(creds) = registry.creds() {
        cmd.arg("--src-creds").arg(creds);
    }
    cmd.arg(format!("docker://{}/{src}", registry.host))
        .arg(format!("oci:{}:{tag}", oci_dir.display()));
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "skopeo pull {src} failed:\n{}\n--- registry log\n{}",
        String::from_utf8_lossy(&out.stderr),
        registry.log()
    );
}

/// `umoci unpack --image DIR:TAG BUNDLE` (as root: owners, devices and
/// xattrs are real). `bundle` must not exist yet.
pub fn umoci_unpack(oci_dir: &Path, tag: &str, bundle: &Path) {
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", oci_dir.display()))
            .arg(bundle),
    );
}
