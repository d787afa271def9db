//! The registry's one tar codec, by hand: ustar blocks and PAX records
//! written ([`entry_header`], [`pax_record`]), header fields and PAX records
//! parsed ([`HeaderBlock`], [`parse_pax`]), and a streaming reader that
//! keeps each entry's raw bytes ([`TarReader`], in `reader.rs`).
//!
//! The writer is shared by the dedup archive writer (which must control
//! every byte on the wire), the editor's writer (`edit::tar`, for the
//! entries an edit makes) and by the entry index (which renders a layer
//! entry's canonical header and stores only how the original differed, see
//! [`crate::store::index::RawHeader`]). The reader is shared by ingest
//! (which walks a pushed layer once) and the editor (which copies the
//! entries it does not change byte for byte). The `tar` crate is a test
//! oracle only (`tests.rs`).
//!
//! Conventions (those of Go's `archive/tar`, which writes most layers):
//! numeric fields are zero-padded octal ending in NUL, or base-256 when the
//! value does not fit; the checksum is six octal digits, NUL, space; magic
//! `ustar\0` version `00`; device numbers are always written.
//!
//! One naming convention for every writer (the archive writer, the entry
//! index and the editor): a path longer than 100 bytes is split at the
//! first `/` that leaves at most 100 bytes for `name` (a shorter prefix
//! than Go, which splits at the last `/` within 155 bytes; the index keeps
//! such differences per entry, so Go's layers still rebuild byte for byte),
//! and a path that cannot be split goes into a PAX `path` record under a
//! PAX header entry named [`PAX_HEADER_NAME`] with mtime 0. The entry
//! index renders canonical headers with these functions and stores only
//! how the original differed: changing a rendering here changes how every
//! stored layer is rebuilt, so it is a store format change.

mod reader;
#[cfg(test)]
mod tests;

pub use reader::{EntryData, Kind, RawEntry, TarReader};

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Largest value an 11-digit octal field (size, mtime) can hold.
pub const MAX_OCTAL_11: u64 = 0o777_7777_7777;
/// Largest value a 7-digit octal field (uid, gid, device) can hold.
pub const MAX_OCTAL_7: u64 = 0o777_7777;
/// Name of the PAX extended-header entries we write.
pub const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";

/// The fields of one ustar header block.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// Entry path (name and prefix are derived from it).
    pub path: &'a [u8],
    /// Type flag byte (`'0'`, `'5'`, …).
    pub type_flag: u8,
    /// Mode bits as stored in the header.
    pub mode: u32,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// Content size written in the header.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Link target (hard or symbolic).
    pub link: &'a [u8],
    /// Owner name.
    pub uname: &'a [u8],
    /// Group name.
    pub gname: &'a [u8],
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
}

impl<'a> Fields<'a> {
    /// A regular file of `size` bytes at `path`: mode 0644, owned by root,
    /// mtime 0, no names (the marker entries of a dedup archive, PAX
    /// header entries).
    pub fn file(path: &'a [u8], size: u64) -> Fields<'a> {
        Fields {
            path,
            type_flag: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            link: b"",
            uname: b"",
            gname: b"",
            dev_major: 0,
            dev_minor: 0,
        }
    }
}

/// Whether `path` can be stored in ustar `name` (100 bytes) or split into
/// `prefix` (155) + `/` + `name`.
pub fn path_fits_ustar(path: &[u8]) -> bool {
    split_ustar_path(path).is_some()
}

/// `(prefix, name)` for a path that fits ustar, preferring no prefix.
fn split_ustar_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 256 {
        return None;
    }
    // The shortest prefix whose rest fits in `name`.
    let min = path.len() - 101;
    (min..path.len().min(156))
        .find(|&i| path[i] == b'/')
        .map(|i| (&path[..i], &path[i + 1..]))
        .filter(|(p, n)| !p.is_empty() && !n.is_empty() && n.len() <= 100 && p.len() <= 155)
}

/// Write `v` into a numeric field: zero-padded octal plus NUL, or base-256
/// when it does not fit.
fn numeric(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    if digits >= 22 || v < (1u64 << (3 * digits)) {
        for (i, slot) in field[..digits].iter_mut().enumerate() {
            let shift = 3 * (digits - 1 - i);
            *slot = b'0' + ((v >> shift) & 7) as u8;
        }
        field[digits] = 0;
    } else {
        field.fill(0);
        let n = field.len();
        for (i, b) in v.to_be_bytes().iter().enumerate() {
            field[n - 8 + i] = *b;
        }
        field[0] |= 0x80;
    }
}

/// Copy `src` into a fixed field, truncating.
fn bytes(field: &mut [u8], src: &[u8]) {
    let n = src.len().min(field.len());
    field[..n].copy_from_slice(&src[..n]);
}

/// Render one ustar header block. A path or link name that does not fit is
/// truncated (the caller adds PAX records for it).
pub fn ustar_block(f: &Fields<'_>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    match split_ustar_path(f.path) {
        Some((prefix, name)) => {
            bytes(&mut b[0..100], name);
            bytes(&mut b[345..500], prefix);
        }
        None => bytes(&mut b[0..100], f.path),
    }
    numeric(&mut b[100..108], u64::from(f.mode));
    numeric(&mut b[108..116], f.uid);
    numeric(&mut b[116..124], f.gid);
    numeric(&mut b[124..136], f.size);
    numeric(&mut b[136..148], f.mtime);
    b[156] = f.type_flag;
    bytes(&mut b[157..257], f.link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    bytes(&mut b[265..297], f.uname);
    bytes(&mut b[297..329], f.gname);
    numeric(&mut b[329..337], u64::from(f.dev_major));
    numeric(&mut b[337..345], u64::from(f.dev_minor));
    set_checksum(&mut b);
    b
}

