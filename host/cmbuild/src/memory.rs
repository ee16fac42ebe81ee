//! The host's memory, as it decides how many machines run at once.
//!
//! Each machine of a run (a build machine, its scout, a sibling computing a job) holds the
//! guest RAM it touched, its decode cache and its translated code: about 2 GiB for a rustc
//! job of a large crate (ripgrep's run peaked at 15.2 GB with two build machines, their
//! scouts and up to four siblings). `--jobs` defaults to the number of cores, and a host
//! with many cores and little memory would start more machines than it can hold, until the
//! kernel kills the run. So a machine beyond the first of its kind starts only while the
//! host has [`MACHINE_RESERVE`] available ([`RESERVE_ENV`] sets another): a sibling waits for its turn
//! (`crate::offload::service`), a scout is left out. Available is `MemAvailable` in
//! `/proc/meminfo`, or less when the process's cgroup (v2) has a memory limit, as in a
//! container started with `--memory`: the limit less what the cgroup uses but could give
//! back (`memory.current` less `inactive_file`). Only the order and the pace of the host's
//! work change: what the machines compute, and so every artifact and root hash, is the
//! same however many run at once.

use std::path::Path;

/// What one more machine may need: it starts only while the host has this much available
/// (unless [`RESERVE_ENV`] says otherwise).
pub const MACHINE_RESERVE: u64 = 3 << 30;

/// The reserve in MiB, in place of [`MACHINE_RESERVE`]: lower on a host whose builds are
/// known to be small, higher to run fewer machines at once.
pub const RESERVE_ENV: &str = "CMBUILD_MACHINE_RESERVE_MIB";

/// The reserve: [`RESERVE_ENV`] if it is a number of MiB, else [`MACHINE_RESERVE`].
pub fn reserve() -> u64 {
    std::env::var(RESERVE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .and_then(|mib| mib.checked_mul(1 << 20))
        .unwrap_or(MACHINE_RESERVE)
}

/// Where the host says how much memory it has.
const MEMINFO: &str = "/proc/meminfo";
/// Which cgroups this process is in.
const SELF_CGROUP: &str = "/proc/self/cgroup";
/// Where the cgroup v2 hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The most read of any of these files (they are a few kB).
const MAX_READ: u64 = 64 << 10;

/// A small text file of the kernel's, or `None`.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_READ)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// What the cgroup (v2) named in `self_cgroup` (the text of `/proc/self/cgroup`: its
/// `0::PATH` line) has left under its memory limit, in bytes, with the hierarchy at
/// `root`: `memory.max` less `memory.current` plus `inactive_file` of `memory.stat` (page
/// cache it gives back first). `None` without a v2 cgroup or without a limit (`max`).
pub fn cgroup_available(root: &Path, self_cgroup: &str) -> Option<u64> {
    let path = self_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    // The kernel's own text, but still only a relative path of plain components.
    let relative = Path::new(path.trim()).strip_prefix("/").ok()?;
    if !relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    let dir = root.join(relative);
    let number = |name: &str| read_small(&dir.join(name))?.trim().parse::<u64>().ok();
    let max = number("memory.max")?;
    let current = number("memory.current")?;
    let inactive = read_small(&dir.join("memory.stat"))
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("inactive_file "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some(max.saturating_sub(current.saturating_sub(inactive)))
}

/// Says whether the host has room for one more machine.
pub struct MemoryGate {
    /// The memory available now, in bytes (`None`: unknown, which never holds a machine
    /// back).
    probe: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    /// How much must be available.
    reserve: u64,
}

impl std::fmt::Debug for MemoryGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryGate")
            .field("reserve", &self.reserve)
            .finish_non_exhaustive()
    }
}

