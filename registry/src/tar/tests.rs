//! The tar codec against the `tar` crate as an oracle.
use super::*;

fn fields(path: &[u8]) -> Fields<'_> {
    Fields {
        path,
        type_flag: b'0',
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        size: 5,
        mtime: 1_700_000_000,
        link: b"",
        uname: b"user",
        gname: b"group",
        dev_major: 0,
        dev_minor: 0,
    }
}

#[test]
fn pax_record_length_counts_itself() {
    let mut v = Vec::new();
    pax_record(&mut v, b"path", b"a");
    assert_eq!(v, b"9 path=a\n");
    // Crossing a digit boundary: 98 bytes without the length → 101.
    let mut v = Vec::new();
    pax_record(&mut v, b"k", &[b'x'; 94]);
    assert_eq!(v.len(), 101);
    assert!(v.starts_with(b"101 k="));
    let mut v = Vec::new();
    pax_record(&mut v, b"k", &[b'x'; 93]);
    assert_eq!(v.len(), 99);
    assert!(v.starts_with(b"99 k="));
}

#[test]
fn block_parses_back_with_tar_crate() {
    let long: Vec<u8> = [&b"d".repeat(120)[..], b"/", &b"f".repeat(90)[..]].concat();
    for path in [&b"etc/passwd"[..], &long[..]] {
        let b = ustar_block(&fields(path));
        let h = tar::Header::from_byte_slice(&b);
        assert_eq!(&*h.path_bytes(), path);
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!(h.uid().unwrap(), 1000);
        assert_eq!(h.size().unwrap(), 5);
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        assert_eq!(h.username_bytes(), Some(&b"user"[..]));
        assert_eq!(h.cksum().unwrap(), {
            let mut c = b;
            c[148..156].fill(b' ');
            c.iter().map(|&x| u32::from(x)).sum::<u32>()
        });
    }
    assert!(!path_fits_ustar(&b"x".repeat(101)));
}

#[test]
fn big_numbers_use_base256() {
    let mut f = fields(b"big");
    f.size = MAX_OCTAL_11 + 1;
    f.uid = MAX_OCTAL_7 + 1;
    let b = ustar_block(&f);
    let h = tar::Header::from_byte_slice(&b);
    assert_eq!(h.size().unwrap(), MAX_OCTAL_11 + 1);
    assert_eq!(h.uid().unwrap(), MAX_OCTAL_7 + 1);
}

#[test]
fn header_block_reads_what_the_tar_crate_reads() {
    let long: Vec<u8> = [&b"d".repeat(120)[..], b"/", &b"f".repeat(90)[..]].concat();
    let mut f = fields(&long);
    f.link = b"target";
    let b = ustar_block(&f);
    let mut big = fields(b"big");
    big.size = MAX_OCTAL_11 + 1;
    big.uid = MAX_OCTAL_7 + 1;
    let mut gnu = tar::Header::new_gnu();
    gnu.set_path("gnu/file").unwrap();
    gnu.set_size(3);
    gnu.set_mode(0o600);
    gnu.set_username("root").unwrap();
    gnu.set_uid(0);
    gnu.set_gid(0);
    gnu.set_mtime(5);
    gnu.set_cksum();
    let mut old = tar::Header::new_old();
    old.set_path("v7/file").unwrap();
    old.set_mtime(99);
    old.set_mode(0o644);
    old.set_uid(1);
    old.set_gid(2);
    old.set_size(0);
    old.set_cksum();
    for block in [
        &b[..],
        &ustar_block(&big)[..],
        gnu.as_bytes(),
        old.as_bytes(),
    ] {
        let ours = HeaderBlock::new(block);
        let oracle = tar::Header::from_byte_slice(block);
        assert_eq!(ours.path(), &*oracle.path_bytes());
        assert_eq!(
            ours.link(),
            oracle.link_name_bytes().as_deref().unwrap_or_default()
        );
        assert_eq!(ours.mode(), oracle.mode().ok());
        assert_eq!(ours.uid(), oracle.uid().ok());
        assert_eq!(ours.gid(), oracle.gid().ok());
        assert_eq!(ours.size(), oracle.entry_size().ok());
        assert_eq!(ours.mtime(), oracle.mtime().ok());
        assert_eq!(ours.uname(), oracle.username_bytes().unwrap_or_default());
        assert_eq!(ours.gname(), oracle.groupname_bytes().unwrap_or_default());
    }
    assert_eq!(parse_numeric(b" 12 \0"), Some(0o12));
    // An all-NUL field is 0, as Go and the agent read it (the tar crate
    // refuses it).
    assert_eq!(parse_numeric(b"\0\0\0"), Some(0));
    assert_eq!(parse_numeric(b"12x\0"), None);
}

