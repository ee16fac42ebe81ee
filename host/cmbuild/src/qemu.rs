//! The guest image under QEMU: `qemu-system-riscv64 -M virt` boots the same firmware, kernel,
//! initramfs, root image and toolchain layer as cmbuild's machine, with the root, input,
//! output and toolchain drives as virtio-blk disks (`/dev/vda`..`/dev/vdd`, which `/init`
//! and the build driver fall back to; `guest-image/PROTOCOL.md`), and runs one build. The
//! reference that `cmbuild machine bench --workload rustc` times the machine against, and
//! that the heavy image test boots to check the image outside cmbuild.
//!
//! QEMU does not answer the driver's ready-point yield, so the driver reads the whole input
//! disk (a tar, padded to whole MiB). The console is read line by line with the host time
//! of each line, so a caller can time the build apart from the boot
//! ([`QemuOutcome::timing`]).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::guest::{GuestImage, BOOTARGS};

/// The driver's last line before its ready point (`guest-image/build-driver.sh`).
pub const READY_LINE: &str = "cmbuild-driver: toolchain:";
/// The driver's line once the output drive is written.
pub const DONE_LINE: &str = "cmbuild-driver: done";

/// QEMU could not run the build.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// qemu-system-riscv64 could not be started.
    #[error("running qemu-system-riscv64")]
    Spawn(#[source] std::io::Error),
    /// A file of the run could not be written or read.
    #[error("{what} {}", .path.display())]
    File {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// QEMU ran past the deadline and was killed.
    #[error("qemu-system-riscv64 ran past {0:?} and was killed; last console lines:\n{1}")]
    Deadline(Duration, String),
}

/// Whether `qemu-system-riscv64` can be run.
pub fn available() -> bool {
    Command::new("qemu-system-riscv64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The image's files as QEMU opens them.
#[derive(Clone, Debug)]
pub struct ImageFiles {
    /// OpenSBI `fw_jump.bin`.
    pub firmware: PathBuf,
    /// `vmlinux`.
    pub kernel: PathBuf,
    /// `initramfs.cpio`.
    pub initrd: PathBuf,
    /// `rootfs.erofs`.
    pub rootfs: PathBuf,
    /// The toolchain layer.
    pub toolchain: PathBuf,
}

impl ImageFiles {
    /// The files of an image directory `cmbuild image build` wrote, with the toolchain layer
    /// `toolchain_file` (`toolchain-<version>.erofs`).
    pub fn in_dir(dir: &Path, toolchain_file: &str) -> Self {
        Self {
            firmware: dir.join("fw_jump.bin"),
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initramfs.cpio"),
            rootfs: dir.join("rootfs.erofs"),
            toolchain: dir.join(toolchain_file),
        }
    }

    /// The files of `image`: the drive images where they were read from when they are
    /// files (a mapped mirror blob), everything else written into `dir`.
    pub fn write(image: &GuestImage, dir: &Path) -> Result<Self, QemuError> {
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|source| QemuError::File {
                what: "writing",
                path: path.clone(),
                source,
            })?;
            Ok::<_, QemuError>(path)
        };
        let drive = |name: &str, bytes: &crate::mapped::DriveImage| match bytes.path() {
            Some(path) => Ok(path.to_path_buf()),
            None => write(name, bytes),
        };
        Ok(Self {
            firmware: write("fw_jump.bin", &image.firmware)?,
            kernel: write("vmlinux", &image.kernel)?,
            initrd: write("initramfs.cpio", &image.initrd)?,
            rootfs: drive("rootfs.erofs", &image.rootfs)?,
            toolchain: drive("toolchain.erofs", &image.toolchain)?,
        })
    }
}

/// One build under QEMU.
#[derive(Debug)]
pub struct QemuBuild<'a> {
    /// The image.
    pub image: &'a ImageFiles,
    /// The input drive's contents (the tar of PROTOCOL.md).
    pub input: &'a [u8],
    /// RAM in MiB.
    pub ram_mib: u64,
    /// Size of the output disk.
    pub output_bytes: u64,
    /// Harts (`-smp`).
    pub cpus: u32,
    /// Deterministic mode: `-icount shift=0,sleep=off` (one instruction per virtual
    /// nanosecond), else plain TCG.
    pub icount: bool,
    /// Where the input and output disks are made.
    pub work: &'a Path,
    /// QEMU is killed after this long.
    pub deadline: Duration,
}

