//! The sync flow against an in-process registry stand-in that implements
//! the wire contract's decisions (plan, dedup archive from holdings,
//! objects, report, 409 on unknown holdings hashes). The real registry is
//! exercised end to end by the workspace's `tests/` crate.

mod common;

use common::{image_config, layer_tar, Archive, Entry, TempDir};
use layerlink_agent::client::{Download, Remote};
use layerlink_agent::error::exit;
use layerlink_agent::store::record::parse_image_ref;
use layerlink_agent::store::{Access, Store};
use layerlink_agent::sync::{sync, SyncOptions};
use layerlink_agent::{Error, Result};
use layerlink_proto::msg::*;
use layerlink_proto::{Digest, ErrorCode};
use std::collections::BTreeSet;
use std::time::Duration;

struct Image {
    name: ImageRef,
    layers: Vec<(Digest, Vec<Entry>)>,
    manifest: Vec<u8>,
    config: Vec<u8>,
}

fn image(name: &str, layers: Vec<Vec<Entry>>) -> Image {
    let layers: Vec<(Digest, Vec<Entry>)> =
        layers.into_iter().map(|l| (layer_tar(&l).1, l)).collect();
    let ids: Vec<Digest> = layers.iter().map(|(d, _)| *d).collect();
    let config = image_config(&ids, "\"Cmd\":[\"/bin/sh\"]");
    let manifest = format!(
        "{{\"schemaVersion\":2,\"config\":\"{}\",\"layers\":{:?}}}",
        Digest::of(&config),
        ids
    )
    .into_bytes();
    Image {
        name: parse_image_ref(name).unwrap(),
        layers,
        manifest,
        config,
    }
}

#[derive(Default)]
struct Fake {
    images: Vec<Image>,
    recorded: Option<HeldSet>,
    calls: Vec<String>,
    /// Cut the next N archive responses at 80 %.
    cut_archives: u32,
    /// Pretend the device holds this object (a lie the agent must catch).
    claim_held: Option<Digest>,
    /// Answer 503 to the next N plans.
    unavailable: u32,
    reports: Vec<Report>,
    /// Leave out the x-layerlink-new-bytes header.
    no_size_header: bool,
    new_bytes_sent: u64,
    request_bytes: Vec<usize>,
    /// Keep each archive (id "a1") and honour resume requests for it.
    resumable: bool,
    kept: Vec<u8>,
    /// Archive body bytes sent, fresh and resumed.
    body_bytes: u64,
}

impl Fake {
    fn holdings(&mut self, h: &Holdings) -> Result<HeldSet> {
        match h {
            Holdings::Full(s) => {
                self.recorded = Some(s.clone());
                Ok(s.clone())
            }
            Holdings::Hash(d) => match &self.recorded {
                Some(s) if s.hash() == *d => Ok(s.clone()),
                _ => Err(Error::Server {
                    status: 409,
                    code: Some(ErrorCode::UnknownHoldingsSet),
                    message: "unknown holdings set".into(),
                }),
            },
        }
    }

    fn find(&self, r: &ImageRef) -> &Image {
        self.images.iter().find(|i| i.name == *r).expect("image")
    }

    /// Objects the device holds, by the registry's reckoning.
    fn held_objects(&self, set: &HeldSet) -> BTreeSet<Digest> {
        let mut out: BTreeSet<Digest> = set.objects.iter().copied().collect();
        for img in &self.images {
            for (d, entries) in &img.layers {
                if set.layers.contains(d) {
                    out.extend(
                        entries
                            .iter()
                            .filter(|e| e.kind == b'0' && !e.data.is_empty())
                            .map(|e| Digest::of(&e.data)),
                    );
                }
            }
        }
        out.extend(self.claim_held);
        out
    }

    fn layer_entries(&self, d: &Digest) -> &Vec<Entry> {
        self.images
            .iter()
            .flat_map(|i| &i.layers)
            .find(|(x, _)| x == d)
            .map(|(_, e)| e)
            .unwrap()
    }
}

