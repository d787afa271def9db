//! Setup and checks that several end-to-end suites share: a registry
//! holding the cached test images, and "the agent's checkout equals
//! `umoci unpack`".

use crate::{assert_trees_equal, skopeo_push, test_images, umoci_unpack, Agent, Registry};
use std::path::Path;
use std::time::{Duration, Instant};

/// The token of [`DEVICE_CONFIG`]'s device.
pub const TOKEN: &str = "tok-dev1";

/// A registry config with one device, `dev1`, that may read `test/*` only
/// (where [`test_repo`] puts the test images).
pub const DEVICE_CONFIG: &str = r#"
[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["test/*"]
"#;

/// Where the suites push a cached test image: `base-a:v1` → `test/base-a:v1`.
pub fn test_repo(tag: &str) -> String {
    format!("test/{tag}")
}

/// A registry started with `config`, holding the cached test images `tags`
/// (pushed with skopeo as [`test_repo`]), every distinct layer ingested.
/// Panics with the registry's log when ingest takes over 180 s.
pub fn registry_with_test_images(config: &str, tags: &[&str]) -> Registry {
    let images = test_images();
    let reg = Registry::start(Some(config));
    for tag in tags {
        skopeo_push(&images.oci_dir, tag, &reg, &test_repo(tag));
    }
    let layout = images.layout();
    let mut layers: Vec<String> = tags
        .iter()
        .flat_map(|t| layout.layers(t).into_iter().map(|l| l.digest))
        .collect();
    layers.sort();
    layers.dedup();
    let deadline = Instant::now() + Duration::from_secs(180);
    while reg.stat("layers") < layers.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the registry did not ingest {} layers of {tags:?} in time:\n{}",
            layers.len(),
            reg.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    reg
}

/// The agent's checkout of `image` (a runtime bundle: `config.json` +
/// `rootfs/`) equals `umoci unpack` of `tag` in the layout at `oci_dir`.
/// Both trees are removed afterwards (they are big).
pub fn assert_checkout_matches_umoci(agent: &Agent, image: &str, oci_dir: &Path, tag: &str) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let name = format!("{}-{n}", tag.replace([':', '/'], "_"));
    let reference = agent.scratch(&format!("umoci-{name}"));
    umoci_unpack(oci_dir, tag, &reference);
    let checkout = agent.scratch(&format!("checkout-{name}"));
    agent.checkout(image, &checkout);
    assert!(
        checkout.join("config.json").is_file(),
        "checkout of {image} has no config.json (an OCI runtime bundle)"
    );
    assert!(
        checkout.join("rootfs").is_dir(),
        "checkout of {image} has no rootfs/"
    );
    assert_trees_equal(&reference.join("rootfs"), &checkout.join("rootfs"));
    let _ = std::fs::remove_dir_all(&reference);
    let _ = std::fs::remove_dir_all(&checkout);
}
