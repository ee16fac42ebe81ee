//! One module per subcommand: `Args` (parsed by clap) and `exec` (calls the library).

pub mod attest;
pub mod cid;
pub mod compare;
pub mod image;
pub mod image_build;
pub mod image_lock;
pub mod key;
pub mod log;
pub mod machine;
pub mod machine_snapshot;
pub mod mirror;
pub mod mirror_ipfs;
pub mod run;
pub mod vendor;
pub mod vendor_debs;
pub mod verify;
pub mod verify_attestations;
