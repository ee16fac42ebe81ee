//! Argument groups several subcommands share, each flag defined and documented once
//! (flattened into the subcommands' `Args` with `#[command(flatten)]`).

use std::path::PathBuf;

use anyhow::Context;
use cmbuild::pins::{self, Pins};
use cmbuild_store::mirror::DEFAULT_DIR;

/// `--mirror DIR`.
#[derive(Debug, Clone, clap::Args)]
pub struct MirrorArg {
    /// The content-addressed mirror `cmbuild vendor` fills.
    #[arg(id = "mirror", long = "mirror", value_name = "DIR", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// `--pins FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct PinsArg {
    /// A digests.lock.env to use instead of the one cmbuild was built with.
    #[arg(id = "pins", long = "pins", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

impl PinsArg {
    /// The pins: the file's, else the built-in ones.
    pub fn load(&self) -> anyhow::Result<Pins> {
        let text = match &self.file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => pins::BUILTIN.to_owned(),
        };
        let pins = pins::parse(&text).with_context(|| match &self.file {
            Some(path) => format!("reading {}", path.display()),
            None => "the built-in pins".to_owned(),
        })?;
        Ok(pins)
    }
}

/// `--image-dir DIR`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageDirArg {
    /// Where `cmbuild image build` wrote the guest image (used for pinned image files that
    /// are not in the mirror; every file is checked against its pinned CID).
    #[arg(
        id = "image_dir",
        long = "image-dir",
        default_value = "build/image",
        value_name = "DIR"
    )]
    pub dir: PathBuf,
}

/// `--jobs N`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArg {
    /// Machines run at once: build machines (one per triple) and the sibling machines
    /// their rustc jobs run in. Changes how fast, never what is built. Default: the number
    /// of cores. Memory bounds it too: a sibling beyond the first live one, or a scout,
    /// starts only while the host has 3 GiB available (CMBUILD_MACHINE_RESERVE_MIB sets
    /// another).
    #[arg(long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
}

impl JobsArg {
    /// The number given, else the number of cores.
    pub fn get(&self) -> usize {
        self.jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}
