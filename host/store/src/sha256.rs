//! [`Sha256`]: a sha2-256 digest as a value, written as 64 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use sha2::Digest;

use crate::hex::{self, HexError};

/// A sha2-256 digest (what Cargo.lock, Debian indices and the mirror index pin).
///
/// `Display`, `FromStr` and serde use lowercase hex (either case is read).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// The digest with these bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Sha256 {
        Sha256(bytes)
    }

    /// The digest of `data`.
    pub fn of(data: impl AsRef<[u8]>) -> Sha256 {
        Sha256(sha2::Sha256::digest(data.as_ref()).into())
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Sha256 {
    fn from(bytes: [u8; 32]) -> Sha256 {
        Sha256(bytes)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = HexError;

    fn from_str(s: &str) -> Result<Sha256, HexError> {
        hex::decode_array(s).map(Sha256)
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Sha256, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_text_and_json_round_trip() {
        let digest = Sha256::of(b"abc");
        let text = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(digest.to_string(), text);
        assert_eq!(text.parse::<Sha256>(), Ok(digest));
        assert_eq!(text.to_uppercase().parse::<Sha256>(), Ok(digest));
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Sha256>("\"abc\"").is_err());
        assert!("zz".repeat(32).parse::<Sha256>().is_err());
    }
}
