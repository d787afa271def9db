//! `layerlink-bench`: layerlink sync beside its peers — `skopeo copy` +
//! `umoci unpack`, and OSTree (object pulls and static deltas) — on the
//! cached Debian test images (issues 2, 3, 11, 12).
//!
//! One real registry (the binary given, normally the release build) gets
//! the scenarios' images pushed with skopeo through a proxy that times each
//! manifest PUT (the registry ingests the layers inside that request); the
//! same images are committed into an OSTree archive repo served over HTTP
//! on loopback. Then each scenario runs for each tool on fresh device
//! directories:
//!
//! * **layerlink**: `layerlink-agent sync` through a TCP byte-counting proxy,
//!   then `layerlink-agent checkout --read-only` (an overlayfs mount,
//!   unmounted after it is measured);
//! * **skopeo + umoci**: `skopeo copy docker://PROXY/... oci:LAYOUT:TAG`
//!   through a counting proxy to the same registry, into a layout already
//!   holding the device's earlier image(s), then `umoci unpack`;
//! * **OSTree objects / static delta**: `ostree pull` (deltas disabled, or
//!   required) through a counting proxy to the HTTP server, into a `bare`
//!   repo holding the earlier image(s), then `ostree checkout -H`.
//!
//! Device CPU time and peak RSS come from `wait4` via GNU time; bytes from
//! the proxies (TCP payload, both ways); disk from a walk of the device
//! directory counting each inode once; the server's CPU over each fetch
//! from `/proc/<pid>/stat`. The missing files' gzip'd size is computed
//! here, independently of the registry.
//!
//! Modules: [`measure`] (processes, CPU, disk), [`proxies`] (PUT timer,
//! recorder), [`anatomy`] (taking a recorded archive apart), [`figures`]
//! (independent figures from the layout), [`device`] (the tools and one
//! measured fetch + unpack), [`ostree`] (the OSTree server and device
//! commands), [`scenarios`], [`report`].
//!
//! Prints a markdown report and writes it to `--out`. The benchmark
//! reports: missed targets are printed as MISS, the exit code stays 0
//! unless a step fails.
//!
//! ```text
//! scripts/bench.sh                                        # everything
//! LAYERLINK_BENCH_SCENARIOS=update scripts/bench.sh       # one scenario
//! LAYERLINK_BENCH_TOOLS=layerlink,ostree scripts/bench.sh # some tools
//! ```

mod anatomy;
mod device;
mod figures;
mod measure;
mod ostree;
mod proxies;
mod report;
mod scenarios;

use device::{remote, Bench, OstreePeer, Tool};
use layerlink_tests::{test_images, CountingProxy, Registry};
use measure::GNU_TIME;
use proxies::PutTimer;
use report::{OstreeSetup, Outcome, Push, Report};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: layerlink-bench --registry-bin PATH --agent-bin PATH [--agent-label TEXT]
                       [--out FILE] [--command TEXT] [--reps N]
                       [--scenarios LIST] [--tools LIST]

  --registry-bin PATH  the registry binary (normally target/release/layerlink-registry)
  --agent-bin PATH     the agent binary (normally target/release-agent/layerlink-agent)
  --agent-label TEXT   how to name the agent build in the report (default: its path)
  --out FILE           also write the report there (default: print only)
  --command TEXT       the command line to quote in the report (default: this one)
  --reps N             runs of the update scenario (the CPU target); the median by CPU is kept (default 5)
  --scenarios LIST     comma-separated scenario keys or numbers (default: all; env LAYERLINK_BENCH_SCENARIOS):
                       0=tiny 1=cold 2=base-b 3=hello 4=cold-upd 5=sibling 6=update
  --tools LIST         comma-separated: layerlink, skopeo, ostree (= ostree-objects,ostree-delta)
                       (default: all; env LAYERLINK_BENCH_TOOLS)
";

const REGISTRY_CONFIG: &str = r#"
precompute = true
[[devices]]
id = "bench"
token = "tok-bench"
repositories = ["*"]
"#;

struct Opts {
    registry_bin: PathBuf,
    agent_bin: PathBuf,
    agent_label: String,
    out: Option<PathBuf>,
    command: String,
    reps: usize,
    scenarios: Vec<&'static scenarios::Scenario>,
    all_scenarios: bool,
    tools: Vec<Tool>,
}

