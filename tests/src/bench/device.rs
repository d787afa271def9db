//! The device side: the tools, a device directory per tool and scenario,
//! and measuring one fetch + unpack (bytes on the wire, device CPU and peak
//! RSS, disk, the server's CPU over the fetch).

use crate::anatomy::{archive_anatomy, Anatomy};
use crate::measure::{disk_use, measured, process_cpu, Cost};
use crate::ostree;
use crate::proxies::Recorder;
use layerlink_tests::CountingProxy;
use std::path::PathBuf;
use std::process::Command;

pub const TOKEN: &str = "tok-bench";
pub const PLATFORM: &str = "linux/amd64";

/// `base-a:v1` → `test/base-a:v1`.
pub fn remote(tag: &str) -> String {
    format!("test/{tag}")
}

/// The tools on the device side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Layerlink,
    /// The same agent with `--no-deltas` (modified files whole), in the
    /// incremental scenarios only.
    LayerlinkNoDeltas,
    /// `skopeo copy` + `umoci unpack`.
    Skopeo,
    /// `ostree pull --disable-static-deltas` + `ostree checkout -H`.
    OstreeObjects,
    /// `ostree pull --require-static-deltas` + `ostree checkout -H`.
    OstreeDelta,
}

impl Tool {
    pub const ALL: [Tool; 5] = [
        Tool::Layerlink,
        Tool::LayerlinkNoDeltas,
        Tool::Skopeo,
        Tool::OstreeObjects,
        Tool::OstreeDelta,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Tool::Layerlink => "layerlink",
            Tool::LayerlinkNoDeltas => "layerlink, no deltas",
            Tool::Skopeo => "skopeo + umoci",
            Tool::OstreeObjects => "OSTree objects",
            Tool::OstreeDelta => "OSTree static delta",
        }
    }

    /// Its name in `LAYERLINK_BENCH_TOOLS`.
    pub fn key(self) -> &'static str {
        match self {
            Tool::Layerlink => "layerlink",
            Tool::LayerlinkNoDeltas => "layerlink-no-deltas",
            Tool::Skopeo => "skopeo",
            Tool::OstreeObjects => "ostree-objects",
            Tool::OstreeDelta => "ostree-delta",
        }
    }

    /// The device commands: (fetch, unpack).
    pub fn commands(self) -> (&'static str, &'static str) {
        match self {
            Tool::Layerlink | Tool::LayerlinkNoDeltas => ("agent sync", "agent checkout"),
            Tool::Skopeo => ("skopeo copy", "umoci unpack"),
            Tool::OstreeObjects | Tool::OstreeDelta => ("ostree pull", "ostree checkout"),
        }
    }

    /// The layerlink agent, with or without deltas.
    pub fn is_layerlink(self) -> bool {
        matches!(self, Tool::Layerlink | Tool::LayerlinkNoDeltas)
    }

    pub fn is_ostree(self) -> bool {
        matches!(self, Tool::OstreeObjects | Tool::OstreeDelta)
    }

    fn prefix(self) -> String {
        format!("bench-{}-", self.key())
    }

    /// Parse a comma-separated list (`ostree` means both OSTree modes).
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<Tool>> {
        let mut tools = Vec::new();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "ostree" => tools.extend([Tool::OstreeObjects, Tool::OstreeDelta]),
                _ => tools.push(
                    Tool::ALL
                        .into_iter()
                        .find(|t| t.key() == word)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "unknown tool {word:?} (known: layerlink, layerlink-no-deltas, skopeo, ostree, ostree-objects, ostree-delta)"
                            )
                        })?,
                ),
            }
        }
        tools.sort();
        tools.dedup();
        anyhow::ensure!(!tools.is_empty(), "no tool selected");
        Ok(tools)
    }
}

/// A device directory for one tool.
pub struct Device {
    dir: tempfile::TempDir,
    checkouts: u32,
}

