//! One module per subcommand: `Args` (parsed by clap) and `exec`, which fills an options
//! struct, calls one `cmbuild::ops` function and prints its result; [`common`] holds the
//! argument groups several subcommands share.

pub mod attest;
pub mod cid;
pub mod common;
pub mod compare;
pub mod image;
pub mod image_build;
pub mod image_lock;
pub mod image_template;
pub mod key;
pub mod log;
pub mod machine;
pub mod mirror;
pub mod prove;
pub mod run;
pub mod vendor;
pub mod verify;
pub mod verify_attestations;
pub mod verify_proof;
