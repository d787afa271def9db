//! `layerlink-faults`: power-cut and network-fault harnesses for the agent.
//!
//! ```text
//! layerlink-faults power [--cuts N] [--seed S] [--release]
//! layerlink-faults net   [--faults N] [--seed S] [--retry-for SECS] [--release]
//! layerlink-faults resume [--cuts N] [--seed S] [--scenario upd|update|cold|second] [--rate-kib K] [--release]
//! ```
//!
//! `resume` SIGKILLs N successive syncs of one update, each resuming what
//! the cut before left, and prints what the whole costs in uncut updates
//! (`RESULT resume cuts updates total_bytes uncut_bytes ratio seed`).
//! `--rate-kib K` limits registry→device traffic to K KiB/s (a WAN link).
//!
//! `power` SIGKILLs `layerlink-agent sync` at seeded delays over three
//! scenarios (cold base-a:v1, base-a:v1→v2, base-a:v1→base-b:v1); after each
//! cut `verify` must pass, a rerun must finish and the checkout must equal
//! `umoci unpack` (every cut). Cuts that landed after the sync had finished
//! are reported apart: the survival figure counts only cuts that hit a
//! running sync. `net` syncs through a proxy that cuts, stalls, truncates
//! and answers 503, then through one that always fails (exit 3 expected).
//! `--release` uses `target/release` binaries (build them first). The last
//! line is machine-readable: `RESULT kind survived tried excess_total
//! excess_worst seed [after_completion after_completion_survived]` (for
//! `power`, survived/tried are the mid-sync cuts). Exit 1 if anything
//! failed.

