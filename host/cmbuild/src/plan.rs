//! The build plan and the drives that carry it into the machine and the artifacts out.
//!
//! `guest-image/PROTOCOL.md` is the contract with the guest's build driver; this module is
//! its host half. Everything written here is deterministic: tar entries sorted, owner 0:0,
//! every mtime equal to `SOURCE_DATE_EPOCH`, drives zero-padded to a 2 MiB multiple.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cmbuild_image::triple::Triple;

use crate::project::Selection;
use crate::untrusted::{self, TarLimits};

/// Flash drives are sized in multiples of this (the board places them 2 MiB aligned).
pub const DRIVE_ALIGN: u64 = 2 << 20;

/// Errors preparing the plan or reading the output drive.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The project's Cargo manifests could not be read.
    #[error("reading the project's Cargo manifests: {0}")]
    Workspace(#[from] crate::workspace::WorkspaceError),
    /// The revision has no `Cargo.lock`.
    #[error("{0}")]
    NoLock(String),
    /// The selection names no binary.
    #[error("nothing to build: the selected packages have no binary targets{0}")]
    NoBinaries(String),
    /// A name would break the plan's shell quoting or a path.
    #[error("{0:?} is not a valid package, binary or feature name")]
    BadName(String),
    /// The guest's output drive was refused.
    #[error("the guest's output drive was refused: {0}")]
    Output(#[from] untrusted::TarError),
    /// The guest did not produce what the plan asked for.
    #[error("{0}")]
    MissingOutput(String),
    /// The input drive could not be made from the source and vendor archives.
    #[error("making the input drive: {0}")]
    Input(String),
    /// I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One binary the plan expects for every target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedBin {
    /// The package it belongs to.
    pub package: String,
    /// The package's version.
    pub version: String,
    /// The binary target's name.
    pub bin: String,
}

/// What the guest builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The commit time, exported to the build as `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
    /// The triples to build, in order.
    pub targets: Vec<Triple>,
    /// Flags for `cargo build` (packages, bins, features).
    pub cargo_flags: Vec<String>,
    /// The binaries expected for every target.
    pub bins: Vec<PlannedBin>,
    /// Hand rustc jobs to sibling machines (issue 13): `plan.env` then sources the
    /// offload setup from the input drive, which carries it and `cmbuild-offload`'s sources.
    pub offload: bool,
}

fn check_name(name: &str) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
        && !name.starts_with('-')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadName(name.to_owned()))
    }
}

impl Plan {
    /// Turns a selection and the project's binaries into a plan.
    pub fn new(
        selection: &Selection,
        source_date_epoch: u64,
        workspace_bins: &[PlannedBin],
    ) -> Result<Plan, PlanError> {
        let profile = &selection.profile;
        let mut flags = Vec::new();
        for p in &profile.packages {
            check_name(p)?;
            flags.extend(["--package".to_owned(), p.clone()]);
        }
        for b in &profile.bins {
            check_name(b)?;
            flags.extend(["--bin".to_owned(), b.clone()]);
        }
        if !profile.features.is_empty() {
            for f in &profile.features {
                check_name(f)?;
            }
            flags.extend(["--features".to_owned(), profile.features.join(",")]);
        }
        if profile.no_default_features {
            flags.push("--no-default-features".to_owned());
        }
        let bins: Vec<PlannedBin> = workspace_bins
            .iter()
            .filter(|b| profile.packages.is_empty() || profile.packages.contains(&b.package))
            .filter(|b| profile.bins.is_empty() || profile.bins.contains(&b.bin))
            .cloned()
            .collect();
        if bins.is_empty() {
            return Err(PlanError::NoBinaries(format!(
                " (profile {:?})",
                selection.profile_name
            )));
        }
        for b in &bins {
            check_name(&b.bin)?;
        }
        Ok(Plan {
            source_date_epoch,
            targets: selection.targets.clone(),
            cargo_flags: flags,
            bins,
            offload: false,
        })
    }

    /// The same plan for some of its targets (one machine's share).
    pub fn for_targets(&self, targets: &[Triple]) -> Plan {
        Plan {
            targets: targets.to_vec(),
            ..self.clone()
        }
    }

