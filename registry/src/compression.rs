//! The one layer-blob codec: which compression a blob uses (by its magic
//! bytes, its media type as the fallback) and the streaming decompressor
//! and compressor of gzip, zstd and plain tar. Ingest reads pushed layers
//! through [`decompressor`]; the editor's `LayerReader` and `LayerWriter`
//! (`edit::stream`, which hash both sides) wrap [`Decoder`] and
//! [`Encoder`]; the entry index records the [`Compression`] a layer came
//! in.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Recognise compressed data by its magic bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression of a blob starting with `head` pushed as
    /// `media_type`: what its magic bytes say; a type naming gzip or zstd
    /// over bytes without that magic is an error.
    pub fn detect(head: &[u8], media_type: &str) -> io::Result<Compression> {
        let found = Compression::sniff(head);
        if found == Compression::None
            && (media_type.ends_with("gzip") || media_type.ends_with("+zstd"))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("media type {media_type} but the blob does not start with its magic bytes"),
            ));
        }
        Ok(found)
    }

    /// The compression a layer media type names.
    pub fn of_media_type(media_type: &str) -> Compression {
        if media_type.ends_with("zstd") {
            Compression::Zstd
        } else if media_type.ends_with(".tar") || media_type.ends_with("+tar") {
            Compression::None
        } else {
            Compression::Gzip
        }
    }
}

/// Decompresses a buffered blob stream.
pub enum Decoder<R: BufRead> {
    /// Plain tar: passed through.
    Plain(R),
    /// gzip, every member.
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    /// zstd.
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decoder<R> {
    /// Decompress `raw` as `compression`.
    pub fn new(raw: R, compression: Compression) -> io::Result<Decoder<R>> {
        Ok(match compression {
            Compression::None => Decoder::Plain(raw),
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(raw)),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(raw)?),
        })
    }

    /// The compression being decoded.
    pub fn compression(&self) -> Compression {
        match self {
            Decoder::Plain(_) => Compression::None,
            Decoder::Gzip(_) => Compression::Gzip,
            Decoder::Zstd(_) => Compression::Zstd,
        }
    }

    /// The compressed stream (to read what follows the compressed data).
    pub fn into_inner(self) -> R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(r) => r.into_inner(),
            Decoder::Zstd(r) => r.finish(),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// Detect the compression of a layer stream by its magic bytes (the media
/// type only decides when the bytes say nothing:
/// [`Compression::detect`]) and decompress it, reading 256 KiB at a time.
pub fn decompressor<R: Read>(reader: R, media_type: &str) -> io::Result<Decoder<BufReader<R>>> {
    let mut raw = BufReader::with_capacity(256 * 1024, reader);
    let compression = Compression::detect(raw.fill_buf()?, media_type)?;
    Decoder::new(raw, compression)
}

/// Compresses into a writer.
pub enum Encoder<W: Write> {
    /// Plain tar: passed through.
    Plain(W),
    /// gzip, default level.
    Gzip(flate2::write::GzEncoder<W>),
    /// zstd, level 3.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Compress what is written as `compression` into `sink`.
    pub fn new(sink: W, compression: Compression) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::None => Encoder::Plain(sink),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(sink, 3)?),
        })
    }

    /// Write the compressed tail; the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_compression() {
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar"),
            Compression::None
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
            Compression::Gzip
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Compression::Zstd
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Compression::Gzip
        );
    }

    #[test]
    fn the_bytes_decide_and_a_compressed_type_needs_its_magic() {
        let gz = [0x1f, 0x8b, 8, 0];
        let zst = [0x28, 0xb5, 0x2f, 0xfd];
        let tar = b"etc/\0\0\0\0";
        let oci = "application/vnd.oci.image.layer.v1.tar";
        assert_eq!(Compression::detect(&gz, oci).unwrap(), Compression::Gzip);
        assert_eq!(
            Compression::detect(&zst, &format!("{oci}+gzip")).unwrap(),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(tar, oci).unwrap(), Compression::None);
        for mt in [
            format!("{oci}+gzip"),
            format!("{oci}+zstd"),
            "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
        ] {
            let e = Compression::detect(tar, &mt).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{mt}");
        }
    }

    #[test]
    fn encoder_and_decoder_round_trip() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut e = Encoder::new(Vec::new(), c).unwrap();
            e.write_all(&data).unwrap();
            let blob = e.finish().unwrap();
            if c != Compression::None {
                assert!(blob.len() < data.len(), "{c:?}");
            }
            let mut d = decompressor(&blob[..], "").unwrap();
            assert_eq!(d.compression(), c);
            let mut out = Vec::new();
            d.read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{c:?}");
            // Read to the end: nothing is left of the compressed stream.
            let mut rest = Vec::new();
            d.into_inner().read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{c:?}");
        }
    }
}
