//! Binary deltas (archive feature `file-delta2`, `proto/SPEC.md`): a new
//! object rebuilt from an object the store holds plus a patch.
//!
//! The patch is format 2 (`layerlink_proto::patch`: magic `LLP2`, then
//! blocks of bsdiff add/copy/seek controls whose literal and difference
//! bytes sit in separate sections; `add` bytes are added byte-wise to the
//! old file's bytes at the current position, `copy` bytes are literal,
//! `seek` moves the old position), read with the proto crate's streaming
//! reader: one block's controls and literal bytes (≤ 80 KiB) and 4 KiB of
//! scratch, the old file read through an 8 KiB buffer by offset, the patch
//! from the archive entry. The agent asks for format 2 only; bidiff's
//! format 1 (`file-delta`, what the agent used to ask for) is no longer
//! read: the `bipatch` crate it took is gone. What the reader does not
//! check is checked here, each with a clear error:
//!
//! * the old position never leaves `[0, old length]` and no byte past the
//!   old file's end is read ([`OldFile`]);
//! * the patch produces exactly the declared new size (fewer or more bytes
//!   are rejected before the object is stored), and is read to its end;
//! * the result hashes to the declared new digest (the object writer hashes
//!   while writing to `tmp/` and stores nothing on mismatch);
//! * the base is not the new object itself.
//!
//! A delta that cannot be applied for any of those reasons, or whose base
//! the store lacks or holds damaged, is not an error of the sync: the caller
//! falls back to fetching the whole object (`POST /objects`), so a wrong
//! file never becomes visible and no manual step is needed. Errors of the
//! archive stream itself (cut connection, corrupt compression) and of the
//! store (disk full) are returned as errors.

use crate::error::{Error, Result};
use crate::fsops::Meta;
use crate::store::objects::ObjectWriter;
use layerlink_proto::Digest;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

/// Outcome of [`apply`].
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The new object is stored (or was already held).
    Stored,
    /// The patch could not produce the new object; fetch it whole.
    /// The string says why (for progress output and tests).
    Fallback(String),
}

/// The old object, read by offset; never reads or seeks outside it.
pub struct OldFile<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> OldFile<R> {
    /// `inner` positioned at 0, `len` bytes long.
    pub fn new(inner: R, len: u64) -> Self {
        OldFile { inner, pos: 0, len }
    }
}

fn bad_patch(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: Read + Seek> Read for OldFile<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.len {
            return Err(bad_patch(format!(
                "patch reads past the end of the old file ({} bytes)",
                self.len
            )));
        }
        let want = (buf.len() as u64).min(self.len - self.pos) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad_patch(format!(
                "old file shorter than its {} bytes",
                self.len
            )));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for OldFile<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n as i128),
            SeekFrom::Current(d) => Some(self.pos as i128 + d as i128),
            SeekFrom::End(d) => Some(self.len as i128 + d as i128),
        }
        .filter(|t| *t >= 0 && *t <= self.len as i128);
        let Some(t) = target else {
            return Err(bad_patch(format!(
                "patch seeks outside the old file ({} bytes) from offset {}",
                self.len, self.pos
            )));
        };
        let t = t as u64;
        if t != self.pos {
            self.inner.seek(SeekFrom::Start(t))?;
            self.pos = t;
        }
        Ok(t)
    }
}

/// The patch bytes, from a pull function (the archive entry's content).
/// A failure of the function is kept aside: it is the stream's error, not
/// the patch's.
struct PatchIn<'a> {
    read: &'a mut dyn FnMut(&mut [u8]) -> Result<usize>,
    stream_error: Option<Error>,
}

impl Read for PatchIn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.read)(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                let msg = e.to_string();
                self.stream_error = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }
}

