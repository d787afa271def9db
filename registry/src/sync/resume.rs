//! Resumable archive responses (`proto/SPEC.md`, "Resuming an archive").
//!
//! Every archive response is also written, as it is produced, to a file
//! under `DATA/resume/` and announced with a random id
//! (`layerlink-archive-id`). A device cut off mid-way kept the bytes it
//! received; it asks again with `layerlink-resume: <id> <offset> <sha256 of
//! its offset bytes>`, and when the id is known, belongs to the same device
//! and image, and the prefix hashes the same here, the registry answers with
//! the kept archive from `offset` (`layerlink-archive-offset`). So a cut
//! costs only what was in flight, not the metadata and partial objects of
//! the stream again — and the device gets byte for byte the archive it
//! started, although a regenerated one could differ (delta time budgets,
//! frames made since).
//!
//! When the device goes away, the archive is still written to its end (to
//! the file only), so the retry can be served. A resume that arrives while
//! the file is still growing follows it. Kept archives go after `keep`
//! (default 1 h), and the oldest first when they add up to more than
//! `max_bytes` (default 1 GiB); a registry restart forgets them all (the
//! device then gets a fresh archive: nothing breaks, the cut costs more).
//! Per replica: a device resuming through another replica gets a fresh
//! archive too.

use rand::Rng;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use layerlink_proto::msg::{HEADER_ARCHIVE_ID, HEADER_ARCHIVE_OFFSET, HEADER_RESUME};

/// How long a resume waits for a growing archive to grow before it gives up.
const STALL: Duration = Duration::from_secs(60);

/// The kept archives of one registry process.
pub struct ResumeCache {
    dir: PathBuf,
    max_bytes: u64,
    keep: Duration,
    kept: Mutex<HashMap<String, Arc<Kept>>>,
}

/// One kept archive.
pub struct Kept {
    id: String,
    /// Who asked for it, and for what (`repository@manifest`).
    owner: (String, String),
    /// The `x-layerlink-new-bytes` of the original response.
    pub new_bytes: u64,
    path: PathBuf,
    created: Instant,
    state: Mutex<State>,
    grown: Condvar,
}

#[derive(Default)]
struct State {
    len: u64,
    done: bool,
    failed: bool,
}

impl ResumeCache {
    /// A cache in `dir` (emptied: ids do not survive a restart); `max_bytes`
    /// 0 keeps nothing.
    pub fn new(dir: PathBuf, max_bytes: u64, keep: Duration) -> ResumeCache {
        let _ = std::fs::remove_dir_all(&dir);
        if max_bytes > 0 {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!("archive resumption off: creating {}: {e}", dir.display());
            }
        }
        ResumeCache {
            dir,
            max_bytes,
            keep,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// Start keeping a new archive for `device` and `image`; `None` when
    /// resumption is off or the file cannot be made.
    pub fn begin(&self, device: &str, image: &str, new_bytes: u64) -> Option<(Arc<Kept>, File)> {
        if self.max_bytes == 0 {
            return None;
        }
        self.evict();
        let id = format!("{:032x}", rand::rng().random::<u128>());
        let path = self.dir.join(&id);
        let file = match File::create(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("keeping an archive for resumption: {}: {e}", path.display());
                return None;
            }
        };
        let kept = Arc::new(Kept {
            id: id.clone(),
            owner: (device.to_owned(), image.to_owned()),
            new_bytes,
            path,
            created: Instant::now(),
            state: Mutex::default(),
            grown: Condvar::new(),
        });
        lock(&self.kept).insert(id, kept.clone());
        Some((kept, file))
    }

    /// The kept archive `id` of `device` for `image`, if any.
    pub fn get(&self, id: &str, device: &str, image: &str) -> Option<Arc<Kept>> {
        self.evict();
        let k = lock(&self.kept).get(id).cloned()?;
        let ok = k.owner.0 == device && k.owner.1 == image && !lock(&k.state).failed;
        ok.then_some(k)
    }

