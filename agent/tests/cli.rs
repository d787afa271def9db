//! The binary's contract: help, version, exit codes, and the HTTP client's
//! request shape and error mapping against a minimal local HTTP server.

mod common;

use common::{Archive, Entry, TempDir};
use layerlink_agent::client::{is_unknown_holdings, Client, ClientConfig, Remote};
use layerlink_agent::error::exit;
use layerlink_agent::store::{Access, Store};
use layerlink_proto::msg::*;
use layerlink_proto::{Digest, ErrorBody, ErrorCode};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

/// The agent binary (through `LAYERLINK_AGENT_RUNNER` when set).
fn agent(args: &[&str]) -> (i32, String, String) {
    let out = common::agent_command().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_version_and_usage_errors() {
    let (code, out, _) = agent(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("EXIT CODES") && out.contains("checkout"));
    let (code, out, _) = agent(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("layerlink-agent "));
    assert_eq!(agent(&[]).0, exit::USAGE);
    assert_eq!(agent(&["frobnicate"]).0, exit::USAGE);
    assert_eq!(agent(&["sync", "--store", "/nonexistent"]).0, exit::USAGE); // no server
    assert_eq!(
        agent(&["sync", "--server", "ftp://x", "--store", "/tmp/x", "a:b"]).0,
        exit::USAGE
    );
    assert_eq!(
        agent(&["sync", "--server", "http://x", "--store", "/tmp/x", "Bad:Ref"]).0,
        exit::USAGE
    );
    assert_eq!(
        agent(&["checkout", "--store", "/tmp/x", "only-one-arg"]).0,
        exit::USAGE
    );
    assert_eq!(agent(&["status", "--bogus"]).0, exit::USAGE);
}

#[test]
fn a_locked_store_exits_4_and_an_unreachable_server_exits_3() {
    let t = TempDir::new("cli-lock");
    let store_dir = t.path().join("store");
    let s = store_dir.to_str().unwrap();
    // Nothing listens on this port once the listener is dropped.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let held = Store::open(&store_dir, Access::Exclusive).unwrap();
    let (code, _, err) = agent(&[
        "sync",
        "-q",
        "--server",
        &url,
        "--store",
        s,
        "--retry-for",
        "0",
        "a:v1",
    ]);
    assert_eq!(code, exit::LOCKED, "{err}");
    assert!(err.contains("another sync is running"), "{err}");
    drop(held);
    let (code, _, err) = agent(&[
        "sync",
        "-q",
        "--server",
        &url,
        "--store",
        s,
        "--retry-for",
        "0",
        "a:v1",
    ]);
    assert_eq!(code, exit::NETWORK, "{err}");
    // The failure is recorded for `status`.
    let (code, out, _) = agent(&["status", "--store", s, "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"exit_code\":3") && out.contains("\"images\":[]"),
        "{out}"
    );
    let (code, out, _) = agent(&["status", "--store", s]);
    assert_eq!(code, 0);
    assert!(out.contains("last sync: failed (exit 3)"), "{out}");
}

#[test]
fn config_file_supplies_defaults() {
    let t = TempDir::new("cli-config");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = t.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server = \"http://127.0.0.1:{port}\"\nstore = \"{}\"\nimages = [\"a:v1\"]\nretry_for = 0\n",
            t.path().join("store").display()
        ),
    )
    .unwrap();
    let (code, _, err) = agent(&["sync", "-q", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, exit::NETWORK, "{err}");
    std::fs::write(&cfg, "serverr = \"x\"\n").unwrap();
    assert_eq!(
        agent(&["sync", "--config", cfg.to_str().unwrap()]).0,
        exit::USAGE
    );
}

/// A canned response: status, extra headers, body.
type Canned = (u16, Vec<(String, String)>, Vec<u8>);

/// Serve one canned response per connection; send each request (head +
/// body) back over the channel.
fn serve(responses: Vec<Canned>) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (status, headers, body) in responses {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut req_body = vec![0; len];
            r.read_exact(&mut req_body).unwrap();
            tx.send((head, req_body)).unwrap();
            let mut w = s;
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            w.write_all(resp.as_bytes()).unwrap();
            w.write_all(&body).unwrap();
        }
    });
    (url, rx)
}

