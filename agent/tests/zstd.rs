//! zstd archives (feature `zstd`): the same tar stream as zstd frames, the
//! content of each new file its own frame, as the registry splices them.
//! Valid archives apply exactly like their gzip twins; every kind of bad
//! frame is rejected with a clear integrity error (exit 5) or, for a cut
//! stream, a transient one (exit 3), nothing is committed, and a retry with
//! a good archive completes in the same store.

mod common;

use common::{describe_tree, zstd_frame, Archive, Entry, TempDir};
use flate2::write::GzEncoder;
use flate2::Compression;
use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::error::exit;
use layerlink_agent::store::{Access, Store};
use layerlink_agent::Error;
use layerlink_proto::archive::{Encoding, ZSTD_MAX_WINDOW};
use layerlink_proto::Digest;
use std::io::{Read, Write};

/// Pseudo-random, poorly compressible bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Text-like content with long-range repeats (compresses better with a
/// large window) bigger than the window limit.
fn big_text() -> Vec<u8> {
    let block = noise(300 * 1024, 7);
    let mut v = block.clone();
    v.extend_from_slice(&noise(100 * 1024, 9));
    v.extend_from_slice(&block);
    v
}

fn entries() -> Vec<Entry> {
    vec![
        Entry::dir("./"),
        Entry::dir("etc"),
        Entry::file("etc/hostname", b"device\n").with_digest(),
        Entry::file("etc/empty", b""),
        Entry::symlink("etc/link", "hostname"),
        Entry::file("big.bin", &big_text()).with_digest(),
        Entry::file("small.bin", &noise(3000, 3)).with_digest(),
        Entry::hardlink("etc/hard", "etc/hostname"),
    ]
}

fn diff_id() -> Digest {
    Digest::of(b"zstd-test-layer")
}

/// The uncompressed dedup tar of the test layer, and where each new file's
/// content lies in it (start, len).
fn layer_tar() -> (Vec<u8>, Vec<(usize, usize)>) {
    let d = diff_id();
    let mut a = Archive::new();
    a.layer_start(&d);
    let mut contents = Vec::new();
    let es = entries();
    for e in &es {
        a.entry(e);
        if e.kind == b'0' && !e.data.is_empty() {
            let end = a.tar().len();
            let padded = e.data.len().div_ceil(512) * 512;
            contents.push((end - padded, e.data.len()));
        }
    }
    a.layer_end(&d, es.len() as u64).end();
    (a.tar().to_vec(), contents)
}

