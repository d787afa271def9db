//! Raw tar, block by block: a reader that hands out each entry together
//! with the exact bytes it was made of (so an untouched entry is copied
//! byte for byte), and a writer for the few entries an edit makes. Header
//! fields are read with [`crate::tar::HeaderBlock`] and written with
//! [`crate::tar::entry_header`]; the `tar` crate is only a test oracle here.
//!
//! An entry is its extension headers (PAX `x`, GNU `L`/`K` long names,
//! with their data), its own header block (plus GNU sparse extension
//! blocks), then its data padded to 512 bytes. Global PAX headers (`g`) are
//! entries of their own. Following Go's `archive/tar` (which wrote most
//! layers in the wild), link, symlink, device, directory and FIFO entries
//! carry no data whatever their size field says.

pub use crate::tar::pax_record;
use crate::tar::{self as tarfmt, parse_pax, HeaderBlock, BLOCK};
use layerlink_proto::archive::{normalize_entry_path, PathError};
use layerlink_proto::limits::{MAX_EXTENSION_HEADERS, MAX_PAX_BYTES};
use std::io::{self, Read, Write};

const ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

/// Bytes of padding after `len` bytes of data.
fn padding(len: u64) -> u64 {
    tarfmt::padding(len) as u64
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// What an entry makes on disk, as far as editing cares.
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
    /// The entry's PAX records, in order.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// The entry's header block, parsed field by field.
    pub fn header(&self) -> HeaderBlock<'_> {
        HeaderBlock::new(&self.header)
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

    /// The metadata of this entry as a new entry of kind `kind` at `path`.
    pub fn to_new(&self, path: Vec<u8>, kind: NewKind) -> NewEntry {
        let h = self.header();
        let pax_num = |key: &[u8]| {
            self.pax
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .and_then(|s| s.split('.').next().and_then(|i| i.parse::<u64>().ok()))
        };
        NewEntry {
            path,
            kind,
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: pax_num(b"uid").or_else(|| h.uid()).unwrap_or(0),
            gid: pax_num(b"gid").or_else(|| h.gid()).unwrap_or(0),
            mtime: pax_num(b"mtime").or_else(|| h.mtime()).unwrap_or(0),
            uname: h.uname().to_vec(),
            gname: h.gname().to_vec(),
            xattrs: self.xattrs(),
        }
    }
}

