//! The board: where each device lives in the physical address space, and the table of
//! devices ([`DEVICES`]) that the bus, the state hash, snapshots and the device tree use.
//!
//! Laid out like the Cartesi Machine so that the same bare-metal programs and guest
//! images run on both (docs/design.md, "The machine"). Everything here is a constant of the
//! machine: changing any of it changes every state hash, so it goes with a hash-scheme
//! version bump.

/// CLINT (`riscv,clint0`): `msip` at +0, `mtimecmp` at +0x4000, `mtime` at +0xbff8.
pub const CLINT_BASE: u64 = 0x0200_0000;
/// Size of the CLINT window.
pub const CLINT_SIZE: u64 = 0x000c_0000;
/// Offset of `msip` (hart 0) in the CLINT.
pub const CLINT_MSIP: u64 = 0x0;
/// Offset of `mtimecmp` (hart 0) in the CLINT.
pub const CLINT_MTIMECMP: u64 = 0x4000;
/// Offset of `mtime` in the CLINT.
pub const CLINT_MTIME: u64 = 0xbff8;

/// HTIF (`ucb,htif0`): `tohost` at +0, `fromhost` at +8.
pub const HTIF_BASE: u64 = 0x4000_8000;
/// Size of the HTIF window.
pub const HTIF_SIZE: u64 = 0x1000;
/// Offset of `tohost`.
pub const HTIF_TOHOST: u64 = 0x0;
/// Offset of `fromhost`.
pub const HTIF_FROMHOST: u64 = 0x8;

/// PLIC (`sifive,plic-1.0.0`).
pub const PLIC_BASE: u64 = 0x4010_0000;
/// Size of the PLIC window (enough for context 1's threshold/claim at +0x201000).
pub const PLIC_SIZE: u64 = 0x0040_0000;
/// Number of interrupt sources the PLIC implements (`riscv,ndev`); source 0 does not exist.
pub const PLIC_NDEV: u32 = 31;
/// PLIC source of the UART's interrupt line.
pub const UART_IRQ: u32 = 1;

/// UART 16550 (`ns16550a`), registers one byte apart; the Linux console.
pub const UART_BASE: u64 = 0x1000_0000;
/// Size of the UART window.
pub const UART_SIZE: u64 = 0x100;
/// The UART's nominal input clock (`clock-frequency`); only the divisor arithmetic uses it.
pub const UART_CLOCK_HZ: u32 = 3_686_400;

/// The offload channel (`cmbuild,offload-channel-v1`), a board option that is off by
/// default ([`crate::machine::MachineConfig::offload`]): not in the [`DEVICES`] table, so the
/// default board's state, device tree and hashes do not change. At the address where QEMU's
/// `virt` board has its first virtio-mmio slot; the channel's virtio-console transport
/// (`devices::virtio_console`) is a virtio-mmio device there.
pub const OFFLOAD_BASE: u64 = 0x1000_1000;
/// Size of the offload channel's window.
pub const OFFLOAD_SIZE: u64 = 0x1000;
/// PLIC source of the offload channel's interrupt line.
pub const OFFLOAD_IRQ: u32 = 2;
const _: () = assert!(OFFLOAD_BASE + OFFLOAD_SIZE <= DTB_BASE && OFFLOAD_IRQ <= PLIC_NDEV);

/// Where the machine places the generated device tree blob.
pub const DTB_BASE: u64 = 0x7ff0_0000;
/// Space reserved for the device tree blob.
pub const DTB_SIZE: u64 = 0x0010_0000;

/// Start of RAM; the hart resets here.
pub const RAM_BASE: u64 = 0x8000_0000;
/// Where `--kernel` is loaded when a `--bios` occupies `RAM_BASE` (OpenSBI `fw_jump`).
pub const KERNEL_OFFSET: u64 = 0x0020_0000;

/// Flash drives start above RAM, each on a 2 MiB boundary.
pub const FLASH_ALIGN: u64 = 0x0020_0000;

/// `mtime` advances once every this many `mcycle`s.
pub const MCYCLES_PER_MTIME: u64 = 8192;
/// `timebase-frequency` in the device tree (Hz): an honest 128 MHz "CPU" over 8192.
pub const TIMEBASE_HZ: u32 = 15_625;

/// `riscv,isa` of hart 0.
pub const ISA_STRING: &str = "rv64imafdc_zicsr_zifencei";

crate::devices::board_devices! {
    /// CLINT: software interrupt and timer.
    clint: crate::devices::clint::Clint => Clint at CLINT_BASE, size CLINT_SIZE, irq None, dt 0;
    /// HTIF: halt and console.
    htif: crate::devices::htif::Htif => Htif at HTIF_BASE, size HTIF_SIZE, irq None, dt 3;
    /// PLIC: the external interrupt controller.
    plic: crate::devices::plic::Plic => Plic at PLIC_BASE, size PLIC_SIZE, irq None, dt 1;
    /// UART 16550: the Linux console.
    uart: crate::devices::uart::Uart => Uart at UART_BASE, size UART_SIZE, irq Some(UART_IRQ), dt 2;
}
