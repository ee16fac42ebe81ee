//! The orchestration behind the `cmbuild` command line: build manifests, the comparison of
//! two builds, and the release-build pipeline. The CLI (`main.rs`, `commands/`) is a thin
//! layer over this library and the host crates.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod compare;
pub mod guest;
pub mod manifest;
pub mod ops;
pub mod pins;
pub mod plan;
pub mod project;
pub mod run;
pub mod snapshot_dir;
pub mod staging;
pub mod terminal;
pub mod untrusted;
pub mod vendoring;
pub mod workspace;
