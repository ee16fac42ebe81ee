//! DSSE envelopes (Dead Simple Signing Envelope, v1.0).
//!
//! An envelope is `{"payload": base64(body), "payloadType": TYPE, "signatures":
//! [{"keyid": KEYID, "sig": base64(signature)}]}`; each signature is an Ed25519 signature of
//! the pre-authentication encoding [`pae`]`(TYPE, body)`. The key ID is a hint only: a
//! verifier finds the key by it but trusts nothing else it says.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::keys::{PublicKey, SecretKey};

/// The payload type of an in-toto statement.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Largest envelope file read.
pub const MAX_ENVELOPE_BYTES: u64 = 16 << 20;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 256;

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    /// The envelope is not JSON of the DSSE shape.
    #[error("not a DSSE envelope: {0}")]
    Shape(String),
    /// The payload or a signature is not valid base64.
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    /// The envelope has more signatures than cmbuild reads.
    #[error("{0} signatures; at most {MAX_SIGNATURES} are read")]
    TooManySignatures(usize),
    /// The envelope could not be written canonically.
    #[error(transparent)]
    Canonical(#[from] canonical::CanonicalError),
}

/// A DSSE envelope as it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Base64 (standard alphabet, padded) of the payload bytes.
    pub payload: String,
    /// What the payload is, e.g. [`INTOTO_PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// One or more signatures of the PAE.
    pub signatures: Vec<Signature>,
}

/// One signature of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The key ID of the signing key (a hint; unauthenticated).
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

/// The DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Envelope {
    /// Signs `body` as `payload_type` with `key`.
    pub fn sign(payload_type: &str, body: &[u8], key: &SecretKey) -> Envelope {
        let sig = key.sign(&pae(payload_type, body));
        Envelope {
            payload: b64().encode(body),
            payload_type: payload_type.to_owned(),
            signatures: vec![Signature {
                keyid: key.public().keyid(),
                sig: b64().encode(sig),
            }],
        }
    }

    /// Parses an envelope file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, DsseError> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| DsseError::Shape(e.to_string()))?;
        if env.signatures.len() > MAX_SIGNATURES {
            return Err(DsseError::TooManySignatures(env.signatures.len()));
        }
        Ok(env)
    }

    /// The envelope as cmbuild writes it: canonical JSON and a final newline.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, DsseError> {
        let mut out = canonical::to_vec_of(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// The decoded payload bytes.
    pub fn body(&self) -> Result<Vec<u8>, DsseError> {
        b64()
            .decode(&self.payload)
            .map_err(|_| DsseError::Base64("the payload"))
    }

    /// Which of `keys` signed this envelope validly (each key once, in `keys` order).
    ///
    /// For every signature, the key whose ID it names is tried first, then (the key ID being
    /// only a hint) every other key. A signature no key verifies is listed in the second
    /// result by its claimed key ID.
    pub fn verified_by(
        &self,
        keys: &[PublicKey],
    ) -> Result<(Vec<PublicKey>, Vec<String>), DsseError> {
        let message = pae(&self.payload_type, &self.body()?);
        let mut good: Vec<PublicKey> = Vec::new();
        let mut bad = Vec::new();
        for signature in &self.signatures {
            let sig = b64()
                .decode(&signature.sig)
                .map_err(|_| DsseError::Base64("a signature"))?;
            let mut ordered: Vec<&PublicKey> = keys
                .iter()
                .filter(|k| k.keyid() == signature.keyid)
                .collect();
            ordered.extend(keys.iter().filter(|k| k.keyid() != signature.keyid));
            match ordered.into_iter().find(|k| k.verify(&message, &sig)) {
                Some(key) if !good.contains(key) => good.push(*key),
                Some(_) => {}
                None => bad.push(signature.keyid.clone()),
            }
        }
        good.sort_by_key(|k| keys.iter().position(|x| x == k));
        Ok((good, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_spec_example() {
        // The example from the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = SecretKey::from_seed(&[3; 32]);
        let other = SecretKey::from_seed(&[4; 32]);
        let env = Envelope::sign(INTOTO_PAYLOAD_TYPE, b"{\"a\":1}", &key);
        let bytes = env.to_file_bytes().unwrap();
        let env = Envelope::parse(&bytes).unwrap();
        let (good, bad) = env.verified_by(&[other.public(), key.public()]).unwrap();
        assert_eq!(good, vec![key.public()]);
        assert!(bad.is_empty());
        // A wrong key does not verify it.
        let (good, bad) = env.verified_by(&[other.public()]).unwrap();
        assert!(good.is_empty());
        assert_eq!(bad, vec![key.public().keyid()]);
        // A changed payload does not verify.
        let mut tampered = env.clone();
        tampered.payload = b64().encode(b"{\"a\":2}");
        assert!(tampered.verified_by(&[key.public()]).unwrap().0.is_empty());
        // Neither does a changed payload type.
        let mut retyped = env;
        retyped.payload_type = "text/plain".into();
        assert!(retyped.verified_by(&[key.public()]).unwrap().0.is_empty());
    }
}
