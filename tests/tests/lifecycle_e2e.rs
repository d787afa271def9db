//! A device's life beyond one sync (issue 13), end to end with the real
//! registry, skopeo pushes and the real agent, checkouts compared with
//! `umoci unpack`:
//!
//! * partial success: each image of a sync succeeds or fails on its own,
//!   with exit 8 for "not found" and 9 for "some images failed";
//! * self-healing: a damaged store is repaired by the next `sync`;
//! * lifecycle: `remove`, retention (`--keep`) and gc free the disk.

use layerlink_tests::fixture::{self, registry_with_test_images, test_repo};
use layerlink_tests::{test_images, Agent};
use std::process::Output;

use layerlink_tests::fixture::{DEVICE_CONFIG, TOKEN};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_checkout_matches_umoci(agent: &Agent, tag: &str) {
    fixture::assert_checkout_matches_umoci(agent, &test_repo(tag), &test_images().oci_dir, tag);
}

/// The `last_sync.images` entry of `image` in `status --json`.
fn outcome(agent: &Agent, image: &str) -> serde_json::Value {
    let st = agent.status_json();
    st["last_sync"]["images"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no last_sync.images: {st}"))
        .iter()
        .find(|o| o["image"] == image)
        .unwrap_or_else(|| panic!("status --json does not name {image}: {st}"))
        .clone()
}

#[test]
fn each_image_of_a_sync_succeeds_or_fails_on_its_own() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["tiny:v1", "tiny:v2"]);
    let agent = Agent::new(TOKEN);
    let tiny1 = test_repo("tiny:v1");
    let tiny2 = test_repo("tiny:v2");

    // An unknown repository and an unknown tag next to a real image: the
    // real one is synced, the exit code says "not found" (8), not network (3).
    let out = agent.try_sync(&reg.url, &["test/nope:v1", &tiny1, "test/tiny:no-such-tag"]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "sync of a missing image next to a real one: {}",
        stderr(&out)
    );
    assert_checkout_matches_umoci(&agent, "tiny:v1");
    for missing in ["test/nope:v1", "test/tiny:no-such-tag"] {
        let o = outcome(&agent, missing);
        assert_eq!(o["ok"], false, "{missing}: {o}");
        assert_eq!(o["exit_code"], 8, "{missing}: {o}");
        assert_eq!(o["not_found"], true, "{missing}: {o}");
        assert!(
            stderr(&out).contains(missing),
            "stderr does not name {missing}: {}",
            stderr(&out)
        );
    }
    assert_eq!(outcome(&agent, &tiny1)["ok"], true);
    assert_eq!(agent.status_json()["last_sync"]["exit_code"], 8);

    // Only missing images: still 8.
    let out = agent.try_sync(&reg.url, &["test/nope:v1"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));

    // A repository the device may not read (401, exit 7 on its own) next to
    // images it may: those are synced, the run exits 9 "some failed".
    let out = agent.try_sync(&reg.url, &[&tiny2, "other/secret:v1", &tiny1]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "sync with a forbidden image: {}",
        stderr(&out)
    );
    let o = outcome(&agent, "other/secret:v1");
    assert_eq!(
        (o["ok"].clone(), o["exit_code"].clone()),
        (false.into(), 7.into()),
        "{o}"
    );
    assert_eq!(outcome(&agent, &tiny2)["message"], "synced");
    assert_eq!(outcome(&agent, &tiny1)["message"], "up to date");
    assert_checkout_matches_umoci(&agent, "tiny:v2");

    // Everything fine again: 0, and status says so.
    let out = agent.try_sync(&reg.url, &[&tiny1, &tiny2]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(agent.status_json()["last_sync"]["exit_code"], 0);

    // Offline stays 3 (the network code), distinct from 8.
    let dead = "http://127.0.0.1:9"; // discard port: connection refused
    let out = agent
        .command()
        .args(["sync", "--retry-for", "0", "--server", dead, "--store"])
        .arg(&agent.store)
        .args(["--token", TOKEN, &tiny1])
        .output()
        .expect("running the agent");
    assert_eq!(out.status.code(), Some(3), "offline: {}", stderr(&out));
}

