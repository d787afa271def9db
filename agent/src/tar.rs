//! A small streaming tar reader: ustar, PAX (`x`) extended headers, GNU long
//! names (`L`/`K`), base-256 numbers.
//!
//! It reads one 512-byte block at a time from any [`Read`], never buffers an
//! entry's content, and bounds everything it keeps in memory: PAX headers by
//! [`MAX_PAX_BYTES`], GNU long names by [`MAX_PATH_BYTES`]. It only parses;
//! what an entry means is the caller's business ([`crate::apply`]).

use crate::error::{Error, Result};
use layerlink_proto::archive::{
    Marker, PAX_BASE_ORDER, PAX_DELTA_BASE, PAX_DELTA_SIZE, PAX_DIFF_ID, PAX_DIGEST, PAX_ENTRIES,
    PAX_MARKER, PAX_META, PAX_META_SIZE,
};
use layerlink_proto::limits::{MAX_EXTENSION_HEADERS, MAX_PATH_BYTES, MAX_PAX_BYTES};
use layerlink_proto::Digest;
use std::io::{self, Read};

const BLOCK: usize = 512;

/// A point in time with nanoseconds (tar mtimes may carry fractions in PAX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// Entry types the reader distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file (`0`, NUL, `7`).
    Regular,
    /// Hard link (`1`).
    HardLink,
    /// Symbolic link (`2`).
    Symlink,
    /// Character device (`3`).
    Char,
    /// Block device (`4`).
    Block,
    /// Directory (`5`).
    Dir,
    /// FIFO (`6`).
    Fifo,
    /// Any other type flag (rejected by the applier).
    Other(u8),
}

/// The `LAYERLINK.*` PAX keys of one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerlinkKeys {
    /// `LAYERLINK.digest`.
    pub digest: Option<Digest>,
    /// `LAYERLINK.marker`.
    pub marker: Option<Marker>,
    /// `LAYERLINK.diff_id`.
    pub diff_id: Option<Digest>,
    /// `LAYERLINK.entries`.
    pub entries: Option<u64>,
    /// `LAYERLINK.delta-base` (a delta entry's held object).
    pub delta_base: Option<Digest>,
    /// `LAYERLINK.delta-size` (a delta entry's new size).
    pub delta_size: Option<u64>,
    /// `LAYERLINK.meta` (compact records in a base marker).
    pub meta: Option<u64>,
    /// `LAYERLINK.meta-size` (their bytes).
    pub meta_size: Option<u64>,
    /// `LAYERLINK.base-order` (sha256 of the base's tree order).
    pub base_order: Option<Digest>,
}

/// One entry's header, with PAX and GNU extensions folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Entry type.
    pub kind: Kind,
    /// Path as in the archive (not yet validated).
    pub path: Vec<u8>,
    /// Link target of hard and symbolic links.
    pub link: Vec<u8>,
    /// Content size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Time,
    /// Device major number (char/block).
    pub dev_major: u32,
    /// Device minor number (char/block).
    pub dev_minor: u32,
    /// Extended attributes (`SCHILY.xattr.*`), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// layerlink's PAX keys.
    pub ll: LayerlinkKeys,
}

/// A streaming tar reader over `R`.
pub struct TarReader<R> {
    r: R,
    /// Content bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's content.
    padding: u64,
    ended: bool,
    block: [u8; BLOCK],
}

fn bad(msg: impl Into<String>) -> Error {
    Error::integrity(format!("malformed archive: {}", msg.into()))
}

/// Read exactly `buf.len()` bytes; a clean or partial EOF is a cut stream.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match r.read(&mut buf[off..]) {
            Ok(0) => {
                return Err(Error::Transient(
                    "archive stream ended early (cut stream)".into(),
                ))
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(e)),
        }
    }
    Ok(())
}

/// Classify an error from the underlying stream: decompression errors mean
/// corrupt data, everything else (resets, timeouts, EOF) a cut stream.
pub(crate) fn stream_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            Error::integrity(format!("corrupt archive stream: {e}"))
        }
        _ => Error::Transient(format!("archive stream interrupted: {e}")),
    }
}

fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&c| c == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

