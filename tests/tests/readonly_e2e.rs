//! Read-only checkouts (issue 13.5), end to end with the real registry,
//! skopeo pushes, the real agent and a real OCI runtime:
//!
//! * `checkout --read-only` mounts a read-only overlayfs of the store's
//!   layers: the tree equals `umoci unpack`; writes of every kind by root
//!   (append, truncate, chmod, chown, rename over, link, unlink, xattr,
//!   remount read-write, `rm -rf`) fail and `verify` stays clean; `gc`
//!   keeps a mounted checkout's layers, frees them after the unmount; sync,
//!   `verify --repair`, `remove` work beside it; the checkout is redone;
//!   without CAP_SYS_ADMIN it exits 10 and leaves nothing.
//! * `crun` (Debian's) runs a copy checkout and a read-only checkout of a
//!   Debian image; the process prints what the test expects, and a write
//!   inside the read-only container fails.
//!
//! Why crun runs the way it does here ([`crun`]): this machine has a hybrid
//! cgroup layout (v1 controllers, and a cgroup2 hierarchy at
//! `/sys/fs/cgroup/unified` with the `hugetlb` controller), which crun
//! refuses ("cgroups in hybrid mode not supported, drop all controllers
//! from cgroupv2"); so crun runs in a private mount namespace with cgroup2
//! mounted on `/sys/fs/cgroup` (unified mode, nothing changes for the
//! host). With a cgroup manager crun then raises `RLIMIT_MEMLOCK` for its
//! eBPF device filter, which this sandbox forbids (`setrlimit
//! (RLIM_MEMLOCK): Operation not permitted`), so `--cgroup-manager=disabled`.
//! Every namespace of the bundle's spec (pid, network, ipc, uts, mount) is
//! kept. Both settings also work on a plain cgroup v1 or v2 host.

use layerlink_tests::fixture::{registry_with_test_images, test_repo};
use layerlink_tests::{assert_trees_equal, run, sha256_file, test_images, umoci_unpack, Agent};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use layerlink_tests::fixture::{DEVICE_CONFIG, TOKEN};

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Unmounts `DEST/rootfs` of every read-only checkout it was told about
/// when dropped (also when the test panics), so the agent's temp dir can
/// be removed.
#[derive(Default)]
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn add(&mut self, dest: &Path) {
        self.0.push(dest.join("rootfs"));
    }

    /// Unmount `DEST/rootfs` now (panics if it fails).
    fn unmount(&mut self, dest: &Path) {
        let target = dest.join("rootfs");
        let out = run(Command::new("umount").arg(&target));
        assert!(
            out.status.success(),
            "umount {}: {}",
            target.display(),
            text(&out)
        );
        self.0.retain(|p| p != &target);
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// Whether `path` is an overlay mount point (in `/proc/self/mountinfo`).
fn is_overlay_mount(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&want) && l.contains(" - overlay ")
    })
}

fn agent_cmd(agent: &Agent, args: &[&str]) -> Output {
    let mut c = agent.command();
    c.args(args);
    c.arg("--store").arg(&agent.store);
    run(&mut c)
}

fn checkout_ro(agent: &Agent, image: &str, dest: &Path) -> Output {
    let mut c = agent.command();
    c.arg("checkout")
        .arg("--read-only")
        .arg("--store")
        .arg(&agent.store)
        .arg(image)
        .arg(dest);
    run(&mut c)
}

fn assert_verify_clean(agent: &Agent, when: &str) {
    let out = agent.verify();
    assert!(out.status.success(), "verify {when}: {}", text(&out));
}

/// `umoci unpack` of `tag` into a scratch dir of `agent` (the oracle).
fn umoci_reference(agent: &Agent, tag: &str) -> PathBuf {
    let dir = agent.scratch(&format!("umoci-{}", tag.replace(':', "_")));
    if !dir.exists() {
        umoci_unpack(&test_images().oci_dir, tag, &dir);
    }
    dir
}