/// Every object variant file of the store, sorted by path.
fn object_files(agent: &Agent) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(agent.store.join("objects")).unwrap() {
        let fan = fan.unwrap().path();
        for f in std::fs::read_dir(&fan).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

fn verify_clean(agent: &Agent, when: &str) {
    let v = agent.verify();
    assert!(
        v.status.success(),
        "verify {when}: {}{}",
        String::from_utf8_lossy(&v.stdout),
        stderr(&v)
    );
}

/// Damage the store every way a file system allows: bytes flipped in
/// several objects (one with its mtime put back, so only its ctime tells),
/// one truncated, one deleted, a layer directory removed.
fn damage_store(agent: &Agent) {
    let objects: Vec<_> = object_files(agent)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert!(
        objects.len() >= 5,
        "tiny v1+v2 should have at least 5 non-empty objects: {objects:?}"
    );
    for (i, p) in objects[..3].iter().enumerate() {
        let meta = std::fs::metadata(p).unwrap();
        let mut bytes = std::fs::read(p).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x5a;
        std::fs::write(p, &bytes).unwrap();
        if i == 0 {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(meta.modified().unwrap()).unwrap();
        }
    }
    let f = std::fs::File::options()
        .write(true)
        .open(&objects[3])
        .unwrap();
    f.set_len(1).unwrap();
    std::fs::remove_file(&objects[4]).unwrap();
    let layers: Vec<_> = std::fs::read_dir(agent.store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(layers.len(), 2, "tiny:v1 + v2 = 2 layers: {layers:?}");
    std::fs::remove_dir_all(&layers[0]).unwrap();
    let bad = agent.verify();
    assert_eq!(
        bad.status.code(),
        Some(5),
        "verify missed the damage: {}",
        stderr(&bad)
    );
}

#[test]
fn the_next_sync_repairs_a_damaged_store() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["tiny:v1", "tiny:v2"]);
    let agent = Agent::new(TOKEN);
    let images = [test_repo("tiny:v1"), test_repo("tiny:v2")];
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    agent.sync(&reg.url, &images);
    verify_clean(&agent, "after the first sync");

    // A no-op sync re-hashes nothing ("store check:" is printed when it
    // does): the store is unchanged since the watermark its first sync
    // wrote.
    let out = agent.sync(&reg.url, &images);
    assert!(
        stderr(&out).contains("up to date") && !stderr(&out).contains("store check:"),
        "{}",
        stderr(&out)
    );

    damage_store(&agent);
    // No manual step: the next plain sync finds and repairs all of it.
    let out = agent.sync(&reg.url, &images);
    let err = stderr(&out);
    assert!(
        err.contains("damaged: "),
        "the sync did not report the damage: {err}"
    );
    // 3 flipped + 1 truncated objects found by their ctime (the deleted
    // one and the removed layer by the layer walk).
    assert!(err.contains("4 damaged removed"), "{err}");
    verify_clean(&agent, "after the repairing sync");
    assert_checkout_matches_umoci(&agent, "tiny:v1");
    assert_checkout_matches_umoci(&agent, "tiny:v2");

    // verify --repair does the same (and re-hashes everything).
    damage_store(&agent);
    let out = agent
        .command()
        .args(["verify", "--repair", "--server", &reg.url, "--store"])
        .arg(&agent.store)
        .args(["--token", TOKEN])
        .output()
        .expect("running the agent");
    assert!(
        out.status.success(),
        "verify --repair: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 problem(s) left"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    verify_clean(&agent, "after verify --repair");
    assert_checkout_matches_umoci(&agent, "tiny:v1");
    assert_checkout_matches_umoci(&agent, "tiny:v2");
}

fn disk_bytes(agent: &Agent) -> u64 {
    agent.status_json()["disk_bytes"].as_u64().unwrap()
}

fn held_images(agent: &Agent) -> Vec<String> {
    agent.status_json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap().to_string())
        .collect()
}

/// `remove IMAGE...` through the real agent.
fn remove(agent: &Agent, images: &[&str]) {
    let out = agent
        .command()
        .args(["remove", "--store"])
        .arg(&agent.store)
        .args(images)
        .output()
        .unwrap();
    assert!(out.status.success(), "remove {images:?}: {}", stderr(&out));
}

#[test]
fn remove_and_retention_free_the_disk() {
    let reg = registry_with_test_images(
        DEVICE_CONFIG,
        &["tiny:v1", "tiny:v2", "base-a:v1", "base-a:v2"],
    );
    let agent = Agent::new(TOKEN);
    let [t1, t2, a1, a2] = ["tiny:v1", "tiny:v2", "base-a:v1", "base-a:v2"].map(test_repo);
    agent.sync(&reg.url, &[&t1, &t2, &a1]);

    // remove: the record goes, gc frees what only that image used (tiny:v2's
    // own layer; its base layer stays for tiny:v1).
    let before = disk_bytes(&agent);
    remove(&agent, &[&t2]);
    let after = disk_bytes(&agent);
    assert!(
        after < before,
        "remove freed nothing: {before} -> {after} bytes"
    );
    assert_eq!(held_images(&agent), vec![a1.clone(), t1.clone()]);
    assert_eq!(agent.status_json()["layers"], 2);
    verify_clean(&agent, "after remove");
    assert_checkout_matches_umoci(&agent, "tiny:v1");

    // Retention: base-a:v2 synced with --keep 1 keeps base-a:v1; with
    // --keep 0 it removes it and gc frees v1's layer. Other repositories
    // (tiny) are not touched.
    let sync_keep = |n: &str| {
        let out = agent
            .command()
            .args(["sync", "--keep", n, "--server", &reg.url, "--store"])
            .arg(&agent.store)
            .args(["--token", TOKEN, &a2])
            .output()
            .unwrap();
        assert!(out.status.success(), "sync --keep {n}: {}", stderr(&out));
        stderr(&out)
    };
    sync_keep("1");
    assert_eq!(
        held_images(&agent),
        vec![a1.clone(), a2.clone(), t1.clone()]
    );
    let before = disk_bytes(&agent);
    let err = sync_keep("0");
    assert!(err.contains(&format!("retention: removed {a1}")), "{err}");
    assert_eq!(held_images(&agent), vec![a2.clone(), t1.clone()]);
    let after = disk_bytes(&agent);
    assert!(
        after + 1024 * 1024 < before,
        "retention freed under 1 MiB: {before} -> {after} bytes"
    );
    verify_clean(&agent, "after retention");
    assert_checkout_matches_umoci(&agent, "base-a:v2");
    assert_checkout_matches_umoci(&agent, "tiny:v1");

    // Removing the last images leaves no object and no layer.
    remove(&agent, &[&a2, &t1]);
    let st = agent.status_json();
    assert_eq!(
        (st["objects"].as_u64(), st["layers"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
}
