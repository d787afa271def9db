//! Self-healing: find damaged or missing objects and the layers that use
//! them, and drop both so that the sync that follows fetches them again.
//!
//! **What is checked, and why this check.** Re-hashing the whole store on
//! every sync would cost as much CPU and I/O as a cold sync (160 MiB of
//! SHA-256 for one Debian image, seconds on an ARM gateway, every few
//! minutes). Instead the store keeps a *watermark*: the ctime of
//! `DIR/checked` (the file system's own clock, so no clock skew between the
//! kernel's inode times and `time()`), written when a sync run ends. Every
//! `sync` then:
//!
//! 1. lists `objects/` (it does so anyway for the holdings) and re-hashes
//!    only the object files whose ctime is at or after the watermark. Any
//!    write, truncation, chmod/chown, xattr change, or a new link to the inode
//!    moves its ctime, and ctime cannot be set back from user space: so an
//!    object changed through the file system since the last run is always
//!    re-hashed. A damaged one (content not matching its name, metadata not
//!    matching its variant key) is unlinked from `objects/`;
//! 2. walks every committed layer (one `lstat` per entry) and removes a
//!    layer with a non-empty regular file whose inode is not a sound object
//!    (the object was damaged, deleted, or the file replaced).
//!
//! The sync then sees those layers as missing and fetches them: their
//! sound files are loose objects of the holdings (the registry references
//! them), the damaged ones are sent again. So a reference to an object
//! whose digest fails is never linked.
//!
//! What this does not catch: bit rot below the file system (the medium
//! flips a bit, no inode changes), and a change made *while* a sync runs
//! (between its check and the watermark written at its end). `verify
//! --repair` re-hashes everything and repairs the same way: run it from a
//! weekly timer.

use super::{check_object, walk_tree, Store};
use crate::error::{Error, Result};
use crate::fsops::{self, file_type, show};
use rustix::fs::{self as rfs, AtFlags, FileType};
use std::os::fd::AsFd;

/// What [`Store::heal`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealStats {
    /// Object variants listed.
    pub objects: u64,
    /// Object variants re-hashed (changed since the watermark, or all).
    pub rehashed: u64,
    /// Damaged object variants removed.
    pub damaged: u64,
    /// Layers removed because a file of theirs is not a sound object.
    pub layers_removed: u64,
}

/// Name of the watermark file in the store root.
const CHECKED: &str = "checked";

impl Store {
    /// Check the store (everything when `full`, else what changed since the
    /// watermark) and remove damaged objects and the layers using them.
    /// Needs the exclusive lock.
    pub fn heal(&self, full: bool, mut on_problem: impl FnMut(&str)) -> Result<HealStats> {
        let since = if full { None } else { self.state().checked };
        let mut stats = HealStats::default();
        let mut sound: Vec<u64> = Vec::new();
        let mut buf = vec![0u8; fsops::COPY_BUF];
        self.for_each_object(|dir, name, st| {
            stats.objects += 1;
            let ino = ino(st);
            let changed = since.is_none_or(|w| ctime(st) >= w);
            if !changed {
                sound.push(ino);
                return Ok(());
            }
            stats.rehashed += 1;
            let problems = check_object(dir, name, st, &mut buf)?;
            if problems.is_empty() {
                sound.push(ino);
                return Ok(());
            }
            let shown = format!(
                "objects/{}/{}",
                show(&name[..2.min(name.len())]),
                show(name)
            );
            on_problem(&format!("{shown}: {}; removed", problems.join("; ")));
            rfs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| Error::errno(format!("removing damaged {shown}"), e))?;
            stats.damaged += 1;
            Ok(())
        })?;
        sound.sort_unstable();
        for l in self.committed_layers()? {
            let dir = self.open_layer(&l)?;
            let mut bad: Option<String> = None;
            let mut path = Vec::new();
            walk_tree(dir.as_fd(), &mut path, &mut |_, p, st| {
                if bad.is_none()
                    && file_type(st) == FileType::RegularFile
                    && st.st_size > 0
                    && sound.binary_search(&ino(st)).is_err()
                {
                    bad = Some(show(p));
                }
                Ok(())
            })?;
            drop(dir);
            if let Some(p) = bad {
                on_problem(&format!(
                    "layer {l}: {p} is not a sound object (damaged or deleted); removing the layer"
                ));
                self.remove_layer(&l)?;
                stats.layers_removed += 1;
            }
        }
        if stats.damaged > 0 || stats.layers_removed > 0 {
            self.syncfs()?;
        }
        Ok(stats)
    }

    /// Move the watermark to now: what the file system holds now counts as
    /// checked. Call at the end of a run that began with [`Store::heal`].
    pub fn mark_checked(&self) -> Result<()> {
        fsops::write_atomic(self.root_fd(), CHECKED, b"")
            .map_err(|e| Error::io("writing the check watermark", e))?;
        let st = fsops::lstat_at(self.root_fd(), CHECKED.as_bytes())
            .map_err(|e| Error::errno("reading the check watermark", e))?
            .ok_or_else(|| Error::Other("the check watermark vanished".into()))?;
        let mut state = self.state();
        state.checked = Some(ctime(&st));
        self.save_state(&state)
    }
}

/// (seconds, nanoseconds) of an inode's ctime; the field types differ
/// between targets.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn ctime(st: &rfs::Stat) -> (i64, i64) {
    (st.st_ctime as i64, st.st_ctime_nsec as i64)
}

/// An inode's number as u64 (the field type differs between targets).
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn ino(st: &rfs::Stat) -> u64 {
    st.st_ino as u64
}