impl Remote for Fake {
    fn plan(&mut self, req: &PlanRequest) -> Result<PlanResponse> {
        self.calls.push(format!(
            "plan {}",
            if matches!(req.holdings, Holdings::Hash(_)) {
                "hash"
            } else {
                "full"
            }
        ));
        self.request_bytes
            .push(postcard::to_allocvec(req).unwrap().len());
        if self.unavailable > 0 {
            self.unavailable -= 1;
            return Err(Error::Transient("503 busy".into()));
        }
        let set = self.holdings(&req.holdings)?;
        let held = self.held_objects(&set);
        let mut images = Vec::new();
        for r in &req.images {
            let img = self.find(r);
            let layers = img
                .layers
                .iter()
                .map(|(d, entries)| {
                    let state = if set.layers.contains(d) {
                        LayerState::Held
                    } else {
                        let mut c = LayerCost {
                            entries: entries.len() as u32,
                            ..Default::default()
                        };
                        for e in entries
                            .iter()
                            .filter(|e| e.kind == b'0' && !e.data.is_empty())
                        {
                            if held.contains(&Digest::of(&e.data)) {
                                c.referenced_files += 1;
                                c.referenced_bytes += e.data.len() as u64;
                            } else {
                                c.new_files += 1;
                                c.new_bytes += e.data.len() as u64;
                            }
                        }
                        LayerState::Needed(c)
                    };
                    LayerPlan { diff_id: *d, state }
                })
                .collect();
            images.push(ImagePlan {
                image: r.clone(),
                manifest_digest: Digest::of(&img.manifest),
                config_digest: Digest::of(&img.config),
                layers,
            });
        }
        Ok(PlanResponse {
            holdings_hash: set.hash(),
            images,
        })
    }

    fn archive(&mut self, req: &ArchiveRequest) -> Result<Download> {
        self.calls.push(format!(
            "archive {} layers meta={}",
            req.layers.len(),
            req.metadata
        ));
        let set = self.holdings(&req.holdings)?;
        let mut held = self.held_objects(&set);
        let img = self
            .images
            .iter()
            .find(|i| Digest::of(&i.manifest) == req.manifest_digest)
            .unwrap();
        let mut arch = Archive::new();
        if req.metadata {
            arch.metadata(&img.manifest, &img.config);
        }
        let mut new_bytes = 0;
        for d in &req.layers {
            let entries: Vec<Entry> = self
                .layer_entries(d)
                .iter()
                .map(|e| {
                    if e.kind != b'0' || e.data.is_empty() {
                        return e.clone();
                    }
                    let od = Digest::of(&e.data);
                    if held.contains(&od) {
                        e.clone().into_reference()
                    } else {
                        held.insert(od);
                        new_bytes += e.data.len() as u64;
                        e.clone().with_digest()
                    }
                })
                .collect();
            arch.layer(d, &entries);
        }
        arch.end();
        let mut bytes = arch.finish();
        let id = self.resumable.then(|| {
            self.kept = bytes.clone();
            "a1".to_string()
        });
        if self.cut_archives > 0 {
            self.cut_archives -= 1;
            bytes.truncate(bytes.len() * 4 / 5);
        } else {
            self.new_bytes_sent += new_bytes;
        }
        self.body_bytes += bytes.len() as u64;
        Ok(Download {
            encoding: None,
            new_bytes: (!self.no_size_header).then_some(new_bytes),
            body: Box::new(std::io::Cursor::new(bytes)),
            id,
            offset: None,
        })
    }

    fn archive_resume(&mut self, req: &ArchiveRequest, resume: &str) -> Result<Download> {
        let v: Vec<&str> = resume.split(' ').collect();
        let len: usize = v[1].parse().unwrap();
        let ok =
            v[0] == "a1" && len <= self.kept.len() && Digest::of(&self.kept[..len]).hex() == v[2];
        if !ok {
            self.calls.push("resume refused".into());
            return self.archive(req);
        }
        self.calls.push(format!("archive resumed at {len}"));
        let rest = self.kept[len..].to_vec();
        self.body_bytes += rest.len() as u64;
        Ok(Download {
            encoding: None,
            new_bytes: None,
            body: Box::new(std::io::Cursor::new(rest)),
            id: Some("a1".into()),
            offset: Some(len as u64),
        })
    }

    fn objects(&mut self, req: &ObjectsRequest) -> Result<Download> {
        self.calls.push(format!("objects {}", req.digests.len()));
        let mut arch = Archive::new();
        for d in &req.digests {
            let e = self
                .images
                .iter()
                .flat_map(|i| i.layers.iter().flat_map(|(_, es)| es))
                .find(|e| e.kind == b'0' && Digest::of(&e.data) == *d)
                .unwrap();
            arch.object(&e.data);
        }
        arch.end();
        Ok(Download {
            encoding: None,
            new_bytes: None,
            body: Box::new(std::io::Cursor::new(arch.finish())),
            id: None,
            offset: None,
        })
    }

    fn report(&mut self, req: &Report) -> Result<ReportAck> {
        self.calls.push("report".into());
        let set = self.holdings(&req.holdings)?;
        self.reports.push(req.clone());
        Ok(ReportAck {
            holdings_hash: set.hash(),
        })
    }
}