fn parse_args() -> Result<Opts, String> {
    let (mut registry_bin, mut agent_bin, mut agent_label, mut out, mut command) =
        (None, None, None, None, None);
    let mut scenario_list = std::env::var("LAYERLINK_BENCH_SCENARIOS").ok();
    let mut tool_list = std::env::var("LAYERLINK_BENCH_TOOLS").ok();
    let mut reps = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--registry-bin" => registry_bin = Some(PathBuf::from(value()?)),
            "--agent-bin" => agent_bin = Some(PathBuf::from(value()?)),
            "--agent-label" => agent_label = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--command" => command = Some(value()?),
            "--scenarios" => scenario_list = Some(value()?),
            "--tools" => tool_list = Some(value()?),
            "--reps" => {
                let v = value()?;
                reps = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--reps: {v:?} is not a positive number"))?;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let registry_bin = registry_bin.ok_or("--registry-bin is required")?;
    let agent_bin: PathBuf = agent_bin.ok_or("--agent-bin is required")?;
    for p in [&registry_bin, &agent_bin] {
        if !p.is_file() {
            return Err(format!("{} does not exist (build it first)", p.display()));
        }
    }
    let scenarios = scenarios::select(scenario_list.as_deref()).map_err(|e| e.to_string())?;
    let tools = match tool_list.as_deref().filter(|l| !l.trim().is_empty()) {
        None => Tool::ALL.to_vec(),
        Some(l) => Tool::parse_list(l).map_err(|e| e.to_string())?,
    };
    Ok(Opts {
        agent_label: agent_label.unwrap_or_else(|| agent_bin.display().to_string()),
        registry_bin: std::fs::canonicalize(&registry_bin).map_err(|e| e.to_string())?,
        agent_bin: std::fs::canonicalize(&agent_bin).map_err(|e| e.to_string())?,
        out,
        reps,
        all_scenarios: scenarios.len() == scenarios::SCENARIOS.len(),
        scenarios,
        tools,
        command: command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
    })
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("layerlink-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerlink-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The commit the binaries were built from, and which of the registry's,
/// agent's and proto's files differed from it (a shared work tree).
fn source_revision() -> String {
    let root = layerlink_tests::bins::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--", "registry", "agent", "proto"]).unwrap_or_default();
    let dirty: Vec<&str> = dirty.lines().filter_map(|l| l.get(3..)).collect();
    if dirty.is_empty() {
        format!("commit {head}")
    } else {
        format!(
            "commit {head} plus uncommitted changes in {}",
            dirty
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// A progress line on stderr with the seconds since start.
fn progress(started: Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Fail early, naming the package, when a tool is missing.
fn check_tools(opts: &Opts) -> anyhow::Result<()> {
    let mut needed = vec![("skopeo", "--version")];
    if opts.tools.contains(&Tool::Skopeo) || opts.tools.iter().any(|t| t.is_ostree()) {
        needed.push(("umoci", "--version"));
    }
    if opts.tools.iter().any(|t| t.is_ostree()) {
        needed.push(("ostree", "--version"));
        needed.push(("python3", "--version"));
    }
    for (tool, arg) in needed {
        anyhow::ensure!(
            Command::new(tool)
                .arg(arg)
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} not found (scripts/install-deps.sh installs it)"
        );
    }
    anyhow::ensure!(
        Path::new(GNU_TIME).is_file(),
        "{GNU_TIME} (GNU time, Debian package `time`) is needed to read the device processes' rusage"
    );
    Ok(())
}

fn run(opts: &Opts) -> anyhow::Result<()> {
    check_tools(opts)?;
    // The harness takes the binaries from these.
    std::env::set_var("LAYERLINK_REGISTRY_BIN", &opts.registry_bin);
    std::env::set_var("LAYERLINK_AGENT_BIN", &opts.agent_bin);
    std::env::set_var("LAYERLINK_SKIP_BUILD", "1");
    let started = Instant::now();
    let say = |what: &str| progress(started, what);
    let date = String::from_utf8_lossy(
        &Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?
            .stdout,
    )
    .trim()
    .to_string();

    say("test images");
    let images = test_images();
    let layout = images.layout();
    let tags = scenarios::images(&opts.scenarios);

    say("registry + pushes");
    let reg = Registry::start(Some(REGISTRY_CONFIG));
    let timer = PutTimer::start(reg.addr())?;
    let mut pushes = Vec::new();
    for tag in &tags {
        let t = Instant::now();
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag}", images.oci_dir.display()))
            .arg(format!("docker://{}/{}", timer.addr, remote(tag)))
            .stdin(Stdio::null())
            .output()?;
        let wall = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            out.status.success(),
            "skopeo push {tag} failed:\n{}\n--- registry log\n{}",
            String::from_utf8_lossy(&out.stderr),
            reg.log()
        );
        let puts = timer.take();
        let layers = layout.layers(tag);
        pushes.push(Push {
            tag,
            layers: layers.len(),
            compressed: layers.iter().map(|l| l.size).sum(),
            uncompressed: figures::uncompressed_bytes(&layout, tag)?,
            wall,
            put: (!puts.is_empty()).then(|| puts.iter().map(Duration::as_secs_f64).sum()),
            precompute: None,
        });
        say(&format!("pushed {tag} in {wall:.1}s"));
    }
    // The registry prepares each pushed image in the background (zstd
    // frames, deltas against the repository's other tags): wait for it, so
    // the scenarios measure serving, and report its cost beside the push.
    say("waiting for the registry's background preparation of the pushes");
    let cpu_before = measure::process_cpu(reg.pid())?;
    let t = Instant::now();
    let finished = |log: &str| {
        log.lines()
            .filter(|l| l.contains("precomputed ") || l.contains("precompute failed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    loop {
        let lines = finished(&reg.log());
        if lines.len() >= tags.len() {
            for (p, l) in pushes.iter_mut().zip(&lines) {
                p.precompute = l
                    .rsplit(" in ")
                    .next()
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.trim_end_matches('s').parse().ok());
            }
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(3600),
            "the registry did not finish preparing the pushes:\n{}",
            reg.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let precompute_cpu = measure::process_cpu(reg.pid())? - cpu_before;
    say(&format!(
        "background preparation: {:.1} s wall after the last push, {precompute_cpu:.1} s registry CPU",
        t.elapsed().as_secs_f64()
    ));
    let stats = reg.stats();

    let ostree_peer = if opts.tools.iter().any(|t| t.is_ostree()) {
        say("OSTree: commits, static deltas, HTTP server");
        let pairs: Vec<(Option<&'static str>, &'static str)> =
            if opts.tools.contains(&Tool::OstreeDelta) {
                opts.scenarios
                    .iter()
                    .map(|s| (s.held.last().copied(), s.tag))
                    .collect()
            } else {
                Vec::new()
            };
        let server = ostree::OstreeServer::build(&images.oci_dir, &tags, &pairs, &say)?;
        let proxy = CountingProxy::start(server.addr);
        Some(OstreePeer { server, proxy })
    } else {
        None
    };
    let ostree_setup = ostree_peer.as_ref().map(|o| OstreeSetup {
        version: Command::new("ostree")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                    l.trim()
                        .strip_prefix("Version:")
                        .map(|v| v.trim().trim_matches('\'').to_string())
                })
            })
            .unwrap_or_else(|| "version unknown".into()),
        commits: o.server.commits.clone(),
        deltas: o.server.deltas.clone(),
        skipped_special: o.server.skipped_special,
        repo_disk: o.server.repo_disk(),
    });

    let proxy = CountingProxy::start(reg.addr());
    let mut bench = Bench::new(opts.agent_bin.clone(), reg.pid(), proxy, ostree_peer)?;
    let mut results = Vec::new();
    for s in &opts.scenarios {
        say(s.name);
        let missing = figures::missing(&layout, s.held, s.tag)?;
        let reps = if s.repeat { opts.reps } else { 1 };
        let mut sides = Vec::new();
        let mut anatomy = None;
        for tool in &opts.tools {
            if *tool == Tool::LayerlinkNoDeltas && !s.incremental {
                continue;
            }
            let record = *tool == Tool::Layerlink && s.incremental;
            let (side, a) = bench.measure(*tool, s.held, s.tag, reps, record)?;
            if let Some(a) = a {
                anatomy = Some(a.map_err(|e| format!("{e:#}")));
            }
            say(&format!(
                "  {}: {} bytes, {:.2} s device CPU, {:.2} s server CPU",
                tool.label(),
                side.bytes,
                side.total().cpu(),
                side.server_cpu
            ));
            sides.push((*tool, side));
        }
        results.push(Outcome {
            scenario: s,
            missing,
            anatomy,
            sides,
        });
    }
    bench.finish();
    let source = source_revision();
    let report = Report {
        command: &opts.command,
        source: &source,
        date: &date,
        agent_label: &opts.agent_label,
        reps: opts.reps,
        tools: &opts.tools,
        all_scenarios: opts.all_scenarios,
        pushes: &pushes,
        stats: &stats,
        results: &results,
        ostree: ostree_setup.as_ref(),
        elapsed: started.elapsed().as_secs_f64(),
    }
    .render();
    print!("{report}");
    if let Some(out) = &opts.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
