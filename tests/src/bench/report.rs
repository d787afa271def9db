//! The markdown report.

use crate::anatomy::Anatomy;
use crate::device::{Side, Tool};
use crate::figures::Missing;
use crate::measure::Cost;
use crate::ostree::DeltaBuild;
use crate::scenarios::{Kind, Scenario};
use layerlink_tests::args::mib;
use std::fmt::Write as _;

/// Targets from issue 3 (sync).
const TARGET_BYTES_OVER_MISSING_GZ: f64 = 1.3;
const TARGET_PULL_OVER_LAYERLINK: f64 = 10.0;
const TARGET_CPU_RATIO: f64 = 0.1;
/// The agent's peak RSS budget (team standard, issue 11).
const TARGET_AGENT_RSS: u64 = 4 * 1024 * 1024;
/// Issue 11: cold sync bytes over `skopeo copy`'s.
const TARGET_COLD_OVER_SKOPEO: f64 = 0.80;
/// Issue 11: archive throughput of the registry, uncompressed tar MB per
/// CPU second.
const TARGET_REGISTRY_MB_PER_CPU_S: f64 = 300.0;
/// Issue 12: the update with upgraded packages over OSTree's static delta.
const TARGET_UPDATE_OVER_OSTREE_DELTA: f64 = 0.5;
/// Issue 11: sibling bytes over layerlink's before wire v2.
const TARGET_SIBLING_OVER_BEFORE: f64 = 0.80;
/// Issue 11: registry CPU per cold sync over layerlink's before wire v2.
const TARGET_CPU_OVER_BEFORE: f64 = 0.1;

/// Layerlink before wire v2 in one scenario: what issue 11's targets are
/// relative to.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Before {
    /// Bytes on the wire (as published, to the 0.01 MiB / 0.1 KiB shown).
    bytes: f64,
    /// Registry CPU seconds.
    registry_cpu: f64,
    /// Device CPU seconds (agent sync + checkout, user + sys; the median
    /// of the runs).
    device_cpu: f64,
}

/// The same benchmark run of commit `29cba5d` (bench/RESULTS.md as of
/// 24f3eb6), per scenario key.
const BEFORE_WIRE_V2: &[(&str, Before)] = &[
    ("cold", before(57.43 * MIB, 8.52, 2.04)),
    ("base-b", before(263.4 * KIB, 0.07, 0.40)),
    ("hello", before(94.4 * KIB, 0.03, 0.94)),
    ("cold-upd", before(59.91 * MIB, 8.65, 2.70)),
    ("sibling", before(1.92 * MIB, 0.32, 0.35)),
    ("update", before(13.82 * MIB, 2.14, 3.45)),
];
const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

const fn before(bytes: f64, registry_cpu: f64, device_cpu: f64) -> Before {
    Before {
        bytes,
        registry_cpu,
        device_cpu,
    }
}

/// The pre-wire-v2 figures of a scenario.
fn before_wire_v2(key: &str) -> Option<Before> {
    BEFORE_WIRE_V2
        .iter()
        .find(|(k, _)| *k == key)
        .map(|&(_, b)| b)
}

/// One scenario's results.
pub struct Outcome {
    pub scenario: &'static Scenario,
    pub missing: Missing,
    /// The layerlink archive of an incremental scenario, taken apart (or
    /// why not).
    pub anatomy: Option<Result<Anatomy, String>>,
    pub sides: Vec<(Tool, Side)>,
}

impl Outcome {
    pub fn side(&self, tool: Tool) -> Option<&Side> {
        self.sides.iter().find(|(t, _)| *t == tool).map(|(_, s)| s)
    }
}

/// One pushed image.
pub struct Push {
    pub tag: &'static str,
    pub layers: usize,
    pub compressed: u64,
    pub uncompressed: u64,
    pub wall: f64,
    pub put: Option<f64>,
    /// Wall time of the registry's background preparation of this push
    /// (zstd frames, deltas), from its log.
    pub precompute: Option<f64>,
}