fn plan_req() -> PlanRequest {
    PlanRequest {
        platform: Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None,
        },
        images: vec![ImageRef {
            repository: "edge/app".into(),
            reference: "v1".into(),
        }],
        holdings: Holdings::Hash(Digest::of(b"set")),
    }
}

#[test]
fn the_client_sends_small_requests_and_maps_statuses() {
    let err_body = |code| {
        postcard::to_allocvec(&ErrorBody {
            code,
            message: "nope".into(),
        })
        .unwrap()
    };
    let plan = PlanResponse {
        holdings_hash: Digest::of(b"h"),
        images: vec![],
    };
    let mut arch = Archive::new();
    arch.layer(&Digest::of(b"l"), &[Entry::file("a", b"x").with_digest()])
        .end();
    let arch = arch.finish();
    let (url, rx) = serve(vec![
        (200, vec![], postcard::to_allocvec(&plan).unwrap()),
        (401, vec![], err_body(ErrorCode::Unauthorized)),
        (409, vec![], err_body(ErrorCode::UnknownHoldingsSet)),
        (503, vec![], err_body(ErrorCode::Unavailable)),
        (404, vec![], err_body(ErrorCode::NotFound)),
        (
            200,
            vec![("x-layerlink-new-bytes".into(), "1".into())],
            arch.clone(),
        ),
    ]);
    let mut c = Client::new(&ClientConfig {
        server: url,
        token: Some("tok\n".into()),
        ca_file: None,
        no_zstd: false,
        no_deltas: false,
    })
    .unwrap();

    assert_eq!(c.plan(&plan_req()).unwrap(), plan);
    let (head, body) = rx.recv().unwrap();
    assert!(
        head.starts_with("POST /layerlink/v1/plan HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer tok\r\n"),
        "{head}"
    );
    assert!(head.contains("application/vnd.layerlink.v1+postcard"));
    assert!(
        head.to_ascii_lowercase()
            .contains("layerlink-features: layer-base,compact-meta,file-delta2,zstd\r\n"),
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("user-agent"), "{head}");
    assert!(
        head.len() + body.len() < 400,
        "request is {} bytes",
        head.len() + body.len()
    );
    assert_eq!(
        postcard::from_bytes::<PlanRequest>(&body).unwrap(),
        plan_req()
    );

    let e = c.plan(&plan_req()).unwrap_err();
    assert_eq!(e.exit_code(), exit::AUTH, "{e}");
    let e = c.plan(&plan_req()).unwrap_err();
    assert!(is_unknown_holdings(&e), "{e}");
    let e = c.plan(&plan_req()).unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = c.plan(&plan_req()).unwrap_err();
    assert!(!e.is_transient() && e.exit_code() == exit::NETWORK, "{e}");

    let req = ArchiveRequest {
        repository: "edge/app".into(),
        manifest_digest: Digest::of(b"m"),
        layers: vec![Digest::of(b"l")],
        metadata: false,
        holdings: Holdings::Hash(Digest::of(b"set")),
    };
    let mut dl = c.archive(&req).unwrap();
    assert_eq!(dl.new_bytes, Some(1));
    // The test server names no archive content type.
    assert_eq!(dl.encoding, None);
    let mut got = Vec::new();
    dl.body.read_to_end(&mut got).unwrap();
    assert_eq!(got, arch);
}

#[test]
fn https_needs_tls_and_a_ca() {
    let cfg = ClientConfig {
        server: "https://127.0.0.1:1".into(),
        token: None,
        ca_file: Some("/nonexistent/ca.pem".into()),
        no_zstd: false,
        no_deltas: false,
    };
    let e = Client::new(&cfg).err().expect("must fail");
    assert_eq!(e.exit_code(), exit::USAGE, "{e}");
}

#[test]
fn a_store_whose_parents_are_missing_is_created() {
    let t = TempDir::new("parents");
    let store = t.path().join("not/yet/there/store");
    let (code, _, err) = agent(&["gc", "--store", store.to_str().unwrap()]);
    assert_eq!(code, exit::OK, "{err}");
    assert!(store.join("objects").is_dir(), "{err}");
}