fn opts(images: &[&str]) -> SyncOptions {
    SyncOptions {
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        images: images.iter().map(|i| parse_image_ref(i).unwrap()).collect(),
        retry_for: Duration::from_secs(5),
        first_backoff: Duration::from_millis(5),
        progress: false,
        allow_devices: true,
        force_platform: false,
        verify_layers: Default::default(),
        trust: None,
    }
}

fn pseudo_random(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn base_layer() -> Vec<Entry> {
    vec![
        Entry::dir("./"),
        Entry::dir("bin/"),
        Entry::file("bin/busybox", &pseudo_random(1, 100_000)).mode(0o755),
        Entry::symlink("bin/sh", "busybox"),
        Entry::dir("etc/"),
        Entry::file("etc/os-release", b"ID=test\n"),
    ]
}

fn app_layer(version: &str) -> Vec<Entry> {
    vec![
        Entry::dir("app/"),
        Entry::file("app/main", &pseudo_random(2, 50_000)).mode(0o755),
        Entry::file("app/version", version.as_bytes()),
        Entry::file("app/busybox-copy", &pseudo_random(1, 100_000)).mode(0o700),
    ]
}

#[test]
fn first_sync_fetches_everything_then_a_no_op_sync_is_one_small_plan() {
    let t = TempDir::new("sync-noop");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer(), app_layer("1")])],
        ..Default::default()
    };
    let s = sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    assert_eq!(
        fake.calls,
        ["plan full", "archive 2 layers meta=true", "report"]
    );
    assert_eq!((s.updated.len(), s.layers), (1, 2));
    // busybox-copy is the same content as bin/busybox: sent once.
    assert_eq!(fake.new_bytes_sent, 100_000 + 50_000 + 1 + 8);
    let rec = store
        .record(&parse_image_ref("app:v1").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(fake.reports[0].images.len(), 1);

    fake.calls.clear();
    fake.request_bytes.clear();
    let s = sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    assert_eq!(fake.calls, ["plan hash"], "a no-op sync is one round trip");
    assert!(s.updated.is_empty() && s.up_to_date.len() == 1);
    assert!(
        fake.request_bytes[0] < 200,
        "plan request is {} bytes",
        fake.request_bytes[0]
    );
}

#[test]
fn an_unknown_holdings_hash_is_resent_in_full() {
    let t = TempDir::new("sync-409");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer()])],
        ..Default::default()
    };
    sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    fake.recorded = None; // the registry lost its record
    fake.calls.clear();
    sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    assert_eq!(fake.calls, ["plan hash", "plan full"]);
}

#[test]
fn an_update_fetches_only_the_changed_layer_and_files() {
    let t = TempDir::new("sync-update");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut fake = Fake {
        images: vec![
            image("app:v1", vec![base_layer(), app_layer("1")]),
            image("app:v2", vec![base_layer(), app_layer("2")]),
        ],
        ..Default::default()
    };
    sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    fake.calls.clear();
    fake.new_bytes_sent = 0;
    sync(&store, &mut fake, &opts(&["app:v2"])).unwrap();
    assert_eq!(
        fake.calls,
        ["plan hash", "archive 1 layers meta=true", "report"]
    );
    assert_eq!(fake.new_bytes_sent, 1, "only app/version changed");
    let rec = store
        .record(&parse_image_ref("app:v2").unwrap())
        .unwrap()
        .unwrap();
    let l = store.layer_path(&rec.layers[1]);
    assert_eq!(std::fs::read(l.join("app/version")).unwrap(), b"2");
    // Both images are reported as held.
    assert_eq!(fake.reports.last().unwrap().images.len(), 2);
}

#[test]
fn a_cut_stream_is_retried_without_downloading_stored_objects_again() {
    let t = TempDir::new("sync-cut");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer(), app_layer("1")])],
        cut_archives: 1,
        unavailable: 1,
        ..Default::default()
    };
    let s = sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    assert_eq!(s.attempts, 3, "{:?}", fake.calls);
    // The retry reports what the cut left (loose objects) in full…
    assert_eq!(
        fake.calls[..4],
        [
            "plan full",
            "plan full",
            "archive 2 layers meta=true",
            "plan full"
        ]
    );
    assert!(fake.recorded.as_ref().unwrap().layers.len() == 2);
    // …so its archive did not carry busybox again.
    assert!(
        fake.new_bytes_sent <= 50_000 + 9,
        "sent {} bytes again",
        fake.new_bytes_sent
    );
    let mut problems = 0;
    store.verify(|_| problems += 1).unwrap();
    assert_eq!(problems, 0);
}

