//! The scenarios, and choosing some of them (`LAYERLINK_BENCH_SCENARIOS`).

pub struct Scenario {
    /// Its name in `LAYERLINK_BENCH_SCENARIOS` (its number works too).
    pub key: &'static str,
    pub name: &'static str,
    pub held: &'static [&'static str],
    pub tag: &'static str,
    /// Whether the pull-vs-layerlink target applies.
    pub incremental: bool,
    /// Whether to run it `--reps` times (the CPU target's scenario).
    pub repeat: bool,
    /// What kind it is in the peers' comparison (issue 11's table).
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cold,
    /// Another image on an independently built base.
    Sibling,
    /// A rebuild of the held image.
    Update,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "tiny",
        name: "0. cold sync tiny:v1 (RSS reference)",
        held: &[],
        tag: "tiny:v1",
        incremental: false,
        repeat: false,
        kind: Kind::Cold,
    },
    Scenario {
        key: "cold",
        name: "1. cold sync base-a:v1",
        held: &[],
        tag: "base-a:v1",
        incremental: false,
        repeat: false,
        kind: Kind::Cold,
    },
    Scenario {
        key: "base-b",
        name: "2. holds base-a:v1, syncs base-b:v1",
        held: &["base-a:v1"],
        tag: "base-b:v1",
        incremental: true,
        repeat: false,
        kind: Kind::Sibling,
    },
    Scenario {
        key: "hello",
        name: "3. holds base-a:v1, syncs base-a:v2 (update)",
        held: &["base-a:v1"],
        tag: "base-a:v2",
        incremental: true,
        repeat: true,
        kind: Kind::Update,
    },
    Scenario {
        key: "cold-upd",
        name: "4. cold sync upd:v1 (2 layers)",
        held: &[],
        tag: "upd:v1",
        incremental: false,
        repeat: false,
        kind: Kind::Cold,
    },
    Scenario {
        key: "sibling",
        name: "5. holds upd:v1, syncs sib:v1 (sibling)",
        held: &["upd:v1"],
        tag: "sib:v1",
        incremental: true,
        repeat: false,
        kind: Kind::Sibling,
    },
    Scenario {
        key: "update",
        name: "6. holds upd:v1, syncs upd:v2 (packages upgraded)",
        held: &["upd:v1"],
        tag: "upd:v2",
        incremental: true,
        repeat: false,
        kind: Kind::Update,
    },
];

/// The scenarios a comma-separated list names (keys or numbers); all when
/// `list` is `None` or empty.
pub fn select(list: Option<&str>) -> anyhow::Result<Vec<&'static Scenario>> {
    let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
        return Ok(SCENARIOS.iter().collect());
    };
    let mut chosen = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let s = SCENARIOS
            .iter()
            .enumerate()
            .find(|(i, s)| s.key == word || i.to_string() == word)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown scenario {word:?}; known: {}",
                    SCENARIOS
                        .iter()
                        .enumerate()
                        .map(|(i, s)| format!("{i}={}", s.key))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        if !chosen.iter().any(|c: &&Scenario| c.key == s.key) {
            chosen.push(s);
        }
    }
    // In the report's order.
    chosen.sort_by_key(|s| SCENARIOS.iter().position(|x| x.key == s.key));
    Ok(chosen)
}

/// Every image the scenarios need, in first-use order (held ones first).
pub fn images(scenarios: &[&Scenario]) -> Vec<&'static str> {
    let mut tags: Vec<&'static str> = Vec::new();
    for s in scenarios {
        for t in s.held.iter().chain([&s.tag]) {
            if !tags.contains(t) {
                tags.push(t);
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_key_or_number_in_report_order() {
        assert_eq!(select(None).unwrap().len(), SCENARIOS.len());
        assert_eq!(select(Some(" ")).unwrap().len(), SCENARIOS.len());
        let s = select(Some("update,1,update")).unwrap();
        assert_eq!(
            s.iter().map(|s| s.key).collect::<Vec<_>>(),
            ["cold", "update"]
        );
        assert_eq!(images(&s), ["base-a:v1", "upd:v1", "upd:v2"]);
        assert!(select(Some("nope")).is_err());
    }

    #[test]
    fn keys_are_unique() {
        for (i, a) in SCENARIOS.iter().enumerate() {
            assert!(SCENARIOS[i + 1..].iter().all(|b| b.key != a.key));
        }
    }
}
