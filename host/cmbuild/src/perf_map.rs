//! The profiler's symbol map (`--perf-map`): the machine records where its translator
//! places code ([`cmbuild_machine::hart::jit::CodeSymbol`]); this module appends those
//! records to `/tmp/perf-<pid>.map`, the file Linux `perf report` reads to name code that
//! has no ELF file, so a profile of a run names guest blocks (`rv:<guest pc>:<insns>`, and
//! their slow paths `rv:<guest pc>:cold`), the code they share (`rv:chain`, `rv:load`, `rv:exec`)
//! and the translator's entry and exit (`rv:entry`, `rv:exit`).
//!
//! The map only grows: when a machine's code region fills up and starts over, or a sibling
//! machine takes the region of one that ended, later lines reuse the addresses of earlier
//! ones (perf takes the later symbol, so a profile of many short machines names some
//! samples after a later machine's blocks). Machines running at
//! once have separate code regions, so their lines never overlap; each batch of lines is
//! appended with one write to a file opened for appending.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use cmbuild_machine::machine::Machine;

/// The perf map could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the perf map {}", .path.display())]
pub struct PerfMapError {
    /// The map file.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// An open perf map of this process.
#[derive(Debug)]
pub struct PerfMap {
    path: PathBuf,
    file: File,
}

impl PerfMap {
    /// Where perf looks for this process's map: `/tmp/perf-<pid>.map`.
    pub fn path() -> PathBuf {
        PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()))
    }

    /// Opens (creating it if needed) this process's map for appending and turns on the
    /// symbol records of `machine`.
    pub fn open(machine: &mut Machine) -> Result<Self, PerfMapError> {
        let path = Self::path();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| PerfMapError {
                path: path.clone(),
                source,
            })?;
        machine.hart.set_perf_map(true);
        Ok(Self { path, file })
    }

    /// [`PerfMap::open`] when a map was `asked` for, else none.
    pub fn open_if(asked: bool, machine: &mut Machine) -> Result<Option<Self>, PerfMapError> {
        asked.then(|| Self::open(machine)).transpose()
    }

    /// Appends what `machine` placed since the last call.
    pub fn drain(&mut self, machine: &mut Machine) -> Result<(), PerfMapError> {
        let symbols = machine.hart.take_perf_map();
        if symbols.is_empty() {
            return Ok(());
        }
        let text: String = symbols.iter().map(|s| s.perf_line()).collect();
        self.file
            .write_all(text.as_bytes())
            .map_err(|source| PerfMapError {
                path: self.path.clone(),
                source,
            })
    }
}
