//! The orchestration behind the `cmbuild` command line. The CLI (`main.rs`, `commands/`)
//! parses arguments and calls one function of [`ops`] per subcommand; everything else is
//! here:
//!
//! - the release pipeline: [`project`] (revision, source archive, `cmbuild.toml`),
//!   [`plan`] (the plan and the input/output drives), [`guest`] (the build machine: its
//!   [`guest::Drive`]s and [`guest::MachineSettings`]), [`vendoring`] (the locked crates),
//!   [`floor`] (a project's glibc floor: its sysroots on the input drive, the check of the
//!   artifacts), [`run`] (the run, split by job) and [`staging`] (outputs published whole
//!   or not at all);
//! - the records and their checks: [`manifest`] (`manifest.json`, `machine.json`),
//!   [`state_proofs`] (`proofs/<triple>/<bin>.json`) and [`compare`];
//! - the gates for hostile bytes: [`untrusted`] (paths, archives, confined reads) and
//!   [`terminal`] (untrusted text on its way to a terminal);
//! - [`pins`] (the built-in `digests.lock.env`; the format is `cmbuild_image::pins`) and
//!   [`snapshot_dir`] (machine snapshots on disk);
//! - [`perf_map`] (`--perf-map`: the profiler's names for translated guest code) and
//!   [`memory`] (how many machines the host's memory holds).

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod compare;
pub mod container;
pub mod floor;
pub mod glibc;
pub mod guest;
pub mod manifest;
pub mod mapped;
pub mod memory;
pub mod offload;
pub mod ops;
pub mod perf_map;
pub mod pins;
pub mod plan;
pub mod progress;
pub mod project;
pub mod qemu;
pub mod run;
pub mod snapshot_dir;
pub mod staging;
pub mod state_proofs;
pub mod template;
pub mod terminal;
pub mod untrusted;
pub mod vendoring;
pub mod watchdog;
pub mod workspace;
