//! Prometheus metrics: names, buckets, the recorder, and the route label.
//!
//! The `metrics` facade records; `metrics-exporter-prometheus` (no HTTP
//! listener of its own: `/metrics` is served by our router, see
//! [`super::ops`]) renders the text format. Without an installed recorder
//! (unit tests) every call is a no-op.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `layerlink_http_requests_total` | counter | `method`, `route`, `status` |
//! | `layerlink_http_request_duration_seconds` | histogram | `route` |
//! | `layerlink_sync_plans_total` | counter | `outcome` = `up_to_date`, `update`, `refused` |
//! | `layerlink_sync_plan_duration_seconds` | histogram | |
//! | `layerlink_sync_responses_total` | counter | `kind` = `archive`/`objects`, `outcome` = `complete`/`client_gone`/`failed` |
//! | `layerlink_sync_bytes_sent_total` | counter | `kind` |
//! | `layerlink_sync_response_bytes` | histogram | `kind` (bytes of one archive/objects response) |
//! | `layerlink_dedup_ratio` | gauge | logical file bytes / stored object bytes (at scrape time) |
//! | `layerlink_store_logical_bytes`, `layerlink_store_stored_bytes` | gauge | |
//! | `layerlink_config_reloads_total` | counter | `outcome` = `ok`/`failed` |

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, seconds.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Size buckets, bytes (1 KiB .. 1 GiB, ×4).
const BYTES: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

/// Install the process-wide recorder; the handle renders `/metrics`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES)?
        .install_recorder()?;
    Ok(handle)
}

/// A finished HTTP request.
pub fn request_done(method: &str, route: &'static str, status: u16, secs: f64) {
    metrics::counter!(
        "layerlink_http_requests_total",
        "method" => method.to_owned(),
        "route" => route,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("layerlink_http_request_duration_seconds", "route" => route).record(secs);
}

/// A finished plan.
pub fn plan_done(secs: f64, outcome: &'static str) {
    metrics::counter!("layerlink_sync_plans_total", "outcome" => outcome).increment(1);
    if outcome != "refused" {
        metrics::histogram!("layerlink_sync_plan_duration_seconds").record(secs);
    }
}

/// A finished archive or objects response of `bytes` on the wire.
pub fn sync_sent(kind: &'static str, outcome: &'static str, bytes: u64) {
    metrics::counter!("layerlink_sync_responses_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
    metrics::counter!("layerlink_sync_bytes_sent_total", "kind" => kind).increment(bytes);
    metrics::histogram!("layerlink_sync_response_bytes", "kind" => kind).record(bytes as f64);
}

/// A config reload attempt.
pub fn reload(ok: bool) {
    metrics::counter!("layerlink_config_reloads_total", "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
}

/// A garbage collection run inside `serve`: its outcome and, when it
/// succeeded, the bytes it freed.
pub fn gc(freed: Option<u64>) {
    metrics::counter!("layerlink_gc_runs_total", "outcome" => if freed.is_some() { "ok" } else { "failed" })
        .increment(1);
    if let Some(b) = freed {
        metrics::counter!("layerlink_gc_bytes_freed_total").increment(b);
    }
}

/// Store-wide gauges (set at scrape time).
pub fn store_gauges(logical: u64, stored: u64) {
    metrics::gauge!("layerlink_store_logical_bytes").set(logical as f64);
    metrics::gauge!("layerlink_store_stored_bytes").set(stored as f64);
    let ratio = if stored > 0 {
        logical as f64 / stored as f64
    } else {
        0.0
    };
    metrics::gauge!("layerlink_dedup_ratio").set(ratio);
}

/// The `route` label of a path: a fixed set, so repository names and
/// digests never become label values.
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/healthz" => return "healthz",
        "/readyz" => return "readyz",
        "/metrics" => return "metrics",
        "/v2" | "/v2/" => return "v2",
        "/v2/_catalog" => return "catalog",
        "/layerlink/v1/plan" => return "plan",
        "/layerlink/v1/archive" => return "archive",
        "/layerlink/v1/objects" => return "objects",
        "/layerlink/v1/report" => return "report",
        "/layerlink/v1/framing" => return "framing",
        "/layerlink/v1/edit" => return "edit",
        "/layerlink/v1/fleet" => return "fleet",
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        if rest.contains("/blobs/uploads") {
            return "blob_upload";
        }
        if rest.contains("/blobs/") {
            return "blob";
        }
        if rest.contains("/manifests/") {
            return "manifest";
        }
        if rest.ends_with("/tags/list") {
            return "tags";
        }
        if rest.contains("/referrers/") {
            return "referrers";
        }
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn routes() {
        assert_eq!(route_of("/v2/"), "v2");
        assert_eq!(route_of("/v2/a/b/blobs/uploads/"), "blob_upload");
        assert_eq!(route_of("/v2/a/b/blobs/uploads/123"), "blob_upload");
        assert_eq!(route_of("/v2/a/blobs/sha256:00"), "blob");
        assert_eq!(route_of("/v2/edge/app/manifests/v1"), "manifest");
        assert_eq!(route_of("/v2/edge/app/tags/list"), "tags");
        assert_eq!(route_of("/layerlink/v1/plan"), "plan");
        assert_eq!(route_of("/metrics"), "metrics");
        assert_eq!(route_of("/etc/passwd"), "other");
        assert_eq!(route_of("/v2/x/y"), "other");
    }
}
