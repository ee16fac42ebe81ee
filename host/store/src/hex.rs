//! The workspace's one hex codec: lowercase on output, either case accepted on input.
//!
//! Every hex string cmbuild writes or reads outside the machine crate (sha256 digests in
//! the mirror index, the image lock, Cargo.lock checksums, manifests) goes through here.

/// Why a hex string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// `{text}` is not {expected} hex digits
    #[error("`{text}` is not {expected} hex digits")]
    Length {
        /// The refused text (cut to 80 characters).
        text: String,
        /// How many digits were expected.
        expected: usize,
    },
    /// `{text}` holds a character that is not a hex digit
    #[error("`{text}` holds a character that is not a hex digit")]
    Digit {
        /// The refused text (cut to 80 characters).
        text: String,
    },
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn shown(text: &str) -> String {
    text.chars().take(80).collect()
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes any even number of digits (either case).
pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    let raw = text.as_bytes();
    if raw.len() % 2 != 0 {
        return Err(HexError::Length {
            text: shown(text),
            expected: raw.len() + 1,
        });
    }
    raw.chunks_exact(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(high), Some(low)) => Ok((high << 4) | low),
            _ => Err(HexError::Digit { text: shown(text) }),
        })
        .collect()
}

/// Decodes exactly `N` bytes (`2 * N` digits, either case).
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let raw = text.as_bytes();
    if raw.len() != 2 * N {
        return Err(HexError::Length {
            text: shown(text),
            expected: 2 * N,
        });
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(raw.chunks_exact(2)) {
        let (Some(high), Some(low)) = (digit(pair[0]), digit(pair[1])) else {
            return Err(HexError::Digit { text: shown(text) });
        };
        *byte = (high << 4) | low;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_junk() {
        let bytes = [0x00, 0x1f, 0xa0, 0xff];
        assert_eq!(encode(bytes), "001fa0ff");
        assert_eq!(decode_array::<4>("001fa0ff"), Ok(bytes));
        assert_eq!(decode_array::<4>("001FA0FF"), Ok(bytes));
        assert!(matches!(
            decode_array::<4>("001fa0f"),
            Err(HexError::Length { expected: 8, .. })
        ));
        assert!(matches!(
            decode_array::<4>("001fa0fg"),
            Err(HexError::Digit { .. })
        ));
        assert_eq!(decode("001fA0ff"), Ok(bytes.to_vec()));
        assert_eq!(decode(""), Ok(Vec::new()));
        assert!(decode("abc").is_err() && decode("zz").is_err());
        // Multi-byte characters never split into digit pairs.
        assert!(decode_array::<2>("é00").is_err());
    }
}