/// The registry's layout: headers/padding frames between content frames,
/// each content exactly one frame. `content` may rewrite a content frame.
fn frames_with(
    tar: &[u8],
    contents: &[(usize, usize)],
    mut content: impl FnMut(usize, &[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    for (i, &(start, len)) in contents.iter().enumerate() {
        out.extend(zstd_frame(&tar[pos..start], 18));
        out.extend(content(i, &tar[start..start + len]));
        pos = start + len;
    }
    out.extend(zstd_frame(&tar[pos..], 18));
    out
}

fn good_zstd() -> Vec<u8> {
    let (tar, contents) = layer_tar();
    frames_with(&tar, &contents, |_, c| zstd_frame(c, 18))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn apply(store: &Store, archive: impl Read, declared: Option<Encoding>) -> Result<(), Error> {
    let d = diff_id();
    let mut o = ApplyOptions::new(vec![d]);
    o.image_layers = vec![d];
    let mut a = Applier::new(store, o)?;
    a.apply_encoded(archive, declared)?;
    assert!(a.pending_digests().is_empty());
    Ok(())
}

fn tree(store_path: &std::path::Path) -> Vec<String> {
    describe_tree(&store_path.join("layers").join(diff_id().hex()))
}

#[test]
fn zstd_archive_applies_like_gzip() {
    let t = TempDir::new("zstd-good");
    let (tar, _) = layer_tar();
    let gz_path = t.path().join("gz");
    let gz = Store::open(&gz_path, Access::Exclusive).unwrap();
    apply(&gz, gzip(&tar).as_slice(), Some(Encoding::Gzip)).unwrap();

    for (name, bytes) in [
        ("registry layout", good_zstd()),
        ("one frame", zstd_frame(&tar, 18)),
        ("one frame per entry", {
            let mut a = Archive::zstd();
            let d = diff_id();
            a.layer(&d, &entries()).end();
            a.finish()
        }),
    ] {
        let p = t.path().join(name.replace(' ', "-"));
        let s = Store::open(&p, Access::Exclusive).unwrap();
        apply(&s, bytes.as_slice(), Some(Encoding::Zstd)).expect(name);
        assert_eq!(s.committed_layers().unwrap(), vec![diff_id()], "{name}");
        assert_eq!(tree(&p), tree(&gz_path), "{name}");
        // The magic number alone decides when the response said nothing.
        let p2 = t.path().join(format!("{}-sniffed", name.replace(' ', "-")));
        let s2 = Store::open(&p2, Access::Exclusive).unwrap();
        apply(&s2, bytes.as_slice(), None).expect(name);
        assert_eq!(tree(&p2), tree(&gz_path), "{name}");
    }
    // zstd beats gzip on this content (the point of the encoding).
    assert!(good_zstd().len() < gzip(&tar).len());
}

/// A bad archive: (name, bytes, declared encoding, expected exit code, a
/// word the message must contain).
type BadCase = (&'static str, Vec<u8>, Option<Encoding>, i32, &'static str);

/// Bad zstd archives.
fn bad_cases() -> Vec<BadCase> {
    let (tar, contents) = layer_tar();
    let big = contents
        .iter()
        .position(|&(_, l)| l as u64 > ZSTD_MAX_WINDOW)
        .unwrap();
    let small = contents.iter().position(|&(_, l)| l == 3000).unwrap();
    let mut v = Vec::new();

    // Corrupted content frame: flip bytes in the middle of its blocks.
    v.push((
        "corrupted frame",
        frames_with(&tar, &contents, |i, c| {
            let mut f = zstd_frame(c, 18);
            if i == big {
                let m = f.len() / 2;
                for b in &mut f[m..m + 64] {
                    *b ^= 0x5a;
                }
            }
            f
        }),
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "",
    ));
    // A content frame that decodes to more bytes than the tar header says.
    v.push((
        "frame longer than its entry",
        frames_with(&tar, &contents, |i, c| {
            let mut c = c.to_vec();
            if i == small {
                c.extend_from_slice(b"extra bytes");
            }
            zstd_frame(&c, 18)
        }),
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "",
    ));
    // ... and fewer.
    v.push((
        "frame shorter than its entry",
        frames_with(&tar, &contents, |i, c| {
            zstd_frame(if i == small { &c[..c.len() - 100] } else { c }, 18)
        }),
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "",
    ));
    // A frame whose header declares a content size it does not decode to.
    v.push((
        "frame content size lies",
        frames_with(&tar, &contents, |i, c| {
            let mut f = zstd_frame(c, 18);
            if i == small {
                // 3000 bytes: descriptor with a 2-byte FCS (value - 256).
                assert_eq!(f[4] >> 6, 1, "expected a 2-byte content size");
                let off = if f[4] & 0x20 != 0 { 5 } else { 6 };
                let v = u16::from_le_bytes([f[off], f[off + 1]]) - 1;
                f[off..off + 2].copy_from_slice(&v.to_le_bytes());
            }
            f
        }),
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "declares",
    ));
    // A frame asking for a window above the limit (700 KiB content, window
    // log 19).
    v.push((
        "window above the limit",
        frames_with(&tar, &contents, |i, c| {
            zstd_frame(c, if i == big { 19 } else { 18 })
        }),
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "window",
    ));
    // gzip after some zstd frames.
    v.push((
        "switches to gzip midway",
        {
            let (start, _) = contents[small];
            let mut b = zstd_frame(&tar[..start], 18);
            b.extend(gzip(&tar[start..]));
            b
        },
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "switched",
    ));
    // The response says gzip, the body is zstd (and the reverse).
    v.push((
        "declared gzip, sent zstd",
        good_zstd(),
        Some(Encoding::Gzip),
        exit::INTEGRITY,
        "says gzip",
    ));
    v.push((
        "declared zstd, sent gzip",
        gzip(&tar),
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "says zstd",
    ));
    // A skippable frame in the middle.
    v.push((
        "skippable frame",
        {
            let (start, _) = contents[small];
            let mut b = zstd_frame(&tar[..start], 18);
            b.extend([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
            b.extend(zstd_frame(&tar[start..], 18));
            b
        },
        Some(Encoding::Zstd),
        exit::INTEGRITY,
        "skippable",
    ));
    // Cut in the middle of a frame: a cut download (retried), not bad data.
    v.push((
        "truncated",
        {
            let mut b = good_zstd();
            b.truncate(b.len() / 2);
            b
        },
        Some(Encoding::Zstd),
        exit::NETWORK,
        "",
    ));
    v
}

#[test]
fn bad_zstd_archives_are_rejected_and_a_retry_completes() {
    let t = TempDir::new("zstd-bad");
    let good = good_zstd();
    let mut n = 0;
    for (name, bytes, declared, code, word) in bad_cases() {
        let p = t.path().join(format!("s{n}"));
        n += 1;
        let s = Store::open(&p, Access::Exclusive).unwrap();
        let err = apply(&s, bytes.as_slice(), declared).expect_err(name);
        assert_eq!(err.exit_code(), code, "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(word), "{name}: unclear error {msg:?}");
        assert!(s.committed_layers().unwrap().is_empty(), "{name}");
        // The retry (same store, good archive) completes.
        apply(&s, good.as_slice(), Some(Encoding::Zstd)).expect(name);
        assert_eq!(s.committed_layers().unwrap(), vec![diff_id()], "{name}");
    }
    assert_eq!(n, 10);
}

/// zstd frames of zeros made on demand behind `prefix` (window log 18).
struct ZeroBomb {
    prefix: Option<Vec<u8>>,
    zeros_left: u64,
    produced: u64,
    out: Vec<u8>,
    pos: usize,
}

impl Read for ZeroBomb {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
        while self.pos == self.out.len() {
            if let Some(p) = self.prefix.take() {
                self.out = zstd_frame(&p, 18);
            } else if self.zeros_left > 0 {
                // 16 MiB of zeros per frame: a few hundred bytes each.
                let mut enc = zstd::stream::Encoder::new(Vec::new(), 1)?;
                enc.window_log(18)?;
                for _ in 0..16 {
                    enc.write_all(&ZEROS)?;
                }
                self.out = enc.finish()?;
                self.zeros_left = self.zeros_left.saturating_sub(16 << 20);
                self.produced += 16 << 20;
            } else {
                return Ok(0);
            }
            self.pos = 0;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn zstd_decompression_bomb_stops_at_the_bound() {
    let t = TempDir::new("zstd-bomb");
    let d = diff_id();
    // Layer marker, then a file header declaring 1 TiB; the zeros follow.
    let mut a = Archive::new();
    a.layer_start(&d);
    let mut e = Entry::file("bomb", b"").pax("LAYERLINK.digest", &[b'a'; 64]);
    e.data = Vec::new();
    a.entry(&e.pax("size", b"1099511627776"));
    let prefix = a.tar().to_vec();
    for (what, new, stream) in [
        ("max_new_bytes", 64u64 << 20, u64::MAX),
        ("max_stream_bytes", u64::MAX, 64 << 20),
    ] {
        let s = Store::open(&t.path().join(what), Access::Exclusive).unwrap();
        let mut o = ApplyOptions::new(vec![d]);
        o.max_new_bytes = new;
        o.max_stream_bytes = stream;
        let mut bomb = ZeroBomb {
            prefix: Some(prefix.clone()),
            zeros_left: 8 << 30,
            produced: 0,
            out: Vec::new(),
            pos: 0,
        };
        let mut ap = Applier::new(&s, o).unwrap();
        let err = ap
            .apply_encoded(&mut bomb, Some(Encoding::Zstd))
            .expect_err(what);
        assert_eq!(err.exit_code(), exit::INTEGRITY, "{what}: {err}");
        assert!(
            bomb.produced <= 256 << 20,
            "{what}: read {} bytes",
            bomb.produced
        );
        assert!(s.committed_layers().unwrap().is_empty());
        drop(ap);
        apply(&s, good_zstd().as_slice(), Some(Encoding::Zstd)).unwrap();
    }
}
