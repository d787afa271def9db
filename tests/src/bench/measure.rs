//! Measuring processes: device commands under GNU time, a server process'
//! CPU from `/proc/<pid>/stat`, disk use of a device directory.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The GNU time binary (it reports the child's `wait4` rusage).
pub const GNU_TIME: &str = "/usr/bin/time";

/// What one device-side command cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub wall: f64,
    pub user: f64,
    pub sys: f64,
    /// Peak RSS in bytes.
    pub rss: u64,
}

impl Cost {
    /// Two commands one after the other: times add, RSS is the larger.
    pub fn then(self, o: Cost) -> Cost {
        Cost {
            wall: self.wall + o.wall,
            user: self.user + o.user,
            sys: self.sys + o.sys,
            rss: self.rss.max(o.rss),
        }
    }

    /// User + system CPU seconds.
    pub fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// Run `cmd` under GNU time; fail with its output if it fails.
pub fn measured(what: &str, cmd: &mut Command) -> anyhow::Result<Cost> {
    let report = tempfile::NamedTempFile::new()?;
    let mut timed = Command::new(GNU_TIME);
    timed
        .arg("-f")
        .arg("%U %S %M")
        .arg("-o")
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null());
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let t = Instant::now();
    let out = timed.output()?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(report.path())?;
    parse_time_report(&text, wall)
}

/// GNU time's `%U %S %M` line (the last line: earlier ones may be its
/// "Command exited with non-zero status" notes).
fn parse_time_report(text: &str, wall: f64) -> anyhow::Result<Cost> {
    let f: Vec<&str> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    anyhow::ensure!(f.len() == 3, "unexpected GNU time output {text:?}");
    Ok(Cost {
        wall,
        user: f[0].parse()?,
        sys: f[1].parse()?,
        rss: f[2].parse::<u64>()? * 1024,
    })
}

/// Run a setup command (not measured); fail with its output if it fails.
pub fn run_step(what: &str, cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system, every thread) a running process has used so
/// far, from `/proc/<pid>/stat`; 10 ms resolution.
pub fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = stat_cpu_ticks(&stat)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat: {stat:?}"))?;
    Ok(ticks as f64 / clock_ticks())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): field n is rest[n - 3].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Disk blocks used under `dir`, each inode counted once and mount points
/// not crossed (like `du -sx`).
pub fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, dev: u64, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        if m.dev() != dev {
            return;
        }
        if seen.insert((m.dev(), m.ino())) {
            *total += m.blocks() * 512;
        }
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), dev, seen, total);
                }
            }
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    if let Ok(m) = std::fs::symlink_metadata(dir) {
        walk(dir, m.dev(), &mut seen, &mut total);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_use_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let one = disk_use(dir.path());
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_eq!(disk_use(dir.path()), one);
        std::fs::write(dir.path().join("c"), vec![1u8; 64 * 1024]).unwrap();
        assert!(disk_use(dir.path()) >= one + 64 * 1024);
    }

    #[test]
    fn stat_fields_after_a_command_name_with_parentheses() {
        let line = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 99 \
                    1000 200 18446744073709551615";
        assert_eq!(stat_cpu_ticks(line), Some(287));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_is_readable_and_grows() {
        let pid = std::process::id();
        let before = process_cpu(pid).unwrap();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 150 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(
            process_cpu(pid).unwrap() > before,
            "a busy loop used no CPU?"
        );
    }

    #[test]
    fn time_report_takes_the_last_line() {
        let c = parse_time_report(
            "Command exited with non-zero status 1\n0.50 0.25 2048\n",
            1.0,
        )
        .unwrap();
        assert_eq!((c.user, c.sys, c.rss), (0.5, 0.25, 2048 * 1024));
        assert!(parse_time_report("nonsense", 1.0).is_err());
    }
}
