//! The host side of deterministic parallel builds (issue 13; the design is
//! `docs/parallel-builds.md`): what the guest's wrappers ask over the offload channel
//! ([`wire`]), the jobs they hand over ([`job`]), the blobs the host holds for them
//! ([`blobs`]), the cache of their results ([`cache`]) and the sibling machines that run
//! them ([`sibling`]); a scout per build machine finds its jobs early ([`scout`]).

pub mod blobs;
pub mod cache;
pub mod job;
pub mod link;
pub mod narrow;
pub mod parent;
pub mod rank;
pub mod scout;
pub mod service;
pub mod sibling;
pub mod tool;
pub mod wire;