impl Device {
    fn new(tool: Tool) -> anyhow::Result<Device> {
        Ok(Device {
            dir: tempfile::Builder::new().prefix(&tool.prefix()).tempdir()?,
            checkouts: 0,
        })
    }

    /// A copy of this device's `store` (agent), `oci` layout (skopeo) or
    /// `repo` (OSTree) — `cp -a`, hard links within it stay links — so
    /// every repetition starts from the same state. The earlier checkouts
    /// are not copied: the measured steps do not read them, and
    /// [`Device::disk`] of the original counts them.
    fn clone_device(&self, tool: Tool) -> anyhow::Result<Device> {
        let copy = Device {
            dir: tempfile::Builder::new().prefix(&tool.prefix()).tempdir()?,
            checkouts: self.checkouts,
        };
        for part in ["store", "oci", "repo"] {
            let from = self.path(part);
            if !from.exists() {
                continue;
            }
            let out = Command::new("cp")
                .arg("-a")
                .arg(&from)
                .arg(copy.path(part))
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "copying {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(copy)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn next_bundle(&mut self) -> PathBuf {
        self.checkouts += 1;
        self.path(&format!("bundle-{}", self.checkouts))
    }

    fn disk(&self) -> u64 {
        disk_use(self.dir.path())
    }
}

/// One tool's figures for the measured image (the median repetition).
#[derive(Debug, Clone, Copy, Default)]
pub struct Side {
    pub bytes: u64,
    pub fetch: Cost,
    pub unpack: Cost,
    /// CPU seconds the server process used during the fetch (registry for
    /// layerlink and skopeo, the HTTP server for OSTree).
    pub server_cpu: f64,
    pub disk_before: u64,
    pub disk_after: u64,
    /// OSTree: the HTTP requests of the fetch.
    pub requests: Option<ostree::Requests>,
    /// Lowest and highest total CPU over the repetitions.
    pub cpu_range: (f64, f64),
    /// Whether every repetition moved the same number of bytes.
    pub bytes_stable: bool,
    /// Highest peak RSS of any process over the repetitions.
    pub rss_max: u64,
    /// How many repetitions ran.
    pub runs: usize,
}

impl Side {
    pub fn total(&self) -> Cost {
        self.fetch.then(self.unpack)
    }
}

/// The OSTree peer: its server and the proxy counting its bytes.
pub struct OstreePeer {
    pub server: ostree::OstreeServer,
    pub proxy: CountingProxy,
}

pub struct Bench {
    pub agent_bin: PathBuf,
    /// The registry process (its CPU per sync).
    pub registry_pid: u32,
    /// Counts the bytes between the device side and the registry.
    pub proxy: CountingProxy,
    /// In front of `proxy`: keeps what the registry sent when asked to.
    pub recorder: Recorder,
    pub ostree: Option<OstreePeer>,
    /// Device trees being removed in the background.
    pub trash: Vec<std::thread::JoinHandle<()>>,
    /// Devices that fetched and unpacked some images, by tool and images.
    prepared: std::collections::BTreeMap<(Tool, Vec<&'static str>), Device>,
}

impl Bench {
    pub fn new(
        agent_bin: PathBuf,
        registry_pid: u32,
        proxy: CountingProxy,
        ostree: Option<OstreePeer>,
    ) -> anyhow::Result<Bench> {
        Ok(Bench {
            agent_bin,
            registry_pid,
            recorder: Recorder::start(proxy.addr())?,
            proxy,
            ostree,
            trash: Vec::new(),
            prepared: Default::default(),
        })
    }

    fn ostree_peer(&self) -> anyhow::Result<&OstreePeer> {
        self.ostree
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("OSTree was not set up"))
    }

    /// `layerlink-agent sync` of `tag` onto `dev` from `server`.
    fn agent_sync(&self, server: &str, dev: &Device, tag: &str) -> Command {
        let mut cmd = Command::new(&self.agent_bin);
        cmd.arg("sync")
            .arg("--server")
            .arg(server)
            .arg("--store")
            .arg(dev.path("store"))
            .arg("--token")
            .arg(TOKEN)
            .arg("--platform")
            .arg(PLATFORM)
            .arg("--quiet")
            .arg(remote(tag));
        cmd
    }