/// Parse a numeric header field: octal (space/NUL padded) or GNU base-256.
fn number(field: &[u8]) -> Result<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first == 0xff {
                return Err(bad("negative base-256 number"));
            }
            let mut v: u64 = (first & 0x7f) as u64;
            for &b in &field[1..] {
                if v >> 56 != 0 {
                    return Err(bad("base-256 number overflows"));
                }
                v = (v << 8) | b as u64;
            }
            return Ok(v);
        }
    }
    let mut v: u64 = 0;
    let mut seen = false;
    for &c in field {
        match c {
            b'0'..=b'7' => {
                v = v
                    .checked_mul(8)
                    .ok_or_else(|| bad("octal number overflows"))?
                    + (c - b'0') as u64;
                seen = true;
            }
            b' ' | 0 if !seen => {}
            b' ' | 0 => break,
            _ => return Err(bad("bad octal number in header")),
        }
    }
    Ok(v)
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as u64;
    }
    Some(n)
}

/// Parse a PAX time `secs[.frac]` (may be negative).
fn parse_time(v: &[u8]) -> Option<Time> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (int, frac) = match v.iter().position(|&c| c == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &v[..0]),
    };
    let sec = parse_decimal(int)? as i64;
    let mut nsec: u32 = 0;
    let mut scale = 100_000_000;
    for &c in frac {
        if !c.is_ascii_digit() {
            return None;
        }
        nsec += (c - b'0') as u32 * scale;
        scale /= 10;
    }
    if !neg {
        return Some(Time { sec, nsec });
    }
    if nsec == 0 {
        Some(Time { sec: -sec, nsec: 0 })
    } else {
        Some(Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        })
    }
}

/// Extensions gathered from `x`, `L` and `K` entries for the next header.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ll: LayerlinkKeys,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.link.is_none()
            && self.size.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.mtime.is_none()
            && self.xattrs.is_empty()
            && self.ll == LayerlinkKeys::default()
    }
}

/// Apply one PAX record to `p`.
fn pax_record(p: &mut Pending, key: &[u8], value: &[u8]) -> Result<()> {
    let num = |v: &[u8]| parse_decimal(v).ok_or_else(|| bad("bad number in PAX header"));
    match key {
        b"path" => p.path = Some(value.to_vec()),
        b"linkpath" => p.link = Some(value.to_vec()),
        b"size" => p.size = Some(num(value)?),
        b"uid" => p.uid = Some(num(value)?),
        b"gid" => p.gid = Some(num(value)?),
        b"mtime" => p.mtime = Some(parse_time(value).ok_or_else(|| bad("bad PAX mtime"))?),
        k if k.starts_with(b"SCHILY.xattr.") => {
            let name = &k[b"SCHILY.xattr.".len()..];
            if name.is_empty() {
                return Err(bad("empty xattr name"));
            }
            p.xattrs.retain(|(n, _)| n != name);
            p.xattrs.push((name.to_vec(), value.to_vec()));
        }
        k if k.starts_with(b"GNU.sparse.") => return Err(bad("sparse files are not supported")),
        k if k == PAX_DIGEST.as_bytes() => {
            let hex = core::str::from_utf8(value).map_err(|_| bad("bad LAYERLINK.digest"))?;
            p.ll.digest = Some(Digest::from_hex(hex).map_err(|_| bad("bad LAYERLINK.digest"))?);
        }
        k if k == PAX_MARKER.as_bytes() => {
            let m = Marker::parse(value);
            p.ll.marker = Some(m.ok_or_else(|| bad("unknown LAYERLINK.marker"))?);
        }
        k if k == PAX_DIFF_ID.as_bytes() => {
            let s = core::str::from_utf8(value).map_err(|_| bad("bad LAYERLINK.diff_id"))?;
            p.ll.diff_id = Some(Digest::parse(s).map_err(|_| bad("bad LAYERLINK.diff_id"))?);
        }
        k if k == PAX_ENTRIES.as_bytes() => p.ll.entries = Some(num(value)?),
        k if k == PAX_DELTA_BASE.as_bytes() => {
            let hex = core::str::from_utf8(value).map_err(|_| bad("bad LAYERLINK.delta-base"))?;
            p.ll.delta_base =
                Some(Digest::from_hex(hex).map_err(|_| bad("bad LAYERLINK.delta-base"))?);
        }
        k if k == PAX_DELTA_SIZE.as_bytes() => p.ll.delta_size = Some(num(value)?),
        k if k == PAX_META.as_bytes() => p.ll.meta = Some(num(value)?),
        k if k == PAX_META_SIZE.as_bytes() => p.ll.meta_size = Some(num(value)?),
        k if k == PAX_BASE_ORDER.as_bytes() => {
            let hex = core::str::from_utf8(value).map_err(|_| bad("bad LAYERLINK.base-order"))?;
            p.ll.base_order =
                Some(Digest::from_hex(hex).map_err(|_| bad("bad LAYERLINK.base-order"))?);
        }
        // atime, ctime, uname, gname, comment, charset, hdrcharset and
        // unknown vendor keys do not change what we create.
        _ => {}
    }
    Ok(())
}