/// What a reader says about one entry: its fields and a digest of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    typ: u8,
    path: Vec<u8>,
    link: Vec<u8>,
    size: u64,
    data: layerlink_proto::Digest,
    mode: Option<u32>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<u64>,
    uname: Vec<u8>,
    gname: Vec<u8>,
    dev: (u64, u64),
    pax: PaxRecords,
}

/// Every entry as [`TarReader`] reads it, or its error.
fn ours(tar: impl std::io::Read) -> Result<Vec<Seen>, String> {
    let mut r = TarReader::new(tar);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().map_err(|e| e.to_string())? {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut r.data(), &mut data).map_err(|e| e.to_string())?;
        if data.len() as u64 != e.size {
            return Err(format!("entry data cut at {} of {}", data.len(), e.size));
        }
        let h = e.header();
        out.push(Seen {
            typ: e.typ,
            path: e.path.clone(),
            link: e.link.clone(),
            size: e.size,
            data: layerlink_proto::Digest::of(&data),
            mode: h.mode(),
            uid: e.pax_u64(b"uid").or(h.uid()),
            gid: e.pax_u64(b"gid").or(h.gid()),
            mtime: h.mtime(),
            uname: h.uname().to_vec(),
            gname: h.gname().to_vec(),
            dev: (h.dev_major().unwrap_or(0), h.dev_minor().unwrap_or(0)),
            pax: e.pax.clone(),
        });
    }
    r.skip_rest().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Every entry as the `tar` crate reads it, or its error.
fn oracle(tar: impl std::io::Read) -> Result<Vec<Seen>, String> {
    let mut ar = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let pax: PaxRecords = match e.pax_extensions().map_err(|e| e.to_string())? {
            Some(exts) => exts
                .map(|x| x.map(|x| (x.key_bytes().to_vec(), x.value_bytes().to_vec())))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let pax_path = |k: &[u8]| {
            pax.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let path = pax_path(b"path").unwrap_or_else(|| e.path_bytes().into_owned());
        let link = pax_path(b"linkpath").unwrap_or_else(|| {
            e.link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default()
        });
        let h = e.header().clone();
        let size = e.size();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).map_err(|e| e.to_string())?;
        out.push(Seen {
            typ: h.as_bytes()[156],
            path,
            link,
            size,
            data: layerlink_proto::Digest::of(&data),
            mode: h.mode().ok(),
            uid: h.uid().ok(),
            gid: h.gid().ok(),
            mtime: h.mtime().ok(),
            uname: h.username_bytes().unwrap_or_default().to_vec(),
            gname: h.groupname_bytes().unwrap_or_default().to_vec(),
            dev: (
                h.device_major().ok().flatten().map_or(0, u64::from),
                h.device_minor().ok().flatten().map_or(0, u64::from),
            ),
            pax,
        });
    }
    Ok(out)
}

/// A header block as the `tar` crate makes it, with our checksum.
fn block(typ: u8, path: &[u8], link: &[u8], size: u64) -> [u8; BLOCK] {
    let mut f = fields(path);
    f.type_flag = typ;
    f.link = link;
    f.size = size;
    ustar_block(&f)
}

fn append(out: &mut Vec<u8>, header: &[u8], data: &[u8]) {
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len() as u64), 0);
}

fn pax_entry(out: &mut Vec<u8>, records: &[(&[u8], &[u8])]) {
    let mut pax = Vec::new();
    for (k, v) in records {
        pax_record(&mut pax, k, v);
    }
    append(
        out,
        &block(b'x', PAX_HEADER_NAME, b"", pax.len() as u64),
        &pax,
    );
}