    /// Drop archives older than `keep`, then the oldest while the rest add
    /// up to more than `max_bytes`.
    fn evict(&self) {
        let mut kept = lock(&self.kept);
        let mut all: Vec<(Instant, String, u64)> = kept
            .values()
            .map(|k| (k.created, k.id.clone(), lock(&k.state).len))
            .collect();
        all.sort();
        let mut total: u64 = all.iter().map(|a| a.2).sum();
        for (created, id, len) in all {
            if created.elapsed() <= self.keep && total <= self.max_bytes {
                break;
            }
            total -= len;
            if let Some(k) = kept.remove(&id) {
                // Readers and the writer keep their open descriptors.
                let _ = std::fs::remove_file(&k.path);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Kept {
    /// The id announced to the device.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.grown.notify_all();
    }

    /// Whether the first `offset` bytes are there and hash to `sha256`
    /// (hex). Waits for them when the archive is still being written.
    pub fn prefix_matches(&self, offset: u64, sha256: &str) -> bool {
        if !self.wait_for(offset) {
            return false;
        }
        let Ok(f) = File::open(&self.path) else {
            return false;
        };
        let mut h = Sha256::new();
        match io::copy(&mut f.take(offset), &mut h) {
            Ok(n) if n == offset => hex(&h.finalize()) == sha256.to_ascii_lowercase(),
            _ => false,
        }
    }

    /// Wait until `offset` bytes are written (false: the archive ended
    /// shorter, failed, or stalled).
    fn wait_for(&self, offset: u64) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.len >= offset {
                return true;
            }
            if st.done || st.failed {
                return false;
            }
            let (g, t) = self
                .grown
                .wait_timeout(st, STALL)
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            if t.timed_out() && st.len < offset {
                return false;
            }
        }
    }

    /// Copy the archive from `offset` to `out`, following it while it is
    /// still being written.
    pub fn serve<W: Write>(&self, offset: u64, mut out: W) -> Result<W, String> {
        let mut f = File::open(&self.path).map_err(|e| format!("opening a kept archive: {e}"))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("reading a kept archive: {e}"))?;
        let mut pos = offset;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("reading a kept archive: {e}"))?;
            if n > 0 {
                out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                pos += n as u64;
                continue;
            }
            {
                let st = lock(&self.state);
                if st.failed {
                    return Err("the kept archive could not be completed".into());
                }
                if st.done && st.len <= pos {
                    return Ok(out);
                }
            }
            if !self.wait_for(pos + 1) && !lock(&self.state).done {
                return Err("the kept archive stopped growing".into());
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A writer that keeps what it is given in a file and passes it on to the
/// device while the device is there.
pub struct Tee<W: Write> {
    out: Option<W>,
    file: Option<(File, Arc<Kept>)>,
    gone: bool,
}

impl<W: Write> Tee<W> {
    /// Tee `out` into `kept`'s `file` (`None`: pass through only).
    pub fn new(out: W, kept: Option<(Arc<Kept>, File)>) -> Tee<W> {
        Tee {
            out: Some(out),
            file: kept.map(|(k, f)| (f, k)),
            gone: false,
        }
    }

    /// End of the archive: mark it complete and give back the device's
    /// writer; an error when the device went away before the end (the
    /// archive is kept for its retry).
    pub fn finish(mut self) -> Result<W, String> {
        // Not synced: a restart forgets kept archives anyway.
        if let Some((_, k)) = self.file.take() {
            k.update(|s| s.done = true);
        }
        match self.out.take() {
            Some(w) if !self.gone => Ok(w),
            _ => Err("the client went away (archive kept for its retry)".into()),
        }
    }
}

impl<W: Write> Drop for Tee<W> {
    fn drop(&mut self) {
        // Not finished: the archive failed part-way.
        if let Some((_, k)) = self.file.take() {
            k.update(|s| s.failed = true);
        }
    }
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some((f, k)) = &mut self.file {
            match f.write_all(data) {
                Ok(()) => k.update(|s| s.len += data.len() as u64),
                Err(e) => {
                    tracing::warn!("keeping an archive for resumption: {e}");
                    k.update(|s| s.failed = true);
                    self.file = None;
                }
            }
        }
        if let Some(out) = &mut self.out {
            if let Err(e) = out.write_all(data) {
                self.out = None;
                self.gone = true;
                if self.file.is_none() {
                    return Err(e);
                }
            }
        } else if self.file.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            ));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            if out.flush().is_err() {
                self.out = None;
                self.gone = true;
                if self.file.is_none() {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the client went away",
                    ));
                }
            }
        }
        Ok(())
    }
}
