//! The registry's one tar reader: a stream read block by block, each entry
//! handed out with the exact bytes its headers were made of. Ingest keeps
//! those bytes (as a difference from the canonical rendering) so a layer
//! rebuilds byte for byte; the editor copies untouched entries with them.
//! The `tar` crate is only a test oracle (`tests.rs` of this folder).
//!
//! An entry is its extension headers (PAX `x`, GNU `L`/`K` long names,
//! with their data), its own header block (plus GNU sparse extension
//! blocks), then its data padded to 512 bytes. Global PAX headers (`g`) are
//! entries of their own. Following Go's `archive/tar` (which wrote most
//! layers in the wild, and reads them in containerd, Docker and umoci) and
//! the agent's reader:
//!
//! - link, symlink, device, directory and FIFO entries carry no data
//!   whatever their size field says;
//! - the effective path is PAX `path`, else the GNU long name, else the
//!   header's (`prefix/name` for ustar), and likewise for the link name;
//! - a PAX `size` record overrides the header's size field;
//! - the checksum may be the unsigned or the signed sum;
//! - the first all-zero block ends the archive; a stream that ends at a
//!   block boundary without one ends it too.
//!
//! Bounds: at most [`MAX_EXTENSION_HEADERS`] extension headers in a row,
//! each at most [`MAX_PAX_BYTES`] of data (`layerlink_proto::limits`).

use super::{padding, parse_pax, HeaderBlock, PaxRecords, BLOCK};
use layerlink_proto::limits::{MAX_EXTENSION_HEADERS, MAX_PAX_BYTES};
use std::io::{self, Read, Write};

const ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// What an entry makes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular (possibly sparse or contiguous) file.
    File,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier path.
    HardLink,
    /// Device, FIFO, or anything else.
    Other,
}

impl Kind {
    /// A word for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a file",
            Kind::Symlink => "a symlink",
            Kind::HardLink => "a hard link",
            Kind::Other => "a special file",
        }
    }
}

/// One entry as read: its raw bytes up to the data, and what they say.
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// Extension headers before the entry's own header, with their data
    /// and padding, exactly as read.
    pub ext: Vec<u8>,
    /// The entry's header block (and GNU sparse extension blocks).
    pub header: Vec<u8>,
    /// The type flag.
    pub typ: u8,
    /// Effective path (PAX `path`, else GNU long name, else ustar name).
    pub path: Vec<u8>,
    /// Effective link name (same precedence), empty when none.
    pub link: Vec<u8>,
    /// Bytes of data following the header.
    pub size: u64,
    /// The entry's PAX records, in order (of every PAX header before it).
    pub pax: PaxRecords,
}

impl RawEntry {
    /// The entry's header block, parsed field by field.
    pub fn header(&self) -> HeaderBlock<'_> {
        HeaderBlock::new(&self.header)
    }

    /// The header bytes as read: extension headers, then the entry's own
    /// header block(s).
    pub fn original_header(&self) -> Vec<u8> {
        [&self.ext[..], &self.header[..]].concat()
    }

    /// Whether this is a global PAX header (not an entry of the layer).
    pub fn is_global(&self) -> bool {
        self.typ == b'g'
    }

    /// What the entry makes.
    pub fn kind(&self) -> Kind {
        match self.typ {
            b'5' => Kind::Dir,
            b'0' | 0 if self.path.ends_with(b"/") => Kind::Dir,
            b'0' | 0 | b'7' | b'S' => Kind::File,
            b'2' => Kind::Symlink,
            b'1' => Kind::HardLink,
            _ => Kind::Other,
        }
    }

    /// The value of the last PAX record named `key`.
    pub fn pax_get(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// A decimal PAX record (`uid`, `gid`); `None` when absent or not a
    /// number.
    pub fn pax_u64(&self, key: &[u8]) -> Option<u64> {
        std::str::from_utf8(self.pax_get(key)?).ok()?.parse().ok()
    }

    /// The whole seconds of the PAX `mtime` record (which may carry a
    /// fraction); `None` when absent or not a number.
    pub fn pax_mtime(&self) -> Option<u64> {
        let v = std::str::from_utf8(self.pax_get(b"mtime")?).ok()?;
        v.split('.').next()?.parse().ok()
    }

    /// Extended attributes (`SCHILY.xattr.<name>` PAX records).
    pub fn xattrs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.pax
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(b"SCHILY.xattr.")
                    .map(|n| (n.to_vec(), v.clone()))
            })
            .collect()
    }
}