#[test]
fn a_cut_archive_resumes_where_it_stopped() {
    let t = TempDir::new("sync-resume");
    let root = t.path().join("store");
    let store = Store::open(&root, Access::Exclusive).unwrap();
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer(), app_layer("1")])],
        cut_archives: 1,
        resumable: true,
        ..Default::default()
    };
    sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    let full = fake.kept.len() as u64;
    let cut = full * 4 / 5;
    assert_eq!(
        fake.calls[..4],
        [
            "plan full".to_string(),
            "archive 2 layers meta=true".into(),
            "plan full".into(),
            format!("archive resumed at {cut}"),
        ],
    );
    // Not one byte of the archive travelled twice.
    assert_eq!(fake.body_bytes, full);
    assert!(!root.join("partial-archive").exists());
    assert!(!root.join("partial-archive.info").exists());
    let mut problems = 0;
    store.verify(|_| problems += 1).unwrap();
    assert_eq!(problems, 0);
    let rec = store
        .record(&parse_image_ref("app:v1").unwrap())
        .unwrap()
        .unwrap();
    let v = std::fs::read(store.layer_path(&rec.layers[1]).join("app/version")).unwrap();
    assert_eq!(v, b"1");
}

#[test]
fn a_damaged_kept_archive_is_not_replayed() {
    let t = TempDir::new("sync-resume-bad");
    let root = t.path().join("store");
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer(), app_layer("1")])],
        cut_archives: 1,
        resumable: true,
        ..Default::default()
    };
    {
        let store = Store::open(&root, Access::Exclusive).unwrap();
        let mut o = opts(&["app:v1"]);
        o.retry_for = std::time::Duration::ZERO;
        // The image fails (the summary says so); the kept bytes stay.
        let _ = sync(&store, &mut fake, &o);
    }
    // A power cut left garbage at the end of the kept bytes.
    let part = root.join("partial-archive");
    let mut b = std::fs::read(&part).unwrap();
    assert_eq!(b.len() as u64, fake.kept.len() as u64 * 4 / 5);
    let n = b.len();
    b[n - 1] ^= 0xff;
    std::fs::write(&part, b).unwrap();
    let store = Store::open(&root, Access::Exclusive).unwrap();
    sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    assert!(
        fake.calls.contains(&"resume refused".to_string()),
        "{:?}",
        fake.calls
    );
    let mut problems = 0;
    store.verify(|_| problems += 1).unwrap();
    assert_eq!(problems, 0);
}

#[test]
fn a_reference_to_an_object_the_device_lacks_is_repaired() {
    let t = TempDir::new("sync-repair");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let lie = Digest::of(&pseudo_random(2, 50_000));
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer(), app_layer("1")])],
        claim_held: Some(lie),
        ..Default::default()
    };
    sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    assert_eq!(
        fake.calls,
        [
            "plan full",
            "archive 2 layers meta=true",
            "objects 1",
            "report"
        ]
    );
    let rec = store
        .record(&parse_image_ref("app:v1").unwrap())
        .unwrap()
        .unwrap();
    let main = std::fs::read(store.layer_path(&rec.layers[1]).join("app/main")).unwrap();
    assert_eq!(Digest::of(&main), lie);
}

#[test]
fn a_second_tag_of_a_held_manifest_needs_no_archive() {
    let t = TempDir::new("sync-tag");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer()])],
        ..Default::default()
    };
    let mut latest = image("app:latest", vec![base_layer()]);
    latest.manifest = fake.images[0].manifest.clone();
    fake.images.push(latest);
    sync(&store, &mut fake, &opts(&["app:v1"])).unwrap();
    fake.calls.clear();
    sync(&store, &mut fake, &opts(&["app:v1", "app:latest"])).unwrap();
    assert_eq!(fake.calls, ["plan hash", "report"]);
    assert!(store
        .record(&parse_image_ref("app:latest").unwrap())
        .unwrap()
        .is_some());
}

/// A sync of one image that fails: the run's exit code and the image's
/// error (each image succeeds or fails on its own, so the run itself is Ok).
fn sync_fails(store: &Store, remote: &mut dyn Remote, o: &SyncOptions) -> (i32, String) {
    let s = sync(store, remote, o).unwrap();
    assert_eq!(s.failed.len(), 1, "{s:?}");
    assert!(s.updated.is_empty() && s.up_to_date.is_empty(), "{s:?}");
    assert_eq!(s.exit_code(), s.failed[0].exit_code);
    (s.exit_code(), s.failed[0].message.clone())
}