fn end(mut t: Vec<u8>) -> Vec<u8> {
    t.extend_from_slice(&[0u8; 2 * BLOCK]);
    t
}

/// Inputs on which both readers must say the same: the same entries, or
/// both an error.
fn agreed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut t = Vec::new();
    append(&mut t, &block(b'0', b"a", b"", 5), b"hello");
    append(&mut t, &block(b'5', b"d/", b"", 0), b"");
    append(&mut t, &block(b'2', b"s", b"a", 0), b"");
    append(&mut t, &block(b'1', b"h", b"a", 0), b"");
    let mut dev = fields(b"dev/null");
    dev.type_flag = b'3';
    dev.size = 0;
    dev.dev_major = 1;
    dev.dev_minor = 3;
    append(&mut t, &ustar_block(&dev), b"");
    v.push(("plain entries", end(t.clone())));
    v.push(("no end-of-archive blocks", t.clone()));
    let mut g = end(t.clone());
    g.extend_from_slice(b"junk after the end");
    v.push(("trailing garbage", g));
    let long = [&b"d".repeat(150)[..], b"/", &b"f".repeat(150)[..]].concat();
    let mut t = Vec::new();
    pax_entry(
        &mut t,
        &[
            (b"path", &long),
            (b"SCHILY.xattr.user.k", b"v"),
            (b"mtime", b"1700000000.5"),
            (b"uid", b"70000000"),
        ],
    );
    append(&mut t, &block(b'0', b"short", b"", 3), b"abc");
    let mut gnu = tar::Header::new_gnu();
    gnu.set_entry_type(tar::EntryType::GNULongName);
    gnu.set_size(long.len() as u64 + 1);
    gnu.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    gnu.set_cksum();
    append(&mut t, gnu.as_bytes(), &[&long[..], b"\0"].concat());
    append(&mut t, &block(b'0', b"cut", b"", 2), b"xy");
    let mut big = fields(b"big");
    big.size = 0;
    big.uid = MAX_OCTAL_7 + 1;
    append(&mut t, &ustar_block(&big), b"");
    v.push(("PAX, GNU long name, base-256", end(t.clone())));
    let mut cut = t.clone();
    cut.truncate(cut.len() - 300);
    v.push(("cut inside a header block", cut));
    let mut cut = t.clone();
    cut.truncate(7 * BLOCK + 1);
    v.push(("cut inside data", cut));
    let mut cut = t.clone();
    cut.truncate(BLOCK + 100);
    v.push(("cut inside a PAX header", cut));
    let mut bad = end(t.clone());
    bad[BLOCK * 2 + 148] ^= 1;
    v.push(("bad checksum", bad));
    v.push((
        "random bytes",
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ));
    v.push(("empty", Vec::new()));
    v.push(("half a block", vec![1u8; 100]));
    v
}

#[test]
fn reader_agrees_with_the_tar_crate() {
    for (name, tar) in agreed_inputs() {
        let (a, b) = (ours(&tar[..]), oracle(&tar[..]));
        match (&a, &b) {
            (Ok(x), Ok(y)) => assert_eq!(x, y, "{name}"),
            (Err(_), Err(_)) => {}
            _ => panic!("{name}: ours {a:?}, the tar crate {b:?}"),
        }
        println!("{name}: {}", if a.is_ok() { "read" } else { "refused" });
    }
}

