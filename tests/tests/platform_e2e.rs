//! Platform safety (issue 13, point 4), end to end with the real registry,
//! a skopeo push, the real agent and `umoci unpack`: an image whose config
//! names another platform than the device's is refused (exit 8, the "not
//! found" code an index without the device's platform gets) and leaves the
//! store as it was, unless forced; and a multi-arch index gives each
//! platform its own image (cross/test.sh runs the same index through the
//! aarch64 and armv7 agents under QEMU).

use layerlink_tests::fixture::{self, registry_with_test_images, test_repo};
use layerlink_tests::images::multiarch_images;
use layerlink_tests::oci::skopeo_push_all;
use layerlink_tests::{sha256_hex, test_images, Agent, Registry};
use std::path::Path;
use std::process::Command;

use layerlink_tests::fixture::{DEVICE_CONFIG, TOKEN};

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

/// The ELF `e_machine` of a platform's programs.
fn elf_machine(platform: &str) -> u16 {
    match platform {
        "linux/amd64" => 62,
        "linux/arm64" => 183,
        "linux/arm/v7" => 40,
        _ => panic!("no ELF machine for {platform}"),
    }
}

/// The platform of the machine running the tests (whose programs it can exec).
fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        "arm" => "linux/arm/v7",
        a => panic!("the multi-arch test image has no program for {a}"),
    }
}

#[test]
fn a_multi_arch_index_gives_each_platform_its_own_image() {
    // Debian's busybox-static for linux/amd64, linux/arm64 and linux/arm/v7,
    // one index over the three, pushed as one tag with `skopeo copy --all`.
    let multi = multiarch_images();
    let reg = Registry::start(Some(DEVICE_CONFIG));
    let url = format!("http://{}", reg.addr());
    let image = test_repo(multi.index_tag);
    skopeo_push_all(&multi.oci_dir, multi.index_tag, &reg, &image);

    for platform in ["linux/amd64", "linux/arm64", "linux/arm/v7"] {
        let want = multi.for_platform(platform);
        let mut agent = Agent::new(TOKEN);
        agent.sync_args = vec!["--platform".into(), platform.into()];
        agent.sync(&url, &[&image]);
        let st = agent.status_json();
        let got = st["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image"] == image.as_str())
            .unwrap_or_else(|| panic!("status --json does not name {image}: {st}"))
            ["manifest_digest"]
            .clone();
        assert_eq!(
            got, want.manifest,
            "a {platform} device must get the index's {platform} manifest ({})",
            want.tag
        );
        fixture::assert_checkout_matches_umoci(&agent, &image, &multi.oci_dir, &want.tag);

        // Its program is built for its machine: the package's own busybox.
        let bundle = agent.scratch("bundle");
        agent.checkout(&image, &bundle);
        let busybox = std::fs::read(bundle.join("rootfs/bin/busybox")).unwrap();
        assert_eq!(
            &busybox[..4],
            b"\x7fELF",
            "{platform}: /bin/busybox is not ELF"
        );
        assert_eq!(
            u16::from_le_bytes([busybox[18], busybox[19]]),
            elf_machine(platform),
            "{platform}: /bin/busybox is for another machine"
        );
        assert_eq!(sha256_hex(&busybox), want.busybox_sha256, "{platform}");

        // The bundle's process is the image's Entrypoint + Cmd; the host runs
        // its own platform's.
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let args: Vec<&str> = spec["process"]["args"]
            .as_array()
            .unwrap_or_else(|| panic!("no process.args in {spec}"))
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let greeting = format!("layerlink multiarch {platform}");
        assert_eq!(
            args,
            ["/bin/busybox", "echo", greeting.as_str()],
            "{platform}"
        );
        if platform == host_platform() {
            let out = Command::new(bundle.join("rootfs").join(&args[0][1..]))
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(out.status.success(), "{platform}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{greeting}\n")
            );
        }
    }

    // No manifest for the device (an arm/v6 device must not get v7 code):
    // exit 8 naming the platform and what the index has; nothing stored.
    for platform in ["linux/riscv64", "linux/arm/v6"] {
        let mut agent = Agent::new(TOKEN);
        agent.sync_args = vec!["--platform".into(), platform.into()];
        let out = agent.try_sync(&url, &[&image]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(8), "{platform}: {err}");
        assert!(
            err.contains(&format!("no manifest for {platform}"))
                && err.contains("linux/amd64, linux/arm64, linux/arm/v7"),
            "the refusal names the platform and what the index has: {err}"
        );
        assert!(
            files(&agent.store.join("layers")).is_empty(),
            "{platform}: a refused image leaves no layer"
        );
    }
}
