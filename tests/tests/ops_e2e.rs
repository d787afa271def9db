//! Operations end to end (issue 14 point 5) on the real registry process:
//! `/healthz`, `/readyz`, `/metrics` scraped around real skopeo pushes and
//! real agent syncs (the oracles: the byte-counting proxy on the wire and
//! the registry's own JSON log lines), JSON logs, refused-request log lines,
//! `config check`, hashed tokens, duplicate ids/tokens refused, and reload
//! of devices on SIGHUP.

use layerlink_tests::bins::registry_bin;
use layerlink_tests::fixture::{registry_with_test_images, test_repo};
use layerlink_tests::http::request;
use layerlink_tests::{run, Agent, CountingProxy, Registry};
use std::process::Command;

/// The sum of the samples of `name` whose labels include every `labels`
/// pair (0 when there is none).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(&str, &str)> = l
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|want| have.contains(want)) {
            total += value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        }
    }
    total
}

fn scrape(reg: &Registry) -> String {
    let r = request(reg.addr(), "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The registry's JSON log lines (stderr), parsed; panics on a line that
/// is not JSON (with `log_format = "json"` every line must be).
fn json_log(reg: &Registry) -> Vec<serde_json::Value> {
    let stderr = reg.log();
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("listening on"))
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}\n{stderr}"))
        })
        .collect()
}

fn lines_with<'a>(log: &'a [serde_json::Value], message: &str) -> Vec<&'a serde_json::Value> {
    log.iter().filter(|l| l["message"] == message).collect()
}

const CONFIG: &str = r#"
log_format = "json"

[[devices]]
id = "dev1"
token = "tok-ops-dev1"
repositories = ["*"]

[[devices]]
id = "dev-other"
token = "tok-ops-other"
repositories = ["other/*"]

[[devices]]
id = "dev-idle"
token = "tok-ops-idle"
repositories = ["*"]
"#;

