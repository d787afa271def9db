//! The OCI distribution API against a real `layerlink-registry serve`
//! process: uploads (monolithic, chunked, mounted, concurrent, broken),
//! Range reads, manifests, tags, auth, and the loopback-only rule.

mod serve;

use layerlink_proto::Digest;
use serve::{bin, first_line, Served};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A registry process on a free loopback port, killed on drop.
struct Registry {
    _served: Served,
    base: String,
    data: PathBuf,
    agent: ureq::Agent,
    auth: Option<String>,
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with(None)
    }

    fn start_with(config: Option<&str>) -> Registry {
        let served = Served::start(config, None);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        Registry {
            base: served.base.clone(),
            data: served.data.clone(),
            _served: served,
            agent,
            auth: None,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Send `method path` with `headers` and `body`; returns status, headers, body.
    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        let uri = self.url(path);
        let mut b = ureq::http::Request::builder().method(method).uri(&uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = &self.auth {
            b = b.header("Authorization", a.as_str());
        }
        let resp = match body {
            Some(body) => self.agent.run(b.body(body.to_vec()).unwrap()),
            None => self.agent.run(b.body(()).unwrap()),
        }
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            resp.into_body().read_to_vec().unwrap()
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let r = self.req(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[],
            Some(data),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        d
    }

    /// A chunked upload in `chunk`-byte pieces, finished with `digest`.
    fn push_chunked(&self, repo: &str, data: &[u8], chunk: usize, digest: &Digest) -> Resp {
        let r = self.req("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], None);
        assert_eq!(r.status, 202, "{}", r.text());
        let mut location = r.header("location");
        let mut offset = 0;
        for piece in data.chunks(chunk) {
            let range = format!("{}-{}", offset, offset + piece.len() - 1);
            let r = self.req(
                "PATCH",
                &location,
                &[("Content-Range", &range)],
                Some(piece),
            );
            assert_eq!(r.status, 202, "{}", r.text());
            offset += piece.len();
            assert_eq!(r.header("range"), format!("0-{}", offset - 1));
            location = r.header("location");
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        self.req("PUT", &format!("{location}{sep}digest={digest}"), &[], None)
    }

    fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Resp {
        self.req(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Some(bytes),
        )
    }

    fn blob_files(&self) -> Vec<String> {
        list(&self.data.join("blobs/sha256"))
    }

    fn temp_files(&self) -> Vec<String> {
        let mut v = list(&self.data.join("tmp"));
        v.retain(|n| n != "uploads");
        v.extend(list(&self.data.join("tmp/uploads")));
        v
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Resp {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", self.text()));
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A real little image: tar layers (gzip'd for Docker), a config listing
/// their diff_ids, and the manifest.
struct TestImage {
    media_type: &'static str,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
}

impl TestImage {
    fn new(media_type: &'static str, layers: &[&[(&str, &[u8])]]) -> TestImage {
        let docker = media_type == DOCKER_MANIFEST;
        let tars: Vec<Vec<u8>> = layers.iter().map(|files| layer_tar(files)).collect();
        let diff_ids: Vec<String> = tars.iter().map(|t| Digest::of(t).to_string()).collect();
        let layers: Vec<Vec<u8>> = if docker {
            tars.iter().map(|t| gzip(t)).collect()
        } else {
            tars
        };
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let sizes: Vec<(Digest, u64)> = layers
            .iter()
            .map(|l| (Digest::of(l), l.len() as u64))
            .collect();
        let manifest = manifest_json(media_type, &config, &sizes);
        TestImage {
            media_type,
            config,
            layers,
            manifest,
        }
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    fn push_blobs(&self, r: &Registry, repo: &str) {
        r.push_blob(repo, &self.config);
        for l in &self.layers {
            r.push_blob(repo, l);
        }
    }
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A manifest of `media_type` naming `config` and layers (digest, size).
fn manifest_json(media_type: &str, config: &[u8], layers: &[(Digest, u64)]) -> Vec<u8> {
    let docker = media_type == DOCKER_MANIFEST;
    let layer_type = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let config_type = if docker {
        "application/vnd.docker.container.image.v1+json"
    } else {
        "application/vnd.oci.image.config.v1+json"
    };
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, size)| serde_json::json!({"mediaType": layer_type, "digest": d.to_string(), "size": size}))
        .collect();
    // Odd spacing on purpose: the registry must keep these exact bytes.
    format!(
        "{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"{media_type}\",\n  \"config\": {},\n  \"layers\": {}\n}}",
        serde_json::json!({"mediaType": config_type, "digest": Digest::of(config).to_string(), "size": config.len()}),
        serde_json::Value::Array(layers)
    )
    .into_bytes()
}

#[test]
fn base_endpoint_answers_with_api_version() {
    let r = Registry::start();
    let resp = r.req("GET", "/v2/", &[], None);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[test]
fn monolithic_upload_then_get_head_and_range() {
    let r = Registry::start();
    let data = pseudo_random(200_000, 1);
    let d = r.push_blob("a/b/c", &data);
    assert_eq!(r.blob_files(), [d.hex()]);
    assert_eq!(
        std::fs::read(r.data.join("blobs/sha256").join(d.hex())).unwrap(),
        data
    );

    let get = r.req("GET", &format!("/v2/a/b/c/blobs/{d}"), &[], None);
    assert_eq!(get.status, 200);
    assert_eq!(get.body, data, "a pull returns the pushed bytes");
    assert_eq!(get.header("docker-content-digest"), d.to_string());

    let head = r.req("HEAD", &format!("/v2/a/b/c/blobs/{d}"), &[], None);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), "200000");

    let part = r.req(
        "GET",
        &format!("/v2/a/b/c/blobs/{d}"),
        &[("Range", "bytes=1000-1999")],
        None,
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), "bytes 1000-1999/200000");
    assert_eq!(part.body, &data[1000..2000]);
    let tail = r.req(
        "GET",
        &format!("/v2/a/b/c/blobs/{d}"),
        &[("Range", "bytes=-10")],
        None,
    );
    assert_eq!((tail.status, &tail.body[..]), (206, &data[199_990..]));
    let bad = r.req(
        "GET",
        &format!("/v2/a/b/c/blobs/{d}"),
        &[("Range", "bytes=300000-")],
        None,
    );
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), "bytes */200000");

    // The blob belongs to a/b/c only.
    let other = r.req("GET", &format!("/v2/other/blobs/{d}"), &[], None);
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (404, "BLOB_UNKNOWN")
    );
}

#[test]
fn chunked_upload_with_status_and_out_of_order_chunk() {
    let r = Registry::start();
    let data = pseudo_random(100_000, 2);
    let d = Digest::of(&data);
    let start = r.req("POST", "/v2/chunky/blobs/uploads/", &[], None);
    assert_eq!(start.status, 202);
    assert!(!start.header("docker-upload-uuid").is_empty());
    let loc = start.header("location");
    let p1 = r.req(
        "PATCH",
        &loc,
        &[("Content-Range", "0-39999")],
        Some(&data[..40_000]),
    );
    assert_eq!((p1.status, p1.header("range")), (202, "0-39999".to_owned()));

    // A chunk that does not start at the current offset: 416, offset kept.
    let skip = r.req(
        "PATCH",
        &loc,
        &[("Content-Range", "50000-59999")],
        Some(&data[50_000..60_000]),
    );
    assert_eq!(skip.status, 416);
    assert_eq!(skip.header("range"), "0-39999");

    let status = r.req("GET", &loc, &[], None);
    assert_eq!(
        (status.status, status.header("range")),
        (204, "0-39999".to_owned())
    );

    // A Content-Range that does not match the body length: refused, undone.
    let short = r.req(
        "PATCH",
        &loc,
        &[("Content-Range", "40000-49999")],
        Some(&data[40_000..45_000]),
    );
    assert_eq!(
        (short.status, short.error_code().as_str()),
        (400, "BLOB_UPLOAD_INVALID")
    );
    assert_eq!(r.req("GET", &loc, &[], None).header("range"), "0-39999");

    // No Content-Range is fine too (streamed chunk).
    let p2 = r.req("PATCH", &loc, &[], Some(&data[40_000..90_000]));
    assert_eq!((p2.status, p2.header("range")), (202, "0-89999".to_owned()));
    // The last chunk rides on the PUT.
    let done = r.req(
        "PUT",
        &format!("{loc}?digest={d}"),
        &[],
        Some(&data[90_000..]),
    );
    assert_eq!(done.status, 201, "{}", done.text());
    assert_eq!(done.header("location"), format!("/v2/chunky/blobs/{d}"));
    assert_eq!(
        r.req("GET", &format!("/v2/chunky/blobs/{d}"), &[], None)
            .body,
        data
    );
    assert!(r.temp_files().is_empty(), "{:?}", r.temp_files());
    // The finished session is gone.
    assert_eq!(
        r.req("GET", &loc, &[], None).error_code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
}

#[test]
fn digest_mismatch_stores_nothing() {
    let r = Registry::start();
    let wrong = Digest::of(b"something else");
    let mono = r.req(
        "POST",
        &format!("/v2/x/blobs/uploads/?digest={wrong}"),
        &[],
        Some(b"actual bytes"),
    );
    assert_eq!(
        (mono.status, mono.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
    let chunked = r.push_chunked("x", &pseudo_random(5000, 3), 1000, &wrong);
    assert_eq!(
        (chunked.status, chunked.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
    let bad = r.req(
        "POST",
        "/v2/x/blobs/uploads/?digest=sha256:nothex",
        &[],
        Some(b"x"),
    );
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
    assert!(r.blob_files().is_empty());
    assert!(r.temp_files().is_empty(), "{:?}", r.temp_files());
    let head = r.req(
        "HEAD",
        &format!("/v2/x/blobs/{}", Digest::of(b"actual bytes")),
        &[],
        None,
    );
    assert_eq!(head.status, 404);
}

/// Send a request whose body is cut short of its Content-Length, then close.
fn send_truncated(base: &str, method: &str, path: &str, declared: usize, sent: &[u8]) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {declared}\r\n\r\n"
    )
    .unwrap();
    s.write_all(sent).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
}

#[test]
fn truncated_upload_stores_nothing() {
    let r = Registry::start();
    let data = pseudo_random(100_000, 4);
    let d = Digest::of(&data);
    // One-request upload cut at half its announced length.
    send_truncated(
        &r.base,
        "POST",
        &format!("/v2/t/blobs/uploads/?digest={d}"),
        100_000,
        &data[..50_000],
    );
    // A chunk of a session cut short: the session keeps its old offset.
    let start = r.req("POST", "/v2/t/blobs/uploads/", &[], None);
    let loc = start.header("location");
    assert_eq!(r.req("PATCH", &loc, &[], Some(&data[..10_000])).status, 202);
    send_truncated(&r.base, "PATCH", &loc, 90_000, &data[10_000..30_000]);
    let status = r.req("GET", &loc, &[], None);
    assert_eq!(
        status.header("range"),
        "0-9999",
        "the partial chunk was undone"
    );
    // Finishing with the wrong size fails the digest check.
    let fin = r.req(
        "PUT",
        &format!("{loc}?digest={d}"),
        &[],
        Some(&data[10_000..60_000]),
    );
    assert_eq!(
        (fin.status, fin.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
    assert!(r.blob_files().is_empty());
    assert!(r.temp_files().is_empty(), "{:?}", r.temp_files());
    assert_eq!(
        r.req("HEAD", &format!("/v2/t/blobs/{d}"), &[], None).status,
        404
    );
}

#[test]
fn cancel_upload() {
    let r = Registry::start();
    let loc = r
        .req("POST", "/v2/c/blobs/uploads/", &[], None)
        .header("location");
    assert_eq!(r.req("PATCH", &loc, &[], Some(b"abc")).status, 202);
    assert_eq!(r.req("DELETE", &loc, &[], None).status, 204);
    assert_eq!(r.req("GET", &loc, &[], None).status, 404);
    assert_eq!(
        r.req("DELETE", &loc, &[], None).error_code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert!(r.temp_files().is_empty());
}

#[test]
fn concurrent_pushes_of_one_blob_store_it_once() {
    let r = Registry::start();
    let data = pseudo_random(1_000_000, 5);
    let d = Digest::of(&data);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (r, data) = (&r, &data);
                s.spawn(move || {
                    let repo = format!("team/app{}", i % 2);
                    if i % 3 == 0 {
                        r.push_blob(&repo, data);
                    } else {
                        let resp = r.push_chunked(&repo, data, 64 * 1024 + i, &d);
                        assert_eq!(resp.status, 201, "{}", resp.text());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    assert_eq!(r.blob_files(), [d.hex()]);
    assert_eq!(
        std::fs::read(r.data.join("blobs/sha256").join(d.hex())).unwrap(),
        data
    );
    assert!(r.temp_files().is_empty(), "{:?}", r.temp_files());
    for repo in ["team/app0", "team/app1"] {
        assert_eq!(
            r.req("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], None)
                .status,
            200
        );
    }
}

#[test]
fn cross_repository_mount() {
    let r = Registry::start();
    let d = r.push_blob("src/repo", b"shared layer");
    let m = r.req(
        "POST",
        &format!("/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo"),
        &[],
        None,
    );
    assert_eq!(m.status, 201);
    assert_eq!(m.header("location"), format!("/v2/dst/repo/blobs/{d}"));
    assert_eq!(m.header("docker-content-digest"), d.to_string());
    assert_eq!(
        r.req("GET", &format!("/v2/dst/repo/blobs/{d}"), &[], None)
            .body,
        b"shared layer"
    );
    // Mounting from a repository without the blob starts an upload instead.
    let no = r.req(
        "POST",
        &format!("/v2/third/blobs/uploads/?mount={d}&from=nowhere"),
        &[],
        None,
    );
    assert_eq!(no.status, 202);
    assert!(no
        .header("location")
        .starts_with("/v2/third/blobs/uploads/"));
    assert_eq!(r.blob_files().len(), 1);
}

#[test]
fn manifest_round_trip_by_tag_and_digest() {
    let r = Registry::start();
    for (repo, mt) in [("oci/img", OCI_MANIFEST), ("docker/img", DOCKER_MANIFEST)] {
        let img = TestImage::new(
            mt,
            &[
                &[("etc/hello", b"hello\n")],
                &[("bin/tool", &pseudo_random(3000, 6))],
            ],
        );
        img.push_blobs(&r, repo);
        let manifest = img.manifest.clone();
        let d = Digest::of(&manifest);
        let put = r.push_manifest(repo, "v1", mt, &manifest);
        assert_eq!(put.status, 201, "{}", put.text());
        assert_eq!(put.header("docker-content-digest"), d.to_string());
        assert_eq!(put.header("location"), format!("/v2/{repo}/manifests/{d}"));
        for reference in ["v1".to_owned(), d.to_string()] {
            let get = r.req(
                "GET",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Accept", mt)],
                None,
            );
            assert_eq!(get.status, 200);
            assert_eq!(get.body, manifest, "exact bytes");
            assert_eq!(get.header("content-type"), mt);
            assert_eq!(get.header("docker-content-digest"), d.to_string());
            let head = r.req(
                "HEAD",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[],
                None,
            );
            assert_eq!(head.status, 200);
            assert_eq!(head.header("content-length"), manifest.len().to_string());
        }
    }
    // An index naming both manifests, pushed by digest.
    let child = r.req("GET", "/v2/oci/img/manifests/v1", &[], None).body;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        Digest::of(&child),
        child.len()
    );
    let di = Digest::of(index.as_bytes());
    let put = r.push_manifest("oci/img", &di.to_string(), OCI_INDEX, index.as_bytes());
    assert_eq!(put.status, 201, "{}", put.text());
    let get = r.req("GET", &format!("/v2/oci/img/manifests/{di}"), &[], None);
    assert_eq!(
        (get.body.as_slice(), get.header("content-type").as_str()),
        (index.as_bytes(), OCI_INDEX)
    );
    // Pushed under a digest its bytes do not have.
    let wrong = r.push_manifest(
        "oci/img",
        &Digest::of(b"x").to_string(),
        OCI_INDEX,
        index.as_bytes(),
    );
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
}

#[test]
fn manifest_naming_missing_blobs_is_rejected_and_nothing_committed() {
    let r = Registry::start();
    let img = TestImage::new(OCI_MANIFEST, &[&[("a", b"one")]]);
    let (config, layer, manifest) = (&img.config, &img.layers[0], &img.manifest);
    r.push_blob("m", config);
    let put = r.push_manifest("m", "latest", OCI_MANIFEST, manifest);
    assert_eq!(
        (put.status, put.error_code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN"),
        "{}",
        put.text()
    );
    let v: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(
        v["errors"][0]["detail"]["digest"],
        Digest::of(layer).to_string()
    );
    let get = r.req("GET", "/v2/m/manifests/latest", &[], None);
    assert_eq!(
        (get.status, get.error_code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let get = r.req(
        "GET",
        &format!("/v2/m/manifests/{}", Digest::of(manifest)),
        &[],
        None,
    );
    assert_eq!(get.status, 404);
    assert_eq!(
        r.req("GET", "/v2/m/tags/list", &[], None).body,
        br#"{"name":"m","tags":[]}"#
    );

    // The layer exists, but in another repository only.
    r.push_blob("elsewhere", layer);
    let put = r.push_manifest("m", "latest", OCI_MANIFEST, manifest);
    assert_eq!(put.error_code(), "MANIFEST_BLOB_UNKNOWN");

    // A descriptor size that does not match the blob.
    r.push_blob("m", layer);
    let lying = manifest_json(
        OCI_MANIFEST,
        config,
        &[(Digest::of(layer), layer.len() as u64 - 1)],
    );
    let put = r.push_manifest("m", "latest", OCI_MANIFEST, &lying);
    assert_eq!(
        (put.status, put.error_code().as_str()),
        (400, "MANIFEST_INVALID")
    );
    // An index naming a manifest the repository does not have.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}]}}"#,
        Digest::of(b"nope")
    );
    let put = r.push_manifest("m", "idx", OCI_INDEX, index.as_bytes());
    assert_eq!(put.error_code(), "MANIFEST_BLOB_UNKNOWN");
    // Not JSON.
    let put = r.push_manifest("m", "latest", OCI_MANIFEST, b"{{nope");
    assert_eq!(
        (put.status, put.error_code().as_str()),
        (400, "MANIFEST_INVALID")
    );

    assert_eq!(
        r.push_manifest("m", "latest", OCI_MANIFEST, manifest)
            .status,
        201
    );
}

#[test]
fn tags_list_paginates_and_delete_removes() {
    let r = Registry::start();
    let img = TestImage::new(OCI_MANIFEST, &[&[("f", b"tags")]]);
    img.push_blobs(&r, "p/q");
    let (manifest, d) = (&img.manifest, img.digest());
    for tag in ["t3", "t1", "t5", "t2", "t4"] {
        assert_eq!(
            r.push_manifest("p/q", tag, OCI_MANIFEST, manifest).status,
            201
        );
    }
    let all = r.req("GET", "/v2/p/q/tags/list", &[], None);
    let v: serde_json::Value = serde_json::from_slice(&all.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name": "p/q", "tags": ["t1", "t2", "t3", "t4", "t5"]})
    );
    let page = r.req("GET", "/v2/p/q/tags/list?n=2", &[], None);
    let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["t1", "t2"]));
    assert_eq!(
        page.header("link"),
        "</v2/p/q/tags/list?n=2&last=t2>; rel=\"next\""
    );
    let page = r.req("GET", "/v2/p/q/tags/list?n=2&last=t4", &[], None);
    let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["t5"]));
    assert_eq!(page.header("link"), "");
    let none = r.req("GET", "/v2/no/such/tags/list", &[], None);
    assert_eq!(
        (none.status, none.error_code().as_str()),
        (404, "NAME_UNKNOWN")
    );
    let cat = r.req("GET", "/v2/_catalog", &[], None);
    assert_eq!(cat.body, br#"{"repositories":["p/q"]}"#);

    // Delete by tag: only the tag goes.
    assert_eq!(
        r.req("DELETE", "/v2/p/q/manifests/t1", &[], None).status,
        202
    );
    assert_eq!(r.req("GET", "/v2/p/q/manifests/t1", &[], None).status, 404);
    assert_eq!(r.req("GET", "/v2/p/q/manifests/t2", &[], None).status, 200);
    // Delete by digest: the manifest and every tag naming it.
    assert_eq!(
        r.req("DELETE", &format!("/v2/p/q/manifests/{d}"), &[], None)
            .status,
        202
    );
    let gone = r.req("GET", &format!("/v2/p/q/manifests/{d}"), &[], None);
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    assert_eq!(
        r.req("GET", "/v2/p/q/tags/list", &[], None).body,
        br#"{"name":"p/q","tags":[]}"#
    );
    assert_eq!(
        r.req("DELETE", &format!("/v2/p/q/manifests/{d}"), &[], None)
            .status,
        404
    );
}

#[test]
fn invalid_names_and_unknown_endpoints() {
    let r = Registry::start();
    let resp = r.req("GET", "/v2/Upper/tags/list", &[], None);
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (400, "NAME_INVALID")
    );
    // An invalid reference names no manifest: 404 on GET (issue 17, as the
    // conformance suite expects), 400 on PUT.
    let resp = r.req("GET", "/v2/x/manifests/bad:tag:x", &[], None);
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let resp = r.req("PUT", "/v2/x/manifests/bad:tag:x", &[], Some(b"{}"));
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
    let resp = r.req("PUT", "/v2/x/blobs/sha256:00", &[], Some(b""));
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (405, "UNSUPPORTED")
    );
}

const AUTH_CONFIG: &str = "[[publishers]]\nuser = \"ci\"\npassword = \"s3cret\"\n";

fn basic(user_pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

#[test]
fn auth_required_when_publishers_configured() {
    let mut r = Registry::start_with(Some(AUTH_CONFIG));
    for (method, path) in [
        ("GET", "/v2/"),
        ("POST", "/v2/x/blobs/uploads/"),
        ("GET", "/v2/x/tags/list"),
    ] {
        let resp = r.req(method, path, &[], None);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (401, "UNAUTHORIZED"),
            "{method} {path}"
        );
        assert_eq!(resp.header("www-authenticate"), "Basic realm=\"layerlink\"");
    }
    r.auth = Some(basic("ci:wrong"));
    assert_eq!(r.req("GET", "/v2/", &[], None).status, 401);
    r.auth = Some(basic("ci:s3cret"));
    assert_eq!(r.req("GET", "/v2/", &[], None).status, 200);
    let d = r.push_blob("x", b"authorized");
    assert_eq!(
        r.req("GET", &format!("/v2/x/blobs/{d}"), &[], None).body,
        b"authorized"
    );
}

#[test]
fn refuses_public_address_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on non-loopback address"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn public_address_allowed_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, AUTH_CONFIG).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("d"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on http://0.0.0.0:"), "{line}");
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

/// `serve` with `config` (written to `dir/c.toml`), run from `dir`; returns
/// the child and its first stdout line.
fn serve_with(dir: &Path, listen: &str, config: &str) -> (Child, String) {
    std::fs::write(dir.join("c.toml"), config).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--listen", listen, "--data"])
        .arg(dir.join("d"))
        .arg("--config")
        .arg(dir.join("c.toml"))
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    (child, line)
}

#[test]
fn serves_https_with_tls_config_and_public_address_is_allowed_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    // Relative paths are relative to the config file (the process runs in /).
    let config = format!("{AUTH_CONFIG}[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    let (mut child, line) = serve_with(dir.path(), "0.0.0.0:0", &config);
    let port = line
        .strip_prefix("listening on https://0.0.0.0:")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();

    let ca = ureq::tls::Certificate::from_pem(cert.as_bytes()).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
        .build();
    let trusting = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .new_agent();
    let url = format!("https://127.0.0.1:{port}/v2/");
    let anon = trusting.get(&url).call().unwrap();
    assert_eq!(anon.status().as_u16(), 401, "auth still applies over https");
    let ok = trusting
        .get(&url)
        .header("Authorization", basic("ci:s3cret"))
        .call()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);

    // A client that does not trust the certificate gets no answer.
    let default_roots = ureq::Agent::config_builder().build().new_agent();
    let e = default_roots.get(&url).call().unwrap_err();
    assert!(format!("{e}").contains("certificate"), "{e}");
    // Nor does plain HTTP on the TLS port.
    assert!(ureq::get(&format!("http://127.0.0.1:{port}/v2/"))
        .call()
        .is_err());
    // And the server is still serving.
    let again = trusting
        .get(&url)
        .header("Authorization", basic("ci:s3cret"))
        .call()
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);

    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bad_tls_files_are_usage_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("cert.pem"), &cert).unwrap();
    std::fs::write(p("key.pem"), &key).unwrap();
    std::fs::write(p("other-key.pem"), &other_key).unwrap();
    std::fs::write(p("empty.pem"), "").unwrap();
    let cases = [
        ("missing.pem", "key.pem", "missing.pem", "certificate file"),
        ("cert.pem", "missing.pem", "missing.pem", "private key file"),
        ("empty.pem", "key.pem", "empty.pem", "no PEM certificate"),
        ("cert.pem", "empty.pem", "empty.pem", "no PEM private key"),
        ("cert.pem", "other-key.pem", "other-key.pem", "do not match"),
    ];
    for (c, k, named, says) in cases {
        let config = format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            p(c).display(),
            p(k).display()
        );
        std::fs::write(p("c.toml"), config).unwrap();
        let out = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(p("d"))
            .arg("--config")
            .arg(p("c.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{c}/{k}: {stderr}");
        assert!(out.stdout.is_empty(), "{c}/{k}: nothing may listen");
        assert!(
            stderr.contains(&p(named).display().to_string()) && stderr.contains(says),
            "{c}/{k}: the error must name {named} and say {says:?}: {stderr}"
        );
    }
}

#[test]
fn bad_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[[publishers]]\nuser = \"x\"\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("d"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("c.toml"));
}

#[test]
fn stats_counts_tagged_images() {
    let r = Registry::start();
    let img = TestImage::new(OCI_MANIFEST, &[&[("f", b"stats")]]);
    img.push_blobs(&r, "s");
    let manifest = &img.manifest;
    assert_eq!(
        r.push_manifest("s", "a", OCI_MANIFEST, manifest).status,
        201
    );
    assert_eq!(
        r.push_manifest("s", "b", OCI_MANIFEST, manifest).status,
        201
    );
    let out = Command::new(bin())
        .args(["stats", "--json", "--data"])
        .arg(&r.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["images"].as_u64(),
            v["tags"].as_u64(),
            v["blobs"].as_u64(),
            v["layers"].as_u64(),
        ),
        (Some(1), Some(2), Some(2), Some(1))
    );
}

#[test]
fn layer_not_matching_its_diff_id_is_rejected_and_nothing_committed() {
    // Strict mode: an unsyncable image is refused at push (by default it is
    // stored and marked not syncable: tests/oci_conformance.rs).
    let r = Registry::start_with(Some("reject_unsyncable = true\n"));
    let good = TestImage::new(OCI_MANIFEST, &[&[("f", b"real content")]]);
    let other = TestImage::new(OCI_MANIFEST, &[&[("f", b"other content")]]);
    // other's config (other diff_id) with good's layer
    r.push_blob("bad", &other.config);
    r.push_blob("bad", &good.layers[0]);
    let manifest = manifest_json(
        OCI_MANIFEST,
        &other.config,
        &[(Digest::of(&good.layers[0]), good.layers[0].len() as u64)],
    );
    let put = r.push_manifest("bad", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(
        (put.status, put.error_code().as_str()),
        (400, "MANIFEST_INVALID"),
        "{}",
        put.text()
    );
    assert!(put.text().contains("diff_id"), "{}", put.text());
    assert_eq!(r.req("GET", "/v2/bad/manifests/v1", &[], None).status, 404);
    assert_eq!(
        r.req("GET", "/v2/bad/tags/list", &[], None).body,
        br#"{"name":"bad","tags":[]}"#
    );
    // A gzip'd Docker image goes through.
    let docker = TestImage::new(DOCKER_MANIFEST, &[&[("a", b"1")], &[("b", b"2")]]);
    docker.push_blobs(&r, "bad");
    assert_eq!(
        r.push_manifest("bad", "v2", docker.media_type, &docker.manifest)
            .status,
        201
    );
}