    /// Fetch `tag` onto `dev`. `deltas` (OSTree only): whether a pull may
    /// use static deltas; preparing a device pulls objects.
    fn fetch(&self, tool: Tool, dev: &Device, tag: &str, deltas: bool) -> anyhow::Result<Cost> {
        match tool {
            Tool::Layerlink => measured(
                &format!("layerlink-agent sync {tag}"),
                &mut self.agent_sync(&format!("http://{}", self.recorder.addr), dev, tag),
            ),
            Tool::LayerlinkNoDeltas => measured(
                &format!("layerlink-agent sync --no-deltas {tag}"),
                self.agent_sync(&format!("http://{}", self.recorder.addr), dev, tag)
                    .arg("--no-deltas"),
            ),
            Tool::Skopeo => measured(
                &format!("skopeo copy {tag}"),
                Command::new("skopeo")
                    .args([
                        "--insecure-policy",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                    ])
                    .arg(format!("docker://{}/{}", self.recorder.addr, remote(tag)))
                    .arg(format!("oci:{}:{tag}", dev.path("oci").display())),
            ),
            Tool::OstreeObjects | Tool::OstreeDelta => measured(
                &format!("ostree pull {tag}"),
                &mut ostree::pull(&dev.path("repo"), tag, deltas),
            ),
        }
    }

    /// Make `tag` runnable on `dev`.
    fn unpack(&self, tool: Tool, dev: &mut Device, tag: &str) -> anyhow::Result<Cost> {
        let dest = dev.next_bundle();
        match tool {
            Tool::Layerlink | Tool::LayerlinkNoDeltas => {
                let cost = measured(
                    &format!("layerlink-agent checkout {tag}"),
                    Command::new(&self.agent_bin)
                        .arg("checkout")
                        .arg("--store")
                        .arg(dev.path("store"))
                        .arg("--read-only")
                        .arg(remote(tag))
                        .arg(&dest),
                )?;
                // The read-only checkout is an overlayfs mount of the store's
                // layers: it adds no file to the disk, and a mount left in
                // the device directory would be copied as files when the
                // device state is copied for the next run. Unmount it (not
                // measured) before the disk is counted.
                let rootfs = dest.join("rootfs");
                let out = Command::new("umount").arg(&rootfs).output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "umount {}: {}",
                    rootfs.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(cost)
            }
            Tool::Skopeo => measured(
                &format!("umoci unpack {tag}"),
                Command::new("umoci")
                    .arg("unpack")
                    .arg("--image")
                    .arg(format!("{}:{tag}", dev.path("oci").display()))
                    .arg(dest),
            ),
            Tool::OstreeObjects | Tool::OstreeDelta => measured(
                &format!("ostree checkout {tag}"),
                &mut ostree::checkout(&dev.path("repo"), tag, &dest),
            ),
        }
    }