/// A normalised layer path: `Ok(None)` is the root (`.`, `./`), a leading
/// `/` is ignored. Errors name paths no edit can address (`..`, NUL, too
/// long).
pub fn normalize_layer_path(raw: &[u8]) -> Result<Option<Vec<u8>>, PathError> {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix(b"/") {
        p = rest;
    }
    match normalize_entry_path(p) {
        Ok(v) => Ok(Some(v)),
        Err(PathError::Empty) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a tar stream entry by entry, keeping each entry's raw bytes.
pub struct TarReader<R> {
    inner: R,
    data_left: u64,
    pad_left: u64,
    offset: u64,
    ended: bool,
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
            buf: vec![0; 64 * 1024],
        }
    }

    /// The underlying reader. Whatever follows the end-of-archive block
    /// was not read.
    pub fn into_inner(self) -> R {
        self.inner
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
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
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
            match typ {
                b'x' | b'L' | b'K' => {
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
                    let mut data = vec![0u8; (hsize + padding(hsize)) as usize];
                    self.read_exact(&mut data)?;
                    ext.extend_from_slice(&block);
                    ext.extend_from_slice(&data);
                    data.truncate(hsize as usize);
                    match typ {
                        b'x' => pax.extend(parse_pax(&data).map_err(|m| {
                            invalid(format!("bad PAX header at byte {start}: {m}"))
                        })?),
                        b'L' => gnu_name = Some(trim_nul(data)),
                        _ => gnu_link = Some(trim_nul(data)),
                    }
                }
                _ => {
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
                    let pax_get = |key: &[u8]| {
                        pax.iter()
                            .rev()
                            .find(|(k, _)| k == key)
                            .map(|(_, v)| v.clone())
                    };
                    let path = pax_get(b"path").or(gnu_name).unwrap_or_else(|| h.path());
                    let link = pax_get(b"linkpath")
                        .or(gnu_link)
                        .unwrap_or_else(|| h.link().to_vec());
                    let mut size = match pax_get(b"size") {
                        Some(v) => std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .ok_or_else(|| {
                                invalid(format!("bad PAX size in tar entry at byte {start}"))
                            })?,
                        None => hsize,
                    };
                    if matches!(typ, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
                        size = 0;
                    }
                    self.data_left = size;
                    self.pad_left = padding(size);
                    return Ok(Some(RawEntry {
                        ext,
                        header,
                        typ,
                        path,
                        link,
                        size,
                        pax,
                    }));
                }
            }
        }
    }

    /// Copy the rest of the current entry's data and its padding to `w`.
    pub fn copy_raw(&mut self, w: &mut dyn Write) -> io::Result<()> {
        self.copy_content(w)?;
        let pad = self.pad_left as usize;
        let mut tmp = [0u8; BLOCK];
        self.read_exact(&mut tmp[..pad])?;
        self.pad_left = 0;
        w.write_all(&tmp[..pad])
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
        let pad = self.pad_left as usize;
        let mut tmp = [0u8; BLOCK];
        self.read_exact(&mut tmp[..pad])?;
        self.pad_left = 0;
        Ok(())
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

/// What a new entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewKind {
    /// A regular file of `size` bytes; the data follows the header.
    File {
        /// Content length.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symlink to the target.
    Symlink(Vec<u8>),
    /// A hard link to an earlier path of the layer (normalised).
    HardLink(Vec<u8>),
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A FIFO.
    Fifo,
}

/// An entry the editor writes (as opposed to one it copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Normalised path (no leading `/` or `./`).
    pub path: Vec<u8>,
    /// What it is.
    pub kind: NewKind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Owner name (may be empty).
    pub uname: Vec<u8>,
    /// Group name (may be empty).
    pub gname: Vec<u8>,
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl NewEntry {
    /// A directory owned by root with mode 0755.
    pub fn dir(path: Vec<u8>, mtime: u64) -> NewEntry {
        NewEntry {
            path,
            kind: NewKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            uname: Vec::new(),
            gname: Vec::new(),
            xattrs: Vec::new(),
        }
    }
}

/// Write the header(s) of `e` with the registry's one tar writer
/// ([`crate::tar::entry_header`]): a PAX header first when a name does not
/// fit ustar, a user or group name is longer than 32 bytes, or there are
/// xattrs. For a file, the caller writes exactly `size` bytes of data then
/// [`write_padding`].
pub fn write_header(w: &mut dyn Write, e: &NewEntry) -> io::Result<()> {
    let mut name = e.path.clone();
    if e.kind == NewKind::Dir {
        name.push(b'/');
    }
    let link: &[u8] = match &e.kind {
        NewKind::Symlink(t) | NewKind::HardLink(t) => t,
        _ => &[],
    };
    let mut records = Vec::new();
    if !tarfmt::path_fits_ustar(&name) {
        pax_record(&mut records, b"path", &name);
    }
    if link.len() > 100 {
        pax_record(&mut records, b"linkpath", link);
    }
    if e.uname.len() > 32 {
        pax_record(&mut records, b"uname", &e.uname);
    }
    if e.gname.len() > 32 {
        pax_record(&mut records, b"gname", &e.gname);
    }
    for (k, v) in &e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax_record(&mut records, &key, v);
    }
    let (type_flag, size, (dev_major, dev_minor)) = match &e.kind {
        NewKind::File { size } => (b'0', *size, (0, 0)),
        NewKind::Dir => (b'5', 0, (0, 0)),
        NewKind::Symlink(_) => (b'2', 0, (0, 0)),
        NewKind::HardLink(_) => (b'1', 0, (0, 0)),
        NewKind::Char(ma, mi) => (b'3', 0, (*ma, *mi)),
        NewKind::Block(ma, mi) => (b'4', 0, (*ma, *mi)),
        NewKind::Fifo => (b'6', 0, (0, 0)),
    };
    let f = tarfmt::Fields {
        path: &name,
        type_flag,
        mode: e.mode & 0o7777,
        uid: e.uid,
        gid: e.gid,
        size,
        mtime: e.mtime,
        link,
        uname: &e.uname,
        gname: &e.gname,
        dev_major,
        dev_minor,
    };
    let mut out = Vec::with_capacity(3 * BLOCK + records.len());
    tarfmt::entry_header(&mut out, &f, &records);
    w.write_all(&out)
}

/// Write the zero padding after `len` bytes of data.
pub fn write_padding(w: &mut dyn Write, len: u64) -> io::Result<()> {
    w.write_all(&ZERO_BLOCK[..padding(len) as usize])
}

