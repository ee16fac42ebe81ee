//! The build machine of a run: its five drives and its configuration.
//!
//! `guest-image/PROTOCOL.md` is the contract; the drive order fixes the guest's
//! `/dev/pmemN` names, so [`Drive`] is the one place that knows which drive is which.

use crate::mapped::DriveImage;
use cmbuild_machine::machine::{FlashConfig, Machine, MachineConfig};
use serde::{Deserialize, Serialize};

use crate::plan::DRIVE_ALIGN;

/// The kernel command line of a build machine: the initramfs mounts the toolchain layer
/// (`/dev/pmem4`, [`Drive::Toolchain`]) over the root image.
pub const BOOTARGS: &str = "console=ttyS0 quiet cmbuild.mode=build cmbuild.toolchain=/dev/pmem4";

/// The flash drives of a build machine, in board order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    /// The root image (EROFS), `/dev/pmem0`.
    Root,
    /// The input drive (a tar written by the host), `/dev/pmem1`.
    Input,
    /// The output drive (a tar written by the guest), `/dev/pmem2`.
    Output,
    /// The scratch drive, `/dev/pmem3`.
    Scratch,
    /// The selected toolchain's layer (EROFS, `GUEST_TOOLCHAIN_<ID>_CID`), `/dev/pmem4`,
    /// mounted with overlayfs over the root image.
    Toolchain,
}

impl Drive {
    /// Every drive, in board order (index `i` is `/dev/pmem{i}`).
    pub const ALL: [Drive; 5] = [
        Drive::Root,
        Drive::Input,
        Drive::Output,
        Drive::Scratch,
        Drive::Toolchain,
    ];

    /// The drive's position on the board.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The drive's device in the guest, `/dev/pmem{index}`.
    pub fn guest_device(self) -> String {
        format!("/dev/pmem{}", self.index())
    }

    /// The drive's label in the device tree.
    pub fn label(self) -> &'static str {
        match self {
            Drive::Root => "root",
            Drive::Input => "input",
            Drive::Output => "output",
            Drive::Scratch => "scratch",
            Drive::Toolchain => "toolchain",
        }
    }

    /// Whether the host reads the drive's final contents back.
    pub fn shared(self) -> bool {
        self == Drive::Output
    }
}

/// Why a machine configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    /// A size is zero, not a multiple of its unit, or over cmbuild's limit.
    #[error("{what} of {value} bytes is not accepted (a multiple of {unit} bytes, at most {max})")]
    Size {
        /// Which setting.
        what: &'static str,
        /// The value refused.
        value: u64,
        /// What it must be a multiple of.
        unit: u64,
        /// The largest value accepted.
        max: u64,
    },
}

/// Everything about a build machine that `cmbuild run` takes as a setting rather than as
/// an input. Recorded in `machine.json` (`config`), so that `cmbuild verify` rebuilds on
/// the same machine; the RAM and drive sizes also enter the state hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSettings {
    /// RAM of each machine, bytes.
    pub ram_length: u64,
    /// Scratch drive of each machine, bytes.
    pub scratch_length: u64,
    /// Output drive of each machine, bytes.
    pub output_length: u64,
    /// Input drive of each machine, bytes: fixed, because every build resumes from the
    /// template machine, which was booted with this drive (empty) in its device tree.
    /// Absent from records written before cmbuild had templates (they sized the drive by
    /// its contents); read as the default.
    #[serde(default = "default_input_length")]
    pub input_length: u64,
    /// A machine that reaches this mcycle is stopped and the run fails.
    pub max_mcycle: u64,
    /// The offload channel's latency `L` (issue 13, `docs/parallel-builds.md`): set only
    /// for the parent machine of an offloaded build, whose board has the channel (and so
    /// its own template). Absent everywhere else, and from every record before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_latency: Option<u64>,
}

/// Largest RAM cmbuild configures (a published `machine.json` is untrusted).
pub const MAX_RAM: u64 = 64 << 30;
/// Largest scratch or output drive cmbuild configures.
pub const MAX_DRIVE: u64 = 64 << 30;

/// Largest offload latency cmbuild configures (a published `machine.json` is untrusted).
pub const MAX_OFFLOAD_LATENCY: u64 = 1 << 40;

/// The input drive's size when none is given: 1 GiB.
pub const DEFAULT_INPUT_LENGTH: u64 = 1 << 30;

fn default_input_length() -> u64 {
    DEFAULT_INPUT_LENGTH
}

impl Default for MachineSettings {
    /// The settings of `cmbuild run` without options.
    fn default() -> Self {
        MachineSettings {
            ram_length: 4096 << 20,
            scratch_length: 256 << 20,
            output_length: 512 << 20,
            input_length: DEFAULT_INPUT_LENGTH,
            max_mcycle: 1 << 44,
            offload_latency: None,
        }
    }
}

