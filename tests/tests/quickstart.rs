//! The README's quickstart keeps working: `scripts/quickstart.sh` builds,
//! starts a registry, pushes with skopeo, syncs, checks out and prints
//! stats, with the real binaries.

use layerlink_tests::bins::workspace_root;

#[test]
fn quickstart_script_runs_end_to_end() {
    layerlink_tests::test_images();
    let out = layerlink_tests::run(
        std::process::Command::new("bash")
            .arg(workspace_root().join("scripts/quickstart.sh"))
            .arg("tiny:v2")
            .current_dir(workspace_root()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart.sh failed ({}):\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "==> device sync",
        "==> checkout",
        "==> devices known to the registry",
        "==> done",
    ] {
        assert!(
            stdout.contains(step),
            "quickstart.sh output lacks `{step}`:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("dev1"),
        "the registry does not list the device:\n{stdout}"
    );
}