    /// `plan.env` as the guest's build driver sources it.
    pub fn to_env(&self) -> String {
        let bins: Vec<&str> = self.bins.iter().map(|b| b.bin.as_str()).collect();
        format!(
            "CMBUILD_PLAN_VERSION='2'\nSOURCE_DATE_EPOCH='{}'\nTARGETS='{}'\nCARGO_FLAGS='{}'\nBINS='{}'\n",
            self.source_date_epoch,
            self.targets
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            self.cargo_flags.join(" "),
            bins.join(" "),
        ) + match self.offload {
            // A hook the driver runs as it sources this file (guest-image/PROTOCOL.md).
            true => OFFLOAD_ENV,
            false => "",
        }
    }
}

/// Lists every binary target of the workspace in an extracted source tree, from its
/// manifests alone ([`crate::workspace`]): no Rust toolchain on the host takes part.
pub fn list_workspace_bins(source_dir: &Path) -> Result<Vec<PlannedBin>, PlanError> {
    Ok(crate::workspace::read_workspace(source_dir)?.bins())
}

/// A tar archive being built deterministically: every entry gets the same owner and mtime.
pub struct DeterministicTar<W: Write> {
    builder: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> DeterministicTar<W> {
    /// A new archive written to `out`, every entry's mtime `mtime`.
    pub fn new(out: W, mtime: u64) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Deterministic);
        DeterministicTar { builder, mtime }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_size(size);
        header
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, data: &[u8], executable: bool) -> io::Result<()> {
        let mode = if executable { 0o755 } else { 0o644 };
        let mut header = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder.append_data(&mut header, path, data)
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let mut header = self.header(tar::EntryType::Directory, 0o755, 0);
        self.builder.append_data(&mut header, path, io::empty())
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut header = self.header(tar::EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut header, path, target)
    }

    /// Adds a directory tree from disk in sorted order (regular files, directories and
    /// symlinks; executable bits kept, everything else normalised).
    pub fn tree(&mut self, prefix: &str, dir: &Path) -> io::Result<()> {
        let mut entries: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|n| {
                io::Error::new(io::ErrorKind::InvalidData, format!("non-UTF-8 name {n:?}"))
            })?;
            entries.push((name, entry.path()));
        }
        entries.sort();
        for (name, path) in entries {
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                let mut header = self.header(tar::EntryType::Symlink, 0o777, 0);
                self.builder.append_link(&mut header, &rel, target)?;
            } else if meta.is_dir() {
                self.dir(&rel)?;
                self.tree(&rel, &path)?;
            } else {
                use std::os::unix::fs::PermissionsExt;
                let data = std::fs::read(&path)?;
                self.file(&rel, &data, meta.permissions().mode() & 0o111 != 0)?;
            }
        }
        Ok(())
    }

    /// Ends the archive.
    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}

/// Pads `bytes` with zeros to a whole number of drive units (at least one).
pub fn pad_to_drive(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = (bytes.len() as u64).max(1).div_ceil(DRIVE_ALIGN) * DRIVE_ALIGN;
    bytes.resize(len as usize, 0);
    bytes
}

/// What an offloaded plan's `plan.env` ends with: cargo's job count in the parent (a
/// constant, so that the parent's history does not depend on the host) and the hook that
/// sets up the channel (`docs/parallel-builds.md`, "Hooks").
pub const OFFLOAD_ENV: &str = "OFFLOAD_CARGO_JOBS='32'\n. /build/in/offload/setup.sh\n";

/// The setup hook an offloaded build's input drive carries as `offload/setup.sh`, beside
/// the `cmbuild-offload` binary (`crate::offload::tool`).
pub const OFFLOAD_SETUP: &str = include_str!("../../../guest-image/offload-setup.sh");

/// The input drive's volume UUID: fixed, so that the drive is a function of its files.
const INPUT_UUID: [u8; 16] = *b"cmbuild-input-v1";

/// Builds the input drive: an EROFS image holding `plan.env`, `cargo-config.toml`, the
/// source tree under `src/` and the vendored crates under `vendor/`, and under a glibc
/// floor its `glibc-floor/` (whose cargo configuration then replaces `cargo_config`)
/// (PROTOCOL.md). The guest mounts it read-only, with a writable overlay over `src/` and
/// `vendor/`, so that nothing is copied or unpacked: cargo reads only the files it
/// compiles. Every inode's time is `SOURCE_DATE_EPOCH`; the trees come from the
/// deterministic source and vendor archives, so the drive is a function of those two, the
/// plan and the floor.
pub fn build_input_drive(
    plan: &Plan,
    source_tar: &[u8],
    vendor_tar: &[u8],
    cargo_config: &str,
    floor: Option<&crate::floor::FloorInput>,
) -> Result<Vec<u8>, PlanError> {
    build_input_drive_with(plan, source_tar, vendor_tar, cargo_config, floor, None)
}

