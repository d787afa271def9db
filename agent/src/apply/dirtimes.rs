//! Directory mtimes of a layer being written. Creating an entry changes
//! its parent's mtime, so each directory's time from the archive (or from
//! the layer below, for an implied one) is appended to a spill file
//! `tmp/<staging>.dirs` as it is seen, and all are set at commit, after the
//! last entry and any repair (later records of the same path win). The
//! spill file keeps memory flat however many directories a layer has.

use crate::error::{Error, Result};
use crate::fsops::{self, file_type, open_existing_dir, show, split_leaf};
use crate::tar::Time;
use rustix::fs::FileType;
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The spill file's name in `tmp/` for staging tree `staging`.
pub(super) fn spill_name(staging: &str) -> String {
    format!("{staging}.dirs")
}

/// The spill file being written: records of (path length as u32 LE, path,
/// seconds as i64 LE, nanoseconds as u32 LE).
pub(super) struct DirTimes(BufWriter<File>);

impl DirTimes {
    pub(super) fn new(file: File) -> Self {
        DirTimes(BufWriter::with_capacity(8192, file))
    }

    /// Record that directory `path` (relative to the layer root; empty for
    /// the root) gets mtime `t` at commit.
    pub(super) fn record(&mut self, path: &[u8], t: Time) -> Result<()> {
        let mut rec = Vec::with_capacity(path.len() + 20);
        rec.extend_from_slice(&(path.len() as u32).to_le_bytes());
        rec.extend_from_slice(path);
        rec.extend_from_slice(&t.sec.to_le_bytes());
        rec.extend_from_slice(&t.nsec.to_le_bytes());
        self.0
            .write_all(&rec)
            .map_err(|e| Error::io("writing the directory list", e))
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Apply the recorded directory mtimes of a staged layer (later records of
/// the same path win: the file is read in order).
pub(super) fn apply(tmp: BorrowedFd<'_>, staging: &str, root: BorrowedFd<'_>) -> Result<()> {
    let name = spill_name(staging);
    let f = match fsops::open_file_at(tmp, name.as_bytes()) {
        Ok(f) => f,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::errno(format!("reading tmp/{name}"), e)),
    };
    let mut r = BufReader::with_capacity(8192, f);
    let err = |e: io::Error| Error::io(format!("reading tmp/{name}"), e);
    let mut path = Vec::new();
    let mut cached: Option<(Vec<u8>, OwnedFd)> = None;
    loop {
        if r.fill_buf().map_err(err)?.is_empty() {
            return Ok(());
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(err)?;
        path.resize(u32::from_le_bytes(len) as usize, 0);
        r.read_exact(&mut path).map_err(err)?;
        let mut sec = [0u8; 8];
        let mut nsec = [0u8; 4];
        r.read_exact(&mut sec).map_err(err)?;
        r.read_exact(&mut nsec).map_err(err)?;
        let t = Time {
            sec: i64::from_le_bytes(sec),
            nsec: u32::from_le_bytes(nsec),
        };
        if path.is_empty() {
            fsops::set_times_at(root, b".", t).map_err(|e| Error::errno("layer root", e))?;
            continue;
        }
        let (parent, leaf) = split_leaf(&path);
        // Records come in tree order: siblings share the parent opened last.
        if cached.as_ref().is_none_or(|(p, _)| p.as_slice() != parent) {
            cached = open_existing_dir(root, parent)
                .ok()
                .map(|fd| (parent.to_vec(), fd));
        }
        let Some((_, dir)) = cached.as_ref() else {
            continue;
        };
        match fsops::lstat_at(dir.as_fd(), leaf) {
            Ok(Some(st)) if file_type(&st) == FileType::Directory => {
                fsops::set_times_at(dir.as_fd(), leaf, t)
                    .map_err(|e| Error::errno(format!("mtime of {}", show(&path)), e))?;
            }
            _ => {}
        }
    }
}