/// What a [`QemuBuild`] left.
#[derive(Debug)]
pub struct QemuOutcome {
    /// When QEMU started.
    pub started: Instant,
    /// The console, line by line, with the host time each line arrived and the CPU time
    /// QEMU had used by then (where `/proc` tells it).
    pub lines: Vec<ConsoleLine>,
    /// The output disk (a tar from offset 0 when the driver finished).
    pub output: PathBuf,
}

/// One console line of QEMU's.
#[derive(Clone, Debug)]
pub struct ConsoleLine {
    /// When it arrived.
    pub at: Instant,
    /// The CPU time (user and system) QEMU had used by then, if known.
    pub cpu: Option<Duration>,
    /// The line, as lossy text without its line end.
    pub text: String,
}

/// The phases of a build under QEMU, from its console.
#[derive(Clone, Copy, Debug)]
pub struct BuildTiming {
    /// From QEMU's start to the driver's ready-point line (the boot cmbuild's template
    /// saves).
    pub boot: Duration,
    /// From the ready-point line to the driver's last line.
    pub build: Duration,
    /// QEMU's CPU time over the same span (on a shared host a steadier figure than the
    /// wall time), if `/proc` told it.
    pub build_cpu: Option<Duration>,
}

impl QemuOutcome {
    /// The first console line containing `text`.
    fn line(&self, text: &str) -> Option<&ConsoleLine> {
        self.lines.iter().find(|line| line.text.contains(text))
    }

    /// Whether the driver finished (its last line was printed).
    pub fn finished(&self) -> bool {
        self.line(DONE_LINE).is_some()
    }

    /// The boot and the build, if the console has both lines.
    pub fn timing(&self) -> Option<BuildTiming> {
        let ready = self.line(READY_LINE)?;
        let done = self.line(DONE_LINE)?;
        Some(BuildTiming {
            boot: ready.at.duration_since(self.started),
            build: done.at.duration_since(ready.at),
            build_cpu: done.cpu.zip(ready.cpu).map(|(d, r)| d.saturating_sub(r)),
        })
    }

    /// The last `n` console lines, sanitised.
    pub fn console_tail(&self, n: usize) -> String {
        let skip = self.lines.len().saturating_sub(n);
        let tail: Vec<&str> = self.lines[skip..].iter().map(|l| l.text.as_str()).collect();
        crate::terminal::sanitize(&tail.join("\n"))
    }

    /// The output disk, opened for reading.
    pub fn open_output(&self) -> Result<std::fs::File, QemuError> {
        std::fs::File::open(&self.output).map_err(|source| QemuError::File {
            what: "opening",
            path: self.output.clone(),
            source,
        })
    }
}

