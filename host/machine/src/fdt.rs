//! The device tree of the board: a small flattened-device-tree (DTB, version 17) writer and
//! reader, and [`board_device_tree`], the blob the machine places at `DTB_BASE`.
//!
//! What the tree holds is dictated by Debian's OpenSBI 1.6 (`generic`, `fw_jump`) and
//! Linux 6.12; docs/design.md ("The machine") lists each requirement and why. The blob is a pure
//! function of [`BoardDescription`], so it is part of the deterministic state.
//!
//! Blob layout (all integers big-endian): the 40-byte header, the memory reservation block
//! (8-aligned, just the terminating empty entry), the structure block (4-aligned tokens),
//! then the strings block with each property name stored once.

use crate::board::{self, Devices, DEVICES};
use crate::devices::offload::OffloadChannel;
use crate::devices::{Device, DeviceSlot};
use std::collections::BTreeMap;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const FDT_VERSION: u32 = 17;
const FDT_LAST_COMPATIBLE_VERSION: u32 = 16;
const HEADER_SIZE: usize = 40;

/// Errors reading a device tree blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FdtError {
    /// the blob is not a flattened device tree (bad magic or header)
    #[error("the blob is not a flattened device tree (bad magic or header)")]
    BadHeader,
    /// the blob's structure block is malformed at offset {0}
    #[error("the blob's structure block is malformed at offset {0}")]
    BadStructure(usize),
    /// a property name offset points outside the strings block
    #[error("a property name offset points outside the strings block")]
    BadString,
}

/// Builds a device tree blob; nodes are written through closures, so they always balance.
#[derive(Debug, Default)]
pub struct FdtWriter {
    structure: Vec<u8>,
    strings: Vec<u8>,
    /// Offset of each property name already in `strings` (deduplication).
    string_offsets: BTreeMap<String, u32>,
}