/// [`build_input_drive`], and for an offloaded plan `offload/setup.sh` and
/// `offload/cmbuild-offload` (the binary `tool`).
pub fn build_input_drive_with(
    plan: &Plan,
    source_tar: &[u8],
    vendor_tar: &[u8],
    cargo_config: &str,
    floor: Option<&crate::floor::FloorInput>,
    tool: Option<&[u8]>,
) -> Result<Vec<u8>, PlanError> {
    use cmbuild_image::rootfs::Tree;
    let input = |e: &dyn std::fmt::Display| PlanError::Input(e.to_string());
    let cargo_config = floor.map_or(cargo_config, |f| f.cargo_config.as_str());
    let mut tree = Tree::new();
    tree.add_file("cargo-config.toml", 0o644, cargo_config.as_bytes().to_vec())
        .map_err(|e| input(&e))?;
    // Under a floor, an offloaded build's plan.env ends with the floor's part.
    let plan_env = plan.to_env() + floor.map_or("", |f| f.plan_env);
    tree.add_file("plan.env", 0o644, plan_env.into_bytes())
        .map_err(|e| input(&e))?;
    if let Some(floor) = floor {
        floor.add_to(&mut tree).map_err(|e| input(&e))?;
    }
    if plan.offload {
        let tool =
            tool.ok_or_else(|| PlanError::Input("an offloaded plan needs cmbuild-offload".into()))?;
        tree.add_file("offload/setup.sh", 0o644, OFFLOAD_SETUP.as_bytes().to_vec())
            .map_err(|e| input(&e))?;
        tree.add_file("offload/cmbuild-offload", 0o755, tool.to_vec())
            .map_err(|e| input(&e))?;
    }
    for (dir, archive) in [("src", source_tar), ("vendor", vendor_tar)] {
        tree.add_dir(dir, 0o755).map_err(|e| input(&e))?;
        let mut entries = cmbuild_image::deb::read_tar(archive).map_err(|e| input(&e))?;
        for entry in &mut entries {
            entry.path = format!("{dir}/{}", entry.path);
            if let cmbuild_image::deb::Node::Hardlink(target) = &mut entry.node {
                *target = format!("{dir}/{target}");
            }
        }
        tree.install(&entries).map_err(|e| input(&e))?;
    }
    drive_image(&tree, INPUT_UUID, "cmbuild-input", plan.source_date_epoch).map_err(|e| input(&e))
}

/// `tree` as an EROFS image padded to a whole drive: the form of every input drive (a
/// build's, a sibling job's, the one `cmbuild-offload` is compiled from). The UUID and
/// every inode's time are fixed, so the drive is a function of the tree.
pub fn drive_image(
    tree: &cmbuild_image::rootfs::Tree,
    uuid: [u8; 16],
    volume_name: &str,
    build_time: u64,
) -> Result<Vec<u8>, cmbuild_image::erofs::ErofsError> {
    let options = cmbuild_image::erofs::ErofsOptions {
        uuid,
        volume_name: volume_name.into(),
        build_time,
    };
    Ok(pad_to_drive(cmbuild_image::erofs::erofs_bytes(
        tree, &options,
    )?))
}

/// The input drive's files, as erofs-utils' own reader (`fsck.erofs --extract`) sees them,
/// under the returned directory's `x/`.
#[cfg(test)]
pub(crate) fn extract_input_drive(drive: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("input.erofs");
    std::fs::write(&image, drive).unwrap();
    let out = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", dir.path().join("x").display()))
        .arg(&image)
        .output()
        .expect("fsck.erofs is missing: run .ci/install-deps (erofs-utils)");
    assert!(
        out.status.success(),
        "fsck.erofs refused the input drive: {out:?}"
    );
    dir
}

/// The cargo configuration the guest uses: crates.io replaced by the vendored directory.
pub const GUEST_CARGO_CONFIG: &str = "[source.crates-io]\nreplace-with = \"cmbuild-vendor\"\n\n[source.cmbuild-vendor]\ndirectory = \"/build/vendor\"\n\n[net]\noffline = true\n";

