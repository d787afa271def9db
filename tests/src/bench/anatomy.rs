//! What a dedup archive is made of: the archive response picked out of the
//! recorded HTTP bytes of a sync, decompressed (gzip or zstd, by magic), its
//! tar entries counted by kind (see proto/SPEC.md).

use crate::figures::CountingSink;
use std::io::{Read, Write};

/// What one dedup archive holds, by entry kind (see proto/SPEC.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct Anatomy {
    /// The archive as sent (compressed).
    pub compressed: u64,
    /// Its codec: "gzip" or "zstd".
    pub codec: &'static str,
    /// Its tar, uncompressed.
    pub tar: u64,
    /// Reference entries (`layerlink:sha256:…` hard links).
    pub references: u64,
    /// New files (`LAYERLINK.digest`) and their content bytes.
    pub new_files: u64,
    pub new_file_bytes: u64,
    /// Marker entries.
    pub markers: u64,
    /// Every other entry (directories, symlinks, empty files, links, …).
    pub other: u64,
    /// The same tar re-compressed (gzip: flate2 default level; zstd: level
    /// 19) without the reference entries: what the archive would cost if
    /// references were free.
    pub without_references: u64,
}

/// The dedup archive among the responses recorded during a sync of `tag`,
/// taken apart.
pub fn archive_anatomy(streams: &[Vec<u8>], tag: &str) -> anyhow::Result<Anatomy> {
    let archives: Vec<Vec<u8>> = streams
        .iter()
        .flat_map(|stream| http_bodies(stream))
        .filter(|(content_type, _)| content_type.contains("archive"))
        .map(|(_, body)| body)
        .collect();
    anyhow::ensure!(
        archives.len() == 1,
        "expected one archive response in the recorded sync of {tag}, found {}",
        archives.len()
    );
    anatomy(&archives[0])
}

/// The responses in one connection's server→client bytes: (content type,
/// body with chunked transfer encoding removed).
pub fn http_bodies(mut s: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(end) = s.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&s[..end]).to_ascii_lowercase();
        s = &s[end + 4..];
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let content_type = header("content-type").unwrap_or_default();
        let mut body = Vec::new();
        if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = n.min(s.len());
            body.extend_from_slice(&s[..n]);
            s = &s[n..];
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
                let size = String::from_utf8_lossy(&s[..eol]);
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or(0);
                s = &s[(eol + 2).min(s.len())..];
                if size == 0 {
                    s = &s[2.min(s.len())..];
                    break;
                }
                let n = size.min(s.len());
                body.extend_from_slice(&s[..n]);
                s = &s[(n + 2).min(s.len())..];
            }
        } else {
            body.extend_from_slice(s);
            s = &[];
        }
        out.push((content_type, body));
    }
    out
}

fn tar_number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256
        field[1..]
            .iter()
            .fold(u64::from(field[0] & 0x7f), |n, b| (n << 8) | u64::from(*b))
    } else {
        let text = String::from_utf8_lossy(field);
        u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
    }
}

/// Compressed size of `bytes` with the archive's codec.
fn compressed_len(codec: &str, bytes: &[u8]) -> anyhow::Result<u64> {
    if codec == "zstd" {
        return Ok(zstd::bulk::compress(bytes, 19)?.len() as u64);
    }
    let mut gz = flate2::write::GzEncoder::new(CountingSink(0), flate2::Compression::default());
    gz.write_all(bytes)?;
    Ok(gz.finish()?.0)
}

/// Decompress an archive body: gzip (possibly several members) or zstd
/// (possibly several frames), told apart by their magic numbers.
fn decompress(body: &[u8]) -> anyhow::Result<(&'static str, Vec<u8>)> {
    let (codec, mut r) = layerlink_tests::layers::decode_archive(body)?;
    let mut tar = Vec::new();
    r.read_to_end(&mut tar)?;
    Ok((codec, tar))
}