/// Reads a tar stream entry by entry, keeping each entry's raw bytes.
pub struct TarReader<R> {
    inner: R,
    data_left: u64,
    pad_left: u64,
    offset: u64,
    ended: bool,
    padding_zero: bool,
    buf: Vec<u8>,
}

impl<R: Read> TarReader<R> {
    /// Read tar from `inner`.
    pub fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            data_left: 0,
            pad_left: 0,
            offset: 0,
            ended: false,
            padding_zero: true,
            buf: vec![0; 64 * 1024],
        }
    }

    /// The underlying reader. Whatever follows the end-of-archive block
    /// was not read.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Bytes read from the stream so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether every entry's padding read so far was zero bytes (a tar
    /// with other padding does not rebuild from its entries alone).
    pub fn padding_was_zero(&self) -> bool {
        self.padding_zero
    }

    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(out).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(format!("tar stream cut at byte {}", self.offset))
            } else {
                e
            }
        })?;
        self.offset += out.len() as u64;
        Ok(())
    }

    /// Read one block; `false` on a clean end of stream before it.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut block[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(invalid(format!(
                        "tar stream cut at byte {}",
                        self.offset + got as u64
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }

    /// The next entry, or `None` at the end of the archive. Data of the
    /// previous entry not read yet is skipped.
    pub fn next_entry(&mut self) -> io::Result<Option<RawEntry>> {
        self.skip_rest()?;
        if self.ended {
            return Ok(None);
        }
        let mut ext = Vec::new();
        let mut pax = PaxRecords::new();
        let mut gnu_name: Option<Vec<u8>> = None;
        let mut gnu_link: Option<Vec<u8>> = None;
        let mut extensions = 0usize;
        loop {
            let start = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                if ext.is_empty() {
                    // No end-of-archive blocks: tolerated, as Go and GNU tar do.
                    self.ended = true;
                    return Ok(None);
                }
                return Err(invalid(format!(
                    "tar stream ends after extension headers at byte {start}"
                )));
            }
            if block == ZERO_BLOCK {
                if !ext.is_empty() {
                    return Err(invalid(format!(
                        "end of archive right after extension headers at byte {start}"
                    )));
                }
                self.ended = true;
                return Ok(None);
            }
            verify_checksum(&block, start)?;
            let h = HeaderBlock::new(&block);
            let typ = h.type_flag();
            let hsize = h
                .size()
                .ok_or_else(|| invalid(format!("bad size field in tar header at byte {start}")))?;
            if let b'x' | b'L' | b'K' = typ {
                extensions += 1;
                if extensions > MAX_EXTENSION_HEADERS {
                    return Err(invalid(format!(
                        "more than {MAX_EXTENSION_HEADERS} tar extension headers in a row at byte {start}"
                    )));
                }
                if hsize > MAX_PAX_BYTES {
                    return Err(invalid(format!(
                        "tar extension header at byte {start} is {hsize} bytes, more than {MAX_PAX_BYTES}"
                    )));
                }
                let mut data = vec![0u8; hsize as usize + padding(hsize)];
                self.read_exact(&mut data)?;
                ext.extend_from_slice(&block);
                ext.extend_from_slice(&data);
                data.truncate(hsize as usize);
                match typ {
                    b'x' => pax
                        .extend(parse_pax(&data).map_err(|m| {
                            invalid(format!("bad PAX header at byte {start}: {m}"))
                        })?),
                    b'L' => gnu_name = Some(trim_nul(data)),
                    _ => gnu_link = Some(trim_nul(data)),
                }
                continue;
            }
            let mut header = block.to_vec();
            if typ == b'S' && block[482] != 0 {
                // GNU sparse: extension blocks follow while `isextended`.
                loop {
                    let mut more = [0u8; BLOCK];
                    self.read_exact(&mut more)?;
                    header.extend_from_slice(&more);
                    if more[504] == 0 {
                        break;
                    }
                }
            }
            let mut e = RawEntry {
                ext,
                header,
                typ,
                path: Vec::new(),
                link: Vec::new(),
                size: hsize,
                pax,
            };
            e.path = match e.pax_get(b"path") {
                Some(p) => p.to_vec(),
                None => gnu_name.unwrap_or_else(|| h.path()),
            };
            e.link = match e.pax_get(b"linkpath") {
                Some(l) => l.to_vec(),
                None => gnu_link.unwrap_or_else(|| h.link().to_vec()),
            };
            if let Some(v) = e.pax_get(b"size") {
                e.size = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| invalid(format!("bad PAX size in tar entry at byte {start}")))?;
            }
            if matches!(typ, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
                e.size = 0;
            }
            self.data_left = e.size;
            self.pad_left = padding(e.size) as u64;
            return Ok(Some(e));
        }
    }

    /// The rest of the current entry's data (without padding) as a reader.
    /// It ends early (reads 0) when the stream does: the caller compares
    /// what it got with the entry's size.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData(self)
    }

    /// Copy the rest of the current entry's data and its padding to `w`.
    pub fn copy_raw(&mut self, w: &mut dyn Write) -> io::Result<()> {
        self.copy_content(w)?;
        let pad = self.read_padding()?;
        w.write_all(&pad.0[..pad.1])
    }

    /// Copy the rest of the current entry's data (without padding) to `w`.
    pub fn copy_content(&mut self, w: &mut dyn Write) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            while self.data_left > 0 {
                let n = (self.data_left.min(buf.len() as u64)) as usize;
                self.read_exact(&mut buf[..n])?;
                self.data_left -= n as u64;
                w.write_all(&buf[..n])?;
            }
            Ok(())
        })();
        self.buf = buf;
        result
    }

    /// Skip the rest of the current entry's data and padding.
    pub fn skip_rest(&mut self) -> io::Result<()> {
        self.copy_content(&mut io::sink())?;
        self.read_padding().map(|_| ())
    }

    /// Read the current entry's padding (after its data).
    fn read_padding(&mut self) -> io::Result<([u8; BLOCK], usize)> {
        let pad = self.pad_left as usize;
        let mut tmp = [0u8; BLOCK];
        self.read_exact(&mut tmp[..pad])?;
        self.pad_left = 0;
        if tmp[..pad].iter().any(|&b| b != 0) {
            self.padding_zero = false;
        }
        Ok((tmp, pad))
    }
}

/// The data of the current entry (see [`TarReader::data`]).
pub struct EntryData<'a, R>(&'a mut TarReader<R>);

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.0;
        let want = r.data_left.min(out.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = r.inner.read(&mut out[..want])?;
        r.data_left -= n as u64;
        r.offset += n as u64;
        Ok(n)
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn verify_checksum(block: &[u8; BLOCK], at: u64) -> io::Result<()> {
    let field = &block[148..156];
    let text: Vec<u8> = field
        .iter()
        .copied()
        .filter(|c| *c != 0 && *c != b' ')
        .collect();
    let stored = std::str::from_utf8(&text)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 8).ok())
        .ok_or_else(|| invalid(format!("not a tar header at byte {at} (no checksum)")))?;
    let mut unsigned: u32 = 0;
    let mut signed: i32 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    if stored == unsigned || stored as i32 == signed {
        Ok(())
    } else {
        Err(invalid(format!(
            "tar header checksum mismatch at byte {at}"
        )))
    }
}