impl MachineSettings {
    /// Checks the sizes (RAM in whole MiB, drives in whole drive units, all bounded).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let check = |what, value: u64, unit: u64, max: u64| {
            if value == 0 || value % unit != 0 || value > max {
                Err(SettingsError::Size {
                    what,
                    value,
                    unit,
                    max,
                })
            } else {
                Ok(())
            }
        };
        check("ram_length", self.ram_length, 1 << 20, MAX_RAM)?;
        check(
            "scratch_length",
            self.scratch_length,
            DRIVE_ALIGN,
            MAX_DRIVE,
        )?;
        check("output_length", self.output_length, DRIVE_ALIGN, MAX_DRIVE)?;
        check("input_length", self.input_length, DRIVE_ALIGN, MAX_DRIVE)?;
        if let Some(latency) = self.offload_latency {
            check("offload_latency", latency, 1, MAX_OFFLOAD_LATENCY)?;
        }
        Ok(())
    }

    /// The machine the template is booted from: the guest image, and zeroed input, output
    /// and scratch drives of the configured sizes. (A build fills the input drive of the
    /// template when it resumes; see [`crate::template`].)
    pub fn machine_config(&self, image: &GuestImage) -> MachineConfig {
        let zeros = |len: u64| vec![0u8; (len.max(1).div_ceil(DRIVE_ALIGN) * DRIVE_ALIGN) as usize];
        let flash_drives = Drive::ALL
            .iter()
            .map(|&drive| FlashConfig {
                label: drive.label().into(),
                image: match drive {
                    Drive::Root => image.rootfs.to_vec(),
                    Drive::Input => zeros(self.input_length),
                    Drive::Output => zeros(self.output_length),
                    Drive::Scratch => zeros(self.scratch_length),
                    Drive::Toolchain => image.toolchain.to_vec(),
                },
                shared: drive.shared(),
            })
            .collect();
        MachineConfig {
            ram_length: self.ram_length,
            ram_image: None,
            bios: Some(image.firmware.clone()),
            kernel: Some(image.kernel.clone()),
            initrd: Some(image.initrd.clone()),
            bootargs: BOOTARGS.to_owned(),
            flash_drives,
            offload: self.offload_latency.map(|min_latency| {
                cmbuild_machine::machine::OffloadConfig {
                    min_latency,
                    transport: cmbuild_machine::machine::OffloadTransport::VirtioConsole,
                }
            }),
        }
    }
}

/// The guest image's four base files and the selected toolchain's layer, read from the
/// mirror by their pins.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// `vmlinux`.
    pub kernel: Vec<u8>,
    /// OpenSBI `fw_jump.bin`.
    pub firmware: Vec<u8>,
    /// `initramfs.cpio`.
    pub initrd: Vec<u8>,
    /// `rootfs.erofs` (mapped from the mirror: see [`crate::mapped`]).
    pub rootfs: DriveImage,
    /// `toolchain-<id>.erofs`: the selected toolchain's layer (mapped like the root).
    pub toolchain: DriveImage,
}

/// The contents of a machine's drive.
pub fn drive_bytes(machine: &Machine, drive: Drive) -> &[u8] {
    machine.bus.flash[drive.index()].mem.bytes()
}

/// The start of a drive's bytes that holds everything written to it: up to the end of its
/// last page with a non-zero byte, and one zero page more (so that an archive in it ends
/// with the zero blocks its reader looks for). What follows is zeros.
pub fn written_part(bytes: &[u8]) -> &[u8] {
    const PAGE: usize = 4096;
    static ZEROS: [u8; PAGE] = [0; PAGE];
    // A page compared whole (memcmp) rather than byte by byte: a sibling's output drive is
    // scanned once per job, most of it never written.
    let used = bytes
        .chunks(PAGE)
        .rposition(|page| page != &ZEROS[..page.len()])
        .map_or(0, |last| (last + 1) * PAGE);
    &bytes[..(used + PAGE).min(bytes.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_part_keeps_every_non_zero_byte_and_one_zero_page() {
        let mut drive = vec![0u8; 64 << 10];
        assert_eq!(written_part(&drive).len(), 4096);
        drive[5000] = 1;
        assert_eq!(written_part(&drive).len(), 3 * 4096);
        drive[(64 << 10) - 1] = 2;
        assert_eq!(written_part(&drive).len(), 64 << 10);
        assert_eq!(written_part(&[]), &[] as &[u8]);
        assert_eq!(written_part(&[0, 7, 0]), &[0, 7, 0]);
    }

    #[test]
    fn drives_are_in_board_order_and_only_output_is_shared() {
        let image = GuestImage {
            kernel: vec![],
            firmware: vec![1],
            initrd: vec![],
            rootfs: vec![2; 4096].into(),
            toolchain: vec![4; 8192].into(),
        };
        let config = MachineSettings::default().machine_config(&image);
        let labels: Vec<&str> = config
            .flash_drives
            .iter()
            .map(|d| d.label.as_str())
            .collect();
        assert_eq!(labels, ["root", "input", "output", "scratch", "toolchain"]);
        // The toolchain layer is /dev/pmem4, which the kernel command line names.
        assert_eq!(Drive::Toolchain.index(), 4);
        assert!(BOOTARGS.contains("cmbuild.toolchain=/dev/pmem4"));
        assert_eq!(
            config.flash_drives[Drive::Toolchain.index()].image,
            vec![4; 8192]
        );
        assert_eq!(
            config.flash_drives[Drive::Input.index()].image.len() as u64,
            DEFAULT_INPUT_LENGTH
        );
        assert_eq!(
            config.flash_drives[Drive::Output.index()].image.len(),
            512 << 20
        );
        let shared: Vec<bool> = config.flash_drives.iter().map(|d| d.shared).collect();
        assert_eq!(shared, [false, false, true, false, false]);
        assert_eq!(config.bootargs, BOOTARGS);
    }

    #[test]
    fn settings_are_bounded() {
        MachineSettings::default().validate().unwrap();
        for bad in [
            MachineSettings {
                ram_length: 0,
                ..MachineSettings::default()
            },
            MachineSettings {
                ram_length: 1 << 50,
                ..MachineSettings::default()
            },
            MachineSettings {
                output_length: 12345,
                ..MachineSettings::default()
            },
            MachineSettings {
                input_length: 0,
                ..MachineSettings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