/// Walk the archive's tar headers (raw, so entries can be dropped).
pub fn anatomy(body: &[u8]) -> anyhow::Result<Anatomy> {
    let (codec, tar) = decompress(body)?;
    let mut a = Anatomy {
        compressed: body.len() as u64,
        codec,
        tar: tar.len() as u64,
        ..Anatomy::default()
    };
    let mut kept = Vec::with_capacity(tar.len());
    let mut pax: Option<(usize, &[u8])> = None;
    let mut i = 0;
    while i + 512 <= tar.len() {
        let h = &tar[i..i + 512];
        if h.iter().all(|b| *b == 0) {
            kept.extend_from_slice(&tar[i..]);
            break;
        }
        let size = tar_number(&h[124..136]) as usize;
        let end = (i + 512 + size.div_ceil(512) * 512).min(tar.len());
        let data = &tar[(i + 512).min(end)..(i + 512 + size).min(end)];
        if h[156] == b'x' {
            // PAX header: belongs to the entry after it.
            pax = Some((pax.map_or(i, |(start, _)| start), data));
            i = end;
            continue;
        }
        let (start, records) = pax.take().unwrap_or((i, &[]));
        let has = |key: &[u8]| records.windows(key.len()).any(|w| w == key);
        if h[156] == b'1' && h[157..].starts_with(b"layerlink:sha256:") {
            a.references += 1;
        } else {
            if has(b"LAYERLINK.marker=") {
                a.markers += 1;
            } else if has(b"LAYERLINK.digest=") {
                a.new_files += 1;
                a.new_file_bytes += size as u64;
            } else {
                a.other += 1;
            }
            kept.extend_from_slice(&tar[start..end]);
        }
        i = end;
    }
    a.without_references = compressed_len(codec, &kept)?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{Builder, EntryType, Header};

    fn header(kind: EntryType, path: &str, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// A small archive's tar in the shape proto/SPEC.md describes.
    fn archive_tar() -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        b.append_pax_extensions([("LAYERLINK.marker", b"layer".as_slice())])
            .unwrap();
        let mut h = header(EntryType::Regular, ".layerlink/layer", 0);
        b.append(&h, std::io::empty()).unwrap();
        h = header(EntryType::Directory, "etc/", 0);
        b.append(&h, std::io::empty()).unwrap();
        let content = b"hello world\n";
        b.append_pax_extensions([(
            "LAYERLINK.digest",
            layerlink_tests::sha256_hex(content).as_bytes(),
        )])
        .unwrap();
        h = header(EntryType::Regular, "etc/new", content.len() as u64);
        b.append(&h, content.as_slice()).unwrap();
        for i in 0..3 {
            h = header(EntryType::Link, &format!("etc/held{i}"), 0);
            h.set_link_name_literal(format!("layerlink:sha256:{}", "ab".repeat(32)))
                .unwrap();
            b.append(&h, std::io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn check(body: &[u8], codec: &str) {
        let a = anatomy(body).unwrap();
        assert_eq!(a.compressed, body.len() as u64);
        assert_eq!(a.codec, codec);
        assert_eq!(
            (
                a.markers,
                a.other,
                a.new_files,
                a.new_file_bytes,
                a.references
            ),
            (1, 1, 1, 12, 3)
        );
        assert!(a.without_references < a.tar, "{a:?}");
    }

    #[test]
    fn anatomy_counts_entry_kinds_of_gzip_and_zstd_archives() {
        let tar = archive_tar();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        check(&gz.finish().unwrap(), "gzip");
        // Two zstd frames whose concatenation is the tar.
        let (a, b) = tar.split_at(1024);
        let mut zst = zstd::bulk::compress(a, 3).unwrap();
        zst.extend(zstd::bulk::compress(b, 3).unwrap());
        check(&zst, "zstd");
        assert!(anatomy(b"plain").is_err());
    }

    #[test]
    fn http_bodies_handles_length_and_chunked() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 200 OK\r\ncontent-type: application/vnd.layerlink.archive\r\ntransfer-encoding: chunked\r\n\r\n\
2\r\nxy\r\n3\r\nzzz\r\n0\r\n\r\n";
        let bodies = http_bodies(stream);
        assert_eq!(
            bodies,
            vec![
                ("a/b".to_string(), b"abc".to_vec()),
                (
                    "application/vnd.layerlink.archive".to_string(),
                    b"xyzzz".to_vec()
                )
            ]
        );
    }
}
