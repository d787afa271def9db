//! Figures computed from the image layout, independently of the registry:
//! uncompressed layer bytes, and what a device holding some images lacks of
//! another (its missing files gzip'd one by one).

use layerlink_tests::layers::{image_files, layer_reader};
use layerlink_tests::oci::OciLayout;
use std::collections::BTreeSet;
use std::io::{Read, Write};

/// Uncompressed tar bytes of every layer of `tag`.
pub fn uncompressed_bytes(layout: &OciLayout, tag: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for layer in layout.layers(tag) {
        total += std::io::copy(&mut layer_reader(layout, &layer), &mut std::io::sink())?;
    }
    Ok(total)
}

/// What a device holding `held` lacks of `tag`, by content.
#[derive(Debug, Default, Clone, Copy)]
pub struct Missing {
    /// Distinct non-empty contents the device lacks.
    pub files: u64,
    /// Their raw size.
    pub raw: u64,
    /// Their sizes gzip'd one by one (flate2, default level).
    pub gz: u64,
    /// Tar entries of the target image (every one costs archive metadata).
    pub entries: u64,
}

pub fn missing(layout: &OciLayout, held: &[&str], tag: &str) -> anyhow::Result<Missing> {
    let held = image_files(layout, held).digests;
    let empty = layerlink_tests::sha256_hex(b"");
    let mut counted = BTreeSet::new();
    let mut m = Missing::default();
    let mut content = Vec::new();
    for layer in layout.layers(tag) {
        let mut archive = tar::Archive::new(layer_reader(layout, &layer));
        for entry in archive.entries()? {
            let mut entry = entry?;
            m.entries += 1;
            let t = entry.header().entry_type();
            if !(t.is_file() || t == tar::EntryType::Continuous) {
                continue;
            }
            content.clear();
            entry.read_to_end(&mut content)?;
            let digest = layerlink_tests::sha256_hex(&content);
            if digest == empty || held.contains(&digest) || !counted.insert(digest) {
                continue;
            }
            m.files += 1;
            m.raw += content.len() as u64;
            let mut gz =
                flate2::write::GzEncoder::new(CountingSink(0), flate2::Compression::default());
            gz.write_all(&content)?;
            m.gz += gz.finish()?.0;
        }
    }
    Ok(m)
}

/// A writer that only counts.
pub struct CountingSink(pub u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