#[test]
fn health_ready_metrics_and_sync_logs_after_real_syncs() {
    let reg = registry_with_test_images(CONFIG, &["tiny:v1", "tiny:v2"]);
    let h = request(reg.addr(), "GET", "/healthz", &[], b"");
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    let r = request(reg.addr(), "GET", "/readyz", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));

    let before = scrape(&reg);
    // skopeo's pushes were counted by route and status.
    assert!(
        metric(
            &before,
            "layerlink_http_requests_total",
            &[("route", "manifest"), ("method", "PUT"), ("status", "201")]
        ) >= 2.0,
        "{before}"
    );
    // Dedup ratio gauge = `stats --json`'s figure.
    let stats = reg.stats();
    let ratio = metric(&before, "layerlink_dedup_ratio", &[]);
    let want = stats["dedup_ratio"].as_f64().unwrap();
    assert!((ratio - want).abs() < 1e-6, "gauge {ratio}, stats {want}");
    assert_eq!(
        metric(&before, "layerlink_store_stored_bytes", &[]) as u64,
        stats["stored_bytes"].as_u64().unwrap()
    );

    // A cold sync through a counting proxy, then a no-op sync.
    let proxy = CountingProxy::start(reg.addr());
    let agent = Agent::new("tok-ops-dev1");
    let image = test_repo("tiny:v1");
    agent.sync(&proxy.url(), &[&image]);
    let wire_down = proxy.bytes_down();
    let after_cold = scrape(&reg);
    let sent = metric(&after_cold, "layerlink_sync_bytes_sent_total", &[])
        - metric(&before, "layerlink_sync_bytes_sent_total", &[]);
    // The archive bodies are most of what came down; the rest is the plan
    // answer, the report ack and HTTP heads/chunk framing.
    assert!(sent > 0.0, "{after_cold}");
    assert!(
        sent <= wire_down as f64 && wire_down as f64 - sent < 16.0 * 1024.0,
        "bytes_sent_total moved by {sent}, {wire_down} bytes came down the wire"
    );
    assert_eq!(
        metric(
            &after_cold,
            "layerlink_sync_plans_total",
            &[("outcome", "update")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after_cold,
            "layerlink_sync_plan_duration_seconds_count",
            &[]
        ),
        1.0
    );
    assert_eq!(
        metric(&after_cold, "layerlink_sync_response_bytes_sum", &[]),
        metric(&after_cold, "layerlink_sync_bytes_sent_total", &[])
    );
    proxy.reset();
    agent.sync(&proxy.url(), &[&image]);
    let after_noop = scrape(&reg);
    assert_eq!(
        metric(&after_noop, "layerlink_sync_bytes_sent_total", &[]),
        metric(&after_cold, "layerlink_sync_bytes_sent_total", &[]),
        "an up-to-date sync sends no archive"
    );
    assert_eq!(
        metric(
            &after_noop,
            "layerlink_sync_plans_total",
            &[("outcome", "up_to_date")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after_noop,
            "layerlink_sync_plan_duration_seconds_count",
            &[]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &after_noop,
            "layerlink_http_requests_total",
            &[("route", "plan"), ("status", "200")]
        ),
        2.0
    );

    // Refused: an unknown token (401) and a device outside its repositories.
    let stranger = Agent::new("tok-nobody");
    assert!(!stranger.try_sync(&reg.url, &[&image]).status.success());
    let other = Agent::new("tok-ops-other");
    assert!(!other.try_sync(&reg.url, &[&image]).status.success());
    let pull_404 = request(reg.addr(), "GET", "/v2/test/nope/manifests/v9", &[], b"");
    assert_eq!(pull_404.status, 404);
    let after_refused = scrape(&reg);
    assert!(
        metric(
            &after_refused,
            "layerlink_http_requests_total",
            &[("route", "plan"), ("status", "401")]
        ) >= 2.0,
        "{after_refused}"
    );
    assert_eq!(
        metric(
            &after_refused,
            "layerlink_sync_plans_total",
            &[("outcome", "refused")]
        ),
        2.0
    );

    // The log: every line JSON; one "device sync" line per archive whose
    // bytes add up to the counter; plan lines with outcomes; refusals.
    let log = json_log(&reg);
    let syncs = lines_with(&log, "device sync");
    assert!(!syncs.is_empty(), "{log:?}");
    let logged: u64 = syncs.iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    assert_eq!(
        logged as f64,
        metric(&after_refused, "layerlink_sync_bytes_sent_total", &[])
    );
    for s in &syncs {
        assert_eq!(s["device"], "dev1");
        assert_eq!(s["outcome"], "complete");
        assert_eq!(s["level"], "INFO");
        assert!(
            s["image"]
                .as_str()
                .unwrap()
                .starts_with("test/tiny@sha256:"),
            "{s}"
        );
    }
    let plans = lines_with(&log, "device plan");
    let outcomes: Vec<&str> = plans
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["update", "up_to_date"]);
    assert_eq!(plans[0]["images"], "test/tiny:v1");
    let refused = lines_with(&log, "request refused");
    let status_of = |route: &str| -> Vec<u64> {
        refused
            .iter()
            .filter(|l| l["route"] == route)
            .map(|l| l["status"].as_u64().unwrap())
            .collect()
    };
    assert!(
        status_of("plan").iter().all(|&s| s == 401) && status_of("plan").len() >= 2,
        "{refused:?}"
    );
    assert_eq!(status_of("manifest"), [404]);
    let denied = lines_with(&log, "device sync refused");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["device"], "dev-other");
    assert_eq!(
        denied[0]["images"].as_str().or(denied[0]["image"].as_str()),
        Some("test/tiny:v1")
    );

    // The fleet view: the endpoint and the CLI over it.
    let f = request(reg.addr(), "GET", "/layerlink/v1/fleet", &[], b"");
    assert_eq!(f.status, 200, "{}", f.text());
    let cli = run(Command::new(registry_bin())
        .args(["fleet", "--json", "--server"])
        .arg(&reg.url));
    assert!(cli.status.success(), "{cli:?}");
    let fleet: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(fleet, f.json());
    let dev = |id: &str| {
        fleet["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {fleet}"))
            .clone()
    };
    let d1 = dev("dev1");
    assert_eq!(
        (d1["configured"].as_bool(), d1["never_seen"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(d1["last_sync"]["outcome"], "complete");
    assert_eq!(d1["last_sync"]["request"], "archive");
    assert_eq!(
        d1["last_sync"]["bytes"].as_u64().unwrap(),
        syncs.last().unwrap()["bytes"].as_u64().unwrap()
    );
    let held = d1["images"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{d1}");
    let held = held[0].as_str().unwrap();
    assert!(held.starts_with("test/tiny:v1@sha256:"), "{held}");
    assert_eq!(fleet["images"][held], serde_json::json!(["dev1"]));
    let other = dev("dev-other");
    assert!(
        other["last_sync"]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused (401)"),
        "{other}"
    );
    let idle = dev("dev-idle");
    assert_eq!(
        (idle["configured"].as_bool(), idle["never_seen"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(idle["last_seen"].is_null());
    let text = run(Command::new(registry_bin())
        .args(["fleet", "--server"])
        .arg(&reg.url));
    let text = String::from_utf8_lossy(&text.stdout);
    let idle_line = text
        .lines()
        .find(|l| l.starts_with("dev-idle"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(idle_line.contains("never"), "{text}");
    assert!(text.contains("HELD BY"), "{text}");

    // Not ready while the data directory is gone; ready again when back.
    let data = reg.data_dir().to_path_buf();
    let moved = data.with_extension("moved");
    std::fs::rename(&data, &moved).unwrap();
    let r = request(reg.addr(), "GET", "/readyz", &[], b"");
    std::fs::rename(&moved, &data).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("not writable"), "{}", r.text());
    let h = request(reg.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(h.status, 200);
    let r = request(reg.addr(), "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn metrics_auth_needs_publisher_credentials() {
    let reg = Registry::start(Some(
        "metrics_auth = true\n[[publishers]]\nuser = \"ci\"\npassword = \"pw-metrics\"\n",
    ));
    assert_eq!(request(reg.addr(), "GET", "/metrics", &[], b"").status, 401);
    let bad = format!("Basic {}", b64("ci:wrong"));
    assert_eq!(
        request(
            reg.addr(),
            "GET",
            "/metrics",
            &[("Authorization", &bad)],
            b""
        )
        .status,
        401
    );
    let good = format!("Basic {}", b64("ci:pw-metrics"));
    let r = request(
        reg.addr(),
        "GET",
        "/metrics",
        &[("Authorization", &good)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("layerlink_http_requests_total"),
        "{}",
        r.text()
    );
    // The fleet view needs the same credentials; the CLI passes them.
    assert_eq!(
        request(reg.addr(), "GET", "/layerlink/v1/fleet", &[], b"").status,
        401
    );
    let fleet = |pw: &str| {
        run(Command::new(registry_bin())
            .args(["fleet", "--user", "ci", "--server"])
            .arg(&reg.url)
            .env("LAYERLINK_PASSWORD", pw))
    };
    let ok = fleet("pw-metrics");
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("DEVICE"));
    let bad = fleet("nope");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("401"),
        "{bad:?}"
    );
    // Health and readiness stay open.
    assert_eq!(request(reg.addr(), "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(request(reg.addr(), "GET", "/readyz", &[], b"").status, 200);
}

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn config_check(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("registry.toml");
    std::fs::write(&p, text).unwrap();
    run(Command::new(registry_bin())
        .arg("config")
        .arg("check")
        .arg(&p))
}

fn sha256_hex(s: &str) -> String {
    layerlink_tests::sha256_hex(s.as_bytes())
}

#[test]
fn config_check_and_duplicates_refused_at_load() {
    let good = format!(
        "[[devices]]\nid = \"a\"\ntoken = \"ta\"\n[[devices]]\nid = \"b\"\ntoken_sha256 = \"{}\"\n",
        sha256_hex("tb")
    );
    let out = config_check(&good);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok: 0 publisher(s), 2 device(s) (1 with hashed tokens)"),
        "{stdout}"
    );

    for (text, want) in [
        ("[[devices]]\nid = \"a\"\ntoken = \"t1\"\n[[devices]]\nid = \"a\"\ntoken = \"t2\"\n", "same id \"a\""),
        ("[[devices]]\nid = \"a\"\ntoken = \"t1\"\n[[devices]]\nid = \"b\"\ntoken = \"t1\"\n", "same token"),
        (&format!("[[devices]]\nid = \"a\"\ntoken = \"t1\"\n[[devices]]\nid = \"b\"\ntoken_sha256 = \"{}\"\n", sha256_hex("t1")), "same token"),
        ("[[devices]]\nid = \"a\"\ntoken_sha256 = \"abc\"\n", "64 hex digits"),
        ("[[devices]]\nid = \"a\"\n", "no `token`"),
        ("log_format = \"xml\"\n", "log_format"),
        ("[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n", "missing.pem"),
        ("[[devices]\n", "parsing config file"),
    ] {
        let out = config_check(text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(want), "{text}: wanted {want:?} in: {stderr}");
    }

    // `serve` refuses the same file at start, with the same reason.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dup.toml");
    std::fs::write(
        &p,
        "[[devices]]\nid = \"a\"\ntoken = \"t1\"\n[[devices]]\nid = \"a\"\ntoken = \"t2\"\n",
    )
    .unwrap();
    let out = run(Command::new(registry_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&p));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same id \"a\""));
}

#[test]
fn sighup_reloads_devices_and_a_broken_file_keeps_the_old_ones() {
    let base = "log_format = \"json\"\n[[devices]]\nid = \"dev1\"\ntoken = \"tok-r1\"\nrepositories = [\"*\"]\n";
    let reg = registry_with_test_images(base, &["tiny:v1"]);
    let image = test_repo("tiny:v1");
    let dev2 = Agent::new("tok-r2");
    let out = dev2.try_sync(&reg.url, &[&image]);
    assert!(!out.status.success(), "dev2 is not configured yet");

    // Add dev2 (with a hashed token) and reload.
    let path = reg.config_path().unwrap().to_path_buf();
    let original = std::fs::read_to_string(&path).unwrap();
    let with_dev2 = format!(
        "{original}[[devices]]\nid = \"dev2\"\ntoken_sha256 = \"{}\"\nrepositories = [\"test/*\"]\n",
        sha256_hex("tok-r2")
    );
    std::fs::write(&path, &with_dev2).unwrap();
    reg.signal("HUP");
    reg.wait_for_log("config reloaded", 1);
    dev2.sync(&reg.url, &[&image]);
    let devices = reg.devices();
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == "dev2"),
        "{devices}"
    );

    // A broken file (dev2's id twice): the reload fails, dev2 still syncs.
    std::fs::write(
        &path,
        format!("{with_dev2}[[devices]]\nid = \"dev2\"\ntoken = \"other\"\n"),
    )
    .unwrap();
    reg.signal("HUP");
    reg.wait_for_log("config reload failed", 1);
    dev2.sync(&reg.url, &[&image]);
    Agent::new("tok-r1").sync(&reg.url, &[&image]);
    let log = json_log(&reg);
    let failed: Vec<_> = log
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("config reload failed"))
        })
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["level"], "ERROR");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("same id \"dev2\""),
        "{}",
        failed[0]
    );
    let m = scrape(&reg);
    assert_eq!(
        metric(&m, "layerlink_config_reloads_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "layerlink_config_reloads_total",
            &[("outcome", "failed")]
        ),
        1.0
    );

    // Removing dev2 and reloading locks it out without a restart.
    std::fs::write(&path, &original).unwrap();
    reg.signal("HUP");
    reg.wait_for_log("config reloaded", 2);
    assert!(!dev2.try_sync(&reg.url, &[&image]).status.success());
}