use layerlink_tests::args::{mib, num};
use layerlink_tests::bins::target_dir;
use layerlink_tests::faultproxy::{
    always_failing, net_faults, power_cuts, prepare, prepare_limited, resume_cuts, scenario_named,
    FaultReport, SCENARIOS,
};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        eprintln!("usage: layerlink-faults power|net [--cuts N|--faults N] [--seed S] [--release]");
        std::process::exit(2);
    };
    let seed = num(&args, "--seed", 1);
    if args.iter().any(|a| a == "--release") {
        let rel = target_dir().join("release");
        for (env, name) in [
            ("LAYERLINK_REGISTRY_BIN", "layerlink-registry"),
            ("LAYERLINK_AGENT_BIN", "layerlink-agent"),
        ] {
            if std::env::var_os(env).is_none() {
                std::env::set_var(env, rel.join(name));
            }
        }
    }
    let work = tempfile::Builder::new()
        .prefix("layerlink-faults-")
        .tempdir()
        .expect("temp dir");
    let t0 = Instant::now();
    let mut total = FaultReport::default();
    let mut ok = true;
    match mode.as_str() {
        "power" => {
            let cuts = num(&args, "--cuts", 30);
            let per = cuts.div_ceil(SCENARIOS.len() as u64);
            for (k, sc) in SCENARIOS.iter().enumerate() {
                let p = prepare(*sc, &work.path().join(format!("s{k}")));
                println!(
                    "{}: uncut sync {} in {:.2}s; {per} cuts",
                    sc.name,
                    mib(p.uncut_bytes),
                    p.uncut_time.as_secs_f64()
                );
                let r = power_cuts(&p, per, seed.wrapping_add(k as u64));
                println!(
                    "{}: mid-sync cuts survived {}/{}; cuts after completion {} (survived {}); re-downloaded total {} worst {} (uncut {})",
                    sc.name,
                    r.survived_mid_sync,
                    r.killed_mid_sync,
                    r.after_completion,
                    r.survived - r.survived_mid_sync,
                    mib(r.excess_total),
                    mib(r.excess_worst),
                    mib(r.uncut_bytes)
                );
                for f in &r.failures {
                    println!("FAIL {f}");
                }
                total.add(&r);
            }
            println!(
                "power cuts: mid-sync cuts survived {}/{} ({} cuts tried, {} after completion, {} of those survived), seed {seed}, re-downloaded total {} worst {}, {:.0}s",
                total.survived_mid_sync,
                total.killed_mid_sync,
                total.tried,
                total.after_completion,
                total.survived - total.survived_mid_sync,
                mib(total.excess_total),
                mib(total.excess_worst),
                t0.elapsed().as_secs_f64()
            );
            println!(
                "RESULT power {} {} {} {} {seed} {} {}",
                total.survived_mid_sync,
                total.killed_mid_sync,
                total.excess_total,
                total.excess_worst,
                total.after_completion,
                total.survived - total.survived_mid_sync
            );
        }
        "net" => {
            let faults = num(&args, "--faults", 30);
            let retry_for = num(&args, "--retry-for", 60);
            let per = faults.div_ceil(SCENARIOS.len() as u64);
            for (k, sc) in SCENARIOS.iter().enumerate() {
                let p = prepare(*sc, &work.path().join(format!("s{k}")));
                let r = net_faults(&p, per, seed.wrapping_add(k as u64), 4, retry_for, per * 3);
                println!(
                    "{}: {} faults fired over {} syncs, {} syncs correct; extra bytes total {} worst {} (uncut {})",
                    sc.name,
                    r.faults_fired,
                    r.tried,
                    r.survived,
                    mib(r.excess_total),
                    mib(r.excess_worst),
                    mib(r.uncut_bytes)
                );
                for f in &r.failures {
                    println!("FAIL {f}");
                }
                total.add(&r);
                if k == 0 {
                    let bound = 10;
                    let (code, took, err) = always_failing(&p, seed, bound);
                    let within = took < Duration::from_secs(bound + 45);
                    println!(
                        "always-failing proxy, --retry-for {bound}: exit {code} after {:.1}s",
                        took.as_secs_f64()
                    );
                    if code != 3 || !within {
                        ok = false;
                        println!(
                            "FAIL always-failing proxy: expected exit 3 within {}s, got {code} after {:.1}s: {}",
                            bound + 45,
                            took.as_secs_f64(),
                            err.trim()
                        );
                    }
                }
            }
            println!(
                "network faults: {} fired, syncs correct {}/{}, seed {seed}, extra bytes total {} worst {}, {:.0}s",
                total.faults_fired,
                total.survived,
                total.tried,
                mib(total.excess_total),
                mib(total.excess_worst),
                t0.elapsed().as_secs_f64()
            );
            println!(
                "RESULT net {} {} {} {} {seed} {}",
                total.survived,
                total.tried,
                total.excess_total,
                total.excess_worst,
                total.faults_fired
            );
        }
        "resume" => {
            let cuts = num(&args, "--cuts", 12);
            let name = args
                .iter()
                .position(|a| a == "--scenario")
                .and_then(|i| args.get(i + 1))
                .map_or("upd", |s| s.as_str());
            let Some(sc) = scenario_named(name) else {
                eprintln!("unknown scenario {name:?}: upd, update, cold or second");
                std::process::exit(2);
            };
            let rate = num(&args, "--rate-kib", 0) * 1024;
            let p = prepare_limited(sc, &work.path().join("r"), rate);
            println!(
                "{} (link {}): uncut sync {} ({} B) in {:.2}s; {cuts} successive cuts",
                sc.name,
                if rate == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{} KiB/s", rate / 1024)
                },
                mib(p.uncut_bytes),
                p.uncut_bytes,
                p.uncut_time.as_secs_f64()
            );
            let r = resume_cuts(&p, cuts, seed, rate);
            for f in &r.failures {
                println!("FAIL {f}");
            }
            println!(
                "{}: {} cuts over {} completed update(s): {} B on the wire, {} B beyond the updates; {} cuts cost {:.3}x one update (uncut {} B), seed {seed}, {:.0}s",
                sc.name,
                r.cuts,
                r.updates,
                r.total_bytes,
                r.excess(),
                r.cuts,
                r.cost_ratio(),
                r.uncut_bytes,
                t0.elapsed().as_secs_f64()
            );
            println!(
                "RESULT resume {} {} {} {} {:.3} {seed}",
                r.cuts,
                r.updates,
                r.total_bytes,
                r.uncut_bytes,
                r.cost_ratio()
            );
            total.failures = r.failures;
        }
        other => {
            eprintln!("unknown mode {other:?}: power, net or resume");
            std::process::exit(2);
        }
    }
    if !total.failures.is_empty() || !ok {
        std::process::exit(1);
    }
}
