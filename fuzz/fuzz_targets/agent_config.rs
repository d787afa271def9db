//! The agent's `--config` parser (`agent/src/cli/config.rs`, a TOML
//! subset) on arbitrary text (bytes read lossily: the agent reads the file
//! with `read_to_string`, which refuses non-UTF-8 before parsing).
//!
//! Never a panic; an error is one line naming a line of the file
//! (`line N: …`); a config that parses is written back in the subset and
//! parses to the same keys.
#![no_main]

use layerlink_agent::cli::{parse_config, ConfigFile};
use libfuzzer_sys::fuzz_target;

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `cfg` in the subset, one `key = value` line per key set.
fn write(cfg: &ConfigFile) -> String {
    let mut out = String::new();
    let strs = [
        ("server", &cfg.server),
        ("store", &cfg.store),
        ("token_file", &cfg.token_file),
        ("ca_file", &cfg.ca_file),
        ("platform", &cfg.platform),
        ("trust_key", &cfg.trust_key),
    ];
    for (k, v) in strs {
        if let Some(v) = v {
            out.push_str(&format!("{k} = {}\n", quoted(v)));
        }
    }
    if let Some(l) = &cfg.images {
        let items: Vec<String> = l.iter().map(|s| quoted(s)).collect();
        out.push_str(&format!("images = [{}]\n", items.join(", ")));
    }
    for (k, v) in [("retry_for", cfg.retry_for), ("keep", cfg.keep)] {
        if let Some(v) = v {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    for (k, v) in [
        ("force_platform", cfg.force_platform),
        ("deltas", cfg.deltas),
    ] {
        if let Some(v) = v {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_config(&text) {
        Ok(cfg) => {
            let again = write(&cfg);
            match parse_config(&again) {
                Ok(back) => assert_eq!(back, cfg, "written as {again:?}"),
                Err(e) => panic!("own rendering refused ({e}): {again:?}"),
            }
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            let n: usize = e
                .strip_prefix("line ")
                .and_then(|r| r.split_once(": "))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("error without a line number: {e:?}"));
            assert!((1..=lines).contains(&n), "line {n} of {lines}: {e:?}");
            assert!(!e.contains('\n'), "multi-line error: {e:?}");
        }
    }
});
