//! Resuming a cut archive download (`proto/SPEC.md`, "Resuming an
//! archive").
//!
//! While an archive streams in, its compressed bytes are appended to
//! `<store>/partial-archive` as they are read from the network (before the
//! decoder sees them), and `partial-archive.info` names the registry's id
//! for that archive and what it carries (manifest, metadata, layers). After
//! a cut, the next sync of the image sends `layerlink-resume: <id> <length>
//! <sha256 of the kept bytes>`; when the registry answers from that offset
//! (it checked the hash against its own copy, so a torn or damaged file is
//! never replayed), the applier reads the kept bytes and then the network's
//! as one stream: byte for byte the archive it started. What the cut run
//! already stored is found again (objects are kept, committed layers are
//! skipped), and only what was in flight travels twice.
//!
//! The file is not synced (a power cut may shorten it: the hash check then
//! fails and the registry sends a fresh archive). It goes when the image is
//! synced, when a fresh archive starts, and after bad data.

use crate::fsops;
use crate::store::Store;
use layerlink_proto::Digest;
use rustix::fs::{self as rfs, Mode, OFlags};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};

const PART: &str = "partial-archive";
const INFO: &str = "partial-archive.info";

/// What a kept download is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The registry's id for the archive.
    pub id: String,
    /// The image's manifest.
    pub manifest: Digest,
    /// Whether the archive carries manifest and config markers.
    pub metadata: bool,
    /// The layers it carries, in order.
    pub layers: Vec<Digest>,
}

impl Kept {
    fn encode(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.id, self.manifest, self.metadata as u8);
        for l in &self.layers {
            s.push_str(&l.to_string());
            s.push('\n');
        }
        s
    }

    fn decode(b: &[u8]) -> Option<Kept> {
        let mut lines = std::str::from_utf8(b).ok()?.lines();
        let id = lines.next()?.to_owned();
        let manifest = lines.next()?.parse().ok()?;
        let metadata = match lines.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let layers = lines.map(|l| l.parse().ok()).collect::<Option<Vec<_>>>()?;
        let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_hexdigit());
        ok.then_some(Kept {
            id,
            manifest,
            metadata,
            layers,
        })
    }
}

/// The kept download of `manifest`, with the `layerlink-resume` value that
/// asks for its rest.
pub fn find(store: &Store, manifest: &Digest) -> Option<(Kept, u64, String)> {
    let info = fsops::read_small(store.root_fd(), INFO.as_bytes(), 64 << 10).ok()??;
    let k = Kept::decode(&info).filter(|k| k.manifest == *manifest)?;
    let mut f = fsops::open_file_at(store.root_fd(), PART.as_bytes()).ok()?;
    let (mut h, mut n, mut buf) = (Sha256::new(), 0u64, vec![0u8; 16 * 1024]);
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(_) => return None,
        }
    }
    let header = format!("{} {n} {}", k.id, Digest::from_hasher(h).hex());
    (n > 0).then_some((k, n, header))
}

/// Start keeping a new download (`None`: it cannot be kept).
pub fn start(store: &Store, k: &Kept) -> Option<File> {
    clear(store);
    let f = fsops::create_file_at(store.root_fd(), PART.as_bytes(), 0o600).ok()?;
    fsops::write_atomic(store.root_fd(), INFO, k.encode().as_bytes()).ok()?;
    Some(f)
}

/// The kept bytes to replay, and the file opened for appending the rest.
pub fn reopen(store: &Store) -> Option<(File, File)> {
    let read = fsops::open_file_at(store.root_fd(), PART.as_bytes()).ok()?;
    let append = rfs::openat(
        store.root_fd(),
        PART,
        OFlags::WRONLY | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    Some((read, File::from(append)))
}

/// Forget the kept download.
pub fn clear(store: &Store) {
    for n in [INFO, PART] {
        let _ = fsops::remove_at(store.root_fd(), n.as_bytes());
    }
}

/// The archive stream: the kept bytes to replay (if any), then the
/// network's, appended to the kept file as they are read (appending stops,
/// keeping a shorter but still exact prefix, when the file cannot take
/// more). One type, so the agent carries one more `Read` vtable, not three.
pub struct Stream {
    /// Kept bytes replayed first.
    pub prefix: Option<File>,
    /// The network body.
    pub inner: Box<dyn Read>,
    /// The kept file, appended to.
    pub out: Option<File>,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(p) = &mut self.prefix {
            let n = p.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.prefix = None;
        }
        let n = self.inner.read(buf)?;
        if let Some(f) = &mut self.out {
            if f.write_all(&buf[..n]).is_err() {
                self.out = None;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trip_and_bad_info() {
        let k = Kept {
            id: "00ff".into(),
            manifest: Digest::of(b"m"),
            metadata: true,
            layers: vec![Digest::of(b"a"), Digest::of(b"b")],
        };
        assert_eq!(Kept::decode(k.encode().as_bytes()), Some(k.clone()));
        let s = k.encode();
        assert_eq!(Kept::decode(s.replace("00ff", "../x").as_bytes()), None);
        assert_eq!(Kept::decode(s.replace("\n1\n", "\n2\n").as_bytes()), None);
        assert_eq!(Kept::decode(&s.as_bytes()[..s.len() - 10]), None);
        assert_eq!(Kept::decode(b""), None);
    }
}