/// Parse a whole PAX header body into `p`.
fn parse_pax(p: &mut Pending, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        let sp = data
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| bad("bad PAX record"))?;
        let len = parse_decimal(&data[..sp]).ok_or_else(|| bad("bad PAX record length"))? as usize;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("bad PAX record length"));
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        pax_record(p, &rec[..eq], &rec[eq + 1..])?;
        data = &data[len..];
    }
    Ok(())
}

impl<R: Read> TarReader<R> {
    /// A reader over an uncompressed tar stream.
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            remaining: 0,
            padding: 0,
            ended: false,
            block: [0; BLOCK],
        }
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// Skip whatever is left of the current entry (content and padding).
    fn skip_rest(&mut self) -> Result<()> {
        let mut left = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        let mut buf = [0u8; BLOCK];
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            read_full(&mut self.r, &mut buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Read an extension entry's whole content (bounded by `max`).
    fn read_ext(&mut self, size: u64, max: u64, what: &str) -> Result<Vec<u8>> {
        if size > max {
            return Err(bad(format!(
                "{what} of {size} bytes is larger than the {max}-byte limit"
            )));
        }
        let mut data = vec![0u8; size as usize];
        read_full(&mut self.r, &mut data)?;
        self.remaining = 0;
        self.padding = pad(size);
        self.skip_rest()?;
        Ok(data)
    }

    /// The next entry's header, skipping the rest of the previous entry.
    /// `Ok(None)` at the end-of-archive block.
    pub fn next_header(&mut self) -> Result<Option<Header>> {
        if self.ended {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut ext = Pending::default();
        let mut extensions = 0usize;
        loop {
            read_full(&mut self.r, &mut self.block)?;
            let b = &self.block;
            if b.iter().all(|&c| c == 0) {
                if !ext.is_empty() {
                    return Err(bad("extended header without an entry"));
                }
                self.ended = true;
                return Ok(None);
            }
            verify_checksum(b)?;
            let typeflag = b[156];
            let size = number(&b[124..136])?;
            if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
                extensions += 1;
                if extensions > MAX_EXTENSION_HEADERS {
                    return Err(bad(format!(
                        "more than {MAX_EXTENSION_HEADERS} extension headers in a row"
                    )));
                }
            }
            match typeflag {
                b'x' => {
                    let data = self.read_ext(size, MAX_PAX_BYTES, "PAX header")?;
                    parse_pax(&mut ext, &data)?;
                    continue;
                }
                b'g' => {
                    // Global headers: nothing in them changes our entries.
                    let _ = self.read_ext(size, MAX_PAX_BYTES, "PAX global header")?;
                    continue;
                }
                b'L' | b'K' => {
                    let mut data =
                        self.read_ext(size, MAX_PATH_BYTES as u64 + 1, "GNU long name")?;
                    let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
                    data.truncate(end);
                    if typeflag == b'L' {
                        ext.path = Some(data);
                    } else {
                        ext.link = Some(data);
                    }
                    continue;
                }
                _ => {}
            }
            return self.finish_header(ext).map(Some);
        }
    }

    fn finish_header(&mut self, ext: Pending) -> Result<Header> {
        let b = &self.block;
        let ustar = &b[257..263] == b"ustar\0";
        let path = match ext.path {
            Some(p) => p,
            None => {
                let name = cstr(&b[0..100]);
                let prefix = if ustar { cstr(&b[345..500]) } else { &b[0..0] };
                let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
                if !prefix.is_empty() {
                    p.extend_from_slice(prefix);
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                p
            }
        };
        let link = ext.link.unwrap_or_else(|| cstr(&b[157..257]).to_vec());
        let mut kind = match b[156] {
            b'0' | 0 | b'7' => Kind::Regular,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            o => Kind::Other(o),
        };
        // Old archives mark directories by a trailing slash only.
        if kind == Kind::Regular && path.last() == Some(&b'/') {
            kind = Kind::Dir;
        }
        let size = match ext.size {
            Some(s) => s,
            None => number(&b[124..136])?,
        };
        let id = |v: u64| u32::try_from(v).map_err(|_| bad("uid/gid out of range"));
        let uid = id(match ext.uid {
            Some(u) => u,
            None => number(&b[108..116])?,
        })?;
        let gid = id(match ext.gid {
            Some(g) => g,
            None => number(&b[116..124])?,
        })?;
        let mtime = match ext.mtime {
            Some(t) => t,
            None => Time {
                sec: number(&b[136..148])? as i64,
                nsec: 0,
            },
        };
        let mode = (number(&b[100..108])? & 0o7777) as u32;
        let (dev_major, dev_minor) = if matches!(kind, Kind::Char | Kind::Block) {
            (number(&b[329..337])? as u32, number(&b[337..345])? as u32)
        } else {
            (0, 0)
        };
        // Only regular files (and unknown types) carry content; links,
        // directories and devices never do, whatever their size field says.
        let data_size = match kind {
            Kind::Regular | Kind::Other(_) => size,
            _ => 0,
        };
        self.remaining = data_size;
        self.padding = pad(data_size);
        let mut xattrs = ext.xattrs;
        xattrs.sort();
        Ok(Header {
            kind,
            path,
            link,
            size: data_size,
            mode,
            uid,
            gid,
            mtime,
            dev_major,
            dev_minor,
            xattrs,
            ll: ext.ll,
        })
    }

    /// Read content of the current entry; `Ok(0)` at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.remaining) as usize;
        loop {
            match self.r.read(&mut buf[..n]) {
                Ok(0) => {
                    return Err(Error::Transient(
                        "archive stream ended inside an entry".into(),
                    ))
                }
                Ok(got) => {
                    self.remaining -= got as u64;
                    return Ok(got);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(e)),
            }
        }
    }

    /// Content bytes of the current entry not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn verify_checksum(b: &[u8; BLOCK]) -> Result<()> {
    let stored = number(&b[148..156])?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += c as u64;
        signed += c as i8 as i64;
    }
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(bad("header checksum mismatch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers() {
        assert_eq!(number(b"0000644\0").unwrap(), 0o644);
        assert_eq!(number(b"   12 \0").unwrap(), 0o12);
        assert_eq!(number(b"\0\0\0").unwrap(), 0);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert!(number(b"12x").is_err());
    }

    #[test]
    fn parses_pax_times() {
        assert_eq!(
            parse_time(b"1700000000.5"),
            Some(Time {
                sec: 1_700_000_000,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_time(b"12"), Some(Time { sec: 12, nsec: 0 }));
        assert_eq!(
            parse_time(b"-1.25"),
            Some(Time {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(parse_time(b"1.x"), None);
    }

    #[test]
    fn parses_pax_records() {
        let mut p = Pending::default();
        let body =
            b"30 mtime=1700000000.123456789\n20 path=a/b/c/d/e/f\n25 SCHILY.xattr.user.a=1\n";
        parse_pax(&mut p, body).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"a/b/c/d/e/f"[..]));
        assert_eq!(
            p.mtime,
            Some(Time {
                sec: 1_700_000_000,
                nsec: 123_456_789
            })
        );
        assert_eq!(p.xattrs, vec![(b"user.a".to_vec(), b"1".to_vec())]);
        assert!(parse_pax(&mut p, b"99 path=x\n").is_err());
    }

    /// A tar stream of `n` PAX headers in a row, then one empty file.
    fn pax_run(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let body = b"9 path=a\n";
        for _ in 0..n {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(body.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(body);
            out.resize(out.len() + pad(body.len() as u64) as usize, 0);
        }
        let mut h = tar::Header::new_ustar();
        h.set_path("f").unwrap();
        h.set_size(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn caps_extension_headers_in_a_row() {
        let ok = pax_run(MAX_EXTENSION_HEADERS);
        let h = TarReader::new(&ok[..]).next_header().unwrap().unwrap();
        assert_eq!(h.path, b"a");

        let bad = pax_run(MAX_EXTENSION_HEADERS + 1);
        let err = TarReader::new(&bad[..]).next_header().unwrap_err();
        assert!(matches!(err, Error::Integrity(_)), "{err}");
        assert!(
            err.to_string()
                .contains("more than 8 extension headers in a row"),
            "{err}"
        );
    }
}