#[test]
fn retries_give_up_with_a_network_error() {
    let t = TempDir::new("sync-giveup");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut fake = Fake {
        images: vec![image("app:v1", vec![base_layer()])],
        unavailable: 1000,
        ..Default::default()
    };
    let mut o = opts(&["app:v1"]);
    o.retry_for = Duration::from_millis(50);
    let err = sync(&store, &mut fake, &o).unwrap_err();
    assert_eq!(err.exit_code(), exit::NETWORK);
    assert!(
        fake.calls.len() >= 2 && fake.calls.len() < 10,
        "{:?}",
        fake.calls
    );
}

#[test]
fn a_wrong_manifest_is_an_integrity_error_and_records_nothing() {
    let t = TempDir::new("sync-badmeta");
    let store = Store::open(&t.path().join("store"), Access::Exclusive).unwrap();
    let mut img = image("app:v1", vec![base_layer()]);
    img.manifest = b"{\"tampered\":true}".to_vec();
    let mut fake = Fake {
        images: vec![img],
        ..Default::default()
    };
    // The plan announces the digest of the tampered bytes, the archive
    // carries them: consistent, so this syncs. Tamper after planning:
    let plan = fake
        .plan(&PlanRequest {
            platform: opts(&[]).platform,
            images: vec![parse_image_ref("app:v1").unwrap()],
            holdings: Holdings::Full(HeldSet::default()),
        })
        .unwrap();
    assert_eq!(
        plan.images[0].manifest_digest,
        Digest::of(b"{\"tampered\":true}")
    );
    fake.images[0].config = b"{\"rootfs\":{\"diff_ids\":[]}}".to_vec();
    // Now the plan's config digest and the archive's config disagree.
    struct Stale<'a>(&'a mut Fake, PlanResponse);
    impl Remote for Stale<'_> {
        fn plan(&mut self, _: &PlanRequest) -> Result<PlanResponse> {
            Ok(self.1.clone())
        }
        fn archive(&mut self, r: &ArchiveRequest) -> Result<Download> {
            let mut r = r.clone();
            r.holdings = Holdings::Full(HeldSet::default());
            self.0.archive(&r)
        }
        fn objects(&mut self, r: &ObjectsRequest) -> Result<Download> {
            self.0.objects(r)
        }
        fn report(&mut self, r: &Report) -> Result<ReportAck> {
            self.0.report(r)
        }
    }
    let mut stale = Stale(&mut fake, plan);
    let (code, err) = sync_fails(&store, &mut stale, &opts(&["app:v1"]));
    assert_eq!(code, exit::INTEGRITY, "{err}");
    assert!(store
        .record(&parse_image_ref("app:v1").unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn too_little_free_space_is_exit_6_before_or_while_applying() {
    let t = TempDir::new("sync-full");
    let dir = t.path().join("small");
    std::fs::create_dir_all(&dir).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
        .arg(&dir)
        .output();
    match &mount {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "cannot mount a 20 MiB tmpfs on {} ({}): {}\nthis test needs root and tmpfs \
             (it does not skip)",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            panic!("cannot run mount: {e} (this test needs root and tmpfs; it does not skip)")
        }
    }
    /// Unmounts the tmpfs on drop, also when an assertion fails.
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let unmount = Unmount(&dir);
    // The size header announces more than fits: refused before applying.
    let before = sync_into(&dir.join("a"), true);
    // No header, and more content than fits: ENOSPC while applying.
    let during = sync_into(&dir.join("b"), false);
    drop(unmount);
    for (code, msg, layers) in [before, during] {
        assert_eq!(code, exit::DISK_FULL, "{msg}");
        assert!(msg.contains("bytes needed"), "{msg}");
        assert!(layers < 2, "{msg}");
    }
}

/// Sync an image with 24 MiB of content into `dir` (on a 20 MiB tmpfs).
fn sync_into(dir: &std::path::Path, size_header: bool) -> (i32, String, usize) {
    std::fs::create_dir_all(dir).unwrap();
    let store = Store::open(&dir.join("store"), Access::Exclusive).unwrap();
    let layers = vec![
        base_layer(),
        vec![Entry::file("big", &pseudo_random(9, 24 << 20))],
    ];
    let mut fake = Fake {
        images: vec![image("app:v1", layers)],
        no_size_header: !size_header,
        ..Default::default()
    };
    let (code, err) = sync_fails(&store, &mut fake, &opts(&["app:v1"]));
    (code, err, store.committed_layers().unwrap().len())
}