/// The regular files of a tree with content, relative paths.
fn regular_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(n);
            let m = std::fs::symlink_metadata(root.join(&r)).unwrap();
            if m.is_dir() {
                walk(root, &r, out);
            } else if m.is_file() && m.len() > 0 {
                out.push(r);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Every object file of the store: (path, sha256 of its content, ctime).
fn objects(store: &Path) -> Vec<(PathBuf, String, i64)> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(store.join("objects")).unwrap() {
        let fan = fan.unwrap().path();
        for o in std::fs::read_dir(&fan).unwrap() {
            let p = o.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.clone(), sha256_file(&p).unwrap(), m.ctime()));
        }
    }
    out.sort();
    out
}

/// Every write a root shell might try on the read-only tree; each must
/// fail. `file` and `other` are regular files of the tree.
fn write_attempts(rootfs: &Path, file: &Path, other: &Path) -> Vec<(String, Vec<String>)> {
    let f = rootfs.join(file).display().to_string();
    let o = rootfs.join(other).display().to_string();
    let r = rootfs.display().to_string();
    let sh = |s: String| vec!["sh".to_string(), "-c".to_string(), s];
    vec![
        ("append".into(), sh(format!("echo x >> '{f}'"))),
        ("overwrite".into(), sh(format!("echo x > '{f}'"))),
        (
            "truncate".into(),
            vec!["truncate".into(), "-s".into(), "0".into(), f.clone()],
        ),
        (
            "chmod".into(),
            vec!["chmod".into(), "0777".into(), f.clone()],
        ),
        (
            "chown".into(),
            vec!["chown".into(), "1:1".into(), f.clone()],
        ),
        ("touch (times)".into(), vec!["touch".into(), f.clone()]),
        (
            "rename over".into(),
            vec!["mv".into(), "-f".into(), o.clone(), f.clone()],
        ),
        (
            "hard link".into(),
            vec!["ln".into(), f.clone(), format!("{r}/new-link")],
        ),
        ("unlink".into(), vec!["rm".into(), "-f".into(), f.clone()]),
        (
            "setfattr".into(),
            vec![
                "setfattr".into(),
                "-n".into(),
                "user.x".into(),
                "-v".into(),
                "1".into(),
                f.clone(),
            ],
        ),
        ("new file".into(), sh(format!("echo x > '{r}/new-file'"))),
        ("mkdir".into(), vec!["mkdir".into(), format!("{r}/new-dir")]),
        ("rm -rf".into(), vec!["rm".into(), "-rf".into(), r.clone()]),
        (
            "dd conv=notrunc".into(),
            sh(format!(
                "printf x | dd of='{f}' conv=notrunc bs=1 seek=0 2>&1"
            )),
        ),
        (
            "remount rw".into(),
            vec!["mount".into(), "-o".into(), "remount,rw".into(), r.clone()],
        ),
        (
            "remount bind rw, then append".into(),
            sh(format!("mount -o remount,bind,rw '{r}'; echo x >> '{f}'")),
        ),
    ]
}

