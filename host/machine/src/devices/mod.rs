//! The board's devices, one file each, reached through [`crate::bus::Bus`].

pub mod clint;
pub mod htif;
pub mod plic;
pub mod uart;
