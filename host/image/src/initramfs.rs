//! The initramfs: busybox, the kernel modules the root device needs, and `/init`.
//!
//! Debian's kernel package has no `modules.dep`, so the load order comes from each module's
//! `.modinfo` ELF section (`depends=a,b`), read on the host; modules are stored decompressed
//! (the kernel's `finit_module` would need its xz support otherwise) and listed in
//! `/etc/modules.order`, dependencies first, for `/init` to `insmod` one by one.

use std::collections::BTreeMap;
use std::io::Read;

use crate::cpio::{write_cpio, CharDevice, CpioError};
use crate::rootfs::{Kind, RootfsError, Tree};

/// Modules the guest needs, in the order they should load when independent: the pmem
/// chain for cmbuild's machine (docs/design.md's order), virtio for QEMU's `virt` board, erofs
/// for the root and the toolchain layer, overlay to stack them. `crc32c_generic` is named by hand because libnvdimm's users need a crc32c
/// implementation that no `depends=` line mentions.
pub const WANTED_MODULES: &[&str] = &[
    "crc32c_generic",
    "libnvdimm",
    "nd_btt",
    "nd_pmem",
    "of_pmem",
    "virtio_mmio",
    "virtio_blk",
    "erofs",
    "overlay",
];

/// Why the initramfs could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// the kernel package has no usr/lib/modules/<version> directory
    #[error("the kernel package has no usr/lib/modules/<version> directory")]
    NoModules,
    /// kernel module {0:?} is not in the kernel package
    #[error("kernel module {0:?} is not in the kernel package")]
    MissingModule(String),
    /// kernel module {name:?}: {reason}
    #[error("kernel module {name:?}: {reason}")]
    BadModule {
        /// Package or crate name.
        name: String,
        /// Why.
        reason: String,
    },
    /// kernel module dependencies form a cycle through {0:?}
    #[error("kernel module dependencies form a cycle through {0:?}")]
    Cycle(String),
    /// assembling the initramfs tree
    #[error(transparent)]
    Tree(#[from] RootfsError),
    /// writing the initramfs archive
    #[error(transparent)]
    Cpio(#[from] CpioError),
}

/// Names the kernel uses for a module file: `virtio-blk.ko.xz` is module `virtio_blk`.
fn module_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".ko.xz")
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko"))?;
    Some(stem.replace('-', "_"))
}

/// The kernel release (`6.12.x+debNN-riscv64`) and every module file of the kernel tree.
pub fn find_modules(kernel: &Tree) -> Result<(String, BTreeMap<String, String>), InitramfsError> {
    let release = kernel
        .nodes()
        .keys()
        .filter_map(|p| p.strip_prefix("usr/lib/modules/"))
        .find(|rest| !rest.contains('/'))
        .ok_or(InitramfsError::NoModules)?
        .to_string();
    let prefix = format!("usr/lib/modules/{release}/kernel/");
    let mut modules = BTreeMap::new();
    for path in kernel.nodes().keys().filter(|p| p.starts_with(&prefix)) {
        let file = path.rsplit('/').next().unwrap_or_default();
        if let Some(name) = module_name(file) {
            modules.insert(name, path.clone());
        }
    }
    Ok((release, modules))
}

/// Decompress a module file as stored in the package.
fn module_bytes(name: &str, stored: &[u8], path: &str) -> Result<Vec<u8>, InitramfsError> {
    let bad = |reason: String| InitramfsError::BadModule {
        name: name.to_string(),
        reason,
    };
    let mut out = Vec::new();
    if path.ends_with(".xz") {
        xz2::read::XzDecoder::new(stored)
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
    } else if path.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(stored)
            .map_err(|e| bad(e.to_string()))?
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
    } else {
        out = stored.to_vec();
    }
    Ok(out)
}

/// The `depends=` list of a module's `.modinfo` section (64-bit little-endian ELF).
pub fn module_depends(elf: &[u8]) -> Result<Vec<String>, String> {
    let u16_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| "truncated ELF".to_string())
    };
    let u64_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or_else(|| "truncated ELF".to_string())
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3a)?;
    let shnum = u16_at(0x3c)?;
    let shstrndx = u16_at(0x3e)?;
    let section = |index: usize| -> Result<(usize, usize, usize), String> {
        let base = shoff + index * shentsize;
        Ok((
            u32_from(elf, base)?,
            u64_at(base + 0x18)?,
            u64_at(base + 0x20)?,
        ))
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let names = elf
        .get(str_off..str_off + str_size)
        .ok_or_else(|| "section names out of range".to_string())?;
    for index in 0..shnum {
        let (name_off, off, size) = section(index)?;
        let name = names.get(name_off..).unwrap_or_default();
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name != b".modinfo" {
            continue;
        }
        let body = elf
            .get(off..off + size)
            .ok_or_else(|| ".modinfo out of range".to_string())?;
        for field in body.split(|&b| b == 0) {
            if let Some(list) = field.strip_prefix(b"depends=") {
                let list = String::from_utf8_lossy(list);
                return Ok(list
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace('-', "_"))
                    .collect());
            }
        }
        return Ok(Vec::new());
    }
    Err("no .modinfo section".into())
}

