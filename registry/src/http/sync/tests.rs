use super::*;
use crate::ingest::testutil::{gunzip, gzip, TarBuilder};
use crate::oci;
use crate::sync::plan::{amd64, MemRegistry};
use layerlink_proto::archive::{parse_reference_link, Marker, PAX_DIGEST, PAX_MARKER};
use layerlink_proto::msg::{
    HeldImage, Holdings, ImageRef, LayerState, Platform, ARCHIVE_CONTENT_TYPE,
    ARCHIVE_CONTENT_TYPE_ZSTD,
};
use layerlink_proto::ErrorBody;

/// A device that may read every repository.
fn dev(id: &str) -> Device {
    Device {
        id: id.into(),
        token: format!("tok-{id}"),
        repositories: vec!["*".into()],
        ..Device::default()
    }
}

fn img(repo: &str, r: &str) -> ImageRef {
    ImageRef {
        repository: repo.into(),
        reference: r.into(),
    }
}

fn plan_req(images: Vec<ImageRef>, holdings: Holdings) -> PlanRequest {
    PlanRequest {
        platform: amd64(),
        images,
        holdings,
    }
}

fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let base = TarBuilder::new()
        .dir("etc/")
        .file("etc/a", b"alpha")
        .file("etc/b", &[5u8; 3000])
        .finish_ref();
    let app = TarBuilder::new()
        .file("app/a-again", b"alpha")
        .file("app/c", &[6u8; 700])
        .finish_ref();
    (base, app)
}

#[test]
fn holdings_hash_flow() {
    let r = MemRegistry::new();
    let (base, app) = two_layers();
    let (_, ids) = r.push("edge/app", "v1", &[base, app]);
    let set = HeldSet {
        layers: vec![ids[0]],
        objects: vec![],
    };
    let full = plan_request(
        &r,
        &dev("gw-1"),
        &plan_req(vec![img("edge/app", "v1")], Holdings::Full(set.clone())),
    )
    .unwrap();
    assert_eq!(full.holdings_hash, set.hash());
    assert_eq!(full.images[0].layers[0].state, LayerState::Held);
    // The hash stands for the recorded set: same plan.
    let by_hash = plan_request(
        &r,
        &dev("gw-1"),
        &plan_req(vec![img("edge/app", "v1")], Holdings::Hash(set.hash())),
    )
    .unwrap();
    assert_eq!(by_hash, full);
    // Unknown hash, or another device's hash: 409.
    let e = plan_request(
        &r,
        &dev("gw-1"),
        &plan_req(vec![], Holdings::Hash(Digest([1; 32]))),
    )
    .unwrap_err();
    assert_eq!(
        (e.code, e.code.http_status()),
        (ErrorCode::UnknownHoldingsSet, 409)
    );
    let e = plan_request(
        &r,
        &dev("gw-2"),
        &plan_req(vec![], Holdings::Hash(set.hash())),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownHoldingsSet);
    // Archive and report take the hash too.
    let areq = ArchiveRequest {
        repository: "edge/app".into(),
        manifest_digest: full.images[0].manifest_digest,
        layers: vec![ids[1]],
        metadata: false,
        holdings: Holdings::Hash(set.hash()),
    };
    let job = prepare_archive(&r, &dev("gw-1"), &areq).unwrap();
    assert_eq!(job.held, set);
    let ack = report_request(
        &r,
        &dev("gw-1"),
        &Report {
            holdings: Holdings::Hash(set.hash()),
            images: vec![],
        },
    )
    .unwrap();
    assert_eq!(ack.holdings_hash, set.hash());
}