impl FdtWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    fn push_u32(&mut self, v: u32) {
        self.structure.extend_from_slice(&v.to_be_bytes());
    }

    /// Pads the structure block to the next 4-byte boundary with zeros.
    fn align_structure(&mut self) {
        while self.structure.len() % 4 != 0 {
            self.structure.push(0);
        }
    }

    /// Writes the node `name` (e.g. `cpu@0`; `""` for the root) and its contents.
    pub fn node(&mut self, name: &str, contents: impl FnOnce(&mut Self)) {
        self.push_u32(FDT_BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.align_structure();
        contents(self);
        self.push_u32(FDT_END_NODE);
    }

    /// Offset of `name` in the strings block, adding it the first time.
    fn string_offset(&mut self, name: &str) -> u32 {
        if let Some(&off) = self.string_offsets.get(name) {
            return off;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.string_offsets.insert(name.to_owned(), off);
        off
    }

    /// A property with raw bytes as its value.
    pub fn property(&mut self, name: &str, value: &[u8]) {
        let nameoff = self.string_offset(name);
        self.push_u32(FDT_PROP);
        self.push_u32(value.len() as u32);
        self.push_u32(nameoff);
        self.structure.extend_from_slice(value);
        self.align_structure();
    }

    /// A property without a value (a flag such as `interrupt-controller`).
    pub fn property_empty(&mut self, name: &str) {
        self.property(name, &[]);
    }

    /// A property of 32-bit cells.
    pub fn property_cells(&mut self, name: &str, cells: &[u32]) {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.property(name, &bytes);
    }

    /// A property of one 32-bit cell.
    pub fn property_u32(&mut self, name: &str, value: u32) {
        self.property_cells(name, &[value]);
    }

    /// A property of one 64-bit value (two cells).
    pub fn property_u64(&mut self, name: &str, value: u64) {
        self.property(name, &value.to_be_bytes());
    }

    /// A string property.
    pub fn property_string(&mut self, name: &str, value: &str) {
        self.property_strings(name, &[value]);
    }

    /// A string-list property (each string NUL-terminated).
    pub fn property_strings(&mut self, name: &str, values: &[&str]) {
        let mut bytes = Vec::new();
        for v in values {
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(0);
        }
        self.property(name, &bytes);
    }

    /// The finished blob (header, empty reservation block, structure, strings).
    pub fn finish(mut self) -> Vec<u8> {
        self.push_u32(FDT_END);
        let off_mem_rsvmap = HEADER_SIZE; // already 8-aligned
        let rsvmap_size = 16; // only the terminating (0, 0) entry
        let off_dt_struct = off_mem_rsvmap + rsvmap_size;
        let off_dt_strings = off_dt_struct + self.structure.len();
        let totalsize = off_dt_strings + self.strings.len();
        let header = [
            FDT_MAGIC,
            totalsize as u32,
            off_dt_struct as u32,
            off_dt_strings as u32,
            off_mem_rsvmap as u32,
            FDT_VERSION,
            FDT_LAST_COMPATIBLE_VERSION,
            0, // boot_cpuid_phys
            self.strings.len() as u32,
            self.structure.len() as u32,
        ];
        let mut blob = Vec::with_capacity(totalsize);
        for field in header {
            blob.extend_from_slice(&field.to_be_bytes());
        }
        blob.extend_from_slice(&[0u8; 16]);
        blob.extend_from_slice(&self.structure);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

/// A node read back from a blob.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FdtNode {
    /// Node name with unit address (`""` for the root).
    pub name: String,
    /// Properties in blob order.
    pub properties: Vec<(String, Vec<u8>)>,
    /// Child nodes in blob order.
    pub children: Vec<FdtNode>,
}

impl FdtNode {
    /// The value of property `name`.
    pub fn property(&self, name: &str) -> Option<&[u8]> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The child named `name`.
    pub fn child(&self, name: &str) -> Option<&FdtNode> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The node at `path` below this one (`"soc/serial@10000000"`; `""` is this node).
    pub fn find(&self, path: &str) -> Option<&FdtNode> {
        path.split('/')
            .filter(|p| !p.is_empty())
            .try_fold(self, |node, part| node.child(part))
    }

    /// Property `name` as big-endian 32-bit cells.
    pub fn cells(&self, name: &str) -> Option<Vec<u32>> {
        let v = self.property(name)?;
        if v.len() % 4 != 0 {
            return None;
        }
        Some(
            v.chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// Property `name` as a list of NUL-terminated strings.
    pub fn strings(&self, name: &str) -> Option<Vec<String>> {
        let v = self.property(name)?;
        let body = v.strip_suffix(&[0])?;
        Some(
            body.split(|&b| b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
        )
    }
}

/// Reads a blob into its root node (header, structure and strings; reservations skipped).
pub fn parse_device_tree(blob: &[u8]) -> Result<FdtNode, FdtError> {
    let be32 = |at: usize| -> Option<u32> {
        blob.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let header = |i: usize| be32(4 * i).ok_or(FdtError::BadHeader);
    if header(0)? != FDT_MAGIC || header(1)? as usize > blob.len() || header(5)? < 16 {
        return Err(FdtError::BadHeader);
    }
    let off_struct = header(2)? as usize;
    let off_strings = header(3)? as usize;
    let size_strings = header(8)? as usize;
    let size_struct = header(9)? as usize;
    let strings = blob
        .get(off_strings..off_strings + size_strings)
        .ok_or(FdtError::BadHeader)?;
    let end = off_struct + size_struct;
    if end > blob.len() {
        return Err(FdtError::BadHeader);
    }
    let name_at = |off: usize| -> Result<String, FdtError> {
        let rest = strings.get(off..).ok_or(FdtError::BadString)?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FdtError::BadString)?;
        Ok(String::from_utf8_lossy(&rest[..len]).into_owned())
    };

    let mut stack: Vec<FdtNode> = Vec::new();
    let mut root = None;
    let mut pos = off_struct;
    let align = |p: usize| (p + 3) & !3;
    while pos < end {
        let token = be32(pos).ok_or(FdtError::BadStructure(pos))?;
        let at = pos;
        pos += 4;
        match token {
            FDT_BEGIN_NODE => {
                let rest = blob.get(pos..end).ok_or(FdtError::BadStructure(at))?;
                let len = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(FdtError::BadStructure(at))?;
                stack.push(FdtNode {
                    name: String::from_utf8_lossy(&rest[..len]).into_owned(),
                    ..FdtNode::default()
                });
                pos = align(pos + len + 1);
            }
            FDT_END_NODE => {
                let node = stack.pop().ok_or(FdtError::BadStructure(at))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None if root.is_none() => root = Some(node),
                    None => return Err(FdtError::BadStructure(at)),
                }
            }
            FDT_PROP => {
                let len = be32(pos).ok_or(FdtError::BadStructure(at))? as usize;
                let nameoff = be32(pos + 4).ok_or(FdtError::BadStructure(at))? as usize;
                let value = blob
                    .get(pos + 8..pos + 8 + len)
                    .filter(|_| pos + 8 + len <= end)
                    .ok_or(FdtError::BadStructure(at))?;
                let node = stack.last_mut().ok_or(FdtError::BadStructure(at))?;
                node.properties.push((name_at(nameoff)?, value.to_vec()));
                pos = align(pos + 8 + len);
            }
            FDT_NOP => {}
            FDT_END if stack.is_empty() => return root.ok_or(FdtError::BadStructure(at)),
            _ => return Err(FdtError::BadStructure(at)),
        }
    }
    Err(FdtError::BadStructure(pos))
}

/// A flash drive as the device tree names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashDrive {
    /// The drive's label (for the caller; the guest sees drives as `/dev/pmemN` in order).
    pub label: String,
    /// Physical start address, a multiple of `board::FLASH_ALIGN`, above RAM.
    pub start: u64,
    /// Length in bytes, a multiple of `board::FLASH_ALIGN` (Linux's pmem regions want it).
    pub length: u64,
}

/// Everything of a run that shows in its device tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardDescription {
    /// Bytes of RAM from `board::RAM_BASE`.
    pub ram_length: u64,
    /// Flash drives in address order (`/dev/pmem0`, `/dev/pmem1`, ...).
    pub flash_drives: Vec<FlashDrive>,
    /// The kernel command line (`/chosen/bootargs`).
    pub bootargs: String,
    /// Initrd physical `[start, end)`, if one was loaded.
    pub initrd: Option<(u64, u64)>,
    /// `/chosen/rng-seed`: derived from the run's inputs, never from the host.
    pub rng_seed: [u8; 32],
    /// The offload channel's transport, on a board that has one (its node follows the table's devices
    /// under `/soc`; without it the blob is what it always was).
    pub offload_channel: Option<crate::devices::offload::Transport>,
}

/// Phandle of hart 0's interrupt controller (`riscv,cpu-intc`).
pub(crate) const PHANDLE_CPU_INTC: u32 = 1;
/// Phandle of the PLIC.
pub(crate) const PHANDLE_PLIC: u32 = 2;
/// Local interrupt numbers on the cpu-intc (mip bit positions).
pub(crate) const IRQ_M_SOFT: u32 = 3;
pub(crate) const IRQ_M_TIMER: u32 = 7;
pub(crate) const IRQ_S_EXT: u32 = 9;
pub(crate) const IRQ_M_EXT: u32 = 11;

/// Cells of a `reg` entry with `#address-cells = #size-cells = 2`.
pub(crate) fn reg_cells(start: u64, length: u64) -> [u32; 4] {
    [
        (start >> 32) as u32,
        start as u32,
        (length >> 32) as u32,
        length as u32,
    ]
}

/// Path of the console UART; `/chosen/stdout-path` and `/aliases/serial0` name it.
fn uart_path() -> String {
    format!("/soc/serial@{:x}", board::UART_BASE)
}

/// Where [`board_device_tree`] should place flash drives of `lengths` bytes: each starts on
/// a `FLASH_ALIGN` boundary after RAM and the previous drive. Returns `(start, length)`
/// with each length rounded up to `FLASH_ALIGN`, as Linux's pmem regions want whole 2 MiB
/// sections.
pub fn place_flash_drives(ram_length: u64, lengths: &[u64]) -> Vec<(u64, u64)> {
    let align = |v: u64| v.div_ceil(board::FLASH_ALIGN) * board::FLASH_ALIGN;
    let mut next = align(board::RAM_BASE + ram_length);
    lengths
        .iter()
        .map(|&len| {
            let placed = (next, align(len.max(1)));
            next += placed.1;
            placed
        })
        .collect()
}

/// The board's device tree blob for a run described by `desc`.
pub fn board_device_tree(desc: &BoardDescription) -> Vec<u8> {
    // Nodes depend on where devices sit, never on their state: ask them at reset.
    let devices = Devices::new();
    let mut w = FdtWriter::new();
    w.node("", |w| {
        w.property_u32("#address-cells", 2);
        w.property_u32("#size-cells", 2);
        w.property_string("compatible", "cmbuild,cmvm");
        w.property_string("model", "cmbuild deterministic RISC-V machine");

        w.node("chosen", |w| {
            w.property_string("bootargs", &desc.bootargs);
            w.property_string("stdout-path", &uart_path());
            w.property("rng-seed", &desc.rng_seed);
            if let Some((start, end)) = desc.initrd {
                w.property_u64("linux,initrd-start", start);
                w.property_u64("linux,initrd-end", end);
            }
        });

        w.node("aliases", |w| {
            w.property_string("serial0", &uart_path());
        });

        w.node("cpus", |w| {
            w.property_u32("#address-cells", 1);
            w.property_u32("#size-cells", 0);
            w.property_u32("timebase-frequency", board::TIMEBASE_HZ);
            w.node("cpu@0", |w| {
                w.property_string("device_type", "cpu");
                w.property_u32("reg", 0);
                w.property_string("status", "okay");
                w.property_string("compatible", "riscv");
                w.property_string("riscv,isa", board::ISA_STRING);
                w.property_string("mmu-type", "riscv,sv48");
                w.node("interrupt-controller", |w| {
                    w.property_u32("#interrupt-cells", 1);
                    w.property_empty("interrupt-controller");
                    w.property_string("compatible", "riscv,cpu-intc");
                    w.property_u32("phandle", PHANDLE_CPU_INTC);
                });
            });
        });

        w.node(&format!("memory@{:x}", board::RAM_BASE), |w| {
            w.property_string("device_type", "memory");
            w.property_cells("reg", &reg_cells(board::RAM_BASE, desc.ram_length));
        });

        w.node("soc", |w| {
            w.property_u32("#address-cells", 2);
            w.property_u32("#size-cells", 2);
            w.property_string("compatible", "simple-bus");
            w.property_empty("ranges");

            let mut slots: Vec<&DeviceSlot> = DEVICES.iter().collect();
            slots.sort_by_key(|slot| slot.dt_position);
            for slot in slots {
                devices
                    .get(slot.id)
                    .device_tree_node(w, slot.base, slot.size, slot.irq);
            }
            if let Some(transport) = desc.offload_channel {
                OffloadChannel::with_transport(1, transport).device_tree_node(
                    w,
                    board::OFFLOAD_BASE,
                    board::OFFLOAD_SIZE,
                    Some(board::OFFLOAD_IRQ),
                );
            }
        });

        for drive in &desc.flash_drives {
            w.node(&format!("pmem@{:x}", drive.start), |w| {
                w.property_string("compatible", "pmem-region");
                w.property_cells("reg", &reg_cells(drive.start, drive.length));
            });
        }
    });
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> BoardDescription {
        let placed = place_flash_drives(128 << 20, &[5 << 20, 100]);
        BoardDescription {
            ram_length: 128 << 20,
            flash_drives: vec![
                FlashDrive {
                    label: "root".into(),
                    start: placed[0].0,
                    length: placed[0].1,
                },
                FlashDrive {
                    label: "shared".into(),
                    start: placed[1].0,
                    length: placed[1].1,
                },
            ],
            bootargs: "console=ttyS0 quiet".into(),
            initrd: Some((0x8700_0000, 0x8712_3456)),
            rng_seed: core::array::from_fn(|i| i as u8 * 3 + 1),
            offload_channel: None,
        }
    }

    #[test]
    fn flash_drives_sit_above_ram_on_2mib_boundaries() {
        let placed = place_flash_drives(128 << 20, &[5 << 20, 100, 2 << 20]);
        assert_eq!(
            placed,
            vec![
                (0x8800_0000, 6 << 20),
                (0x8860_0000, 2 << 20),
                (0x8880_0000, 2 << 20)
            ]
        );
        // RAM that ends off a 2 MiB boundary pushes the first drive up.
        assert_eq!(place_flash_drives(0x10_1000, &[1])[0].0, 0x8020_0000);
    }

    #[test]
    fn header_and_blocks_are_laid_out_as_version_17() {
        let blob = board_device_tree(&sample());
        let be = |i: usize| u32::from_be_bytes(blob[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(be(0), FDT_MAGIC);
        assert_eq!(be(1) as usize, blob.len());
        assert_eq!(be(4), 40, "reservation block right after the header");
        assert_eq!(be(4) % 8, 0);
        assert_eq!(be(2), 56, "structure after the one terminating reservation");
        assert_eq!(be(2) % 4, 0);
        assert_eq!(be(3), be(2) + be(9), "strings follow the structure");
        assert_eq!(be(3) + be(8), be(1));
        assert_eq!((be(5), be(6)), (17, 16));
        assert_eq!(&blob[40..56], &[0u8; 16]);
        // Each property name is stored once: "compatible" appears once in the strings.
        let strings = &blob[be(3) as usize..];
        let count = strings
            .split(|&b| b == 0)
            .filter(|s| *s == b"compatible")
            .count();
        assert_eq!(count, 1);
        assert!(blob.len() <= board::DTB_SIZE as usize);
    }

    #[test]
    fn blob_round_trips_through_our_reader() {
        let desc = sample();
        let root = parse_device_tree(&board_device_tree(&desc)).unwrap();
        let chosen = root.find("chosen").unwrap();
        assert_eq!(
            chosen.strings("bootargs").unwrap(),
            vec!["console=ttyS0 quiet"]
        );
        assert_eq!(
            chosen.strings("stdout-path").unwrap(),
            vec!["/soc/serial@10000000"]
        );
        assert_eq!(chosen.property("rng-seed").unwrap(), &desc.rng_seed[..]);
        assert_eq!(
            chosen.cells("linux,initrd-start").unwrap(),
            vec![0, 0x8700_0000]
        );
        assert_eq!(
            chosen.cells("linux,initrd-end").unwrap(),
            vec![0, 0x8712_3456]
        );
        let cpu = root.find("cpus/cpu@0").unwrap();
        assert_eq!(cpu.strings("riscv,isa").unwrap(), vec![board::ISA_STRING]);
        let intc = cpu.child("interrupt-controller").unwrap();
        assert_eq!(intc.cells("phandle").unwrap(), vec![PHANDLE_CPU_INTC]);
        let plic = root.find("soc/plic@40100000").unwrap();
        assert_eq!(
            plic.strings("compatible").unwrap(),
            vec!["sifive,plic-1.0.0", "riscv,plic0"]
        );
        assert_eq!(
            plic.cells("interrupts-extended").unwrap(),
            vec![1, 11, 1, 9]
        );
        let htif = root.find("soc/htif@40008000").unwrap();
        assert_eq!(
            htif.cells("reg").unwrap(),
            vec![0, 0x4000_8008, 0, 8, 0, 0x4000_8000, 0, 8]
        );
        let memory = root.find("memory@80000000").unwrap();
        assert_eq!(
            memory.cells("reg").unwrap(),
            vec![0, 0x8000_0000, 0, 128 << 20]
        );
        let pmem: Vec<_> = root
            .children
            .iter()
            .filter(|c| c.strings("compatible") == Some(vec!["pmem-region".into()]))
            .map(|c| c.cells("reg").unwrap())
            .collect();
        assert_eq!(
            pmem,
            vec![
                vec![0, 0x8800_0000, 0, 6 << 20],
                vec![0, 0x8860_0000, 0, 2 << 20]
            ]
        );
        // Without an initrd, /chosen names none.
        let bare = BoardDescription {
            initrd: None,
            flash_drives: vec![],
            ..desc
        };
        let root = parse_device_tree(&board_device_tree(&bare)).unwrap();
        assert!(root
            .find("chosen")
            .unwrap()
            .property("linux,initrd-start")
            .is_none());
        assert!(root.children.iter().all(|c| !c.name.starts_with("pmem@")));
    }

    #[test]
    fn reader_refuses_damaged_blobs() {
        let blob = board_device_tree(&sample());
        assert_eq!(parse_device_tree(&blob[..20]), Err(FdtError::BadHeader));
        let mut bad = blob.clone();
        bad[0] = 0;
        assert_eq!(parse_device_tree(&bad), Err(FdtError::BadHeader));
        let mut bad = blob.clone();
        bad[56..60].copy_from_slice(&7u32.to_be_bytes()); // unknown token
        assert_eq!(parse_device_tree(&bad), Err(FdtError::BadStructure(56)));
    }

    /// Decodes the blob with the reference compiler, dtc, when it is installed.
    fn decompile_with_dtc(blob: &[u8]) -> Option<String> {
        let dir = std::env::temp_dir().join(format!("cmbuild-fdt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join("board.dtb");
        std::fs::write(&path, blob).ok()?;
        let out = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-q"])
            .arg(&path)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let out = match out {
            Ok(out) => out,
            Err(_) => {
                eprintln!("dtc not installed (device-tree-compiler): skipping the dtc check");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "dtc refused the blob: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn dtc_decodes_every_node_and_property() {
        let Some(dts) = decompile_with_dtc(&board_device_tree(&sample())) else {
            return;
        };
        let squashed: String = dts.split_whitespace().collect::<Vec<_>>().join(" ");
        for expected in [
            "timebase-frequency = <0x3d09>;",
            "cpu@0 { device_type = \"cpu\"; reg = <0x00>; status = \"okay\"; compatible = \"riscv\"; riscv,isa = \"rv64imafdc_zicsr_zifencei\"; mmu-type = \"riscv,sv48\";",
            "interrupt-controller { #interrupt-cells = <0x01>; interrupt-controller; compatible = \"riscv,cpu-intc\"; phandle = <0x01>; };",
            "memory@80000000 { device_type = \"memory\"; reg = <0x00 0x80000000 0x00 0x8000000>; };",
            "soc { #address-cells = <0x02>; #size-cells = <0x02>; compatible = \"simple-bus\"; ranges;",
            "clint@2000000 { compatible = \"riscv,clint0\"; reg = <0x00 0x2000000 0x00 0xc0000>; interrupts-extended = <0x01 0x03 0x01 0x07>; };",
            "plic@40100000 { compatible = \"sifive,plic-1.0.0\\0riscv,plic0\"; reg = <0x00 0x40100000 0x00 0x400000>; riscv,ndev = <0x1f>; interrupts-extended = <0x01 0x0b 0x01 0x09>; #interrupt-cells = <0x01>; interrupt-controller; #address-cells = <0x00>; phandle = <0x02>; };",
            // dtc shows 0x384000 as the string "\08@", so the frequency is checked below.
            "serial@10000000 { compatible = \"ns16550a\"; reg = <0x00 0x10000000 0x00 0x100>; clock-frequency = ",
            "reg-shift = <0x00>; reg-io-width = <0x01>; interrupts = <0x01>; interrupt-parent = <0x02>; };",
            "htif@40008000 { compatible = \"ucb,htif0\"; reg = <0x00 0x40008008 0x00 0x08 0x00 0x40008000 0x00 0x08>; };",
            "pmem@88000000 { compatible = \"pmem-region\"; reg = <0x00 0x88000000 0x00 0x600000>; };",
            "pmem@88600000 { compatible = \"pmem-region\"; reg = <0x00 0x88600000 0x00 0x200000>; };",
            "bootargs = \"console=ttyS0 quiet\"; stdout-path = \"/soc/serial@10000000\";",
            "linux,initrd-start = <0x00 0x87000000>; linux,initrd-end = <0x00 0x87123456>;",
            "serial0 = \"/soc/serial@10000000\";",
        ] {
            assert!(
                squashed.contains(expected),
                "missing `{expected}` in\n{dts}"
            );
        }
        assert!(
            squashed.contains("rng-seed = <0x104070a 0xd101316 "),
            "{dts}"
        );
        let root = parse_device_tree(&board_device_tree(&sample())).unwrap();
        let uart = root.find("soc/serial@10000000").unwrap();
        assert_eq!(uart.cells("clock-frequency").unwrap(), vec![3_686_400]);
    }

    #[test]
    fn blob_is_a_pure_function_of_the_description() {
        let a = board_device_tree(&sample());
        assert_eq!(a, board_device_tree(&sample()));
        let mut other = sample();
        other.rng_seed[0] ^= 1;
        assert_ne!(a, board_device_tree(&other));
    }
}