impl QemuBuild<'_> {
    /// The kernel command line: cmbuild's, with the toolchain layer on the fourth disk.
    pub fn append() -> String {
        BOOTARGS.replace("/dev/pmem4", "/dev/vdd")
    }

    /// Boots the image and waits for QEMU to end (the guest powers off when done), or kills
    /// it at the deadline.
    pub fn run(&self) -> Result<QemuOutcome, QemuError> {
        let file_error = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| QemuError::File { what, path, source }
        };
        let input = self.work.join("input.img");
        let mut padded = self.input.to_vec();
        padded.resize(padded.len().next_multiple_of(1 << 20), 0);
        std::fs::write(&input, &padded).map_err(file_error("writing", &input))?;
        let output = self.work.join("output.img");
        std::fs::File::create(&output)
            .and_then(|f| f.set_len(self.output_bytes))
            .map_err(file_error("creating", &output))?;
        let drive = |path: &Path, id: &str, ro: bool| {
            let readonly = if ro { ",readonly=on" } else { "" };
            format!(
                "file={},format=raw,if=none,id={id}{readonly}",
                path.display()
            )
        };
        let mut command = Command::new("qemu-system-riscv64");
        command
            .args(["-M", "virt", "-nographic", "-no-reboot"])
            .args(["-m", &format!("{}M", self.ram_mib)])
            .args(["-smp", &self.cpus.to_string()]);
        if self.icount {
            command.args(["-icount", "shift=0,sleep=off"]);
        }
        command
            .arg("-bios")
            .arg(&self.image.firmware)
            .arg("-kernel")
            .arg(&self.image.kernel)
            .arg("-initrd")
            .arg(&self.image.initrd)
            .args(["-append", &Self::append()]);
        // In this order they are /dev/vda, vdb, vdc and vdd.
        for (path, id, ro) in [
            (self.image.rootfs.as_path(), "root", true),
            (input.as_path(), "input", true),
            (output.as_path(), "output", false),
            (self.image.toolchain.as_path(), "toolchain", true),
        ] {
            command
                .args(["-drive", &drive(path, id, ro)])
                .args(["-device", &format!("virtio-blk-device,drive={id}")]);
        }
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(QemuError::Spawn)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let pid = child.id();
        let reader = std::thread::spawn(move || read_lines(stdout, || process_cpu_time(pid)));
        let mut killed = false;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() > self.deadline => {
                    child.kill().ok();
                    child.wait().ok();
                    killed = true;
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => return Err(QemuError::Spawn(e)),
            }
        }
        let lines = reader.join().unwrap_or_default();
        let outcome = QemuOutcome {
            started,
            lines,
            output,
        };
        if killed {
            return Err(QemuError::Deadline(self.deadline, outcome.console_tail(40)));
        }
        Ok(outcome)
    }
}

/// Reads a console line by line (any bytes; lines kept as lossy text), stamping each with
/// the time and `cpu()`.
fn read_lines(stdout: impl Read, cpu: impl Fn() -> Option<Duration>) -> Vec<ConsoleLine> {
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => lines.push(ConsoleLine {
                at: Instant::now(),
                cpu: cpu(),
                text: String::from_utf8_lossy(&line).trim_end().to_owned(),
            }),
        }
    }
    lines
}

/// The user and system CPU time process `pid` has used (`/proc/PID/stat`), if readable.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_time_of_stat(&stat, clock_ticks()?)
}

/// Clock ticks per second of `/proc`'s times.
fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, whose second field (the
/// command, in parentheses) may hold spaces.
fn cpu_time_of_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_command.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_the_fourth_disk() {
        let append = QemuBuild::append();
        assert!(append.contains("cmbuild.toolchain=/dev/vdd"), "{append}");
        assert!(!append.contains("pmem"), "{append}");
        assert!(append.starts_with("console=ttyS0"), "{append}");
    }

    #[test]
    fn the_build_is_timed_from_the_ready_line_to_the_last() {
        let started = Instant::now();
        let line = |ms, cpu_ms, text: &str| ConsoleLine {
            at: started + Duration::from_millis(ms),
            cpu: Some(Duration::from_millis(cpu_ms)),
            text: text.into(),
        };
        let outcome = QemuOutcome {
            started,
            lines: vec![
                line(10, 5, "[ 0.0] Linux version"),
                line(3000, 2500, "cmbuild-driver: toolchain: rustc 1.85.1, cargo"),
                line(9000, 7000, "cmbuild-driver: done"),
            ],
            output: PathBuf::new(),
        };
        let timing = outcome.timing().unwrap();
        assert_eq!(timing.boot, Duration::from_millis(3000));
        assert_eq!(timing.build, Duration::from_millis(6000));
        assert_eq!(timing.build_cpu, Some(Duration::from_millis(4500)));
        assert!(outcome.finished());
        assert_eq!(outcome.console_tail(1), "cmbuild-driver: done");
        let unfinished = QemuOutcome {
            lines: outcome.lines[..2].to_vec(),
            ..outcome
        };
        assert!(unfinished.timing().is_none() && !unfinished.finished());
    }

    #[test]
    fn console_lines_are_split_and_kept_as_text() {
        let lines = read_lines(&b"one\r\ntwo \xff\nthree"[..], || None);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two \u{fffd}", "three"]);
    }

    #[test]
    fn cpu_time_is_read_from_proc_stat() {
        let stat = "4242 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100";
        assert_eq!(cpu_time_of_stat(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(cpu_time_of_stat("garbage", 100), None);
        // This process's own line parses.
        assert!(process_cpu_time(std::process::id()).is_some());
    }
}
