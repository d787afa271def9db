//! OSTree as a peer: the same images committed into an `archive` repo
//! (each image's `umoci unpack` rootfs one commit, ref `tiny-v1` for
//! `tiny:v1`), static deltas generated for the scenarios' pairs, the repo
//! served by a plain HTTP server on loopback (`python3 -m http.server
//! --protocol HTTP/1.1`:
//! OSTree needs nothing but static files). Devices are `bare` repos that
//! `ostree pull` through the benchmark's counting proxy and `ostree checkout
//! -H` (hard links into the repo; the agent's `--read-only` checkout mounts
//! an overlayfs of its store instead).

use crate::measure::run_step;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The remote's name in device repos.
pub const REMOTE: &str = "srv";

/// `upd:v1` → `upd-v1` (a colon is not allowed in a ref).
pub fn ref_name(tag: &str) -> String {
    tag.replace(':', "-")
}

/// One `ostree static-delta generate` run.
#[derive(Debug, Clone)]
pub struct DeltaBuild {
    /// `None`: a from-scratch delta (`--empty`).
    pub from: Option<&'static str>,
    pub to: &'static str,
    /// Wall and CPU seconds of the generate command.
    pub wall: f64,
    pub cpu: f64,
    /// Bytes under `deltas/` it added.
    pub bytes: u64,
}

