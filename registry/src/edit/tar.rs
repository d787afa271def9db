//! The entries an edit writes (as opposed to those it copies byte for
//! byte with the registry's reader, [`crate::tar::TarReader`]): headers
//! rendered with the registry's one tar writer
//! ([`crate::tar::entry_header`]), padding and the end of the archive; and
//! the path rule an edit addresses entries by.

use crate::tar::{self as tarfmt, BLOCK};
pub use crate::tar::{pax_record, Kind, RawEntry, TarReader};
use layerlink_proto::archive::{normalize_entry_path, PathError};
use std::io::{self, Write};

const ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

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
    /// The metadata of entry `e` as a new entry of kind `kind` at `path`.
    pub fn like(e: &RawEntry, path: Vec<u8>, kind: NewKind) -> NewEntry {
        let h = e.header();
        NewEntry {
            path,
            kind,
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: e.pax_u64(b"uid").or_else(|| h.uid()).unwrap_or(0),
            gid: e.pax_u64(b"gid").or_else(|| h.gid()).unwrap_or(0),
            mtime: e.pax_mtime().or_else(|| h.mtime()).unwrap_or(0),
            uname: h.uname().to_vec(),
            gname: h.gname().to_vec(),
            xattrs: e.xattrs(),
        }
    }

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
    w.write_all(&ZERO_BLOCK[..tarfmt::padding(len)])
}

/// Write the end-of-archive marker (two zero blocks).
pub fn write_end(w: &mut dyn Write) -> io::Result<()> {
    w.write_all(&ZERO_BLOCK)?;
    w.write_all(&ZERO_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::parse_pax;
    use layerlink_proto::limits::MAX_EXTENSION_HEADERS;

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
