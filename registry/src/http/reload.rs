//! Swapping in a reloaded config (`SIGHUP`): devices, their tokens and
//! repositories, and publishers take effect for the next request. Settings
//! read once at start (`[tls]`, `precompute`, `zstd_level`, `log_format`, `[gc]`)
//! need a restart; a change to them is applied to nothing and logged.

use super::state::SharedConfig;
use crate::config::Config;

/// Replace `shared` with `new` (already loaded and validated) unless the
/// change is unsafe: dropping every publisher would open anonymous push on
/// an address that was checked with auth on. Returns a summary for the log,
/// or why the reload was refused (the old config stays).
pub fn apply(shared: &SharedConfig, new: Config) -> Result<String, String> {
    let old = shared.get();
    if old.has_publisher_auth() && !new.has_publisher_auth() {
        return Err(
            "the new file has no [[publishers]]: that would open anonymous push; \
             restart the registry to run without publisher auth"
                .into(),
        );
    }
    let mut restart_needed = Vec::new();
    if old.tls.as_ref().map(|t| (&t.cert, &t.key)) != new.tls.as_ref().map(|t| (&t.cert, &t.key)) {
        restart_needed.push("[tls]");
    }
    if old.precompute() != new.precompute() {
        restart_needed.push("precompute");
    }
    if old.zstd_level != new.zstd_level {
        restart_needed.push("zstd_level");
    }
    if old.log_format != new.log_format {
        restart_needed.push("log_format");
    }
    if old.gc != new.gc {
        restart_needed.push("[gc]");
    }
    if new.resume != old.resume {
        restart_needed.push("[resume]");
    }
    let old_ids: std::collections::BTreeSet<&str> =
        old.devices.iter().map(|d| d.id.as_str()).collect();
    let new_ids: std::collections::BTreeSet<&str> =
        new.devices.iter().map(|d| d.id.as_str()).collect();
    let added = new_ids.difference(&old_ids).count();
    let removed = old_ids.difference(&new_ids).count();
    let mut summary = format!(
        "{} device(s) ({added} added, {removed} removed), {} publisher(s)",
        new.devices.len(),
        new.publishers.len()
    );
    if !restart_needed.is_empty() {
        summary.push_str(&format!(
            "; changes to {} take effect only after a restart",
            restart_needed.join(", ")
        ));
    }
    shared.replace(new);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn swaps_devices_and_refuses_dropping_publishers() {
        let shared = SharedConfig::new(cfg(
            "[[publishers]]\nuser = \"u\"\npassword = \"p\"\n[[devices]]\nid = \"a\"\ntoken = \"ta\"\n",
        ));
        let s = apply(
            &shared,
            cfg("zstd_level = 3\n[[publishers]]\nuser = \"u\"\npassword = \"p\"\n[[devices]]\nid = \"b\"\ntoken = \"tb\"\n"),
        )
        .unwrap();
        assert!(s.contains("1 added, 1 removed"), "{s}");
        assert!(s.contains("zstd_level"), "{s}");
        assert_eq!(shared.get().devices[0].id, "b");
        let e = apply(&shared, cfg("[[devices]]\nid = \"c\"\ntoken = \"tc\"\n")).unwrap_err();
        assert!(e.contains("anonymous push"), "{e}");
        assert_eq!(shared.get().devices[0].id, "b", "the old config stays");
    }
}