/// What the guest reported for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetOutput {
    /// cargo's exit status as the guest reported it.
    pub status: Option<i32>,
    /// The binaries found, by name, as paths under the extraction directory.
    pub bins: BTreeMap<String, PathBuf>,
    /// The tail of the build log, if any, after the driver's `error` report, if any
    /// (sanitised guest text).
    pub log_tail: String,
    /// The first error line of the build log, if any (sanitised guest text).
    pub first_error: Option<String>,
}

/// Extracts the guest's output drive into `dest` (fresh, empty) and checks it against the plan.
pub fn collect_outputs(
    output_drive: &[u8],
    dest: &Path,
    plan: &Plan,
) -> Result<BTreeMap<Triple, TargetOutput>, PlanError> {
    let limits = TarLimits::default();
    let files = untrusted::extract_tar(output_drive, dest, limits)?;
    // The driver writes `error` when it could not even start building (PROTOCOL.md).
    let driver_error = if files.iter().any(|f| f == "error") {
        let bytes = untrusted::read_capped(&dest.join("error"), 4 << 10).unwrap_or_default();
        format!(
            "the guest's build driver failed: {}\n",
            String::from_utf8_lossy(&bytes).trim()
        )
    } else {
        String::new()
    };
    let mut outputs = BTreeMap::new();
    for target in &plan.targets {
        let read_small = |name: &str| -> String {
            let rel = format!("{target}/{name}");
            if !files.contains(&rel) {
                return String::new();
            }
            untrusted::read_capped(&dest.join(&rel), 64 << 10)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let status = read_small("status").trim().parse().ok();
        let log = if files.contains(&format!("{target}/build.log")) {
            crate::progress::summarize_log_file(&dest.join(format!("{target}/build.log")))
        } else {
            crate::progress::LogSummary::default()
        };
        let log_tail = crate::terminal::sanitize(&driver_error) + &log.tail;
        let mut bins = BTreeMap::new();
        for planned in &plan.bins {
            let rel = format!("{target}/{}", target.artifact_name(&planned.bin));
            if files.contains(&rel) {
                bins.insert(planned.bin.clone(), dest.join(&rel));
            }
        }
        outputs.insert(
            *target,
            TargetOutput {
                status,
                bins,
                log_tail,
                first_error: log.first_error,
            },
        );
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::{Profile, Selection};

    fn bins() -> Vec<PlannedBin> {
        vec![
            PlannedBin {
                package: "a".into(),
                version: "1.0.0".into(),
                bin: "a".into(),
            },
            PlannedBin {
                package: "b".into(),
                version: "0.2.0".into(),
                bin: "b-tool".into(),
            },
        ]
    }

    fn selection(profile: Profile) -> Selection {
        Selection {
            targets: vec![Triple::ALL[0]],
            profile,
            profile_name: "p".into(),
        }
    }

    #[test]
    fn plan_env_is_quoted_and_filtered_by_profile() {
        let plan = Plan::new(
            &selection(Profile {
                packages: vec!["b".into()],
                features: vec!["x".into(), "y".into()],
                ..Profile::default()
            }),
            42,
            &bins(),
        )
        .unwrap();
        assert_eq!(plan.bins.len(), 1);
        let env = plan.to_env();
        assert!(env.contains("SOURCE_DATE_EPOCH='42'\n"));
        assert!(env.contains("CARGO_FLAGS='--package b --features x,y'\n"));
        assert!(env.contains("BINS='b-tool'\n"));
        let bad = Plan::new(
            &selection(Profile {
                features: vec!["x'; rm -rf /".into()],
                ..Profile::default()
            }),
            0,
            &bins(),
        );
        assert!(matches!(bad, Err(PlanError::BadName(_))));
        let none = Plan::new(
            &selection(Profile {
                packages: vec!["zzz".into()],
                ..Profile::default()
            }),
            0,
            &bins(),
        );
        assert!(matches!(none, Err(PlanError::NoBinaries(_))));
    }

    fn small_tar(files: &[(&str, &[u8], bool)], symlink: Option<(&str, &str)>) -> Vec<u8> {
        let mut tar = DeterministicTar::new(Vec::new(), 7);
        tar.dir("d").unwrap();
        for (path, data, executable) in files {
            tar.file(path, data, *executable).unwrap();
        }
        if let Some((path, target)) = symlink {
            let mut header = tar.header(tar::EntryType::Symlink, 0o777, 0);
            tar.builder.append_link(&mut header, path, target).unwrap();
        }
        tar.finish().unwrap()
    }

    #[test]
    fn input_drive_is_an_erofs_image_of_the_plan_and_both_trees() {
        let plan = Plan::new(&selection(Profile::default()), 7, &bins()).unwrap();
        let source = small_tar(
            &[
                ("Cargo.toml", b"[package]\n", false),
                ("d/run.sh", b"#!/bin/sh\n", true),
            ],
            Some(("d/link", "../Cargo.toml")),
        );
        let vendor = small_tar(&[("d/.cargo-checksum.json", b"{}", false)], None);
        let a = build_input_drive(&plan, &source, &vendor, GUEST_CARGO_CONFIG, None).unwrap();
        let b = build_input_drive(&plan, &source, &vendor, GUEST_CARGO_CONFIG, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len() as u64 % DRIVE_ALIGN, 0);
        // The EROFS superblock's magic, 1 KiB in.
        assert_eq!(a[1024..1028], 0xE0F5_E1E2u32.to_le_bytes());
        // A different source gives a different drive.
        let other = small_tar(&[("Cargo.toml", b"[package]\nname = \"x\"\n", false)], None);
        assert_ne!(
            a,
            build_input_drive(&plan, &other, &vendor, GUEST_CARGO_CONFIG, None).unwrap()
        );

        // erofs-utils' own reader sees the same tree.
        let extracted = extract_input_drive(&a);
        let out = extracted.path().join("x");
        let read = |p: &str| std::fs::read(out.join(p)).unwrap();
        assert_eq!(read("plan.env"), plan.to_env().as_bytes());
        assert_eq!(read("cargo-config.toml"), GUEST_CARGO_CONFIG.as_bytes());
        assert_eq!(read("src/Cargo.toml"), b"[package]\n");
        assert_eq!(read("vendor/d/.cargo-checksum.json"), b"{}");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("src/d/run.sh"), 0o755);
        assert_eq!(mode("src/Cargo.toml"), 0o644);
        assert_eq!(
            std::fs::read_link(out.join("src/d/link")).unwrap(),
            Path::new("../Cargo.toml")
        );
        let mtime = std::fs::metadata(out.join("src/Cargo.toml"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            mtime,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(7)
        );
    }

    #[test]
    fn an_offloaded_plan_carries_its_hook_and_cmbuild_offload() {
        let mut plan = Plan::new(&selection(Profile::default()), 7, &bins()).unwrap();
        let source = small_tar(&[("Cargo.toml", b"[package]\n", false)], None);
        let vendor = small_tar(&[], None);
        let plain = build_input_drive(&plan, &source, &vendor, GUEST_CARGO_CONFIG, None).unwrap();
        assert!(!plan.to_env().contains("offload"));
        plan.offload = true;
        let env = plan.to_env();
        assert!(env.ends_with(OFFLOAD_ENV), "{env}");
        assert!(build_input_drive(&plan, &source, &vendor, GUEST_CARGO_CONFIG, None).is_err());
        let tool = b"\x7fELF a riscv64 binary";
        let drive = build_input_drive_with(
            &plan,
            &source,
            &vendor,
            GUEST_CARGO_CONFIG,
            None,
            Some(tool),
        )
        .unwrap();
        assert_ne!(drive, plain);
        let extracted = extract_input_drive(&drive);
        let out = extracted.path().join("x");
        assert_eq!(
            std::fs::read(out.join("offload/setup.sh")).unwrap(),
            OFFLOAD_SETUP.as_bytes()
        );
        let binary = out.join("offload/cmbuild-offload");
        assert_eq!(std::fs::read(&binary).unwrap(), tool);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(binary).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let plain = extract_input_drive(&plain);
        assert!(!plain.path().join("x/offload").exists());
    }

    #[test]
    fn a_hostile_output_drive_is_refused() {
        let plan = Plan::new(&selection(Profile::default()), 7, &bins()).unwrap();
        // A guest that plants a symlink to a host file under the name of an artifact, and one
        // that climbs out of the extraction directory.
        let mut link = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        link.append_link(&mut header, "x86_64-unknown-linux-gnu/a", "/etc/passwd")
            .unwrap();
        let mut climb = tar::Header::new_gnu();
        climb.set_entry_type(tar::EntryType::Regular);
        climb.set_size(1);
        climb.as_old_mut().name[..9].copy_from_slice(b"../escape");
        climb.set_cksum();
        let mut escape = tar::Builder::new(Vec::new());
        escape.append(&climb, &b"x"[..]).unwrap();
        for drive in [link.into_inner().unwrap(), escape.into_inner().unwrap()] {
            let outer = tempfile::tempdir().unwrap();
            let dest = outer.path().join("out");
            std::fs::create_dir(&dest).unwrap();
            let result = collect_outputs(&drive, &dest, &plan);
            assert!(matches!(result, Err(PlanError::Output(_))), "{result:?}");
            assert!(!outer.path().join("escape").exists());
        }
    }

    #[test]
    fn outputs_are_collected_per_target() {
        let plan = Plan::new(&selection(Profile::default()), 7, &bins()).unwrap();
        let mut tar = DeterministicTar::new(Vec::new(), 0);
        tar.dir("./x86_64-unknown-linux-gnu").unwrap();
        tar.file("./x86_64-unknown-linux-gnu/a", b"ELF-a", true)
            .unwrap();
        tar.file("./x86_64-unknown-linux-gnu/status", b"0\n", false)
            .unwrap();
        let mut drive = tar.finish().unwrap();
        drive.resize(1 << 20, 0); // the rest of the drive is zeros
        let dir = tempfile::tempdir().unwrap();
        let outputs = collect_outputs(&drive, dir.path(), &plan).unwrap();
        let x86 = &outputs[&Triple::ALL[0]];
        assert_eq!(x86.status, Some(0));
        assert_eq!(x86.log_tail, "");
        assert_eq!(x86.bins.len(), 1, "b-tool was not built");
        assert_eq!(std::fs::read(&x86.bins["a"]).unwrap(), b"ELF-a");
    }

    #[test]
    fn a_failed_targets_first_error_is_found_in_a_long_log() {
        let plan = Plan::new(&selection(Profile::default()), 7, &bins()).unwrap();
        let mut log = String::from("   Compiling a v0.1.0\n");
        log +=
            "error: package `b v1.0.0` cannot be built because it requires rustc 1.88 or newer\n";
        log += &"warning: noise\n".repeat(20_000); // far beyond the old 64 KiB cap
        log += "error: could not compile `a`\n";
        let mut tar = DeterministicTar::new(Vec::new(), 0);
        tar.dir("./x86_64-unknown-linux-gnu").unwrap();
        tar.file(
            "./x86_64-unknown-linux-gnu/build.log",
            log.as_bytes(),
            false,
        )
        .unwrap();
        tar.file("./x86_64-unknown-linux-gnu/status", b"101\n", false)
            .unwrap();
        let drive = tar.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outputs = collect_outputs(&drive, dir.path(), &plan).unwrap();
        let x86 = &outputs[&Triple::ALL[0]];
        assert_eq!(x86.status, Some(101));
        assert!(x86
            .first_error
            .as_deref()
            .unwrap()
            .ends_with("requires rustc 1.88 or newer"));
        assert!(x86.log_tail.ends_with("error: could not compile `a`\n"));
        assert!(x86.log_tail.len() < 4096);
    }

    #[test]
    fn the_drivers_error_report_reaches_the_log() {
        let plan = Plan::new(&selection(Profile::default()), 7, &bins()).unwrap();
        let mut tar = DeterministicTar::new(Vec::new(), 0);
        tar.file("./error", b"unpack\n", false).unwrap();
        let drive = tar.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outputs = collect_outputs(&drive, dir.path(), &plan).unwrap();
        let x86 = &outputs[&Triple::ALL[0]];
        assert_eq!(x86.status, None);
        assert_eq!(x86.log_tail, "the guest's build driver failed: unpack\n");
    }

    #[test]
    fn plan_env_bytes_are_the_published_ones() {
        // plan.env is on the input drive, so its bytes are part of every root hash.
        let plan = Plan::new(
            &Selection {
                targets: Triple::defaults(),
                profile: Profile::default(),
                profile_name: "default".into(),
            },
            1_767_225_600,
            &bins(),
        )
        .unwrap();
        assert_eq!(
            plan.to_env(),
            "CMBUILD_PLAN_VERSION='2'\nSOURCE_DATE_EPOCH='1767225600'\n\
             TARGETS='x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu riscv64gc-unknown-linux-gnu'\n\
             CARGO_FLAGS=''\nBINS='a b-tool'\n"
        );
    }
}
