//! cmbuild's deterministic RISC-V machine.
//!
//! A single-hart RV64IMAFDC_Zicsr_Zifencei machine with M, S and U modes, Sv39 and Sv48,
//! laid out like the Cartesi Machine board (see [`board`]). The machine is a pure function
//! of its inputs: time is instruction count (`mcycle`), device I/O completes synchronously
//! at a fixed instruction, floating point is computed in software bit-exactly, and nothing
//! reads host time, host randomness or unordered-map iteration (`clippy.toml` forbids them).
//! The library does no I/O of its own: the caller hands it images as bytes and drains the
//! console output it collects.
//!
//! Where things live: the hart and its ISA in [`hart`] (one file per extension, privilege
//! as [`hart::Privilege`]); the physical address space in [`bus`] (memory regions named by
//! [`bus::RegionId`]); the devices behind one [`devices::Device`] trait, placed by the one
//! table in [`board`] (`board_devices!`: a new device is a row there plus its trait
//! implementation, and the bus, the state hash, snapshots and the device tree follow);
//! the state hash in [`machine`] and [`merkle`], proofs that bytes are in it in
//! [`range_proof`]; snapshots as bytes in [`snapshot`] (the
//! directory form is `cmbuild`'s `snapshot_dir`).

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod board;
pub mod bus;
pub mod devices;
pub mod fdt;
pub mod hart;
pub mod machine;
pub mod memory;
pub mod merkle;
pub mod range_proof;
pub mod snapshot;
pub mod softfloat;
pub mod state;
