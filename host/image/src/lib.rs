//! The guest image: Debian metadata and the package lock ([`debian`], [`resolve`], the
//! [`lock`] file, [`locking`] from the archive's indices, archive files over [`http`]),
//! and its deterministic assembly from the locked `.deb`s ([`deb`] extraction, [`rootfs`]
//! merging and fixups, the [`erofs`] and [`cpio`] writers, the [`initramfs`], and
//! [`image`], the whole build); and the facts the host and the guest share: the supported
//! target triples ([`triple`]), the toolchain layers and their locks ([`layers`]), how a
//! project selects a pinned Rust toolchain ([`toolchain`]), the glibc floors' sysroots
//! ([`sysroot`]) and the pins file ([`pins`]).

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod assemble;
pub mod containers;
pub mod cpio;
pub mod deb;
pub mod debian;
pub mod erofs;
pub mod http;
pub mod image;
pub mod initramfs;
pub mod layers;
pub mod lock;
pub mod locking;
pub mod pins;
pub mod resolve;
pub mod rootfs;
pub mod sysroot;
pub mod toolchain;
pub mod triple;