#[test]
fn archive_requests_are_checked_against_the_manifest() {
    let r = MemRegistry::new();
    let (base, app) = two_layers();
    let (md, ids) = r.push("edge/app", "v1", &[base.clone(), app]);
    let req = |layers: Vec<Digest>| ArchiveRequest {
        repository: "edge/app".into(),
        manifest_digest: md,
        layers,
        metadata: true,
        holdings: Holdings::Full(HeldSet::default()),
    };
    let e = prepare_archive(&r, &dev("gw"), &req(vec![Digest::of(b"other")])).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("not part of manifest"), "{}", e.message);
    let mut wrong = req(vec![ids[0]]);
    wrong.manifest_digest = Digest::of(b"nope");
    assert_eq!(
        prepare_archive(&r, &dev("gw"), &wrong).unwrap_err().code,
        ErrorCode::NotFound
    );
    // Out of order and repeated: sent once each, in image order.
    let job = prepare_archive(&r, &dev("gw"), &req(vec![ids[1], ids[0], ids[1]])).unwrap();
    assert_eq!(job.layers, ids);
    assert!(job.metadata.is_some());
    // new bytes: "alpha" + 3000 + 700 (the second "alpha" is a reference).
    assert_eq!(job.new_bytes, 5 + 3000 + 700);
    let gz = archive::write_image_archive(
        &r.ts.db,
        &r.ts.objects,
        job.metadata.as_ref().map(|(m, c)| Metadata {
            manifest: m,
            config: c,
        }),
        &job.layers,
        &job.held,
        Vec::new(),
    )
    .unwrap();
    let tar_bytes = gunzip(&gz);
    let mut a = tar::Archive::new(&tar_bytes[..]);
    let mut new_total = 0;
    let mut refs = 0;
    let mut markers = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut digest = None;
        let mut marker = None;
        if let Some(p) = e.pax_extensions().unwrap() {
            for x in p {
                let x = x.unwrap();
                if x.key_bytes() == PAX_DIGEST.as_bytes() {
                    digest = Some(x.value_bytes().to_vec());
                }
                if x.key_bytes() == PAX_MARKER.as_bytes() {
                    marker = Marker::parse(x.value_bytes());
                }
            }
        }
        if let Some(m) = marker {
            markers.push(m);
        } else if digest.is_some() {
            new_total += e.size();
        } else if e
            .link_name_bytes()
            .is_some_and(|l| parse_reference_link(&l).is_some())
        {
            refs += 1;
        }
    }
    assert_eq!(new_total, job.new_bytes);
    assert_eq!(refs, 1);
    assert_eq!(
        markers,
        vec![
            Marker::Manifest,
            Marker::Config,
            Marker::Layer,
            Marker::LayerEnd,
            Marker::Layer,
            Marker::LayerEnd,
            Marker::End
        ]
    );
}

#[test]
fn objects_requests() {
    let r = MemRegistry::new();
    let (base, _) = two_layers();
    r.push("edge/app", "v1", &[base]);
    let ok = ObjectsRequest {
        repository: "edge/app".into(),
        digests: vec![
            Digest::of(b"alpha"),
            Digest::of(&[5u8; 3000]),
            Digest::of(b"alpha"),
        ],
    };
    let (wanted, total) = prepare_objects(&r, &dev("gw"), &ok).unwrap();
    assert_eq!(
        wanted,
        vec![(Digest::of(b"alpha"), 5), (Digest::of(&[5u8; 3000]), 3000)]
    );
    assert_eq!(total, 3005);
    let bad = ObjectsRequest {
        repository: "edge/app".into(),
        digests: vec![Digest::of(b"unknown")],
    };
    // Not an object of edge/app: refused like one of a repository the
    // device may not read (issue 15: no existence oracle).
    let e = prepare_objects(&r, &dev("gw"), &bad).unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let many = ObjectsRequest {
        repository: "edge/app".into(),
        digests: vec![Digest([0; 32]); MAX_REPAIR_OBJECTS + 1],
    };
    assert_eq!(
        prepare_objects(&r, &dev("gw"), &many).unwrap_err().code,
        ErrorCode::TooLarge
    );
}