/// Write the end-of-archive marker (two zero blocks).
pub fn write_end(w: &mut dyn Write) -> io::Result<()> {
    w.write_all(&ZERO_BLOCK)?;
    w.write_all(&ZERO_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream of `n` PAX headers in a row (each naming a 300-byte
    /// directory), then one directory entry.
    fn pax_run(n: usize) -> Vec<u8> {
        let long = NewEntry::dir(b"p".repeat(300), 0);
        let mut out = Vec::new();
        for _ in 0..n {
            // A PAX header and the entry's block: keep only the PAX header.
            write_header(&mut out, &long).unwrap();
            out.truncate(out.len() - BLOCK);
        }
        write_header(&mut out, &NewEntry::dir(b"f".to_vec(), 0)).unwrap();
        write_end(&mut out).unwrap();
        out
    }

    #[test]
    fn caps_extension_headers_in_a_row() {
        let ok = pax_run(MAX_EXTENSION_HEADERS);
        let e = TarReader::new(&ok[..]).next_entry().unwrap().unwrap();
        assert_eq!(e.path, [&b"p".repeat(300)[..], b"/"].concat());

        let bad = pax_run(MAX_EXTENSION_HEADERS + 1);
        let err = TarReader::new(&bad[..]).next_entry().unwrap_err();
        assert!(
            err.to_string()
                .contains("more than 8 tar extension headers in a row"),
            "{err}"
        );
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"a");
        assert_eq!(out, b"9 path=a\n");
        let mut out = Vec::new();
        let v = vec![b'x'; 95];
        pax_record(&mut out, b"path", &v);
        assert!(
            out.starts_with(b"105 path=") && out.len() == 105,
            "{:?}",
            &out[..8]
        );
        assert_eq!(parse_pax(&out).unwrap(), vec![(b"path".to_vec(), v)]);
    }

    #[test]
    fn long_names_round_trip_through_tar_crate() {
        let long = [b'd'; 120]
            .iter()
            .chain(b"/")
            .chain([b'f'; 120].iter())
            .copied()
            .collect::<Vec<u8>>();
        let mut buf = Vec::new();
        let e = NewEntry {
            path: long.clone(),
            kind: NewKind::Symlink(vec![b't'; 150]),
            mode: 0o777,
            uid: 5,
            gid: 6,
            mtime: 7,
            uname: vec![],
            gname: vec![],
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        };
        write_header(&mut buf, &e).unwrap();
        write_end(&mut buf).unwrap();
        let mut ar = tar::Archive::new(&buf[..]);
        let mut entries = ar.entries().unwrap();
        let mut ent = entries.next().unwrap().unwrap();
        assert_eq!(&*ent.path_bytes(), &long[..]);
        assert_eq!(ent.link_name_bytes().unwrap().len(), 150);
        assert_eq!(ent.header().uid().unwrap(), 5);
        let ext: Vec<_> = ent
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap().key().unwrap().to_owned())
            .collect();
        assert!(ext.contains(&"SCHILY.xattr.user.k".to_owned()));

        let mut r = TarReader::new(&buf[..]);
        let raw = r.next_entry().unwrap().unwrap();
        assert_eq!(raw.path, long);
        assert_eq!(raw.kind(), Kind::Symlink);
        assert_eq!(raw.xattrs(), vec![(b"user.k".to_vec(), b"v".to_vec())]);
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn long_paths_split_like_the_archive_writer() {
        // The editor and the archive writer share one ustar/PAX convention.
        let p = [b"a".repeat(80), b"b".repeat(80)].join(&b'/');
        let mut buf = Vec::new();
        write_header(&mut buf, &NewEntry::dir(p.clone(), 0)).unwrap();
        assert_eq!(buf.len(), BLOCK, "fits ustar: no PAX header");
        let h = tar::Header::from_byte_slice(&buf[..BLOCK]);
        assert_eq!(h.as_ustar().unwrap().prefix, {
            let mut f = [0u8; 155];
            f[..80].copy_from_slice(&b"a".repeat(80));
            f
        });
        let mut dir = p.clone();
        dir.push(b'/');
        assert_eq!(&*h.path_bytes(), &dir[..]);

        let long = b"c".repeat(300);
        let mut buf = Vec::new();
        write_header(&mut buf, &NewEntry::dir(long.clone(), 0)).unwrap();
        assert_eq!(
            &buf[..tarfmt::PAX_HEADER_NAME.len()],
            tarfmt::PAX_HEADER_NAME
        );
        let e = TarReader::new(&buf[..]).next_entry().unwrap().unwrap();
        let mut want = long;
        want.push(b'/');
        assert_eq!(e.path, want);
    }

    #[test]
    fn corrupt_checksum_is_an_error() {
        let mut buf = Vec::new();
        write_header(&mut buf, &NewEntry::dir(b"etc".to_vec(), 0)).unwrap();
        write_end(&mut buf).unwrap();
        buf[0] ^= 1;
        let err = TarReader::new(&buf[..]).next_entry().unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn layer_paths() {
        assert_eq!(normalize_layer_path(b"./").unwrap(), None);
        assert_eq!(normalize_layer_path(b".").unwrap(), None);
        assert_eq!(
            normalize_layer_path(b"/etc/motd").unwrap(),
            Some(b"etc/motd".to_vec())
        );
        assert_eq!(
            normalize_layer_path(b"./etc/").unwrap(),
            Some(b"etc".to_vec())
        );
        assert!(normalize_layer_path(b"a/../../b").is_err());
    }
}