impl MemoryGate {
    /// The host's own memory ([`MEMINFO`], and this process's cgroup's limit if it has
    /// one) against the [`reserve`].
    pub fn host() -> MemoryGate {
        MemoryGate::new(reserve(), || {
            let host = available(&read_small(Path::new(MEMINFO))?)?;
            let cgroup = read_small(Path::new(SELF_CGROUP))
                .and_then(|text| cgroup_available(Path::new(CGROUP_ROOT), &text));
            Some(cgroup.map_or(host, |c| c.min(host)))
        })
    }

    /// A gate asking `probe` for the memory available and wanting `reserve` of it.
    pub fn new(reserve: u64, probe: impl Fn() -> Option<u64> + Send + Sync + 'static) -> Self {
        MemoryGate {
            probe: Box::new(probe),
            reserve,
        }
    }

    /// Whether one more machine may start now.
    pub fn allows(&self) -> bool {
        (self.probe)().is_none_or(|available| available >= self.reserve)
    }

    /// The memory available now, if the host says.
    pub fn available(&self) -> Option<u64> {
        (self.probe)()
    }
}

/// `n` bytes in GiB, for people (`2.5 GiB`).
pub fn gib(n: u64) -> String {
    format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30))
}

/// What the gate asks for, for people.
pub fn reserve_text() -> String {
    format!(
        "another machine starts while {} is available; {RESERVE_ENV} sets it",
        gib(reserve())
    )
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes (`None` if it has no such line, or
/// one that is not a number of kB).
pub fn available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24557240 kB\nMemFree:         1234567 kB\n\
                    MemAvailable:   16798720 kB\nBuffers:          123456 kB\n";
        assert_eq!(available(text), Some(16_798_720 * 1024));
        for bad in [
            "MemTotal: 1 kB\n",
            "MemAvailable: lots kB\n",
            "MemAvailable: 12\n",
            "MemAvailable: 99999999999999999999 kB\n",
            "",
        ] {
            assert_eq!(available(bad), None, "{bad:?}");
        }
        // This host's own, when it has one.
        if let Ok(text) = std::fs::read_to_string(MEMINFO) {
            assert!(available(&text).is_some_and(|n| n > 0));
        }
    }

    #[test]
    fn a_cgroup_s_limit_is_read_less_what_it_uses() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("system.slice/build.scope");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), "8589934592\n").unwrap();
        std::fs::write(dir.join("memory.current"), "3221225472\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "anon 2147483648\nfile 1073741824\ninactive_file 1073741824\nactive_file 0\n",
        )
        .unwrap();
        let me = "0::/system.slice/build.scope\n";
        // 8 GiB less 3 GiB used, of which 1 GiB page cache it gives back.
        assert_eq!(cgroup_available(root.path(), me), Some(6 << 30));
        // Over its limit: nothing left.
        std::fs::write(dir.join("memory.current"), "9663676416\n").unwrap();
        assert_eq!(cgroup_available(root.path(), me), Some(0));
        // No limit, no v2 line, or a path that leaves the hierarchy: none.
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_available(root.path(), me), None);
        for other in [
            "4:memory:/system.slice/build.scope\n",
            "0::/../etc\n",
            "0::relative\n",
            "",
        ] {
            assert_eq!(cgroup_available(root.path(), other), None, "{other:?}");
        }
        // The root cgroup (a container's own, with its namespace) has its files at the top.
        std::fs::write(root.path().join("memory.max"), "4294967296\n").unwrap();
        std::fs::write(root.path().join("memory.current"), "1073741824\n").unwrap();
        assert_eq!(cgroup_available(root.path(), "0::/\n"), Some(3 << 30));
    }

    #[test]
    fn a_gate_allows_a_machine_while_the_reserve_is_available() {
        let gate = MemoryGate::new(3 << 30, || Some(4 << 30));
        assert!(gate.allows());
        let gate = MemoryGate::new(3 << 30, || Some(2 << 30));
        assert!(!gate.allows());
        // Unknown: never held back.
        let gate = MemoryGate::new(3 << 30, || None);
        assert!(gate.allows());
    }
}