/// The server side: an archive repo and the HTTP server in front of it.
pub struct OstreeServer {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    http: Child,
    pub addr: SocketAddr,
    /// Per image: (tag, commit checksum, seconds for unpack + commit).
    pub commits: Vec<(&'static str, String, f64)>,
    pub deltas: Vec<DeltaBuild>,
    /// Device nodes, FIFOs and sockets left out of the commits (OSTree
    /// cannot store them).
    pub skipped_special: u64,
}

impl OstreeServer {
    /// Commit `tags` from the OCI layout at `oci_dir`, generate the deltas
    /// `pairs` (from, to), write the summary and start serving.
    pub fn build(
        oci_dir: &Path,
        tags: &[&'static str],
        pairs: &[(Option<&'static str>, &'static str)],
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<OstreeServer> {
        let dir = tempfile::Builder::new()
            .prefix("bench-ostree-srv-")
            .tempdir()?;
        let repo = dir.path().join("repo");
        run_step(
            "ostree init",
            Command::new("ostree")
                .arg("init")
                .arg("--mode=archive")
                .arg(format!("--repo={}", repo.display())),
        )?;
        // Server-side setup is not measured: skip the fsync of every object.
        run_step(
            "ostree config",
            Command::new("ostree")
                .arg("config")
                .arg(format!("--repo={}", repo.display()))
                .args(["set", "core.fsync", "false"]),
        )?;
        let mut commits = Vec::new();
        let mut skipped_special = 0;
        for tag in tags {
            let t = Instant::now();
            let bundle = dir.path().join("bundle");
            run_step(
                "umoci unpack",
                Command::new("umoci")
                    .arg("unpack")
                    .arg("--image")
                    .arg(format!("{}:{tag}", oci_dir.display()))
                    .arg(&bundle),
            )?;
            let rootfs = bundle.join("rootfs");
            skipped_special += remove_special_files(&rootfs)?;
            let out = run_step(
                "ostree commit",
                Command::new("ostree")
                    .arg("commit")
                    .arg(format!("--repo={}", repo.display()))
                    .arg(format!("--branch={}", ref_name(tag)))
                    .arg(format!("--subject={tag}"))
                    .arg(format!("--tree=dir={}", rootfs.display())),
            )?;
            std::fs::remove_dir_all(&bundle)?;
            let rev = out.trim().to_string();
            anyhow::ensure!(rev.len() == 64, "ostree commit printed {out:?}");
            let secs = t.elapsed().as_secs_f64();
            progress(&format!("  ostree commit {tag} ({secs:.1}s)"));
            commits.push((*tag, rev, secs));
        }
        let rev = |tag: &str| {
            commits
                .iter()
                .find(|(t, _, _)| *t == tag)
                .map(|(_, r, _)| r.clone())
                .ok_or_else(|| anyhow::anyhow!("{tag} was not committed"))
        };
        let mut deltas = Vec::new();
        for (from, to) in pairs {
            let before = crate::measure::disk_use(&repo.join("deltas"));
            let mut cmd = Command::new("ostree");
            cmd.arg("static-delta")
                .arg("generate")
                .arg(format!("--repo={}", repo.display()))
                .arg(format!("--to={}", rev(to)?));
            match from {
                Some(f) => cmd.arg(format!("--from={}", rev(f)?)),
                None => cmd.arg("--empty"),
            };
            let cost = crate::measure::measured("ostree static-delta generate", &mut cmd)?;
            let bytes = crate::measure::disk_use(&repo.join("deltas")).saturating_sub(before);
            progress(&format!(
                "  ostree static-delta {} → {to} ({:.1}s)",
                from.unwrap_or("empty"),
                cost.wall
            ));
            deltas.push(DeltaBuild {
                from: *from,
                to,
                wall: cost.wall,
                cpu: cost.cpu(),
                bytes,
            });
        }
        // The summary (and the delta indexes) tell clients which deltas exist.
        run_step(
            "ostree summary -u",
            Command::new("ostree")
                .arg("summary")
                .arg("-u")
                .arg(format!("--repo={}", repo.display())),
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let http = Command::new("python3")
            // HTTP/1.1: keep-alive, as any real server would do.
            .args(["-m", "http.server", "--protocol", "HTTP/1.1"])
            .args(["--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(&repo)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its request log (one line per request, on stderr).
            .stderr(std::fs::File::create(dir.path().join("http.log"))?)
            .env("PYTHONUNBUFFERED", "1")
            .spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut server = OstreeServer {
            _dir: dir,
            repo,
            http,
            addr,
            commits,
            deltas,
            skipped_special,
        };
        let t = Instant::now();
        while TcpStream::connect(addr).is_err() {
            anyhow::ensure!(
                server.http.try_wait()?.is_none(),
                "python3 -m http.server exited"
            );
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(20),
                "http.server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// The request log's length now (pass it to [`requests_since`]).
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(self._dir.path().join("http.log")).map_or(0, |m| m.len())
    }

    /// The GET requests logged since `mark`: how many, and the bytes of
    /// the files asked for more than once (a repeated fetch, counted from
    /// the second time on).
    pub fn requests_since(&self, mark: u64) -> Requests {
        let log = std::fs::read(self._dir.path().join("http.log")).unwrap_or_default();
        let text = String::from_utf8_lossy(&log[(mark as usize).min(log.len())..]).into_owned();
        let mut r = Requests::default();
        let mut seen = std::collections::HashSet::new();
        for path in get_paths(&text) {
            r.gets += 1;
            let size = std::fs::metadata(self.repo.join(path.trim_start_matches('/')))
                .map_or(0, |m| m.len());
            if path.starts_with("/deltas/") {
                r.delta_bytes += size;
            } else if path.starts_with("/objects/") {
                r.object_bytes += size;
            }
            if !seen.insert(path.clone()) {
                r.repeated += 1;
                r.repeated_bytes += std::fs::metadata(self.repo.join(path.trim_start_matches('/')))
                    .map_or(0, |m| m.len());
            }
        }
        r
    }

    /// The HTTP server's process id (its CPU is the server side's).
    pub fn pid(&self) -> u32 {
        self.http.id()
    }

    /// The server repo's size on disk (objects, deltas, summary).
    pub fn repo_disk(&self) -> u64 {
        crate::measure::disk_use(&self.repo)
    }
}

impl Drop for OstreeServer {
    fn drop(&mut self) {
        let _ = self.http.kill();
        let _ = self.http.wait();
    }
}

/// HTTP requests one pull made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    pub gets: u64,
    /// Requests for a path already fetched in the same pull.
    pub repeated: u64,
    pub repeated_bytes: u64,
    /// Bytes of the static delta files (superblocks, parts) fetched.
    pub delta_bytes: u64,
    /// Bytes of the objects fetched one by one.
    pub object_bytes: u64,
}

/// The paths of the successful GETs in `python3 -m http.server`'s log
/// (`127.0.0.1 - - [date] "GET /path HTTP/1.1" 200 -`).
fn get_paths(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("\"GET ")?;
            let (path, rest) = rest.split_once(' ')?;
            let status = rest.split_once("\" ")?.1.split_whitespace().next()?;
            (status == "200" || status == "206").then(|| path.to_string())
        })
        .collect()
}

/// Remove what OSTree cannot commit (device nodes, FIFOs, sockets) from
/// `root`; how many.
fn remove_special_files(root: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket() {
                std::fs::remove_file(e.path())?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Make `repo` an empty `bare` repo with the server as remote `srv`
/// (reached at `url`, the counting proxy).
pub fn init_device_repo(repo: &Path, url: &str) -> anyhow::Result<()> {
    run_step(
        "ostree init (device)",
        Command::new("ostree")
            .arg("init")
            .arg("--mode=bare")
            .arg(format!("--repo={}", repo.display())),
    )?;
    run_step(
        "ostree remote add",
        Command::new("ostree")
            .arg("remote")
            .arg("add")
            .arg(format!("--repo={}", repo.display()))
            .arg("--no-gpg-verify")
            .arg(REMOTE)
            .arg(url),
    )?;
    Ok(())
}

/// `ostree pull` of `tag`: object by object, or by static delta only.
pub fn pull(repo: &Path, tag: &str, deltas: bool) -> Command {
    let mut cmd = Command::new("ostree");
    cmd.arg("pull")
        .arg(format!("--repo={}", repo.display()))
        .arg(if deltas {
            "--require-static-deltas"
        } else {
            "--disable-static-deltas"
        })
        .arg(REMOTE)
        .arg(ref_name(tag));
    cmd
}

/// `ostree checkout -H` of the pulled `tag` into `dest` (hard links).
pub fn checkout(repo: &Path, tag: &str, dest: &Path) -> Command {
    let mut cmd = Command::new("ostree");
    cmd.arg("checkout")
        .arg(format!("--repo={}", repo.display()))
        .arg("-H")
        .arg(format!("{REMOTE}:{}", ref_name(tag)))
        .arg(dest);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_log_lines_are_parsed() {
        let log = "127.0.0.1 - - [30/Nov/2026 21:13:32] code 404, message File not found\n\
127.0.0.1 - - [30/Nov/2026 21:13:32] \"GET /summary.sig HTTP/1.1\" 404 -\n\
127.0.0.1 - - [30/Nov/2026 21:13:32] \"GET /deltas/07/x/0 HTTP/1.1\" 200 -\n\
127.0.0.1 - - [30/Nov/2026 21:13:33] \"GET /deltas/07/x/0 HTTP/1.1\" 200 -\n";
        assert_eq!(get_paths(log), ["/deltas/07/x/0", "/deltas/07/x/0"]);
    }

    #[test]
    fn refs_have_no_colon() {
        assert_eq!(ref_name("upd:v1"), "upd-v1");
    }

    #[test]
    fn special_files_are_removed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/file"), b"x").unwrap();
        let fifo = dir.path().join("d/fifo");
        let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(ok.success());
        assert_eq!(remove_special_files(dir.path()).unwrap(), 1);
        assert!(!fifo.exists());
        assert!(dir.path().join("d/file").exists());
    }
}
