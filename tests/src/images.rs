//! The cached real test images (see `scripts/build-test-images.sh`).

use crate::bins::workspace_root;
use crate::oci::OciLayout;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The tags the end-to-end tests use (the build script makes these and
/// [`BENCH_TAGS`]).
pub const TAGS: &[&str] = &["tiny:v1", "tiny:v2", "base-a:v1", "base-a:v2", "base-b:v1"];

/// Two-layer images (base + app) for the benchmark's peer comparison:
/// `upd:v2` is an independent rebuild of `upd:v1` with upgraded packages,
/// `sib:v1` another app on an independently built base.
pub const BENCH_TAGS: &[&str] = &["upd:v1", "upd:v2", "sib:v1"];

/// One line of `manifest.txt`.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// `base-a:v1`, …
    pub tag: String,
    /// Manifest digest.
    pub digest: String,
    /// Number of layers.
    pub layers: usize,
    /// Compressed layer bytes.
    pub bytes: u64,
}

/// The test images: one OCI layout holding every tag.
#[derive(Debug, Clone)]
pub struct TestImages {
    /// The layout dir (`$CACHE/images/oci`).
    pub oci_dir: PathBuf,
    /// What `manifest.txt` lists.
    pub images: Vec<ImageInfo>,
}

impl TestImages {
    /// The layout.
    pub fn layout(&self) -> OciLayout {
        OciLayout::open(&self.oci_dir)
    }

    /// The entry for `tag`.
    pub fn info(&self, tag: &str) -> &ImageInfo {
        self.images
            .iter()
            .find(|i| i.tag == tag)
            .unwrap_or_else(|| panic!("no test image {tag}"))
    }
}

/// The cache dir (`LAYERLINK_CACHE`, default `/var/cache/layerlink`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LAYERLINK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/layerlink"))
}

/// The `RECIPE="…"` of the build script: its output is
/// `$CACHE/images-<RECIPE>`, so work trees with different recipes can share
/// one cache (the `$CACHE/images` symlink names only the newest build).
fn recipe(script: &std::path::Path) -> String {
    let text =
        std::fs::read_to_string(script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("RECIPE=\""))
        .and_then(|rest| rest.split('"').next())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| panic!("{} has no RECIPE=\"…\" line", script.display()))
        .to_string()
}

/// The test images, built first if the cache lacks them or holds another
/// recipe. Runs `scripts/build-test-images.sh` once per process (it is a
/// no-op when the cache is current; a lock serialises parallel runs).
/// Never skips: if the images cannot be built, this panics.
pub fn test_images() -> &'static TestImages {
    static IMAGES: OnceLock<TestImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let script = workspace_root().join("scripts/build-test-images.sh");
        let out = crate::run(Command::new("bash").arg(&script));
        if !out.status.success() {
            panic!(
                "{} failed ({}):\n{}\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = cache_dir().join(format!("images-{}", recipe(&script)));
        let manifest = std::fs::read_to_string(dir.join("manifest.txt"))
            .unwrap_or_else(|e| panic!("{}/manifest.txt: {e}", dir.display()));
        let images = manifest
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 4, "bad manifest.txt line: {l}");
                ImageInfo {
                    tag: f[0].to_string(),
                    digest: f[1].to_string(),
                    layers: f[2].parse().expect("layer count"),
                    bytes: f[3].parse().expect("bytes"),
                }
            })
            .collect();
        TestImages {
            oci_dir: dir.join("oci"),
            images,
        }
    })
}