#[test]
fn read_only_checkout_cannot_damage_the_store() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["tiny:v1", "tiny:v2", "base-b:v1"]);
    let agent = Agent::new(TOKEN);
    let mut mounts = Mounts::default();
    let (tiny1, tiny2, baseb) = (
        test_repo("tiny:v1"),
        test_repo("tiny:v2"),
        test_repo("base-b:v1"),
    );
    agent.sync(&reg.url, &[&tiny1, &tiny2, &baseb]);

    // Read-only checkouts equal umoci unpack: tiny:v2 (a change and a
    // whiteout over tiny:v1's layer: hard link, symlink, xattr, empty
    // file) and base-b:v1 (Debian + an /app layer with a whiteout, a
    // hard link, an xattr, a >100-char path).
    for (image, tag) in [(&tiny2, "tiny:v2"), (&baseb, "base-b:v1")] {
        let dest = agent.scratch(&format!("ro-{}", tag.replace(':', "_")));
        let out = checkout_ro(&agent, image, &dest);
        assert!(
            out.status.success(),
            "checkout --read-only {image}: {}",
            text(&out)
        );
        mounts.add(&dest);
        assert!(
            is_overlay_mount(&dest.join("rootfs")),
            "{image}: rootfs is not an overlay mount"
        );
        assert_trees_equal(
            &umoci_reference(&agent, tag).join("rootfs"),
            &dest.join("rootfs"),
        );
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
        assert_eq!(spec["root"]["readonly"], true, "{image}: {spec}");
    }

    // Write attempts of every kind by root fail; nothing in the store moves.
    let dest = agent.scratch("ro-tiny_v2");
    let rootfs = dest.join("rootfs");
    let files = regular_files(&rootfs);
    assert!(files.len() >= 2, "tiny:v2 has regular files: {files:?}");
    let before_tree = regular_files(&rootfs)
        .iter()
        .map(|p| (p.clone(), sha256_file(&rootfs.join(p)).unwrap()))
        .collect::<Vec<_>>();
    let before = objects(&agent.store);
    for (what, argv) in write_attempts(&rootfs, &files[0], &files[1]) {
        let out = run(Command::new(&argv[0]).args(&argv[1..]));
        assert!(
            !out.status.success(),
            "{what} through the read-only checkout succeeded: {}",
            text(&out)
        );
        let msg = text(&out);
        assert!(
            msg.contains("Read-only file system") || msg.contains("write-protected"),
            "{what} failed for another reason than a read-only file system: {msg}"
        );
    }
    // A shared writable mapping cannot be had either.
    let py = format!(
        "import mmap,os\nfd=os.open('{}',os.O_RDWR)\nmmap.mmap(fd,0,mmap.MAP_SHARED)",
        rootfs.join(&files[0]).display()
    );
    let out = run(Command::new("python3").arg("-c").arg(&py));
    assert!(
        !out.status.success() && text(&out).contains("Read-only file system"),
        "mmap: {}",
        text(&out)
    );
    assert_eq!(
        objects(&agent.store),
        before,
        "a write attempt moved an object's content or ctime"
    );
    let after_tree = regular_files(&rootfs)
        .iter()
        .map(|p| (p.clone(), sha256_file(&rootfs.join(p)).unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(after_tree, before_tree, "the checkout changed");
    assert_verify_clean(&agent, "after the write attempts");
    assert_trees_equal(&umoci_reference(&agent, "tiny:v2").join("rootfs"), &rootfs);

    // Re-checkout into the mounted bundle is refused (exit 2), nothing changes.
    let out = checkout_ro(&agent, &tiny2, &dest);
    assert_eq!(
        out.status.code(),
        Some(2),
        "checkout into a mounted bundle: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("umount"),
        "the refusal says to unmount: {}",
        text(&out)
    );

    // sync and verify --repair beside the mounted checkouts.
    agent.sync(&reg.url, &[&tiny1, &tiny2, &baseb]);
    let out = agent_cmd(
        &agent,
        &[
            "verify", "--repair", "--server", &reg.url, "--token", TOKEN, "-q",
        ],
    );
    assert!(out.status.success(), "verify --repair: {}", text(&out));
    assert_eq!(objects(&agent.store), before, "sync/repair moved an object");

    // remove tiny:v2: gc keeps the layer the mounted checkout uses (tiny:v1
    // keeps the base layer anyway) and the checkout still reads.
    let layers = |a: &Agent| std::fs::read_dir(a.store.join("layers")).unwrap().count();
    let held = layers(&agent);
    let out = agent_cmd(&agent, &["remove", &tiny2]);
    assert!(out.status.success(), "remove: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("kept 1 unused layer(s) a mounted read-only checkout uses"),
        "remove names the kept layer: {}",
        text(&out)
    );
    assert_eq!(layers(&agent), held, "gc removed a mounted layer");
    assert_trees_equal(&umoci_reference(&agent, "tiny:v2").join("rootfs"), &rootfs);
    assert_verify_clean(&agent, "after remove");

    // Unmounted: rootfs is an empty directory, the bundle is removed, and
    // the next gc frees the layer.
    mounts.unmount(&dest);
    assert_eq!(
        std::fs::read_dir(&rootfs).unwrap().count(),
        0,
        "unmounted rootfs is not empty"
    );
    std::fs::remove_dir_all(&dest).unwrap();
    let out = agent.gc();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("removed 1 layer(s)"),
        "gc after the unmount frees tiny:v2's layer: {}",
        text(&out)
    );
    assert_eq!(layers(&agent), held - 1);
    assert_verify_clean(&agent, "after gc");

    // The checkout is done again after a sync brings tiny:v2 back.
    agent.sync(&reg.url, &[&tiny2]);
    let out = checkout_ro(&agent, &tiny2, &dest);
    assert!(out.status.success(), "checkout again: {}", text(&out));
    mounts.add(&dest);
    assert_trees_equal(&umoci_reference(&agent, "tiny:v2").join("rootfs"), &rootfs);
    mounts.unmount(&dest);
    std::fs::remove_dir_all(&dest).unwrap();

    // Without CAP_SYS_ADMIN (still uid 0): exit 10 naming the reason, no
    // silent writable fallback, nothing left behind.
    let mut c = Command::new("setpriv");
    c.args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"]);
    let ac = agent.command();
    c.arg(ac.get_program()).args(ac.get_args());
    c.args(["checkout", "--read-only", "--store"])
        .arg(&agent.store)
        .arg(&tiny1)
        .arg(&dest);
    let out = run(&mut c);
    assert_eq!(
        out.status.code(),
        Some(10),
        "read-only checkout without CAP_SYS_ADMIN: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("needs root (CAP_SYS_ADMIN)"),
        "{}",
        text(&out)
    );
    assert!(
        !dest.exists(),
        "a failed read-only checkout left {}",
        dest.display()
    );
    assert_verify_clean(&agent, "at the end");
}

