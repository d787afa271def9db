//! Platform safety (issue 13, point 4), end to end with the real registry,
//! a skopeo push, the real agent and `umoci unpack`: an image whose config
//! names another platform than the device's is refused (exit 8, the "not
//! found" code an index without the device's platform gets) and leaves the
//! store as it was, unless forced.

use layerlink_tests::fixture::{self, registry_with_test_images, test_repo};
use layerlink_tests::{test_images, Agent};
use std::path::Path;

const TOKEN: &str = "tok-dev1";
const DEVICE_CONFIG: &str = r#"
[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["test/*"]
"#;

/// Every file below `dir` (relative paths), sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn an_image_for_another_platform_is_refused_unless_forced() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["tiny:v1", "tiny:v2"]);
    let url = format!("http://{}", reg.addr());
    let layout = test_images().layout();
    assert_eq!(
        layout.config("tiny:v2")["architecture"],
        "amd64",
        "the test images are amd64-only"
    );
    let (tiny1, tiny2) = (test_repo("tiny:v1"), test_repo("tiny:v2"));

    // An arm64 device holding tiny:v1 (forced: it is amd64 too).
    let mut agent = Agent::new(TOKEN);
    agent.sync_args = vec!["--platform".into(), "linux/arm64".into()];
    let out = agent.try_sync(&url, &[&tiny1]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not for this platform")
            && err.contains("linux/amd64")
            && err.contains("linux/arm64"),
        "the refusal names both platforms: {err}"
    );
    assert!(
        files(&agent.store.join("layers")).is_empty()
            && files(&agent.store.join("images")).is_empty(),
        "a refused image leaves no layer and no record"
    );
    let co = agent.scratch("refused");
    let o = agent
        .command()
        .arg("checkout")
        .arg("--store")
        .arg(&agent.store)
        .arg(&tiny1)
        .arg(&co)
        .output()
        .unwrap();
    assert!(!o.status.success(), "checkout of a refused image must fail");
    assert!(
        !co.join("rootfs").exists(),
        "no checkout of a refused image"
    );

    agent.sync_args.push("--force-platform".into());
    agent.sync(&url, &[&tiny1]);
    fixture::assert_checkout_matches_umoci(&agent, &tiny1, &test_images().oci_dir, "tiny:v1");

    // Refusing an update changes nothing in the store (objects included).
    agent.sync_args.pop();
    let before: Vec<String> = files(&agent.store)
        .into_iter()
        .filter(|f| f != "state" && f != "checked" && f != "lock")
        .collect();
    let out = agent.try_sync(&url, &[&tiny2]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<String> = files(&agent.store)
        .into_iter()
        .filter(|f| f != "state" && f != "checked" && f != "lock")
        .collect();
    assert_eq!(before, after, "a refused update leaves the store as it was");
    let st = agent.status_json();
    let o = st["last_sync"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["image"] == tiny2.as_str())
        .unwrap_or_else(|| panic!("status --json does not name {tiny2}: {st}"))
        .clone();
    assert_eq!(o["ok"], false, "{o}");
    assert_eq!(o["exit_code"], 8, "{o}");

    // The config file's force_platform = true works like the flag.
    let cfg = agent.scratch("agent.toml");
    std::fs::write(&cfg, "platform = \"linux/arm64\"\nforce_platform = true\n").unwrap();
    agent.sync_args = vec!["--config".into(), cfg.display().to_string()];
    agent.sync(&url, &[&tiny2]);
    fixture::assert_checkout_matches_umoci(&agent, &tiny2, &test_images().oci_dir, "tiny:v2");
    let v = agent.verify();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
