//! The canonical byte encoding of device and processor state.
//!
//! Every field is written as fixed-width little-endian integers in declaration order, with
//! no padding and no maps, so the same state always gives the same bytes: the state hash
//! hashes them and snapshots store them.

/// Why saved state could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// saved state ended early (truncated or from another version)
    #[error("saved state ended early (truncated or from another version)")]
    Truncated,
    /// saved state holds an invalid value for {0}
    #[error("saved state holds an invalid value for {0}")]
    Invalid(&'static str),
}

/// Appends `v` as 8 little-endian bytes.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` as one byte.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

/// Reads the fields back in the order they were put.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next 8 bytes as a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, StateError> {
        let (head, rest) = self.rest.split_at_checked(8).ok_or(StateError::Truncated)?;
        self.rest = rest;
        Ok(u64::from_le_bytes(head.try_into().expect("8 bytes")))
    }

    /// The next byte.
    pub fn u8(&mut self) -> Result<u8, StateError> {
        let (&b, rest) = self.rest.split_first().ok_or(StateError::Truncated)?;
        self.rest = rest;
        Ok(b)
    }

    /// The next byte as a bool (0 or 1 only).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(StateError::Invalid(what)),
        }
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: u64) -> Result<&'a [u8], StateError> {
        let len = usize::try_from(len).map_err(|_| StateError::Truncated)?;
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(StateError::Truncated)?;
        self.rest = rest;
        Ok(head)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_truncation_is_reported() {
        let mut out = Vec::new();
        put_u64(&mut out, 0x0123_4567_89ab_cdef);
        put_u8(&mut out, 1);
        let mut r = Reader::new(&out);
        assert_eq!(r.u64(), Ok(0x0123_4567_89ab_cdef));
        assert_eq!(r.bool("flag"), Ok(true));
        assert_eq!(r.u8(), Err(StateError::Truncated));
        let mut r = Reader::new(&[2]);
        assert_eq!(r.bool("flag"), Err(StateError::Invalid("flag")));
    }
}
