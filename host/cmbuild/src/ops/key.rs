//! `cmbuild key generate`: a new Ed25519 key pair for attestations or a transparency log
//! (see [`cmbuild_trust::keys`]).

use std::path::{Path, PathBuf};

use cmbuild_trust::keys::{KeyError, SecretKey};

/// A key pair just written.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The public key, hex of the 32 raw bytes.
    pub public_hex: String,
    /// Its key ID (hex SHA-256 of the raw public key).
    pub keyid: String,
    /// Where the public key went (`<out>.pub`).
    pub pub_path: PathBuf,
}

/// Writes a new secret key to `out` (mode 0600) and its public key to `out.pub`; refuses to
/// overwrite either.
pub fn generate(out: &Path) -> Result<Generated, KeyError> {
    let key = SecretKey::generate()?;
    let (public, pub_path) = key.write_new(out)?;
    Ok(Generated {
        public_hex: public.to_hex(),
        keyid: public.keyid(),
        pub_path,
    })
}