/// Rebuild object `new` (`new_size` bytes) from the held object `base` and
/// the patch pulled through `patch`, storing it with `meta` through
/// `objects` (hashed while written to `tmp/`, verified before it is
/// staged). See the module doc for what is checked and when the answer is
/// [`Applied::Fallback`]. The caller skips what is left of the patch.
pub fn apply(
    objects: &mut ObjectWriter<'_>,
    base: &Digest,
    new: &Digest,
    new_size: u64,
    patch: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
    meta: &Meta,
) -> Result<Applied> {
    if base == new {
        return Ok(Applied::Fallback(
            "delta names the new object itself as its base".into(),
        ));
    }
    if objects.has(new)? {
        // Held already (an earlier, interrupted sync stored it).
        return Ok(Applied::Stored);
    }
    let Some(old) = objects.open_any(base)? else {
        return Ok(Applied::Fallback(format!(
            "the store lacks the delta's base object {base}"
        )));
    };
    let old_len = old
        .metadata()
        .map_err(|e| Error::io(format!("reading object {base}"), e))?
        .len();
    let old = OldFile::new(BufReader::with_capacity(8 * 1024, old), old_len);
    let mut input = PatchIn {
        read: patch,
        stream_error: None,
    };
    let mut reader = layerlink_proto::patch::Reader::new(&mut input, old);
    let mut fault: Option<String> = None;
    let mut produced: u64 = 0;
    let stored = objects.insert(
        Some(new),
        new_size,
        &mut |buf| {
            let read = loop {
                match reader.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = match read {
                Ok(0) => {
                    fault = Some(format!(
                        "patch produces {produced} bytes where {new_size} were declared"
                    ));
                    return Err(Error::integrity("bad patch"));
                }
                Ok(n) => n,
                Err(e) => {
                    fault = Some(format!("bad patch: {e}"));
                    return Err(Error::integrity("bad patch"));
                }
            };
            produced += n as u64;
            if produced == new_size {
                // Everything declared is out: the patch must end here.
                let mut one = [0u8; 1];
                match reader.read(&mut one) {
                    Ok(0) => {}
                    Ok(_) => {
                        fault = Some(format!(
                            "patch produces more than the declared {new_size} bytes"
                        ));
                        return Err(Error::integrity("bad patch"));
                    }
                    Err(e) => {
                        fault = Some(format!("bad patch after its last byte: {e}"));
                        return Err(Error::integrity("bad patch"));
                    }
                }
            }
            Ok(n)
        },
        meta,
    );
    drop(reader);
    if let Some(se) = input.stream_error.take() {
        return Err(se);
    }
    match stored {
        Ok(_) => Ok(Applied::Stored),
        Err(_) if fault.is_some() => Ok(Applied::Fallback(fault.unwrap_or_default())),
        // The patch applied but the result hashes to another digest: a
        // damaged base object or a wrong patch.
        Err(Error::Integrity(m)) => Ok(Applied::Fallback(format!("patched content: {m}"))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A patch from records (add bytes, copy bytes, seek).
    fn patch(records: &[(&[u8], &[u8], i64)]) -> Vec<u8> {
        let mut e = layerlink_proto::patch::Encoder::new();
        for (add, copy, seek) in records {
            e.push(add, copy, *seek);
        }
        e.finish()
    }

    fn run(old: &[u8], p: &[u8]) -> io::Result<Vec<u8>> {
        let o = OldFile::new(Cursor::new(old.to_vec()), old.len() as u64);
        let mut r = layerlink_proto::patch::Reader::new(Cursor::new(p.to_vec()), o);
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn applies_add_copy_seek() {
        let old = b"hello world";
        // add 5 zero-diffs ("hello"), copy "!", skip " ", then 5 more.
        let p = patch(&[(&[0; 5], b"!", 1), (&[0; 5], b"", 0)]);
        assert_eq!(run(old, &p).unwrap(), b"hello!world");
    }

    #[test]
    fn rejects_reads_past_old_end() {
        let e = run(b"abc", &patch(&[(&[0; 4], b"", 0)])).unwrap_err();
        assert!(
            e.to_string().contains("past the end of the old file"),
            "{e}"
        );
    }

    #[test]
    fn rejects_seeks_outside_old() {
        let e = run(b"abc", &patch(&[(&[0; 1], b"", -2)])).unwrap_err();
        assert!(e.to_string().contains("seeks outside"), "{e}");
        let e = run(b"abc", &patch(&[(&[0; 1], b"", 5)])).unwrap_err();
        assert!(e.to_string().contains("seeks outside"), "{e}");
    }

    #[test]
    fn applies_records_as_the_registry_writes_them() {
        let old: Vec<u8> = (0..20000u32).flat_map(|i| (i * 7).to_le_bytes()).collect();
        let mut new = old.clone();
        new[100..110].copy_from_slice(b"0123456789");
        new.extend_from_slice(b"tail");
        new.drain(5000..5100);
        let p = patch(&[
            (&[0; 100], b"0123456789", 10),
            (&vec![0; 5000 - 110], b"", 100),
            (&vec![0; old.len() - 5100], b"tail", 0),
        ]);
        assert_eq!(run(&old, &p).unwrap(), new);
    }

    /// `apply` against a real store: each bad case ends as a fallback with
    /// nothing stored; the good case stores the exact object.
    #[test]
    fn apply_into_a_store_stores_only_the_exact_result() {
        use crate::store::{Access, Store};
        let root =
            std::env::temp_dir().join(format!("layerlink-delta-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = Store::open(&root, Access::Exclusive).unwrap();
        let mut w = ObjectWriter::new(&store);
        let meta = Meta::default();
        let old = b"hello world, this is the old file".to_vec();
        let mut src = &old[..];
        let base = w
            .insert(
                None,
                old.len() as u64,
                &mut |b| Ok(src.read(b).unwrap()),
                &meta,
            )
            .unwrap();
        let new = b"hello world! this is the old file".to_vec();
        let nd = Digest::of(&new);
        let good = patch(&[(&[0; 11], b"!", 1), (&vec![0; old.len() - 12], b"", 0)]);
        let run = |w: &mut ObjectWriter<'_>, base: &Digest, new: &Digest, size: u64, p: &[u8]| {
            let mut p = p;
            apply(w, base, new, size, &mut |b| Ok(p.read(b).unwrap()), &meta).unwrap()
        };
        let fallback = |a: Applied, want: &str| match a {
            Applied::Fallback(m) => assert!(m.contains(want), "{m:?} lacks {want:?}"),
            Applied::Stored => panic!("stored, expected a fallback ({want})"),
        };
        let n = new.len() as u64;
        fallback(run(&mut w, &nd, &nd, n, &good), "itself");
        fallback(run(&mut w, &Digest::of(b"nope"), &nd, n, &good), "lacks");
        fallback(run(&mut w, &base, &nd, n + 1, &good), "produces");
        fallback(run(&mut w, &base, &nd, n - 1, &good), "more than");
        fallback(run(&mut w, &base, &nd, n, &good[..good.len() - 3]), "patch");
        fallback(
            run(&mut w, &base, &nd, n, &patch(&[(&[0; 40], b"", 0)])),
            "past the end",
        );
        fallback(
            run(&mut w, &base, &nd, n, &patch(&[(&[0; 1], b"", -5)])),
            "seeks outside",
        );
        fallback(
            run(&mut w, &base, &nd, n, b"not a patch at all"),
            "format-2",
        );
        // A bidiff (format 1) patch is not read: fetched whole.
        let mut v1 = layerlink_proto::archive::DELTA_PATCH_HEADER.to_vec();
        v1.extend_from_slice(&[11, 0]);
        fallback(run(&mut w, &base, &nd, n, &v1), "format-2");
        let wrong = patch(&[(&[1; 11], b"!", 1), (&vec![0; old.len() - 12], b"", 0)]);
        fallback(run(&mut w, &base, &nd, n, &wrong), "hashes to");
        assert!(!w.has(&nd).unwrap(), "a failed delta stored something");
        assert_eq!(run(&mut w, &base, &nd, n, &good), Applied::Stored);
        let mut got = Vec::new();
        w.open_any(&nd)
            .unwrap()
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, new);
        drop(w);
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }
}