#[test]
fn plan_limits() {
    let r = MemRegistry::new();
    let many = vec![img("a", "b"); MAX_IMAGES_PER_PLAN + 1];
    let e = plan_request(
        &r,
        &dev("gw"),
        &plan_req(many, Holdings::Full(HeldSet::default())),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    let e = plan_request(
        &r,
        &dev("gw"),
        &plan_req(vec![img(&long, "v1")], Holdings::Full(HeldSet::default())),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}

// ---- over HTTP, with the real storage and router ----------------------------

struct Server {
    base: String,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    storage: Arc<crate::store::storage::Storage>,
}

const CONFIG: &str = r#"
[[devices]]
id = "gw-1"
token = "token-gw-1"
repositories = ["edge/*"]

[[devices]]
id = "other"
token = "token-other"
repositories = ["other/*"]
"#;

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::store::storage::Storage::open(&dir.path().join("data")).unwrap();
    let config: crate::config::Config = toml::from_str(CONFIG).unwrap();
    let state = AppState::new(storage, config);
    let storage = state.storage.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = crate::http::server::app(state);
    rt.spawn(async move { axum::serve(listener, app).await });
    Server {
        base,
        _dir: dir,
        rt,
        storage,
    }
}

struct Resp {
    status: u16,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// The gzip objects response to `oreq`, uncompressed.
fn tar_bytes_objects(s: &Server, oreq: &ObjectsRequest) -> Vec<u8> {
    let r = s.post(
        "objects",
        Some("token-gw-1"),
        postcard::to_allocvec(oreq).unwrap(),
    );
    assert_eq!(r.headers.get("content-type").unwrap(), ARCHIVE_CONTENT_TYPE);
    gunzip(&r.body)
}

impl Server {
    fn post(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        self.post_with(path, token, body, None)
    }

    fn post_with(
        &self,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        features: Option<&str>,
    ) -> Resp {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut b = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/layerlink/v1/{path}", self.base))
            .header("content-type", CONTENT_TYPE);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if let Some(f) = features {
            b = b.header(FEATURES_HEADER, f);
        }
        let resp = agent.run(b.body(body).unwrap()).unwrap();
        let status = resp.status().as_u16();
        let mut headers = axum::http::HeaderMap::new();
        for (k, v) in resp.headers() {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        let body = resp.into_body().read_to_vec().unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Announce a body of `len` bytes but send none; return the status and
    /// body of the (early) answer.
    fn raw_post_headers_only(&self, path: &str, token: &str, len: u64) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let addr = self.base.strip_prefix("http://").unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "POST /layerlink/v1/{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {CONTENT_TYPE}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the headers and the announced body are in.
        loop {
            let n = c.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&buf[..n]);
            if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&resp[..end]).to_lowercase();
                let cl: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if resp.len() >= end + 4 + cl {
                    let status = head[9..12].parse().unwrap();
                    return (status, resp[end + 4..end + 4 + cl].to_vec());
                }
            }
        }
        panic!("no complete response: {:?}", String::from_utf8_lossy(&resp));
    }

    /// Push an image through the storage API (no ingest: the sync API
    /// ingests on first use).
    fn push(&self, repo: &str, tag: &str, tars: &[Vec<u8>]) -> (Digest, Vec<Digest>) {
        let mut blobs = Vec::new();
        let mut layers = Vec::new();
        for t in tars {
            let gz = gzip(t);
            let (d, n) = self.storage.put_blob(repo, &gz[..], None).unwrap();
            blobs.push((d, n));
            layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": n}));
        }
        let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()}
        }))
        .unwrap();
        let (cd, cn) = self.storage.put_blob(repo, &config[..], None).unwrap();
        blobs.push((cd, cn));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::OCI_MANIFEST,
            "config": {"mediaType": oci::OCI_CONFIG, "digest": cd.to_string(), "size": cn},
            "layers": layers,
        }))
        .unwrap();
        let md = self
            .storage
            .put_manifest(repo, Some(tag), oci::OCI_MANIFEST, manifest, &blobs)
            .unwrap();
        (md, diff_ids)
    }
}

fn error_body(r: &Resp) -> ErrorBody {
    assert_eq!(r.headers.get("content-type").unwrap(), CONTENT_TYPE);
    postcard::from_bytes(&r.body).unwrap()
}

