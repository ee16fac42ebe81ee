//! Trust without trusting one builder: signed attestations of cmbuild releases, k-of-n
//! verification, a transparency log kept as files, and offline proofs.
//!
//! This crate holds all the logic; the `cmbuild key`, `attest`, `verify-attestations`,
//! `log`, `prove` and `verify-proof` commands only parse flags and call it. It depends on `cmbuild-store` (CIDs) and
//! never on `cmbuild`: it reads build directories itself ([`build`]).
//!
//! # What is signed
//!
//! `cmbuild attest BUILD_DIR` signs an [in-toto Statement v1] whose predicate is [SLSA
//! Provenance v1] ([`statement`]):
//!
//! - `subject`: one entry per artifact, `name` = `<triple>/<bin>`, `digest.sha256` = the
//!   SHA-256 recomputed from the file (it must equal the manifest's claim);
//! - `predicate.buildDefinition`: `buildType` = [`statement::BUILD_TYPE`];
//!   `externalParameters` = `commit`, `release`, `targets`, `toolchains` (triple → CID) and
//!   `pins` (the `GUEST_*` inputs of `machine.json` and each target's
//!   `RUST_TOOLCHAIN__<TRIPLE>`), and `machine` (the machine settings of `machine.json`'s
//!   `config`, when present); `internalParameters` = the `template*` string fields of
//!   `machine.json` when it has any; `resolvedDependencies` = every input of `machine.json`,
//!   every toolchain and the Cargo.lock, each with `uri` = `ipfs://<CID>` and, where the CID
//!   is a raw leaf (its digest is the content's SHA-256), `digest.sha256`;
//! - `predicate.runDetails`: `builder.id` (a URI, `--builder-id`), `builder.version`
//!   (`cmbuild` = the attesting cmbuild, `emulator` = the one in `machine.json`), and one
//!   `byproducts` entry per machine: `name` = `machine/<triples joined by ,>`, `digest` =
//!   `{<hash scheme>: <hex>}`, `annotations` = `rootHash`, `mcycle`, `exitCode`, `targets`,
//!   `hashScheme`. `metadata.finishedOn` appears only with `--timestamp`.
//!
//! The statement is serialised as canonical JSON and wrapped in a [DSSE] envelope
//! ([`dsse`]): `payloadType` = `application/vnd.in-toto+json`, `payload` = base64 of the
//! statement, and each signature is Ed25519 over the pre-authentication encoding
//! `"DSSEv1" SP len(type) SP type SP len(body) SP body` (lengths in ASCII decimal), with
//! `keyid` = hex SHA-256 of the 32 raw public key bytes. Envelope files are canonical JSON
//! plus a newline. Keys: see [`keys`].
//!
//! # Canonical JSON
//!
//! Object keys sorted by their UTF-8 bytes; no whitespace between tokens; integers only (no
//! fractions or exponents); strings escape only `"`, `\` and control characters (the short
//! forms `\b \t \n \f \r`, otherwise `\u00xx`); everything else is literal UTF-8. No
//! timestamps unless asked for. The same build attested twice with the same key and builder
//! ID gives byte-identical envelopes (Ed25519 signatures are deterministic). See
//! [`canonical`].
//!
//! # k-of-n verification
//!
//! `cmbuild verify-attestations` ([`threshold`]) checks every `*.json` envelope of a
//! directory against a trusted-keys file and groups the signers by claim (commit, every
//! subject's SHA-256, every machine's root hash). It passes when at least K distinct trusted
//! keys make the reference claim (the build directory's own, if given, otherwise the claim
//! with the most keys) and no other claim about the same commit also reaches K. A key that
//! signed two different claims about one commit counts for none; claims about other commits
//! are listed and ignored. Everything else is named: who disagrees on which artifact or root
//! hash, which signatures did not verify, which files were unreadable.
//!
//! # The transparency log on disk
//!
//! See [`tlog`]: an RFC 9162 Merkle tree ([`merkle`]) whose leaf data are the SHA-256
//! digests of attestation files (their exact bytes); leaf hash = SHA-256(0x00 || data),
//! node hash = SHA-256(0x01 || left || right), split at the largest power of two smaller
//! than n. A directory holds `log.pub`, `leaves` (one hex entry per line), `entries/<hex>.json`
//! (copies of the attestations), `heads/<size>.json` (every signed tree head ever
//! published, never rewritten) and, only while an append runs, `lock`. `leaves` is replaced
//! through a synced temporary file and a rename; every other file is created once.
//!
//! # Proof formats
//!
//! All are canonical JSON files with a final newline:
//!
//! - signed tree head: `{"logId": <hex keyid of the log key>, "rootHash": <hex>,
//!   "signature": <base64 Ed25519>, "treeSize": n, "type": "cmbuild-tree-head-v1"}`, the
//!   signature over `"cmbuild-tree-head-v1" || 0x00 || logId (32 raw bytes) || treeSize (u64
//!   big-endian) || rootHash (32 raw bytes)`;
//! - inclusion proof: `{"entry": <hex SHA-256 of the attestation file>, "leafIndex": i,
//!   "path": [<hex>...], "treeHead": <signed head>, "type": "cmbuild-inclusion-proof-v1"}`,
//!   checked with the RFC 9162 §2.1.3.2 algorithm;
//! - consistency proof: `{"fromHead": <signed head>, "path": [<hex>...], "toHead": <signed
//!   head>, "type": "cmbuild-consistency-proof-v1"}`, checked with RFC 9162 §2.1.4.2. A
//!   verifier who kept an older head passes it in place of `fromHead`, so a log rewritten
//!   after that head was published cannot prove consistency with it.
//!
//! Each verifies offline with only the log's public key (and the attestation file, or the
//! older head).
//!
//! # Artifact proofs
//!
//! `cmbuild prove BUILD_DIR <triple>/<bin>` bundles, for one binary, every attestation that
//! names it with its digest and each one's log inclusion proof ([`artifact`]); `cmbuild
//! verify-proof` checks the bundle offline against the user's trusted keys, threshold and
//! (optionally) log key. It proves that K trusted keys signed statements naming those bytes;
//! with the build's state proof ([`state_proof`], `proofs/<triple>/<bin>.json`, written by
//! `cmbuild run`) it also carries the path from the bytes through the output drive's 4 KiB
//! pages to the machine's state hash, and `verify-proof --artifact` recomputes that root hash
//! and requires it to be the one the counted attestations give for the machine that built
//! the artifact's target (see [`state_proof`] for the recipe; no machine crate needed).
//!
//! [in-toto Statement v1]: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
//! [SLSA Provenance v1]: https://slsa.dev/spec/v1.0/provenance
//! [DSSE]: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md
#![warn(missing_docs)]

pub mod artifact;
pub mod build;
pub mod canonical;
pub mod dsse;
mod files;
pub mod keys;
pub mod merkle;
pub mod state_proof;
pub mod statement;
pub mod threshold;
pub mod tlog;