/// The bundle's `config.json` with `process.args` = `args` and no terminal.
fn set_process(bundle: &Path, args: &[&str]) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// `crun run --bundle BUNDLE ID` as root (see the module doc for the
/// cgroup settings), its output.
fn crun(state: &Path, bundle: &Path, id: &str) -> Output {
    let script = "mount -t cgroup2 none /sys/fs/cgroup && \
                  exec crun --root \"$1\" --cgroup-manager=disabled run --bundle \"$2\" \"$3\"";
    run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(state)
        .arg(bundle)
        .arg(id))
}

#[test]
fn crun_runs_copy_and_read_only_checkouts() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &["base-b:v1"]);
    let agent = Agent::new(TOKEN);
    let mut mounts = Mounts::default();
    let image = test_repo("base-b:v1");
    agent.sync(&reg.url, &[&image]);
    let state = agent.scratch("crun-state");
    std::fs::create_dir_all(&state).unwrap();
    let version = std::fs::read_to_string(
        umoci_reference(&agent, "base-b:v1").join("rootfs/etc/debian_version"),
    )
    .unwrap();
    assert!(version.starts_with("12."), "base-b is Debian 12: {version}");
    let script = "echo layerlink-ok; cat /etc/debian_version; \
                  if echo x >> /etc/debian_version; then echo wrote; else echo write-refused; fi";

    // A copy checkout: the process runs, its root is writable (a copy).
    let copy = agent.scratch("bundle-copy");
    agent.checkout(&image, &copy);
    set_process(&copy, &["/bin/sh", "-c", script]);
    let out = crun(&state, &copy, &format!("ll-copy-{}", std::process::id()));
    assert!(
        out.status.success(),
        "crun run (copy checkout): {}",
        text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("layerlink-ok\n{version}wrote\n")
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("rootfs/etc/debian_version")).unwrap(),
        format!("{version}x\n"),
        "the copy checkout's write landed in the copy"
    );

    // A read-only checkout: the same process; the write inside the
    // container fails, the store is untouched.
    let before = objects(&agent.store);
    let ro = agent.scratch("bundle-ro");
    let out = checkout_ro(&agent, &image, &ro);
    assert!(out.status.success(), "checkout --read-only: {}", text(&out));
    mounts.add(&ro);
    // config.json is the bundle's (outside the read-only rootfs).
    set_process(&ro, &["/bin/sh", "-c", script]);
    let out = crun(&state, &ro, &format!("ll-ro-{}", std::process::id()));
    assert!(
        out.status.success(),
        "crun run (read-only checkout): {}",
        text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("layerlink-ok\n{version}write-refused\n")
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out)
    );
    assert_eq!(
        objects(&agent.store),
        before,
        "running the read-only bundle changed the store"
    );
    assert_verify_clean(&agent, "after running the read-only bundle");
    mounts.unmount(&ro);
}
