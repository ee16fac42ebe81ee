//! Ed25519 keys: generation, the key files, trusted-key lists and key IDs.
//!
//! - A secret key file holds the 32-byte Ed25519 seed as 64 lowercase hex digits on one line
//!   (lines starting with `#` are comments); it is created with mode 0600 and never
//!   overwritten.
//! - A public key file (`<secret>.pub`) holds the 32 raw public key bytes as 64 hex digits.
//! - A trusted-keys file holds one public key per line, as hex (64 digits) or standard
//!   base64 (44 characters) of the 32 raw bytes; blank lines and `#` comments are skipped,
//!   so concatenated `.pub` files form a valid list.
//! - A key ID is the lowercase hex SHA-256 of the 32 raw public key bytes.

use cmbuild_store::hex;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::files;

/// Largest key file or trusted-keys file read.
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system gave no randomness.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A key file already exists; cmbuild never overwrites one.
    #[error("{0} already exists; cmbuild never overwrites a key file")]
    Exists(String),
    /// A line of a key file is not a key.
    #[error("{path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// Why the line was refused.
        reason: String,
    },
    /// A key file holds no key, or more than one where one is expected.
    #[error("{path}: expected exactly one key, found {found}")]
    Count {
        /// The file.
        path: String,
        /// How many key lines there were.
        found: usize,
    },
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key from its 32 raw bytes; `None` if they are not a valid curve point or are a
    /// weak (small-order) key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        let key = VerifyingKey::from_bytes(bytes).ok()?;
        (!key.is_weak()).then_some(PublicKey(key))
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Lowercase hex of the raw bytes (the form of `.pub` files).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// The key ID: lowercase hex SHA-256 of the raw bytes.
    pub fn keyid(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    /// Checks an Ed25519 signature strictly (no malleable or small-order encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &sig).is_ok()
    }

    /// Parses hex (64 digits) or standard base64 (with or without padding) of 32 raw bytes.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode_array::<32>(text)
                .map_err(|e| e.to_string())?
                .to_vec()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .map_err(|_| "neither 64 hex digits nor base64".to_owned())?
        };
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| format!("{} bytes where an Ed25519 key has 32", v.len()))?;
        PublicKey::from_bytes(&bytes).ok_or_else(|| "not a valid Ed25519 public key".to_owned())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// An Ed25519 signing key.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// The key with this 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// An Ed25519 signature of `message` (64 bytes).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Writes a new secret key file `path` (mode 0600) and its public key to `path.pub`;
    /// refuses if either exists. Returns the public key and the `.pub` path.
    pub fn write_new(&self, path: &Path) -> Result<(PublicKey, PathBuf), KeyError> {
        let pub_path = pub_path_of(path);
        for p in [path, pub_path.as_path()] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(KeyError::Exists(p.display().to_string()));
            }
        }
        let public = self.public();
        let secret = format!(
            "# cmbuild Ed25519 secret key (32-byte seed, hex). Keep it private.\n# keyid {}\n{}\n",
            public.keyid(),
            hex::encode(self.0.to_bytes())
        );
        files::create_new(path, secret.as_bytes(), 0o600).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.display().to_string())
            } else {
                io_error(path, source)
            }
        })?;
        let text = format!(
            "# cmbuild Ed25519 public key, keyid {}\n{}\n",
            public.keyid(),
            public.to_hex()
        );
        files::create_new(&pub_path, text.as_bytes(), 0o644)
            .map_err(|source| io_error(&pub_path, source))?;
        Ok((public, pub_path))
    }

    /// Reads a secret key file written by [`SecretKey::write_new`].
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        let lines = key_lines(path)?;
        let [(line, text)] = lines.as_slice() else {
            return Err(KeyError::Count {
                path: path.display().to_string(),
                found: lines.len(),
            });
        };
        let seed: [u8; 32] =
            hex::decode_array::<32>(text)
                .ok()
                .ok_or_else(|| KeyError::Syntax {
                    path: path.display().to_string(),
                    line: *line,
                    reason: "a secret key is 64 hex digits".to_owned(),
                })?;
        Ok(SecretKey::from_seed(&seed))
    }
}

/// Where the public key of secret key file `path` goes: `path` with `.pub` appended.
pub fn pub_path_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Reads a file holding exactly one public key.
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    let keys = read_trusted_keys(path)?;
    match keys.as_slice() {
        [key] => Ok(*key),
        _ => Err(KeyError::Count {
            path: path.display().to_string(),
            found: keys.len(),
        }),
    }
}

/// Reads a trusted-keys file: one public key per line; a key listed twice counts once.
pub fn read_trusted_keys(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let mut keys: Vec<PublicKey> = Vec::new();
    for (line, text) in key_lines(path)? {
        let key = PublicKey::parse(&text).map_err(|reason| KeyError::Syntax {
            path: path.display().to_string(),
            line,
            reason,
        })?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// The non-blank, non-comment lines of a key file, trimmed, with their 1-based numbers.
fn key_lines(path: &Path) -> Result<Vec<(usize, String)>, KeyError> {
    let bytes = files::read_capped(path, MAX_KEY_FILE_BYTES).map_err(|e| io_error(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| KeyError::Syntax {
        path: path.display().to_string(),
        line: 0,
        reason: "not UTF-8 text".to_owned(),
    })?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_owned()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect())
}

fn io_error(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_write_read_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("builder.key");
        let key = SecretKey::generate().unwrap();
        let (public, pub_path) = key.write_new(&path).unwrap();
        assert_eq!(pub_path, dir.path().join("builder.key.pub"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(key.write_new(&path), Err(KeyError::Exists(_))));
        let back = SecretKey::read(&path).unwrap();
        assert_eq!(back.public(), public);
        assert_eq!(read_public_key(&pub_path).unwrap(), public);
        let sig = back.sign(b"msg");
        assert!(public.verify(b"msg", &sig));
        assert!(!public.verify(b"msh", &sig));
        // A different key does not verify it.
        assert!(!SecretKey::generate().unwrap().public().verify(b"msg", &sig));
    }

    #[test]
    fn trusted_keys_accept_hex_and_base64_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretKey::from_seed(&[1; 32]).public();
        let b = SecretKey::from_seed(&[2; 32]).public();
        let b64 = base64::engine::general_purpose::STANDARD.encode(b.to_bytes());
        let path = dir.path().join("trusted");
        std::fs::write(
            &path,
            format!("# two keys\n{}\n\n  {b64}  \n{}\n", a.to_hex(), a.to_hex()),
        )
        .unwrap();
        assert_eq!(read_trusted_keys(&path).unwrap(), vec![a, b]);
        std::fs::write(&path, format!("{}\nnot-a-key\n", a.to_hex())).unwrap();
        match read_trusted_keys(&path) {
            Err(KeyError::Syntax { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        // The identity point is a weak key and is refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_bytes(&identity).is_none());
    }

    #[test]
    fn keyid_is_sha256_of_raw_key() {
        let k = SecretKey::from_seed(&[7; 32]).public();
        assert_eq!(k.keyid(), hex::encode(Sha256::digest(k.to_bytes())));
    }
}