#[test]
fn http_endpoints() {
    let s = start();
    let (base, app) = two_layers();
    let (md, ids) = s.push("edge/app", "v1", &[base, app]);
    s.push(
        "other/secret",
        "v1",
        &[TarBuilder::new().file("s", b"s").finish_ref()],
    );
    let plan =
        |images: Vec<ImageRef>, h: Holdings| postcard::to_allocvec(&plan_req(images, h)).unwrap();
    let full = Holdings::Full(HeldSet::default());

    // No token, wrong token: 401 Unauthorized.
    let r = s.post(
        "plan",
        None,
        plan(vec![img("edge/app", "v1")], full.clone()),
    );
    assert_eq!(r.status, 401);
    assert_eq!(error_body(&r).code, ErrorCode::Unauthorized);
    assert!(r.headers.contains_key("www-authenticate"));
    let r = s.post(
        "plan",
        Some("nope"),
        plan(vec![img("edge/app", "v1")], full.clone()),
    );
    assert_eq!(
        (r.status, error_body(&r).code),
        (401, ErrorCode::Unauthorized)
    );
    // A repository the device may not read: 401 whether or not it exists.
    for repo in ["edge/app", "edge/absent"] {
        let r = s.post(
            "plan",
            Some("token-other"),
            plan(vec![img(repo, "v1")], full.clone()),
        );
        assert_eq!((r.status, error_body(&r).code), (401, ErrorCode::Forbidden));
    }
    // Garbage body: 400. Huge body: 413.
    let r = s.post("plan", Some("token-gw-1"), vec![0xff; 10]);
    assert_eq!(
        (r.status, error_body(&r).code),
        (400, ErrorCode::BadRequest)
    );
    let (status, body) =
        s.raw_post_headers_only("plan", "token-gw-1", MAX_MESSAGE_BYTES as u64 + 1);
    assert_eq!(status, 413);
    assert_eq!(
        postcard::from_bytes::<ErrorBody>(&body).unwrap().code,
        ErrorCode::TooLarge
    );
    // Unknown image: 404. Unknown holdings hash: 409.
    let r = s.post(
        "plan",
        Some("token-gw-1"),
        plan(vec![img("edge/absent", "v1")], full.clone()),
    );
    assert_eq!((r.status, error_body(&r).code), (404, ErrorCode::NotFound));
    let r = s.post(
        "plan",
        Some("token-gw-1"),
        plan(vec![], Holdings::Hash(Digest([3; 32]))),
    );
    assert_eq!(
        (r.status, error_body(&r).code),
        (409, ErrorCode::UnknownHoldingsSet)
    );
    // An arm device asking for an amd64-only image by tag still gets the
    // image manifest (no index to choose from).
    let mut arm = plan_req(vec![img("edge/app", "v1")], full.clone());
    arm.platform = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: None,
    };
    let r = s.post(
        "plan",
        Some("token-gw-1"),
        postcard::to_allocvec(&arm).unwrap(),
    );
    assert_eq!(r.status, 200);

    // The plan.
    let r = s.post(
        "plan",
        Some("token-gw-1"),
        plan(vec![img("edge/app", "v1")], full.clone()),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("content-type").unwrap(), CONTENT_TYPE);
    let p: PlanResponse = postcard::from_bytes(&r.body).unwrap();
    assert_eq!(p.holdings_hash, HeldSet::default().hash());
    assert_eq!(p.images[0].manifest_digest, md);
    let new_bytes: u64 = p.images[0]
        .layers
        .iter()
        .map(|l| match l.state {
            LayerState::Needed(c) => c.new_bytes,
            LayerState::Held => 0,
        })
        .sum();

    // The archive streams with the new-bytes header.
    let areq = ArchiveRequest {
        repository: "edge/app".into(),
        manifest_digest: md,
        layers: ids.clone(),
        metadata: true,
        holdings: Holdings::Hash(p.holdings_hash),
    };
    let r = s.post(
        "archive",
        Some("token-gw-1"),
        postcard::to_allocvec(&areq).unwrap(),
    );
    assert_eq!(
        r.status,
        200,
        "{:?}",
        postcard::from_bytes::<ErrorBody>(&r.body)
    );
    assert_eq!(r.headers.get("content-type").unwrap(), ARCHIVE_CONTENT_TYPE);
    let hdr: u64 = r
        .headers
        .get(HEADER_NEW_BYTES)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(hdr, new_bytes);
    let tar_bytes = gunzip(&r.body);
    let mut a = tar::Archive::new(&tar_bytes[..]);
    let paths: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect();
    assert_eq!(
        paths.first().map(String::as_str),
        Some(".layerlink/manifest")
    );
    assert_eq!(paths.last().map(String::as_str), Some(".layerlink/end"));
    assert!(paths.contains(&"etc/b".to_string()));
    // Asked for zstd: the same tar stream as zstd frames, said so by the
    // content type; unknown feature names are ignored.
    let r = s.post_with(
        "archive",
        Some("token-gw-1"),
        postcard::to_allocvec(&areq).unwrap(),
        Some("future-thing, zstd"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        ARCHIVE_CONTENT_TYPE_ZSTD
    );
    assert_eq!(&r.body[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(zstd::decode_all(&r.body[..]).unwrap(), tar_bytes);
    // Archive of another repository's manifest digest: not part of it.
    let mut cross = areq.clone();
    cross.repository = "edge/other".into();
    let r = s.post(
        "archive",
        Some("token-gw-1"),
        postcard::to_allocvec(&cross).unwrap(),
    );
    assert_eq!((r.status, error_body(&r).code), (404, ErrorCode::NotFound));

    // Objects (repair).
    let oreq = ObjectsRequest {
        repository: "edge/app".into(),
        digests: vec![Digest::of(&[5u8; 3000])],
    };
    let r = s.post(
        "objects",
        Some("token-gw-1"),
        postcard::to_allocvec(&oreq).unwrap(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get(HEADER_NEW_BYTES).unwrap(), "3000");
    let tar_bytes = gunzip(&r.body);
    let mut a = tar::Archive::new(&tar_bytes[..]);
    let mut first = a.entries().unwrap().next().unwrap().unwrap();
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut first, &mut data).unwrap();
    assert_eq!(data, vec![5u8; 3000]);
    let r = s.post_with(
        "objects",
        Some("token-gw-1"),
        postcard::to_allocvec(&oreq).unwrap(),
        Some("zstd"),
    );
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        ARCHIVE_CONTENT_TYPE_ZSTD
    );
    assert_eq!(
        zstd::decode_all(&r.body[..]).unwrap(),
        tar_bytes_objects(&s, &oreq)
    );
    let r = s.post(
        "objects",
        Some("token-other"),
        postcard::to_allocvec(&oreq).unwrap(),
    );
    assert_eq!((r.status, error_body(&r).code), (401, ErrorCode::Forbidden));

    // Report: recorded for the token's device.
    let rep = Report {
        holdings: Holdings::Full(HeldSet {
            layers: ids.clone(),
            objects: vec![],
        }),
        images: vec![HeldImage {
            image: img("edge/app", "v1"),
            manifest_digest: md,
        }],
    };
    let r = s.post(
        "report",
        Some("token-gw-1"),
        postcard::to_allocvec(&rep).unwrap(),
    );
    assert_eq!(r.status, 200);
    let ack: ReportAck = postcard::from_bytes(&r.body).unwrap();
    let mut expect = HeldSet {
        layers: ids.clone(),
        objects: vec![],
    };
    expect.canonicalize();
    assert_eq!(ack.holdings_hash, expect.hash());
    let devs = devices::device_summaries(s.storage.devices()).unwrap();
    let gw = devs.iter().find(|d| d.id == "gw-1").unwrap();
    assert_eq!(gw.layers, 2);
    assert_eq!(gw.images, vec![format!("edge/app:v1@{md}")]);
    assert!(devs.iter().all(|d| d.id != "other" || d.layers == 0));
    drop(s.rt);
}

#[test]
fn framing_requests_are_checked_like_archives() {
    let r = MemRegistry::new();
    let (base, app) = two_layers();
    let (md, ids) = r.push("edge/app", "v1", &[base, app]);
    let secret = TarBuilder::new()
        .file("etc/secret", b"only the other tenant")
        .finish_ref();
    let (smd, sids) = r.push("secret/app", "v1", &[secret]);
    let req = |repo: &str, m: Digest, layer: Digest| FramingRequest {
        repository: repo.into(),
        manifest_digest: m,
        layer,
    };
    let only_edge = Device {
        repositories: vec!["edge/*".into()],
        ..dev("gw")
    };
    // Its own layer: a framing that decompresses to one for that layer.
    let l = prepare_framing(&r, &only_edge, &req("edge/app", md, ids[1])).unwrap();
    let body = framing_body(&r, &l).unwrap();
    let raw = zstd::decode_all(&body[..]).unwrap();
    assert_eq!(&raw[..8], &layerlink_proto::framing::MAGIC);
    assert_eq!(&raw[8..40], &ids[1].0);
    // Another tenant's repository: 401 as for a bad token.
    let e = prepare_framing(&r, &only_edge, &req("secret/app", smd, sids[0])).unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    // Another tenant's layer through its own manifest: refused with the
    // same words as a layer that exists nowhere.
    let e1 = prepare_framing(&r, &only_edge, &req("edge/app", md, sids[0])).unwrap_err();
    let e2 = prepare_framing(&r, &only_edge, &req("edge/app", md, Digest::of(b"x"))).unwrap_err();
    assert_eq!(e1.code, ErrorCode::BadRequest);
    assert_eq!(
        e1.message.replace(&sids[0].to_string(), "L"),
        e2.message.replace(&Digest::of(b"x").to_string(), "L")
    );
    // A manifest of another repository is not found in this one.
    let e = prepare_framing(&r, &only_edge, &req("edge/app", smd, sids[0])).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}
