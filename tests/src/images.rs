//! The cached real test images (see `scripts/build-test-images.sh` and
//! `scripts/build-multiarch-image.sh`).

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
        let dir = run_build_script("build-test-images.sh", "images");
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

/// Run `scripts/SCRIPT` (a no-op when its cache is current) and return its
/// output dir, `$CACHE/<prefix>-<RECIPE>`; panics when the script fails.
fn run_build_script(script: &str, prefix: &str) -> PathBuf {
    let script = workspace_root().join("scripts").join(script);
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
    cache_dir().join(format!("{prefix}-{}", recipe(&script)))
}

/// One platform's image of the multi-arch test image (a `platforms.txt` line).
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// `multi-arm64:v1`, …
    pub tag: String,
    /// `linux/arm64`, `linux/arm/v7`, …
    pub platform: String,
    /// Its manifest digest (what the index names).
    pub manifest: String,
    /// sha256 (hex) of its `/bin/busybox`.
    pub busybox_sha256: String,
}

/// The multi-arch test image: Debian's busybox-static for linux/amd64,
/// linux/arm64 and linux/arm/v7, and an OCI index of the three.
#[derive(Debug, Clone)]
pub struct MultiArchImages {
    /// The layout dir (`$CACHE/multiarch-<RECIPE>/oci`).
    pub oci_dir: PathBuf,
    /// The index's tag in the layout.
    pub index_tag: &'static str,
    /// One entry per platform.
    pub images: Vec<PlatformImage>,
}

impl MultiArchImages {
    /// The image for `platform` (`linux/arm64`, …).
    pub fn for_platform(&self, platform: &str) -> &PlatformImage {
        self.images
            .iter()
            .find(|i| i.platform == platform)
            .unwrap_or_else(|| panic!("the multi-arch test image has no {platform}"))
    }
}

/// The multi-arch test image, built first if the cache lacks it (runs
/// `scripts/build-multiarch-image.sh` once per process). Never skips.
pub fn multiarch_images() -> &'static MultiArchImages {
    static IMAGES: OnceLock<MultiArchImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = run_build_script("build-multiarch-image.sh", "multiarch");
        let list = std::fs::read_to_string(dir.join("platforms.txt"))
            .unwrap_or_else(|e| panic!("{}/platforms.txt: {e}", dir.display()));
        let images = list
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 5, "bad platforms.txt line: {l}");
                PlatformImage {
                    tag: f[0].into(),
                    platform: f[1].into(),
                    manifest: f[2].into(),
                    busybox_sha256: f[3].into(),
                }
            })
            .collect();
        MultiArchImages {
            oci_dir: dir.join("oci"),
            index_tag: "multi:v1",
            images,
        }
    })
}
