//! The wall clock as the registry records it: whole seconds since the
//! Unix epoch (0 if the clock is before it), and RFC 3339 UTC.

/// Now, in whole seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    layerlink_proto::time::rfc3339(now_secs())
}
