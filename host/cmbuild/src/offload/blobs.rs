//! The blobs a run holds for its jobs, by sha256: the files of the input drive, every
//! job's outputs, and what the guest uploaded. Each is a file `<dir>/<sha256>`, written
//! atomically and checked against its name whenever it is read.

use std::path::{Path, PathBuf};

use cmbuild_store::atomic::{write_atomically, AtomicError};
use cmbuild_store::sha256::Sha256;

use super::wire::BlobChunk;

/// Errors of the blob store and of uploads.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// cannot store blob {0}
    #[error("cannot store blob {0}")]
    Write(Sha256, #[source] AtomicError),
    /// cannot read blob {0}
    #[error("cannot read blob {0}")]
    Read(Sha256, #[source] std::io::Error),
    /// blob {0} does not match its digest; it was removed
    #[error("blob {0} does not match its digest; it was removed")]
    Corrupt(Sha256),
    /// a chunk of blob {sha256} starts at {offset}, where {expected} was next
    #[error("a chunk of blob {sha256} starts at {offset}, where {expected} was next")]
    OutOfOrder {
        /// The blob.
        sha256: Sha256,
        /// Where the chunk starts.
        offset: u64,
        /// Where the next chunk must start.
        expected: u64,
    },
    /// the uploaded blob's bytes are {actual}, not {sha256}
    #[error("the uploaded blob's bytes are {actual}, not {sha256}")]
    Mismatch {
        /// What it was announced as.
        sha256: Sha256,
        /// What it is.
        actual: Sha256,
    },
}

/// A directory of blobs named by their sha256.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<BlobStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(BlobStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join(sha256.to_string())
    }

    /// Stores `bytes` (nothing happens if they are there already); their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Sha256, BlobError> {
        let sha256 = Sha256::of(bytes);
        if !self.has(&sha256) {
            write_atomically(&self.path(&sha256), bytes)
                .map_err(|e| BlobError::Write(sha256, e))?;
        }
        Ok(sha256)
    }

    /// Whether the blob is there (its bytes are checked when read).
    pub fn has(&self, sha256: &Sha256) -> bool {
        self.path(sha256).is_file()
    }

    /// The blob's bytes; a blob that does not match its name is removed and refused.
    pub fn get(&self, sha256: &Sha256) -> Result<Vec<u8>, BlobError> {
        let path = self.path(sha256);
        let bytes = std::fs::read(&path).map_err(|e| BlobError::Read(*sha256, e))?;
        if Sha256::of(&bytes) != *sha256 {
            let _ = std::fs::remove_file(&path);
            return Err(BlobError::Corrupt(*sha256));
        }
        Ok(bytes)
    }
}

/// A blob arriving in chunks, in order from offset 0.
#[derive(Debug)]
pub struct Upload {
    sha256: Sha256,
    size: u64,
    bytes: Vec<u8>,
}

impl Upload {
    /// An upload of a blob of `size` bytes announced as `sha256`, nothing received yet.
    pub fn new(sha256: Sha256, size: u64) -> Upload {
        Upload {
            sha256,
            size,
            bytes: Vec::new(),
        }
    }

    /// Adds the next chunk; the blob once complete (and checked against its digest).
    pub fn add(&mut self, chunk: &BlobChunk) -> Result<Option<Vec<u8>>, BlobError> {
        let expected = self.bytes.len() as u64;
        if chunk.sha256 != self.sha256 || chunk.size != self.size || chunk.offset != expected {
            return Err(BlobError::OutOfOrder {
                sha256: chunk.sha256,
                offset: chunk.offset,
                expected,
            });
        }
        self.bytes.extend_from_slice(&chunk.bytes);
        if self.bytes.len() as u64 != self.size {
            return Ok(None);
        }
        let actual = Sha256::of(&self.bytes);
        if actual != self.sha256 {
            return Err(BlobError::Mismatch {
                sha256: self.sha256,
                actual,
            });
        }
        Ok(Some(std::mem::take(&mut self.bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_once_and_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let digest = store.put(b"rlib bytes").unwrap();
        assert_eq!(digest, Sha256::of(b"rlib bytes"));
        assert!(store.has(&digest));
        assert_eq!(store.get(&digest).unwrap(), b"rlib bytes");
        assert_eq!(store.put(b"rlib bytes").unwrap(), digest);
        std::fs::write(store.dir().join(digest.to_string()), b"tampered").unwrap();
        assert!(matches!(store.get(&digest), Err(BlobError::Corrupt(_))));
        assert!(!store.has(&digest), "a corrupt blob is removed");
        assert!(matches!(store.get(&digest), Err(BlobError::Read(..))));
    }

    #[test]
    fn uploads_take_chunks_in_order_and_check_the_digest() {
        let data = b"0123456789";
        let chunk = |offset: usize, end: usize, sha256: Sha256| BlobChunk {
            sha256,
            size: data.len() as u64,
            offset: offset as u64,
            bytes: data[offset..end].to_vec(),
        };
        let good = Sha256::of(data);
        let mut upload = Upload::new(good, 10);
        assert!(upload.add(&chunk(0, 4, good)).unwrap().is_none());
        assert!(matches!(
            upload.add(&chunk(5, 10, good)),
            Err(BlobError::OutOfOrder { .. })
        ));
        assert_eq!(upload.add(&chunk(4, 10, good)).unwrap().unwrap(), data);
        let mut whole = Upload::new(good, 10);
        assert_eq!(whole.add(&chunk(0, 10, good)).unwrap().unwrap(), data);
        let bad = Sha256::of(b"other");
        let mut wrong = Upload::new(bad, 10);
        assert!(wrong.add(&chunk(0, 4, bad)).unwrap().is_none());
        assert!(matches!(
            wrong.add(&chunk(4, 10, bad)),
            Err(BlobError::Mismatch { .. })
        ));
        let mut late = Upload::new(good, 10);
        assert!(matches!(
            late.add(&chunk(4, 10, good)),
            Err(BlobError::OutOfOrder { .. })
        ));
    }
}
