//! Content IDs (IPFS CIDv1), the content-addressed vendor mirror, verified downloads.
//!
//! - [`cid`]: streaming CIDs identical to `ipfs add --cid-version=1 --raw-leaves`.
//! - [`mirror`]: blobs stored under their CID, written atomically, verified when read,
//!   and an index from names (crate name and version, ...) to CIDs.
//! - [`download`]: fetch a URL into the mirror, checked against a pinned sha256.
//! - [`lockfile`] and [`crates`]: Cargo.lock parsing and the deterministic unpacking of
//!   `.crate` archives into a cargo directory source.
//! - [`car`] and [`kubo`]: CAR export of blob DAGs and a Kubo RPC client.
//! - [`oci`]: OCI image digests, references, manifests and the mirror's image records;
//!   [`dockerfile`]: the base images a Dockerfile names; [`registry`]: an OCI distribution
//!   API client that fetches by digest into the mirror.
//! - [`tarball`]: a tar reader whose every claimed size is checked against caps first.
//! - [`atomic`]: the one way files are replaced (temporary file, sync, rename, sync).
//! - [`sha256`] and [`hex`]: the [`sha256::Sha256`] digest type and the workspace's one
//!   hex codec.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod atomic;
pub mod car;
pub mod cid;
pub mod crates;
pub mod dockerfile;
pub mod download;
pub mod hex;
pub mod kubo;
pub mod lockfile;
pub mod mirror;
pub mod oci;
pub mod registry;
pub mod sha256;
pub mod tarball;