fn u32_from(elf: &[u8], at: usize) -> Result<usize, String> {
    elf.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| "truncated ELF".to_string())
}

/// Order `wanted` and their dependencies so every module follows what it depends on;
/// independent modules keep the order of `wanted`.
pub fn order_modules(
    wanted: &[&str],
    depends: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, InitramfsError> {
    fn visit(
        name: &str,
        depends: &BTreeMap<String, Vec<String>>,
        done: &mut Vec<String>,
        active: &mut Vec<String>,
    ) -> Result<(), InitramfsError> {
        if done.iter().any(|d| d == name) {
            return Ok(());
        }
        if active.iter().any(|a| a == name) {
            return Err(InitramfsError::Cycle(name.to_string()));
        }
        let deps = depends
            .get(name)
            .ok_or_else(|| InitramfsError::MissingModule(name.to_string()))?;
        active.push(name.to_string());
        for dep in deps {
            visit(dep, depends, done, active)?;
        }
        active.pop();
        done.push(name.to_string());
        Ok(())
    }
    let mut done = Vec::new();
    for name in wanted {
        visit(name, depends, &mut done, &mut Vec::new())?;
    }
    Ok(done)
}

/// Kernel modules by name, with their (decompressed) bytes, in load order.
pub type Modules = Vec<(String, Vec<u8>)>;

/// The kernel release of the kernel package `kernel`, and `wanted` with every module they
/// depend on, decompressed, each after what it depends on (from each module's `.modinfo`).
pub fn ordered_modules(
    kernel: &Tree,
    wanted: &[&str],
) -> Result<(String, Modules), InitramfsError> {
    let (release, files) = find_modules(kernel)?;
    // Read the dependency lists of everything reachable from the wanted modules.
    let mut depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut decompressed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut queue: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
    while let Some(name) = queue.pop() {
        if depends.contains_key(&name) {
            continue;
        }
        let path = files
            .get(&name)
            .ok_or_else(|| InitramfsError::MissingModule(name.clone()))?;
        let bytes = module_bytes(&name, &kernel.read_file(path)?, path)?;
        let deps = module_depends(&bytes).map_err(|reason| InitramfsError::BadModule {
            name: name.clone(),
            reason,
        })?;
        queue.extend(deps.iter().cloned());
        depends.insert(name.clone(), deps);
        decompressed.insert(name, bytes);
    }
    let order = order_modules(wanted, &depends)?;
    let modules = order
        .into_iter()
        .map(|name| {
            let bytes = decompressed
                .remove(&name)
                .expect("every ordered module was read");
            (name, bytes)
        })
        .collect();
    Ok((release, modules))
}

/// Assemble the initramfs tree: `/init`, busybox as `/bin/busybox` (init installs its
/// applets at boot), decompressed modules and their load order.
pub fn initramfs_tree(
    kernel: &Tree,
    busybox: &[u8],
    init_script: &str,
) -> Result<Tree, InitramfsError> {
    let (release, modules) = ordered_modules(kernel, WANTED_MODULES)?;

    let mut tree = Tree::new();
    for dir in ["dev", "proc", "sys", "newroot", "etc", "lib/modules", "tmp"] {
        tree.add_dir(dir, 0o755)?;
    }
    tree.add_file("init", 0o755, init_script.as_bytes().to_vec())?;
    tree.add_file("bin/busybox", 0o755, busybox.to_vec())?;
    tree.add_symlink("bin/sh", "busybox")?;
    for (name, bytes) in &modules {
        tree.add_file(&format!("lib/modules/{name}.ko"), 0o644, bytes.clone())?;
    }
    let order: Vec<&str> = modules.iter().map(|(name, _)| name.as_str()).collect();
    let mut listing = order.join("\n");
    listing.push('\n');
    tree.add_file("etc/modules.order", 0o644, listing.into_bytes())?;
    tree.add_file(
        "etc/kernel-release",
        0o644,
        format!("{release}\n").into_bytes(),
    )?;
    Ok(tree)
}

/// The initramfs archive (uncompressed newc, which every kernel unpacks).
pub fn initramfs_bytes(tree: &Tree, mtime: u32) -> Result<Vec<u8>, InitramfsError> {
    let console = CharDevice {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    };
    let mut out = Vec::new();
    write_cpio(tree, &[console], mtime, &mut out)?;
    Ok(out)
}

/// The kernel image (`/boot/vmlinux-*`) of the kernel package.
pub fn kernel_image(kernel: &Tree) -> Result<Vec<u8>, InitramfsError> {
    let path = kernel
        .nodes()
        .iter()
        .find(|(p, n)| p.starts_with("boot/vmlinux-") && matches!(n.kind, Kind::File(_)))
        .map(|(p, _)| p.clone())
        .ok_or_else(|| RootfsError::Missing("boot/vmlinux-*".into()))?;
    Ok(kernel.read_file(&path)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::tests::xz;

    /// A minimal ELF64 with a section-name table and a `.modinfo` section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        let section = |name: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            s
        };
        elf.extend(section(0, 0, 0));
        elf.extend(section(1, shstr_off, shstr.len()));
        elf.extend(section(11, modinfo_off, modinfo.len()));
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_depends_are_read_and_normalised() {
        let elf = fake_module(b"license=GPL\0depends=libnvdimm,virtio-ring\0name=nd_pmem\0");
        assert_eq!(module_depends(&elf).unwrap(), ["libnvdimm", "virtio_ring"]);
        let none = fake_module(b"license=GPL\0depends=\0");
        assert!(module_depends(&none).unwrap().is_empty());
        assert!(module_depends(b"not an elf").is_err());
    }

    /// A kernel package tree whose modules carry the given `depends=` lists.
    fn fake_kernel(modules: &[(&str, &str)]) -> Tree {
        let mut kernel = Tree::new();
        kernel
            .add_file("boot/vmlinux-6.12.0-test", 0o644, b"Image".to_vec())
            .unwrap();
        for (file, depends) in modules {
            let elf = fake_module(format!("license=GPL\0depends={depends}\0").as_bytes());
            let path = format!("usr/lib/modules/6.12.0-test/kernel/drivers/{file}.ko.xz");
            kernel.add_file(&path, 0o644, xz(&elf)).unwrap();
        }
        kernel
    }

    const KERNEL_MODULES: &[(&str, &str)] = &[
        ("crc32c_generic", ""),
        ("libnvdimm", ""),
        ("nd_btt", "libnvdimm"),
        ("nd_pmem", "nd_btt,libnvdimm"),
        ("of_pmem", "libnvdimm"),
        ("virtio_mmio", ""),
        ("virtio-blk", ""),
        ("erofs", "libcrc32c"),
        ("libcrc32c", ""),
        ("overlay", ""),
        ("unrelated", ""),
    ];

    #[test]
    fn initramfs_holds_init_busybox_and_ordered_decompressed_modules() {
        let kernel = fake_kernel(KERNEL_MODULES);
        let tree = initramfs_tree(&kernel, b"busybox-binary", "#!/bin/sh\n").unwrap();
        let order =
            String::from_utf8(tree.read_file("etc/modules.order").unwrap().to_vec()).unwrap();
        assert_eq!(
            order.lines().collect::<Vec<_>>(),
            [
                "crc32c_generic",
                "libnvdimm",
                "nd_btt",
                "nd_pmem",
                "of_pmem",
                "virtio_mmio",
                "virtio_blk",
                "libcrc32c",
                "erofs",
                "overlay"
            ]
        );
        let module = tree.read_file("lib/modules/virtio_blk.ko").unwrap();
        assert!(module.starts_with(b"\x7fELF"), "stored decompressed");
        assert!(tree.get("lib/modules/unrelated.ko").is_none());
        assert_eq!(tree.get("init").unwrap().mode, 0o755);
        assert_eq!(&**tree.read_file("bin/sh").unwrap(), b"busybox-binary");
        assert_eq!(kernel_image(&kernel).unwrap(), b"Image");
        // The archive is reproducible and carries the console device.
        let archive = initramfs_bytes(&tree, 0).unwrap();
        assert_eq!(archive, initramfs_bytes(&tree, 0).unwrap());
        assert!(archive.windows(11).any(|w| w == b"dev/console"));
    }

    #[test]
    fn a_missing_dependency_is_named() {
        let mut modules = KERNEL_MODULES.to_vec();
        modules.retain(|(name, _)| *name != "libcrc32c");
        let err = initramfs_tree(&fake_kernel(&modules), b"", "").unwrap_err();
        assert!(
            matches!(&err, InitramfsError::MissingModule(name) if name == "libcrc32c"),
            "{err}"
        );
    }

    #[test]
    fn dependencies_load_first_and_cycles_are_refused() {
        let mut deps = BTreeMap::new();
        deps.insert("a".to_string(), vec!["c".to_string()]);
        deps.insert("b".to_string(), vec![]);
        deps.insert("c".to_string(), vec!["b".to_string()]);
        assert_eq!(order_modules(&["a", "b"], &deps).unwrap(), ["b", "c", "a"]);
        assert!(matches!(
            order_modules(&["x"], &deps),
            Err(InitramfsError::MissingModule(_))
        ));
        deps.insert("b".to_string(), vec!["a".to_string()]);
        assert!(matches!(
            order_modules(&["a"], &deps),
            Err(InitramfsError::Cycle(_))
        ));
    }
}