    /// A device that fetched and unpacked `held` (made once, then reused;
    /// both OSTree modes start from the same device, prepared by object
    /// pulls).
    fn prepared(&mut self, tool: Tool, held: &[&'static str]) -> anyhow::Result<&Device> {
        let tool = if tool.is_ostree() {
            Tool::OstreeObjects
        } else {
            tool
        };
        let key = (tool, held.to_vec());
        if !self.prepared.contains_key(&key) {
            let mut dev = Device::new(tool)?;
            if tool.is_ostree() {
                let url = format!("http://{}/", self.ostree_peer()?.proxy.addr());
                ostree::init_device_repo(&dev.path("repo"), &url)?;
            }
            for h in held {
                self.fetch(tool, &dev, h, false)?;
                self.unpack(tool, &mut dev, h)?;
            }
            self.prepared.insert(key.clone(), dev);
        }
        Ok(&self.prepared[&key])
    }

    /// The byte counter and the server process of `tool`.
    fn wire(&self, tool: Tool) -> anyhow::Result<(&CountingProxy, u32)> {
        Ok(if tool.is_ostree() {
            let o = self.ostree_peer()?;
            (&o.proxy, o.server.pid())
        } else {
            (&self.proxy, self.registry_pid)
        })
    }

    /// `reps` times: a copy of the device holding `held` fetches and
    /// unpacks `tag`; the repetition with the median CPU time is kept.
    /// `record`: take the first layerlink sync's archive apart.
    pub fn measure(
        &mut self,
        tool: Tool,
        held: &[&'static str],
        tag: &str,
        reps: usize,
        record: bool,
    ) -> anyhow::Result<(Side, Option<anyhow::Result<Anatomy>>)> {
        let mut runs = Vec::new();
        let mut anatomy_of_first = None;
        for rep in 0..reps.max(1) {
            let prepared = self.prepared(tool, held)?;
            let disk_prepared = prepared.disk();
            let mut dev = prepared.clone_device(tool)?;
            if tool.is_layerlink() && !held.is_empty() {
                // Unmeasured no-op sync: the registry's record of this
                // device's holdings matches its store again (an earlier
                // repetition moved it on), as it would on a real device.
                for h in held {
                    self.fetch(tool, &dev, h, false)?;
                }
            }
            let clone_before = dev.disk();
            let record = record && rep == 0 && tool == Tool::Layerlink;
            self.recorder.record(record);
            let (proxy, server_pid) = self.wire(tool)?;
            proxy.reset();
            let server_before = process_cpu(server_pid)?;
            let mark = self.ostree.as_ref().map(|o| o.server.log_mark());
            let fetch = self.fetch(tool, &dev, tag, tool == Tool::OstreeDelta)?;
            let server_cpu = process_cpu(server_pid)? - server_before;
            let requests = match (tool.is_ostree(), &self.ostree, mark) {
                (true, Some(o), Some(mark)) => Some(o.server.requests_since(mark)),
                _ => None,
            };
            let bytes = proxy.bytes_total();
            self.recorder.record(false);
            let streams = self.recorder.take();
            if record {
                anatomy_of_first = Some(archive_anatomy(&streams, tag));
            }
            let unpack = self.unpack(tool, &mut dev, tag)?;
            let added = dev.disk().saturating_sub(clone_before);
            // Removing a device tree takes long on a busy disk: overlap it.
            self.trash.push(std::thread::spawn(move || drop(dev)));
            runs.push(Side {
                bytes,
                fetch,
                unpack,
                server_cpu,
                requests,
                disk_before: disk_prepared,
                disk_after: disk_prepared + added,
                ..Side::default()
            });
        }
        let cpus: Vec<f64> = runs.iter().map(|r| r.total().cpu()).collect();
        let range = cpus
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
        let stable = runs.iter().all(|r| r.bytes == runs[0].bytes);
        let rss_max = runs.iter().map(|r| r.total().rss).max().unwrap_or(0);
        runs.sort_by(|a, b| a.total().cpu().total_cmp(&b.total().cpu()));
        let mut median = runs[runs.len() / 2];
        median.cpu_range = range;
        median.bytes_stable = stable;
        median.rss_max = rss_max;
        median.runs = runs.len();
        Ok((median, anatomy_of_first))
    }

    /// Wait for the background removals.
    pub fn finish(&mut self) {
        for t in std::mem::take(&mut self.trash) {
            let _ = t.join();
        }
        self.prepared.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_lists_parse() {
        assert_eq!(
            Tool::parse_list("layerlink, ostree").unwrap(),
            vec![Tool::Layerlink, Tool::OstreeObjects, Tool::OstreeDelta]
        );
        assert_eq!(
            Tool::parse_list("ostree-delta,skopeo,skopeo").unwrap(),
            vec![Tool::Skopeo, Tool::OstreeDelta]
        );
        assert!(Tool::parse_list("rsync").is_err());
        assert!(Tool::parse_list(" , ").is_err());
    }
}