/// Where the reader follows Go's `archive/tar` (and the agent) rather than
/// the `tar` crate; each case is pinned here.
#[test]
fn reader_follows_go_where_the_tar_crate_differs() {
    // A hard link's size field is not data.
    let mut t = Vec::new();
    append(&mut t, &block(b'1', b"h", b"a", 5), b"");
    append(&mut t, &block(b'0', b"a", b"", 1), b"x");
    let t = end(t);
    let got = ours(&t[..]).unwrap();
    assert_eq!((got.len(), got[0].size, got[1].size), (2, 0, 1));
    assert!(oracle(&t[..]).map_or(true, |v| v != got));

    // Two PAX headers before one entry: their records add up (the tar
    // crate refuses them).
    let mut t = Vec::new();
    pax_entry(&mut t, &[(b"SCHILY.xattr.user.a", b"1")]);
    pax_entry(&mut t, &[(b"path", b"renamed")]);
    append(&mut t, &block(b'0', b"f", b"", 0), b"");
    let t = end(t);
    let got = ours(&t[..]).unwrap();
    assert_eq!(got[0].path, b"renamed");
    assert_eq!(got[0].pax.len(), 2);
    assert!(oracle(&t[..]).is_err());

    // A binary PAX value with a newline (xattrs may hold one): records go
    // by their length prefix.
    let mut t = Vec::new();
    pax_entry(
        &mut t,
        &[(b"SCHILY.xattr.security.capability", b"\x01\n\x00")],
    );
    append(&mut t, &block(b'0', b"f", b"", 0), b"");
    let got = ours(&end(t)[..]).unwrap();
    assert_eq!(got[0].pax[0].1, b"\x01\n\x00");

    // An all-NUL numeric field is 0; the signed checksum is accepted.
    let mut b = block(b'0', b"f", b"", 0);
    b[108..116].fill(0);
    set_checksum(&mut b);
    b[0] = 0xe9; // a high byte: signed and unsigned sums differ
    let signed: i32 = b
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                32
            } else {
                i32::from(c as i8)
            }
        })
        .sum();
    b[148..155].copy_from_slice(format!("{signed:06o}\0").as_bytes());
    let got = ours(&end(b.to_vec())[..]).unwrap();
    assert_eq!((got[0].uid, &got[0].path[..]), (Some(0), &b"\xe9"[..]));
    assert!(oracle(&end(b.to_vec())[..]).is_err());

    // Bounds: extension headers in a row and their size.
    let mut t = Vec::new();
    for _ in 0..=layerlink_proto::limits::MAX_EXTENSION_HEADERS {
        pax_entry(&mut t, &[(b"comment", b"again")]);
    }
    append(&mut t, &block(b'0', b"f", b"", 0), b"");
    let err = ours(&end(t)[..]).unwrap_err();
    assert!(err.contains("extension headers in a row"), "{err}");
    let mut t = Vec::new();
    let huge = vec![b'a'; layerlink_proto::limits::MAX_PAX_BYTES as usize];
    pax_entry(&mut t, &[(b"comment", &huge)]);
    append(&mut t, &block(b'0', b"f", b"", 0), b"");
    let err = ours(&end(t)[..]).unwrap_err();
    assert!(err.contains("more than"), "{err}");
}

/// The reader and the `tar` crate agree on every entry of every layer of
/// the cached test images (`scripts/build-test-images.sh`;
/// `LAYERLINK_TEST_OCI` overrides the layout). Release tier:
/// `cargo test --release -p layerlink-registry --lib -- --ignored`.
#[test]
#[ignore]
fn reader_agrees_with_the_tar_crate_on_real_layers() {
    let dir = std::env::var_os("LAYERLINK_TEST_OCI")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/layerlink/images/oci".into());
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let json = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blob(d)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("test image cache"))
            .unwrap();
    let mut layers = std::collections::BTreeMap::new();
    for m in index["manifests"].as_array().unwrap() {
        for l in json(m["digest"].as_str().unwrap())["layers"]
            .as_array()
            .unwrap()
        {
            layers.insert(
                l["digest"].as_str().unwrap().to_owned(),
                l["mediaType"].as_str().unwrap_or("").to_owned(),
            );
        }
    }
    assert!(!layers.is_empty());
    let open = |d: &str, mt: &str| {
        crate::compression::decompressor(std::fs::File::open(blob(d)).unwrap(), mt).unwrap()
    };
    for (d, mt) in &layers {
        let a = ours(open(d, mt)).unwrap();
        let b = oracle(open(d, mt)).unwrap();
        assert_eq!(a.len(), b.len(), "layer {d}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "layer {d}");
        }
        println!("layer {d}: {} entries agree", a.len());
    }
}
