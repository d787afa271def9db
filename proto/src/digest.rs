//! sha256 digests: the name of blobs, layers (diff_ids) and file objects.

use core::fmt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub use sha2::Sha256;

/// A sha256 digest. On the wire (postcard) it is exactly 32 raw bytes; in
/// text it is `sha256:<64 lowercase hex>` (OCI form) or bare hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

/// Why a digest string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestParseError {
    /// The algorithm prefix is missing or is not `sha256:`.
    Algorithm,
    /// The hex part is not exactly 64 hex characters.
    Hex,
}

impl fmt::Display for DigestParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestParseError::Algorithm => f.write_str("digest must start with \"sha256:\""),
            DigestParseError::Hex => f.write_str("digest must have 64 lowercase hex characters"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DigestParseError {}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Digest {
    /// The sha256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// The digest a finished [`Sha256`] hasher holds.
    pub fn from_hasher(h: Sha256) -> Digest {
        Digest(h.finalize().into())
    }

    /// Parse `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestParseError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or(DigestParseError::Algorithm)?;
        Digest::from_hex(hex)
    }

    /// Parse 64 lowercase hex characters.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestParseError> {
        let b = hex.as_bytes();
        if b.len() != 64 {
            return Err(DigestParseError::Hex);
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Digest(out))
    }

    /// The 64 hex characters, without allocation.
    pub fn hex_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 15) as usize];
        }
        out
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> alloc::string::String {
        let b = self.hex_bytes();
        // The bytes come from HEX, so they are ASCII.
        b.iter().map(|&c| c as char).collect()
    }
}

fn nibble(c: u8) -> Result<u8, DigestParseError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(DigestParseError::Hex),
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{:02x}", b)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl core::str::FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn round_trips_text() {
        let d = Digest::of(b"");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&s).unwrap(), d);
        assert_eq!(Digest::from_hex(&d.hex()).unwrap(), d);
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(Digest::parse("md5:00"), Err(DigestParseError::Algorithm));
        assert_eq!(Digest::parse("sha256:abc"), Err(DigestParseError::Hex));
        let upper = "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(Digest::parse(upper), Err(DigestParseError::Hex));
    }
}