/// What the OSTree server side did before the scenarios ran.
pub struct OstreeSetup {
    pub version: String,
    pub commits: Vec<(&'static str, String, f64)>,
    pub deltas: Vec<DeltaBuild>,
    pub skipped_special: u64,
    pub repo_disk: u64,
}

/// Everything the report shows.
pub struct Report<'a> {
    pub command: &'a str,
    pub source: &'a str,
    pub date: &'a str,
    pub agent_label: &'a str,
    pub reps: usize,
    pub tools: &'a [Tool],
    pub all_scenarios: bool,
    pub pushes: &'a [Push],
    pub stats: &'a serde_json::Value,
    pub results: &'a [Outcome],
    pub ostree: Option<&'a OstreeSetup>,
    pub elapsed: f64,
}

fn bytes(b: u64) -> String {
    if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        mib(b)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

impl Report<'_> {
    fn uncompressed(&self, tag: &str) -> u64 {
        self.pushes
            .iter()
            .find(|p| p.tag == tag)
            .map_or(0, |p| p.uncompressed)
    }

    pub fn render(&self) -> String {
        let mut r = String::new();
        self.header(&mut r);
        self.device_sync(&mut r);
        self.peers(&mut r);
        self.sync_targets(&mut r);
        self.ostree_server(&mut r);
        self.ingest(&mut r);
        r
    }

    fn header(&self, w: &mut String) {
        let _ = writeln!(w, "# layerlink benchmark\n");
        let _ = writeln!(w, "- date: {}", self.date);
        let _ = writeln!(w, "- command: `{}`", self.command);
        let _ = writeln!(w, "- source: {}", self.source);
        let _ = writeln!(
            w,
            "- registry: release build; agent: `{}` build; agent checkout: `--read-only` (a read-only overlayfs of the store's layers, unmounted before the disk is counted)",
            self.agent_label
        );
        let _ = writeln!(
            w,
            "- tools: {}",
            self.tools
                .iter()
                .map(|t| t.label())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.tools.contains(&Tool::Skopeo) {
            let _ = writeln!(
                w,
                "- skopeo + umoci: `skopeo copy docker://… oci:LAYOUT:TAG` + `umoci unpack` (a writable bundle); the layout already holds the device's earlier image"
            );
        }
        if let Some(o) = self.ostree {
            let _ = writeln!(
                w,
                "- OSTree ({}): each image's `umoci unpack` rootfs committed into an `archive` repo (ref `upd-v1` for `upd:v1`; \
                 {} device nodes/FIFOs/sockets left out, OSTree cannot store them; OSTree stores no mtimes), `ostree summary -u`, \
                 served by `python3 -m http.server --protocol HTTP/1.1` on loopback through the same kind of counting proxy; the device is a `bare` \
                 repo: `ostree pull --disable-static-deltas` (objects) or `--require-static-deltas` (the delta generated for \
                 exactly this pair, `--empty` for a cold sync), then `ostree checkout -H` (hard links). The held image was pulled \
                 as objects (the resulting repo is the same)",
                o.version, o.skipped_special
            );
        }
        let _ = writeln!(
            w,
            "- scenario 3 (the CPU target) runs {} times per tool, each from a copy of the same device state; the run with the median \
             device CPU is shown, with the CPU range over the runs; the other scenarios run once",
            self.reps
        );
        if !self.all_scenarios {
            let _ = writeln!(
                w,
                "- only some scenarios ran (`LAYERLINK_BENCH_SCENARIOS`): images are pushed for those only"
            );
        }
        let _ = writeln!(
            w,
            "- host: {} CPUs, loopback, servers and device on one machine (timings are noisy when other work runs; bytes are exact)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let _ = writeln!(w, "- total run time: {:.0} s\n", self.elapsed);
    }

    fn device_sync(&self, w: &mut String) {
        let _ = writeln!(w, "## Device sync\n");
        let _ = writeln!(
            w,
            "Bytes: TCP payload both ways through a counting proxy (HTTP headers included). Device CPU: user+sys, and peak RSS: \
             max RSS, of the device processes (fetch + unpack: agent `sync` + `checkout`, `skopeo copy` + `umoci unpack`, \
             `ostree pull` + `ostree checkout`; wait4 rusage via GNU time). Disk: the device directory after the step (store, \
             OCI layout or OSTree repo, plus checkouts), each inode once, with what this step added. Server CPU: user+sys of \
             the server process over the fetch, from /proc/PID/stat (the layerlink registry for layerlink and skopeo, the \
             static HTTP server for OSTree; 10 ms ticks).\n"
        );
        let _ = writeln!(
            w,
            "| scenario | tool | bytes on the wire | device CPU | peak RSS | disk (added) | wall | server CPU |"
        );
        let _ = writeln!(w, "|---|---|--:|--:|--:|--:|--:|--:|");
        for res in self.results {
            for (tool, side) in &res.sides {
                let c = side.total();
                let range = if side.runs > 1 {
                    format!(
                        " ({:.2}–{:.2}, {} runs)",
                        side.cpu_range.0, side.cpu_range.1, side.runs
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {}{} | {:.2} s{range} | {} | {} (+{}) | {:.2} s | {:.2} s |",
                    res.scenario.name,
                    tool.label(),
                    bytes(side.bytes),
                    if side.bytes_stable { "" } else { " (varied)" },
                    c.cpu(),
                    mib(side.rss_max),
                    mib(side.disk_after),
                    mib(side.disk_after.saturating_sub(side.disk_before)),
                    c.wall,
                    side.server_cpu
                );
            }
        }

        let _ = writeln!(
            w,
            "\nPer command (user + sys CPU, peak RSS, wall). For OSTree, the HTTP GETs of the pull from the server's log, and \
             the sizes of the files they fetched: static delta files and objects fetched one by one. OSTree 2022.7 (Debian \
             bookworm) races in a static-delta pull: its object scan runs beside the delta's application and fetches loose \
             what the delta has not written yet, so a delta pull moves the delta plus a varying share of the objects again \
             (reproduced by hand on tiny:v1: 295 KiB or 589 KiB over identical runs).\n"
        );
        let _ = writeln!(
            w,
            "| scenario | tool | fetch | unpack | HTTP GETs (repeated: bytes); delta files + loose objects |"
        );
        let _ = writeln!(w, "|---|---|--:|--:|--:|");
        let cell = |name: &str, c: &Cost| {
            format!(
                "{name}: {:.2} + {:.2} s, {}, {:.2} s",
                c.user,
                c.sys,
                mib(c.rss),
                c.wall
            )
        };
        for res in self.results {
            for (tool, side) in &res.sides {
                let (f, u) = tool.commands();
                let gets = side.requests.map_or(String::new(), |r| {
                    format!(
                        "{} ({}: {}); {} + {}",
                        r.gets,
                        r.repeated,
                        bytes(r.repeated_bytes),
                        bytes(r.delta_bytes),
                        bytes(r.object_bytes)
                    )
                });
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {gets} |",
                    res.scenario.name,
                    tool.label(),
                    cell(f, &side.fetch),
                    cell(u, &side.unpack)
                );
            }
        }
    }

    fn peers(&self, w: &mut String) {
        let _ = writeln!(w, "\n## Peers side by side (issues 11, 12)\n");
        let _ = writeln!(
            w,
            "Bytes on the wire per scenario (the table above, one column per tool), and layerlink's bytes over each peer's.\n"
        );
        let _ = write!(w, "| scenario |");
        for t in self.tools {
            let _ = write!(w, " {} |", t.label());
        }
        for t in self.tools.iter().filter(|t| **t != Tool::Layerlink) {
            let _ = write!(w, " layerlink / {} |", t.label());
        }
        let _ = writeln!(w);
        let _ = write!(w, "|---|");
        let ratios = self.tools.iter().filter(|t| **t != Tool::Layerlink).count();
        for _ in 0..self.tools.len() + ratios {
            let _ = write!(w, "--:|");
        }
        let _ = writeln!(w);
        for res in self.results {
            let _ = write!(w, "| {} |", res.scenario.name);
            for t in self.tools {
                let cell = res.side(*t).map_or("n/a".into(), |s| bytes(s.bytes));
                let _ = write!(w, " {cell} |");
            }
            let ll = res.side(Tool::Layerlink).map(|s| s.bytes);
            for t in self.tools.iter().filter(|t| **t != Tool::Layerlink) {
                let cell = match (ll, res.side(*t)) {
                    (Some(ll), Some(p)) => format!("{:.2}", ratio(ll, p.bytes)),
                    _ => "n/a".into(),
                };
                let _ = write!(w, " {cell} |");
            }
            let _ = writeln!(w);
        }

        let _ = writeln!(w, "\nTargets:\n");
        let mut any = false;
        for res in self.results {
            let (Some(ll), name) = (res.side(Tool::Layerlink), res.scenario.name) else {
                continue;
            };
            match res.scenario.kind {
                Kind::Cold => {
                    // tiny:v1 is mostly random bytes: no compressor wins.
                    let debian = res.scenario.key != "tiny";
                    if let (Some(sk), true) = (res.side(Tool::Skopeo), debian) {
                        let r = ratio(ll.bytes, sk.bytes);
                        let _ = writeln!(
                            w,
                            "- {name}: layerlink / skopeo bytes {} / {} = {r:.2} (issue 11: ≤ {TARGET_COLD_OVER_SKOPEO}) **{}**",
                            bytes(ll.bytes),
                            bytes(sk.bytes),
                            verdict(r <= TARGET_COLD_OVER_SKOPEO)
                        );
                        any = true;
                    }
                    let before = before_wire_v2(res.scenario.key);
                    if let Some(Before {
                        device_cpu: before, ..
                    }) = before
                    {
                        let now = ll.total().cpu();
                        let _ = writeln!(
                            w,
                            "- {name}: agent CPU (sync + checkout) {now:.2} s vs {before:.2} s before wire v2 \
                             (issue 11: not above; timings are noisy on a shared machine, see the runs' range) **{}**",
                            verdict(now <= before)
                        );
                        any = true;
                    }
                    let size = self.uncompressed(res.scenario.tag);
                    if ll.server_cpu > 0.0 && size > 1024 * 1024 {
                        let rate = size as f64 / 1e6 / ll.server_cpu;
                        let (vs, ok) = match before {
                            Some(Before {
                                registry_cpu: cpu, ..
                            }) => (
                                format!(
                                    "; {:.3}× the {cpu:.2} s before wire v2",
                                    ll.server_cpu / cpu
                                ),
                                ll.server_cpu <= TARGET_CPU_OVER_BEFORE * cpu,
                            ),
                            None => ("; no pre-wire-v2 figure".into(), false),
                        };
                        let _ = writeln!(
                            w,
                            "- {name}: registry CPU {:.2} s for {} of uncompressed layer tar = {rate:.0} MB per CPU second{vs} \
                             (issue 11: ≥ {TARGET_REGISTRY_MB_PER_CPU_S:.0}, and ≤ {TARGET_CPU_OVER_BEFORE}× the CPU of the run before wire v2) **{}**",
                            ll.server_cpu,
                            mib(size),
                            verdict(rate >= TARGET_REGISTRY_MB_PER_CPU_S && ok)
                        );
                        any = true;
                    }
                }
                Kind::Sibling => {
                    if let Some(o) = res.side(Tool::OstreeObjects) {
                        let (vs, ok) = match before_wire_v2(res.scenario.key) {
                            Some(Before { bytes: b, .. }) => {
                                let r = ll.bytes as f64 / b;
                                (
                                    format!("; {r:.2}× the {} before wire v2", bytes(b as u64)),
                                    r <= TARGET_SIBLING_OVER_BEFORE,
                                )
                            }
                            None => ("; no pre-wire-v2 figure".into(), false),
                        };
                        let _ = writeln!(
                            w,
                            "- {name}: layerlink {} vs OSTree objects {}{vs} (issue 11: below OSTree objects, and \
                             ≤ {TARGET_SIBLING_OVER_BEFORE}× layerlink before wire v2) **{}**",
                            bytes(ll.bytes),
                            bytes(o.bytes),
                            verdict(ll.bytes < o.bytes && ok)
                        );
                        any = true;
                    }
                }
                Kind::Update => {
                    if let (Some(d), "update") = (res.side(Tool::OstreeDelta), res.scenario.key) {
                        let r = ratio(ll.bytes, d.bytes);
                        let _ = writeln!(
                            w,
                            "- {name}: layerlink / OSTree static delta {} / {} = {r:.2} (issue 12: ≤ {TARGET_UPDATE_OVER_OSTREE_DELTA}) **{}**",
                            bytes(ll.bytes),
                            bytes(d.bytes),
                            verdict(r <= TARGET_UPDATE_OVER_OSTREE_DELTA)
                        );
                        any = true;
                    }
                }
            }
        }
        let agent_rss = self
            .results
            .iter()
            .filter_map(|r| r.side(Tool::Layerlink))
            .map(|s| s.rss_max)
            .max();
        if let Some(rss) = agent_rss {
            let _ = writeln!(
                w,
                "- agent peak RSS over every sync and checkout: {} (≤ {}) **{}**",
                mib(rss),
                mib(TARGET_AGENT_RSS),
                verdict(rss <= TARGET_AGENT_RSS)
            );
            any = true;
        }
        if !any {
            let _ = writeln!(w, "- none of the scenarios that ran has a target here");
        }
    }

    fn sync_targets(&self, w: &mut String) {
        if !self.tools.contains(&Tool::Layerlink) {
            return;
        }
        let _ = writeln!(w, "\n## Sync targets (issue 3)\n");
        let _ = writeln!(
            w,
            "missing-gz: the target image's distinct non-empty file contents (by sha256) that the device's earlier image lacks, \
             each gzip'd on its own (flate2, default level), summed — computed here from the layer tars, not by the registry. \
             The last column spreads what layerlink sent beyond missing-gz over the target image's tar entries (a layer sent on \
             a held layer it resembles carries only the entries that differ; other layers carry every entry, held files as \
             reference entries).\n"
        );
        let _ = writeln!(
            w,
            "| scenario | tar entries | missing files | missing raw | missing-gz | layerlink bytes / missing-gz (≤ {TARGET_BYTES_OVER_MISSING_GZ}) | layer-pull bytes / layerlink bytes (≥ {TARGET_PULL_OVER_LAYERLINK}) | (layerlink − missing-gz) / entries |"
        );
        let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|");
        for res in self.results {
            let Some(ll) = res.side(Tool::Layerlink) else {
                continue;
            };
            let m = &res.missing;
            let over = ratio(ll.bytes, m.gz);
            let pull_cell = match res.side(Tool::Skopeo) {
                None => "n/a (skopeo not run)".to_string(),
                Some(peer) => {
                    let pull = ratio(peer.bytes, ll.bytes);
                    if res.scenario.incremental {
                        format!(
                            "{pull:.1} **{}**",
                            verdict(pull >= TARGET_PULL_OVER_LAYERLINK)
                        )
                    } else {
                        format!("{pull:.2} (no target: cold)")
                    }
                }
            };
            let per_entry = (ll.bytes as f64 - m.gz as f64) / m.entries.max(1) as f64;
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {over:.2} **{}** | {pull_cell} | {per_entry:.0} B |",
                res.scenario.name,
                m.entries,
                m.files,
                mib(m.raw),
                bytes(m.gz),
                verdict(over <= TARGET_BYTES_OVER_MISSING_GZ),
            );
        }
        if self.results.iter().any(|r| r.anatomy.is_some()) {
            let _ = writeln!(
                w,
                "\nWhat the dedup archive of an incremental sync is made of (recorded on the first measured sync; entry kinds \
                 as in proto/SPEC.md). The last column re-compresses the archive's tar without its reference entries (gzip: \
                 flate2 default level; zstd: level 19): what it would cost if held files needed no entry.\n"
            );
            let _ = writeln!(
                w,
                "| scenario | archive (codec) | tar | reference entries | new files (bytes) | other entries | markers | without reference entries (/ missing-gz) |"
            );
            let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|");
            for res in self.results {
                match &res.anatomy {
                    None => {}
                    Some(Err(e)) => {
                        let _ = writeln!(
                            w,
                            "| {} | not taken apart: {} | | | | | | |",
                            res.scenario.name,
                            e.replace('|', "/").replace('\n', " ")
                        );
                    }
                    Some(Ok(a)) => {
                        let _ = writeln!(
                            w,
                            "| {} | {} ({}) | {} | {} | {} ({}) | {} | {} | {} ({:.2}) |",
                            res.scenario.name,
                            bytes(a.compressed),
                            a.codec,
                            bytes(a.tar),
                            a.references,
                            a.new_files,
                            bytes(a.new_file_bytes),
                            a.other,
                            a.markers,
                            bytes(a.without_references),
                            ratio(a.without_references, res.missing.gz)
                        );
                    }
                }
            }
        }
        let find = |key: &str| self.results.iter().find(|r| r.scenario.key == key);
        if let Some(update) = find("hello") {
            if let (Some(ll), Some(peer)) =
                (update.side(Tool::Layerlink), update.side(Tool::Skopeo))
            {
                let (l, p) = (ll.total().cpu(), peer.total().cpu());
                let r = l / p.max(1e-9);
                let _ = writeln!(
                    w,
                    "\n- update scenario CPU, agent / (skopeo + umoci): {l:.2} s / {p:.2} s = {r:.3} (target < {TARGET_CPU_RATIO}) **{}**; \
                     over the runs' extremes: {:.3} (best agent / worst peer) to {:.3} (worst agent / best peer)",
                    verdict(r < TARGET_CPU_RATIO),
                    ll.cpu_range.0 / peer.cpu_range.1.max(1e-9),
                    ll.cpu_range.1 / peer.cpu_range.0.max(1e-9),
                );
            }
        }
        let rss: Vec<String> = self
            .results
            .iter()
            .filter_map(|r| {
                let ll = r.side(Tool::Layerlink)?;
                Some(format!(
                    "{} ({} of layer tar) {}",
                    r.scenario.tag,
                    mib(self.uncompressed(r.scenario.tag)),
                    mib(ll.fetch.rss)
                ))
            })
            .collect();
        if rss.len() > 1 {
            let _ = writeln!(
                w,
                "- agent sync peak RSS against image size: {}",
                rss.join(", ")
            );
        }
    }

    fn ostree_server(&self, w: &mut String) {
        let Some(o) = self.ostree else { return };
        let _ = writeln!(w, "\n## OSTree server side (not measured in the table)\n");
        let _ = writeln!(
            w,
            "| image | commit (umoci unpack + ostree commit) |\n|---|--:|"
        );
        for (tag, rev, secs) in &o.commits {
            let _ = writeln!(w, "| {tag} (`{}`) | {secs:.1} s |", &rev[..12]);
        }
        let _ = writeln!(
            w,
            "\n| static delta | generate wall | generate CPU | size on disk |\n|---|--:|--:|--:|"
        );
        for d in &o.deltas {
            let _ = writeln!(
                w,
                "| {} → {} | {:.1} s | {:.1} s | {} |",
                d.from.unwrap_or("empty"),
                d.to,
                d.wall,
                d.cpu,
                bytes(d.bytes)
            );
        }
        let _ = writeln!(
            w,
            "\nServer repo on disk (objects, deltas, summary): {}.",
            mib(o.repo_disk)
        );
    }

    fn ingest(&self, w: &mut String) {
        let _ = writeln!(w, "\n## Registry ingest and dedup (issue 2)\n");
        let _ = writeln!(
            w,
            "Pushed once each, in this order, with `skopeo copy oci:… docker://…` through a timing proxy. The registry ingests an \
             image's layers inside the manifest PUT: \"ingest\" is the time from that request's first byte to its answer's first \
             byte, and ingest throughput is the image's uncompressed layer tar bytes over it (MB = 10^6 bytes). Push throughput \
             is the same bytes over the whole skopeo run. Background preparation: what the registry does once per push after \
             it answered it (zstd frames of the new objects, deltas against the repository's other tags; one thread, `sync::precompute`), \
             wall time from its log — devices syncing before it ends make what they need themselves.\n"
        );
        let _ = writeln!(
            w,
            "| image | layers | compressed | uncompressed tar | push wall | push MB/s | manifest PUT (ingest) | ingest MB/s | background preparation |"
        );
        let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for p in self.pushes {
            let (put, rate) = match p.put {
                Some(s) => (
                    format!("{s:.2} s"),
                    format!("{:.0}", p.uncompressed as f64 / 1e6 / s.max(1e-9)),
                ),
                None => ("n/a".into(), "n/a".into()),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.2} s | {:.0} | {put} | {rate} | {} |",
                p.tag,
                p.layers,
                mib(p.compressed),
                mib(p.uncompressed),
                p.wall,
                p.uncompressed as f64 / 1e6 / p.wall.max(1e-9),
                p.precompute
                    .map_or_else(|| "n/a".into(), |s| format!("{s:.1} s"))
            );
        }
        let stats = self.stats;
        let num = |k: &str| stats[k].as_u64().unwrap_or(0);
        let ratio_of = |k: &str| {
            stats[k]
                .as_f64()
                .map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}"))
        };
        let _ = writeln!(
            w,
            "\n`layerlink-registry stats --json` after the pushes: {} layers, {} tar entries, {} regular files, {} distinct objects; \
             logical {} → stored {}: dedup ratio **{}** = dedup {} (distinct contents: {}) × compression {}; \
             the original blobs are kept as well ({} in {} blobs): {} counting them.",
            num("layers"),
            num("file_entries"),
            num("regular_files"),
            num("distinct_objects"),
            mib(num("logical_bytes")),
            mib(num("stored_bytes")),
            ratio_of("dedup_ratio"),
            ratio_of("dedup_only_ratio"),
            mib(num("distinct_bytes")),
            ratio_of("compression_ratio"),
            mib(num("blob_bytes")),
            num("blobs"),
            ratio_of("ratio_with_blobs"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::SCENARIOS;

    /// Every scenario that issue 11 compares with the run before wire v2
    /// has a baseline, so no target line can pass for want of one.
    #[test]
    fn every_compared_scenario_has_a_pre_wire_v2_figure() {
        for s in SCENARIOS.iter().filter(|s| s.key != "tiny") {
            let b = before_wire_v2(s.key).unwrap_or_else(|| panic!("no baseline for {}", s.key));
            assert!(
                b.bytes > 0.0 && b.registry_cpu > 0.0 && b.device_cpu > 0.0,
                "{}",
                s.key
            );
        }
        assert_eq!(
            before_wire_v2("sibling"),
            Some(before(1.92 * MIB, 0.32, 0.35))
        );
        assert_eq!(before_wire_v2("cold").map(|b| b.device_cpu), Some(2.04));
    }
}
