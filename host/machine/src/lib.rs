//! cmbuild's deterministic RISC-V machine.
//!
//! A single-hart RV64IMAFDC_Zicsr_Zifencei machine with M, S and U modes, Sv39 and Sv48,
//! laid out like the Cartesi Machine board (see [`board`]). The machine is a pure function
//! of its inputs: time is instruction count (`mcycle`), device I/O completes synchronously
//! at a fixed instruction, floating point is computed in software bit-exactly, and nothing
//! reads host time, host randomness or unordered-map iteration (`clippy.toml` forbids them).
//! The library does no I/O of its own: the caller hands it images as bytes and drains the
//! console output it collects.

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
pub mod snapshot;
pub mod softfloat;
pub mod state;