/// Fill the checksum field (`%06o\0 `) of a block.
pub fn set_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    numeric(&mut b[148..155], u64::from(sum));
    b[155] = b' ';
}

/// Append one PAX record (`"<len> <key>=<value>\n"`) to `out`.
pub fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + decimal_len(len) != len {
        len = base + decimal_len(len);
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn decimal_len(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Number of zero bytes that pad `len` bytes of content to a block.
pub fn padding(len: u64) -> usize {
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// Append the header blocks of one entry to `out`: when `pax` (encoded
/// records) is not empty, a PAX `'x'` entry carrying it, then the ustar
/// block for `f`.
pub fn entry_header(out: &mut Vec<u8>, f: &Fields<'_>, pax: &[u8]) {
    if !pax.is_empty() {
        let x = Fields {
            type_flag: b'x',
            ..Fields::file(PAX_HEADER_NAME, pax.len() as u64)
        };
        out.extend_from_slice(&ustar_block(&x));
        out.extend_from_slice(pax);
        out.resize(out.len() + padding(pax.len() as u64), 0);
    }
    out.extend_from_slice(&ustar_block(f));
}

/// A numeric header field: octal (spaces and a NUL end allowed, empty is
/// 0) or, with the high bit of the first byte set, base-256 (the last 8
/// bytes, big-endian).
pub fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let tail = &field[field.len().saturating_sub(8)..];
        let mut v = 0u64;
        for &b in tail {
            v = (v << 8) | u64::from(b);
        }
        if tail.len() == 8 && field.len() <= 8 {
            v &= u64::MAX >> 1; // the flag bit itself is not part of the value
        }
        return Some(v);
    }
    let text = text_field(field);
    let text = std::str::from_utf8(text).ok()?.trim_matches(' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A text header field up to its first NUL.
pub fn text_field(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// The fields of one header block as read (ustar, GNU or v7): the reader's
/// side of [`ustar_block`].
#[derive(Debug, Clone, Copy)]
pub struct HeaderBlock<'a>(&'a [u8]);

impl<'a> HeaderBlock<'a> {
    /// The first [`BLOCK`] bytes of `block`.
    ///
    /// # Panics
    /// When `block` is shorter than a block.
    pub fn new(block: &'a [u8]) -> HeaderBlock<'a> {
        HeaderBlock(&block[..BLOCK])
    }

    /// POSIX ustar (magic `ustar\0`, version `00`): has a `prefix` field.
    pub fn is_ustar(&self) -> bool {
        &self.0[257..263] == b"ustar\0" && &self.0[263..265] == b"00"
    }

    /// GNU (magic `ustar `, version ` \0`).
    pub fn is_gnu(&self) -> bool {
        &self.0[257..263] == b"ustar " && &self.0[263..265] == b" \0"
    }

    /// The type flag byte.
    pub fn type_flag(&self) -> u8 {
        self.0[156]
    }

    /// The path from `name` (and `prefix` for ustar), before any PAX or
    /// GNU long name replaces it.
    pub fn path(&self) -> Vec<u8> {
        let name = text_field(&self.0[0..100]);
        let prefix = if self.is_ustar() {
            text_field(&self.0[345..500])
        } else {
            &[]
        };
        if prefix.is_empty() {
            return name.to_vec();
        }
        [prefix, b"/", name].concat()
    }

    /// The link name field.
    pub fn link(&self) -> &'a [u8] {
        text_field(&self.0[157..257])
    }

    /// The mode field.
    pub fn mode(&self) -> Option<u32> {
        parse_numeric(&self.0[100..108]).and_then(|m| u32::try_from(m).ok())
    }

    /// The uid field.
    pub fn uid(&self) -> Option<u64> {
        parse_numeric(&self.0[108..116])
    }

    /// The gid field.
    pub fn gid(&self) -> Option<u64> {
        parse_numeric(&self.0[116..124])
    }

    /// The size field.
    pub fn size(&self) -> Option<u64> {
        parse_numeric(&self.0[124..136])
    }

    /// The mtime field.
    pub fn mtime(&self) -> Option<u64> {
        parse_numeric(&self.0[136..148])
    }

    /// The device major number field (0 for a v7 header).
    pub fn dev_major(&self) -> Option<u64> {
        self.device(329)
    }

    /// The device minor number field (0 for a v7 header).
    pub fn dev_minor(&self) -> Option<u64> {
        self.device(337)
    }

    fn device(&self, at: usize) -> Option<u64> {
        if self.is_ustar() || self.is_gnu() {
            parse_numeric(&self.0[at..at + 8])
        } else {
            Some(0)
        }
    }

    /// The owner name (empty for a v7 header).
    pub fn uname(&self) -> &'a [u8] {
        if self.is_ustar() || self.is_gnu() {
            text_field(&self.0[265..297])
        } else {
            &[]
        }
    }

    /// The group name (empty for a v7 header).
    pub fn gname(&self) -> &'a [u8] {
        if self.is_ustar() || self.is_gnu() {
            text_field(&self.0[297..329])
        } else {
            &[]
        }
    }
}

/// One PAX record: key, value.
pub type PaxRecord = (Vec<u8>, Vec<u8>);
/// PAX records in order.
pub type PaxRecords = Vec<PaxRecord>;

/// Parse PAX records by their length prefixes.
pub fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("PAX record without length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record with a bad length")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("PAX record with a bad length".into());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}
