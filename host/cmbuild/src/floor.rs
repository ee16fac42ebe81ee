//! A project's glibc floor: the oldest glibc its Linux artifacts must start on, chosen in
//! `cmbuild.toml` (`glibc = "2.36"`), and what makes it true.
//!
//! A floor is one of the pinned ones (`cmbuild_image::sysroot`: an older Debian release's
//! C runtime, locked in `guest-image/glibc-floors.lock.json`); anything else is refused,
//! listing them, before any machine boots. The host unpacks the floor's packages into one
//! sysroot per Linux triple and writes them as one read-only EROFS image
//! ([`cmbuild_image::sysroot::floor_image`]) onto each machine's scratch drive before it
//! resumes from the template. The image's content ID is pinned beside the packages;
//! `cmbuild vendor` (or the first run) makes it, checks it against the pin and keeps it in
//! the mirror by that CID, and runs map it from there ([`obtain`]). The input drive carries
//! a `rustc` wrapper (`glibc-floor/rustc-wrapper`, at `/build/in/glibc-floor/rustc-wrapper`
//! in the guest) and a cargo configuration that uses it: the wrapper mounts
//! the image at `/build/sysroot` on its first run and appends `-C
//! link-arg=--sysroot=/build/sysroot/<triple>` to each target unit of a Linux triple, and
//! `[env]` gives that triple's C and C++ compiles (`CFLAGS_<t>`, `CXXFLAGS_<t>`) the same
//! `--sysroot=`. So clang compiles against the floor's headers and lld links against its
//! crt objects, libc, libgcc and libstdc++ alone, never the guest's newer ones; and only
//! the files a build opens are read (unpacking the sysroots from the input archive would
//! cost the guest billions of instructions). Nothing of the guest image changes: the
//! build driver already honours the input's cargo configuration (`guest-image/PROTOCOL.md`),
//! so a project without a floor gets byte-identical inputs and root hashes.
//!
//! In an offloaded build the floor's wrapper runs first and hands every rustc on to the
//! offload wrapper ([`OFFLOAD_PLAN_ENV`]); the siblings that run the jobs get the same
//! image on their scratch drives and mount it at the same place ([`sibling_plan_env`]), and
//! its CID is part of the jobs' platform (`crate::offload::job::Platform::floor`).
//!
//! After the build every Linux artifact's needs (read from its bytes, [`crate::glibc`])
//! are checked against the floor: one that needs a newer glibc fails the run.

use crate::mapped::DriveImage;
use std::io;

use cmbuild_image::lock::{Lock, LockFileError, LockedPackage};
use cmbuild_image::locking::BoxError;
use cmbuild_image::sysroot::{self, FloorLocks, SysrootError, IMAGE_MARKER};
use cmbuild_image::triple::{c_toolchain_env, Triple};
use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::{Mirror, MirrorError};
use std::io::Write;

use crate::glibc::GlibcVersion;
use crate::guest::Drive;
use cmbuild_image::rootfs::{RootfsError, Tree};

/// The directory of the floor's files on the input drive (`/build/in/glibc-floor`).
pub const INPUT_DIR: &str = "glibc-floor";
/// Where the input drive is mounted in the guest (`guest-image/PROTOCOL.md`).
const GUEST_INPUT_DIR: &str = "/build/in";
/// Where the rustc wrapper mounts the sysroots' image in the guest.
pub const GUEST_SYSROOTS: &str = "/build/sysroot";
/// The rustc wrapper's name inside [`INPUT_DIR`].
const WRAPPER: &str = "rustc-wrapper";
/// The name under which `machine.json` records the sysroots' image.
pub const INPUT_KEY: &str = "GLIBC_FLOOR_SYSROOTS_CID";

/// Why a floor could not be chosen, prepared or kept.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The value is not a glibc version.
    #[error("cmbuild.toml: glibc = {0:?} is not a glibc version like \"2.36\"")]
    Invalid(String),
    /// No pinned floor has that version.
    #[error(
        "cmbuild.toml asks for glibc floor {asked}, which this cmbuild does not pin; the \
         pinned floors are: {}", .pinned.join(", ")
    )]
    NotPinned {
        /// What the project asked for.
        asked: String,
        /// The pinned floors, described.
        pinned: Vec<String>,
    },
    /// The compiled-in floor locks are invalid.
    #[error("the glibc-floor locks this cmbuild carries")]
    Locks(#[source] LockFileError),
    /// A sysroot could not be made from the floor's packages.
    #[error("the glibc {floor} sysroot of {triple}")]
    Sysroot {
        /// The floor.
        floor: String,
        /// The triple.
        triple: Triple,
        /// What failed.
        #[source]
        source: SysrootError,
    },
    /// The sysroots' image could not be written.
    #[error("the glibc {floor} sysroots' image")]
    Image {
        /// The floor.
        floor: String,
        /// What failed.
        #[source]
        source: SysrootError,
    },
    /// The sysroots' image could not be put in a memory file.
    #[error("putting the glibc {floor} sysroots' image in memory")]
    Memory {
        /// The floor.
        floor: String,
        /// What failed.
        #[source]
        source: Box<crate::mapped::MapError>,
    },
    /// The image made is not the pinned one.
    #[error(
        "the glibc {floor} sysroots' image this cmbuild made has content ID {made}, but \
         guest-image/glibc-floors.lock.json pins {pinned}: this cmbuild does not make the \
         pinned image (`cmbuild image lock --glibc-floors-only` pins it anew), so its roots \
         would not be other builders'"
    )]
    NotPinnedImage {
        /// The floor.
        floor: String,
        /// The CID of the image made.
        made: Cid,
        /// The pinned CID.
        pinned: Cid,
    },
    /// The image could not be kept in the mirror.
    #[error("keeping the glibc {floor} sysroots' image in the mirror")]
    Mirror {
        /// The floor.
        floor: String,
        /// What failed.
        #[source]
        source: MirrorError,
    },
    /// Artifacts need a newer glibc than the floor.
    #[error(
        "the glibc floor is {floor}, but these artifacts need a newer glibc:\n  {}",
        .above.join("\n  ")
    )]
    AboveFloor {
        /// The floor.
        floor: String,
        /// One line per artifact: what it needs.
        above: Vec<String>,
    },
    /// Writing the input's part failed.
    #[error("writing the glibc floor's input")]
    Io(#[from] io::Error),
}

/// The glibc floor a project chose, with its pinned packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// Its id, the glibc version (`2.36`), as `manifest.json` records it.
    pub id: String,
    /// The same, parsed.
    pub version: GlibcVersion,
    /// `2.36 (Debian 12.15 bookworm)`.
    pub description: String,
    /// The lock of its packages.
    pub lock: Lock,
    /// The pinned CID of its sysroots' image.
    pub image: Cid,
}

/// The compiled-in floors.
pub fn shipped() -> Result<FloorLocks, FloorError> {
    sysroot::shipped().map_err(FloorError::Locks)
}

/// The floor of `cmbuild.toml`'s `glibc` value (untrusted: checked against the pinned
/// floors, never used as a name of anything), or `None` without one.
pub fn select(asked: Option<&str>, locks: &FloorLocks) -> Result<Option<Floor>, FloorError> {
    let Some(asked) = asked else {
        return Ok(None);
    };
    let Some(version) = GlibcVersion::parse(asked).filter(|_| asked.len() <= 16) else {
        return Err(FloorError::Invalid(asked.chars().take(32).collect()));
    };
    let pinned = locks.describe();
    // `2.36` and `2.36.0` name the same release.
    let found = locks
        .floors
        .iter()
        .find(|(id, _)| GlibcVersion::parse(id) == Some(version));
    match found {
        Some((id, lock)) => Ok(Some(Floor {
            image: *locks.images.get(id).ok_or_else(|| {
                FloorError::Locks(LockFileError::Request(format!(
                    "glibc floor {id} has no image"
                )))
            })?,
            id: id.clone(),
            version,
            description: pinned
                .iter()
                .find(|d| d.starts_with(&format!("{id} ")))
                .cloned()
                .unwrap_or_else(|| id.clone()),
            lock: lock.clone(),
        })),
        None => Err(FloorError::NotPinned {
            asked: version.to_string(),
            pinned,
        }),
    }
}

/// Whether a floor applies to a triple: it has a C runtime (WebAssembly has none).
pub fn applies_to(triple: Triple) -> bool {
    triple.spec().multiarch.is_some()
}

/// The floor's sysroots as the image a machine's scratch drive carries, and its content ID
/// (recorded in `machine.json` as [`INPUT_KEY`]).
#[derive(Debug, Clone)]
pub struct FloorImage {
    /// The EROFS image: one sysroot per Linux triple, under its name; in a memory file that
    /// every machine of the run maps (`crate::template::fill_scratch`).
    pub image: DriveImage,
    /// Its CID.
    pub cid: Cid,
}

/// The Linux triples (those with a C runtime), in table order: each has a sysroot in the
/// floor's image, whatever a run builds, so the image is the floor's alone.
pub fn floor_triples() -> Vec<Triple> {
    Triple::ALL.into_iter().filter(|t| applies_to(*t)).collect()
}

/// The bytes of the image of floor `id`, made from the packages of its `lock` (`load`
/// returns each `.deb`'s verified bytes). Depends on the packages' bytes alone.
pub fn make_image(
    id: &str,
    lock: &Lock,
    mut load: impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
) -> Result<Vec<u8>, FloorError> {
    let mut sysroots = Vec::new();
    for triple in floor_triples() {
        let sysroot = sysroot::build_sysroot(lock, triple.spec(), &mut load).map_err(|source| {
            FloorError::Sysroot {
                floor: id.to_owned(),
                triple,
                source,
            }
        })?;
        sysroots.push((triple.as_str(), sysroot));
    }
    let named: Vec<(&str, &sysroot::Sysroot)> = sysroots.iter().map(|(n, s)| (*n, s)).collect();
    sysroot::floor_image(id, &named).map_err(|source| FloorError::Image {
        floor: id.to_owned(),
        source,
    })
}

/// Where [`obtain`] found the floor's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// In the mirror, under its pinned CID.
    Mirror,
    /// Made from the floor's packages (and now kept in the mirror).
    Made,
}

impl ImageSource {
    /// How the image was come by, for progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageSource::Mirror => "from the mirror",
            ImageSource::Made => "made and kept in the mirror",
        }
    }
}

/// The floor's image with the pinned CID `floor.image`: the mirror's blob of that CID,
/// mapped and verified; or, when the mirror has none (or a corrupt one), the bytes `make`
/// returns ([`make_image`]), which must have that CID, kept in the mirror for the next run
/// (a corrupt copy replaced). Images that are not the pinned one are refused, never kept.
pub fn obtain(
    floor: &Floor,
    mirror: &Mirror,
    make: impl FnOnce() -> Result<Vec<u8>, FloorError>,
) -> Result<(FloorImage, ImageSource), FloorError> {
    let path = mirror.blob_path(&floor.image);
    if path.is_file() {
        if let Ok(image) = DriveImage::map_verified(&path, &floor.image) {
            let found = FloorImage {
                image,
                cid: floor.image,
            };
            return Ok((found, ImageSource::Mirror));
        }
    }
    let bytes = make()?;
    let kept = |source| FloorError::Mirror {
        floor: floor.id.clone(),
        source,
    };
    let mut writer = mirror.begin_blob().map_err(kept)?;
    writer.write_all(&bytes).map_err(|e| {
        kept(MirrorError::Io {
            action: "write",
            path: writer.path().to_owned(),
            source: e,
        })
    })?;
    let staged = writer.finish().map_err(kept)?;
    let made = staged.stored().cid;
    if made != floor.image {
        return Err(FloorError::NotPinnedImage {
            floor: floor.id.clone(),
            made,
            pinned: floor.image,
        });
    }
    staged.commit().map_err(kept)?;
    let image = DriveImage::in_memory_file("glibc-floor-sysroots", &bytes).map_err(|source| {
        FloorError::Memory {
            floor: floor.id.clone(),
            source: Box::new(source),
        }
    })?;
    Ok((FloorImage { image, cid: made }, ImageSource::Made))
}

/// What one machine's input drive carries for the floor: the rustc wrapper and the cargo
/// configuration that uses it (the sysroots are on the scratch drive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloorInput {
    /// The input's `cargo-config.toml`: the plain one plus the floor's sections.
    pub cargo_config: String,
    /// `glibc-floor/rustc-wrapper`.
    pub wrapper: String,
    /// What `plan.env` ends with, after the offload hook ([`OFFLOAD_PLAN_ENV`]) in an
    /// offloaded build, nothing otherwise.
    pub plan_env: &'static str,
}

/// The end of an offloaded build's `plan.env` under a floor. The offload hook
/// (`guest-image/offload-setup.sh`) points `RUSTC_WRAPPER` at `cmbuild-offload`, which
/// would win over the floor's `build.rustc-wrapper`; so the floor's wrapper takes its place
/// and hands every rustc, its own arguments appended, to the offload wrapper it names
/// (`CMBUILD_OFFLOAD_*`: left out of the jobs' environments). If the hook found no channel,
/// the floor's wrapper runs rustc itself, as in a build that is not offloaded.
pub const OFFLOAD_PLAN_ENV: &str =
    "# The glibc floor: its wrapper runs first and hands each rustc to the offload wrapper.\n\
CMBUILD_OFFLOAD_FLOOR_NEXT=\"${RUSTC_WRAPPER:-}\"\n\
RUSTC_WRAPPER=/build/in/glibc-floor/rustc-wrapper\n";

impl FloorInput {
    /// The floor's part of the input of a machine building `targets`, `None` when the
    /// floor applies to none of them. `base_config` is the plain input configuration;
    /// `offloaded`, whether the machine offloads its rustc jobs (its wrapper then hands
    /// them on). A build that is not offloaded gets the same input as before offloaded
    /// builds took floors, so its root hash did not change.
    pub fn for_machine(
        floor_id: &str,
        base_config: &str,
        targets: &[Triple],
        offloaded: bool,
    ) -> Option<FloorInput> {
        let triples: Vec<Triple> = targets.iter().copied().filter(|t| applies_to(*t)).collect();
        if triples.is_empty() {
            return None;
        }
        Some(FloorInput {
            cargo_config: cargo_config(base_config, &triples),
            wrapper: rustc_wrapper(floor_id, &triples, offloaded),
            plan_env: match offloaded {
                true => OFFLOAD_PLAN_ENV,
                false => "",
            },
        })
    }

    /// Adds the floor's files (`glibc-floor/...`) to the input drive's tree.
    pub fn add_to(&self, tree: &mut Tree) -> Result<(), RootfsError> {
        tree.add_dir(INPUT_DIR, 0o755)?;
        tree.add_file(
            &format!("{INPUT_DIR}/{WRAPPER}"),
            0o755,
            self.wrapper.as_bytes().to_vec(),
        )
    }
}

/// Where a triple's sysroot is in the guest.
fn guest_sysroot(triple: Triple) -> String {
    format!("{GUEST_SYSROOTS}/{triple}")
}

/// The input's cargo configuration under a floor: `base` plus the rustc wrapper and, for
/// each triple, its C and C++ flags (the image's, `--target=<clang target>`, from
/// [`c_toolchain_env`]) with `--sysroot=`. The input's configuration is passed with
/// `--config`, so these keys win over the image's `$CARGO_HOME/config.toml`.
pub fn cargo_config(base: &str, triples: &[Triple]) -> String {
    let mut out = format!(
        "{base}\n# The glibc floor (guest-image/PROTOCOL.md): the wrapper mounts the floor's\n\
         # sysroots and links these triples' target units against theirs; their C and C++\n\
         # compile against it.\n[build]\nrustc-wrapper = \"{GUEST_INPUT_DIR}/{INPUT_DIR}/{WRAPPER}\"\n\n[env]\n"
    );
    for triple in triples {
        for (var, value) in c_toolchain_env(triple.spec()) {
            if var.starts_with("CFLAGS_") || var.starts_with("CXXFLAGS_") {
                out += &format!("{var} = \"{value} --sysroot={}\"\n", guest_sysroot(*triple));
            }
        }
    }
    out
}

/// The rustc wrapper (`sh`): cargo runs it as `WRAPPER RUSTC ARGS...`. Its first run
/// mounts the floor's image (the scratch drive) read-only at [`GUEST_SYSROOTS`] (every C
/// compile comes from a build script, which rustc compiled, through here, first); then,
/// when ARGS name `--target T` (a target unit; build scripts and proc macros are compiled
/// without) and T is one of `triples`, it appends `-C link-arg=--sysroot=<T's sysroot>`.
/// `offloaded`: it runs `$CMBUILD_OFFLOAD_FLOOR_NEXT RUSTC ARGS...` ([`OFFLOAD_PLAN_ENV`]),
/// or rustc itself when that is empty; a sibling that links such a job mounts the same
/// sysroots at the same place ([`sibling_plan_env`]).
pub fn rustc_wrapper(floor_id: &str, triples: &[Triple], offloaded: bool) -> String {
    let scratch = Drive::Scratch.guest_device();
    // What runs rustc: the offload wrapper named by plan.env, if it started.
    let (next_line, next) = match offloaded {
        true => (
            "hand_to=${CMBUILD_OFFLOAD_FLOOR_NEXT:-}\n",
            "${hand_to:+\"$hand_to\"} ",
        ),
        false => ("", ""),
    };
    let mut out = format!(
        "#!/bin/sh\n\
         # cmbuild's glibc floor {floor_id} (guest-image/PROTOCOL.md): cargo runs this as\n\
         # `rustc-wrapper RUSTC ARGS...`. The floor's sysroots are an EROFS image on the\n\
         # scratch drive, mounted on first use; a target unit's ARGS name `--target T`, and\n\
         # for a T listed below its links use T's sysroot.\n\
         root={GUEST_SYSROOTS}\n\
         if [ ! -f \"$root/{IMAGE_MARKER}\" ]; then\n    \
             mkdir -p \"$root\"\n    \
             mount -t erofs -o ro {scratch} \"$root\" 2>/dev/null\n    \
             if [ ! -f \"$root/{IMAGE_MARKER}\" ]; then\n        \
                 echo \"error: cmbuild: cannot mount the glibc floor's sysroots ({scratch} on $root)\" >&2\n        \
                 exit 1\n    \
             fi\n\
         fi\n\
         {next_line}\
         rustc=$1\n\
         shift\n\
         target=\n\
         next=\n\
         for arg in \"$@\"; do\n    \
             if [ -n \"$next\" ]; then target=$arg; next=; fi\n    \
             case \"$arg\" in\n        \
                 --target) next=1 ;;\n        \
                 --target=*) target=${{arg#--target=}} ;;\n    \
             esac\n\
         done\n\
         case \"$target\" in\n"
    );
    for triple in triples {
        out += &format!(
            "    {triple}) exec {next}\"$rustc\" \"$@\" -C link-arg=--sysroot={} ;;\n",
            guest_sysroot(*triple)
        );
    }
    out + &format!("esac\nexec {next}\"$rustc\" \"$@\"\n")
}

/// What a sibling's `plan.env` runs before its job in an offloaded build under a floor:
/// mount the floor's sysroots (the sibling's scratch drive carries the same image as its
/// build machine's) read-only at [`GUEST_SYSROOTS`], where the job's links name them. A
/// sibling that cannot mount them stops with the error `sibling-floor`, so its job gives
/// no result and the build machine compiles it.
pub fn sibling_plan_env() -> String {
    let scratch = Drive::Scratch.guest_device();
    format!(
        "# The glibc floor: its sysroots, where the build machine's wrapper links against them.\n\
         mkdir -p {GUEST_SYSROOTS} && mount -t erofs -o ro {scratch} {GUEST_SYSROOTS} || {{\n    \
             say \"cannot mount the glibc floor's sysroots ({scratch} on {GUEST_SYSROOTS})\"\n    \
             echo sibling-floor > /out/error\n    \
             finish\n\
         }}\n"
    )
}

/// Checks what each artifact needs (its recorded [`crate::glibc::Abi`]) against the
/// floor: `artifacts` are (name, abi) pairs of the triples the floor applies to.
pub fn check_artifacts<'a>(
    floor: &Floor,
    artifacts: impl IntoIterator<Item = (String, &'a crate::glibc::Abi)>,
) -> Result<(), FloorError> {
    let mut above = Vec::new();
    for (name, abi) in artifacts {
        let needed = abi.glibc_min.as_deref().and_then(GlibcVersion::parse);
        match needed {
            Some(needed) if needed > floor.version => above.push(format!(
                "{name} needs glibc {needed} ({})",
                abi.glibc_symbol.as_deref().unwrap_or("?")
            )),
            // A malformed ELF says nothing about what it needs: it cannot be vouched for.
            None if abi.linkage == "unreadable" => {
                above.push(format!("{name} is not a readable ELF file"))
            }
            _ => {}
        }
    }
    if above.is_empty() {
        Ok(())
    } else {
        Err(FloorError::AboveFloor {
            floor: floor.id.clone(),
            above,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glibc::Abi;
    use crate::plan::{build_input_drive, Plan, PlannedBin, GUEST_CARGO_CONFIG};
    use crate::project::{Profile, Selection};

    fn triple(name: &str) -> Triple {
        name.parse().unwrap()
    }

    #[test]
    fn the_floor_is_one_of_the_pinned_ones() {
        let locks = shipped().unwrap();
        assert_eq!(select(None, &locks).unwrap(), None);
        let floor = select(Some("2.36"), &locks).unwrap().unwrap();
        assert_eq!(floor.id, "2.36");
        assert_eq!(floor.version, GlibcVersion(2, 36, 0));
        assert_eq!(floor.image, locks.images["2.36"]);
        assert!(
            floor.description.starts_with("2.36 (Debian 12."),
            "{}",
            floor.description
        );
        assert!(
            floor.description.ends_with(" bookworm)"),
            "{}",
            floor.description
        );
        assert_eq!(select(Some("2.36.0"), &locks).unwrap().unwrap().id, "2.36");
        let err = select(Some("2.35"), &locks).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "cmbuild.toml asks for glibc floor 2.35, which this cmbuild does not pin; \
                 the pinned floors are: 2.36 (Debian 12."
            ),
            "{err}"
        );
        for bad in [
            "bookworm",
            "2.36; rm -rf /",
            "",
            "2",
            "2.36.0.1",
            "99999999999999999.1",
        ] {
            let err = select(Some(bad), &locks).unwrap_err();
            assert!(matches!(err, FloorError::Invalid(_)), "{bad}: {err}");
        }
        // Read from cmbuild.toml, beside its other keys.
        let config = crate::project::parse_config(
            "glibc = \"2.36\"\ntargets = [\"x86_64-unknown-linux-gnu\"]\n",
        )
        .unwrap();
        assert_eq!(config.glibc.as_deref(), Some("2.36"));
        assert!(
            crate::project::parse_config("glibc = 2.36\n").is_err(),
            "a string"
        );
        assert_eq!(crate::project::parse_config("").unwrap().glibc, None);
    }

    #[test]
    fn the_image_is_made_once_checked_against_its_pin_and_then_found_in_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let made = b"an EROFS image, as far as this test is concerned".repeat(1000);
        let mut floor = select(Some("2.36"), &shipped().unwrap()).unwrap().unwrap();
        floor.image = cmbuild_store::cid::cid_of_bytes(&made);
        let blobs_dir = mirror.blob_path(&floor.image).parent().unwrap().to_owned();
        let blobs = || std::fs::read_dir(&blobs_dir).map_or(0, |d| d.count());

        // Another image than the pinned one is refused and leaves nothing in the mirror.
        let other = || Ok(b"other bytes".to_vec());
        let err = obtain(&floor, &mirror, other).unwrap_err();
        assert!(
            matches!(&err, FloorError::NotPinnedImage { pinned, .. } if *pinned == floor.image),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("cmbuild image lock --glibc-floors-only"),
            "{err}"
        );
        assert_eq!(blobs(), 0);

        // The first use makes it and keeps it by its CID.
        let (image, source) = obtain(&floor, &mirror, || Ok(made.clone())).unwrap();
        assert_eq!(source, ImageSource::Made);
        assert_eq!((image.cid, &image.image[..]), (floor.image, &made[..]));
        assert!(mirror.has_valid(&floor.image).unwrap());
        assert_eq!(blobs(), 1);

        // The next one maps it from the mirror and makes nothing.
        let unused = || -> Result<Vec<u8>, FloorError> { panic!("made again") };
        let (image, source) = obtain(&floor, &mirror, unused).unwrap();
        assert_eq!(source, ImageSource::Mirror);
        assert_eq!((image.cid, &image.image[..]), (floor.image, &made[..]));

        // A corrupt copy is not used: the image is made again and replaces it.
        std::fs::write(mirror.blob_path(&floor.image), b"rotten").unwrap();
        let (image, source) = obtain(&floor, &mirror, || Ok(made.clone())).unwrap();
        assert_eq!(source, ImageSource::Made);
        assert_eq!(&image.image[..], &made[..]);
        assert!(mirror.has_valid(&floor.image).unwrap());
        assert_eq!(blobs(), 1);
    }

    #[test]
    fn the_floor_applies_to_the_linux_triples() {
        assert_eq!(
            floor_triples(),
            [
                triple("x86_64-unknown-linux-gnu"),
                triple("aarch64-unknown-linux-gnu"),
                triple("riscv64gc-unknown-linux-gnu")
            ]
        );
        assert!(!applies_to(triple("wasm32-unknown-unknown")));
        // Every floor architecture's packages are locked.
        let floor = select(Some("2.36"), &shipped().unwrap()).unwrap().unwrap();
        for t in floor_triples() {
            let arch = t.spec().debian_arch;
            assert!(
                floor
                    .lock
                    .packages
                    .iter()
                    .any(|p| p.name == format!("libc6-dev-{arch}-cross")),
                "{arch}"
            );
        }
    }

    fn plan(targets: &[Triple]) -> Plan {
        let selection = Selection {
            targets: targets.to_vec(),
            profile: Profile::default(),
            profile_name: "default".into(),
        };
        let bins = [PlannedBin {
            package: "a".into(),
            version: "1.0.0".into(),
            bin: "a".into(),
        }];
        Plan::new(&selection, 7, &bins).unwrap()
    }

    fn empty_tar() -> Vec<u8> {
        crate::plan::DeterministicTar::new(Vec::new(), 7)
            .finish()
            .unwrap()
    }

    #[test]
    fn the_input_drive_carries_the_wrapper_only_under_a_floor() {
        let (x86, arm, wasm) = (
            triple("x86_64-unknown-linux-gnu"),
            triple("aarch64-unknown-linux-gnu"),
            triple("wasm32-wasip1"),
        );
        assert!(FloorInput::for_machine("2.36", GUEST_CARGO_CONFIG, &[wasm], false).is_none());
        let targets = [x86, arm, wasm];
        let floor = FloorInput::for_machine("2.36", GUEST_CARGO_CONFIG, &targets, false).unwrap();
        let plan = plan(&targets);
        let source = empty_tar();
        let vendor = empty_tar();
        let drive =
            build_input_drive(&plan, &source, &vendor, GUEST_CARGO_CONFIG, Some(&floor)).unwrap();
        let again =
            build_input_drive(&plan, &source, &vendor, GUEST_CARGO_CONFIG, Some(&floor)).unwrap();
        assert_eq!(drive, again);
        let extracted = crate::plan::extract_input_drive(&drive);
        let files = extracted.path().join("x");
        let mut names: Vec<String> = std::fs::read_dir(&files)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "cargo-config.toml",
                "glibc-floor",
                "plan.env",
                "src",
                "vendor"
            ]
        );
        use std::os::unix::fs::PermissionsExt;
        let wrapper = files.join("glibc-floor/rustc-wrapper");
        assert_eq!(
            std::fs::metadata(&wrapper).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(std::fs::read_to_string(&wrapper).unwrap(), floor.wrapper);
        let config = std::fs::read_to_string(files.join("cargo-config.toml")).unwrap();
        assert_eq!(config, floor.cargo_config);
        assert!(config.starts_with(GUEST_CARGO_CONFIG));
        // The configuration is TOML, and names the flags of both triples and only theirs.
        let parsed: toml::Table = config.parse().unwrap();
        assert_eq!(
            parsed["build"]["rustc-wrapper"].as_str(),
            Some("/build/in/glibc-floor/rustc-wrapper")
        );
        let env = parsed["env"].as_table().unwrap();
        assert_eq!(
            env["CFLAGS_x86_64_unknown_linux_gnu"].as_str(),
            Some("--target=x86_64-linux-gnu --sysroot=/build/sysroot/x86_64-unknown-linux-gnu")
        );
        assert_eq!(
            env["CXXFLAGS_aarch64_unknown_linux_gnu"].as_str(),
            Some("--target=aarch64-linux-gnu --sysroot=/build/sysroot/aarch64-unknown-linux-gnu")
        );
        assert_eq!(env.len(), 4);
        // Without a floor: no glibc-floor/ and the plain cargo configuration.
        let plain = build_input_drive(&plan, &source, &vendor, GUEST_CARGO_CONFIG, None).unwrap();
        let extracted = crate::plan::extract_input_drive(&plain);
        let files = extracted.path().join("x");
        assert!(!files.join("glibc-floor").exists());
        assert_eq!(
            std::fs::read_to_string(files.join("cargo-config.toml")).unwrap(),
            GUEST_CARGO_CONFIG
        );
    }

    /// The digest of the wrapper of a build that is not offloaded (x86_64 under the 2.36
    /// floor), as recipe 4 made it before offloaded builds took floors.
    const NOT_OFFLOADED_WRAPPER_SHA256: &str =
        "89de4dcccb9c0657cc51995f6a5edbedf44269a79593372cf43919c16314db84";

    #[test]
    fn an_offloaded_build_s_plan_puts_the_floor_s_wrapper_before_the_offload_wrapper() {
        let targets = [triple("x86_64-unknown-linux-gnu")];
        let floor = FloorInput::for_machine("2.36", GUEST_CARGO_CONFIG, &targets, true).unwrap();
        let mut plan = plan(&targets);
        plan.offload = true;
        let source = empty_tar();
        let drive = crate::plan::build_input_drive_with(
            &plan,
            &source,
            &source,
            GUEST_CARGO_CONFIG,
            Some(&floor),
            Some(b"tool"),
        )
        .unwrap();
        let extracted = crate::plan::extract_input_drive(&drive);
        let files = extracted.path().join("x");
        let env = std::fs::read_to_string(files.join("plan.env")).unwrap();
        assert_eq!(env, plan.to_env() + OFFLOAD_PLAN_ENV);
        assert!(plan.to_env().ends_with(crate::plan::OFFLOAD_ENV));
        assert_eq!(
            std::fs::read_to_string(files.join("glibc-floor/rustc-wrapper")).unwrap(),
            floor.wrapper
        );
        // Sourced after the offload hook: the floor's wrapper is cargo's, and it names the
        // offload wrapper the hook set (nothing when the hook found no channel).
        for (hook, next) in [
            (
                "RUSTC_WRAPPER=/build/offload/rustc-wrapper\n",
                "/build/offload/rustc-wrapper",
            ),
            ("", ""),
        ] {
            let script = format!(
                "{hook}{OFFLOAD_PLAN_ENV}echo \"$CMBUILD_OFFLOAD_FLOOR_NEXT|$RUSTC_WRAPPER\"\n"
            );
            let out = std::process::Command::new("sh")
                .args(["-c", &script])
                .env_remove("RUSTC_WRAPPER")
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                format!("{next}|/build/in/glibc-floor/rustc-wrapper\n")
            );
        }
        // A build that is not offloaded keeps the input it had before offloaded builds took
        // floors: no plan.env part, and the wrapper's text unchanged (its digest pinned, so
        // that such a build's root hash stays what it was).
        let alone = FloorInput::for_machine("2.36", GUEST_CARGO_CONFIG, &targets, false).unwrap();
        assert_eq!(alone.plan_env, "");
        assert_eq!(alone.cargo_config, floor.cargo_config);
        assert_eq!(
            cmbuild_store::sha256::Sha256::of(alone.wrapper.as_bytes()).to_string(),
            NOT_OFFLOADED_WRAPPER_SHA256
        );
        assert_ne!(alone.wrapper, floor.wrapper);
    }

    /// Runs the wrapper with `sh` around `echo`, the way cargo runs it around rustc, with
    /// its sysroots' mount point at `root` (a directory of the test).
    fn wrap(wrapper: &str, root: &std::path::Path, args: &[&str]) -> (bool, String, String) {
        wrap_with(wrapper, root, args, None)
    }

    /// [`wrap`] with `CMBUILD_OFFLOAD_FLOOR_NEXT` set to `next` (as plan.env exports it).
    fn wrap_with(
        wrapper: &str,
        root: &std::path::Path,
        args: &[&str],
        next: Option<&str>,
    ) -> (bool, String, String) {
        let script = wrapper.replace(
            &format!("root={GUEST_SYSROOTS}\n"),
            &format!("root={}\n", root.display()),
        );
        let path = root.parent().unwrap().join("rustc-wrapper");
        std::fs::write(&path, script).unwrap();
        let mut command = std::process::Command::new("sh");
        command.arg(&path).arg("echo").args(args);
        match next {
            Some(next) => command.env("CMBUILD_OFFLOAD_FLOOR_NEXT", next),
            None => command.env_remove("CMBUILD_OFFLOAD_FLOOR_NEXT"),
        };
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap().trim_end().to_owned(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    #[test]
    fn the_wrapper_adds_the_sysroot_to_its_triples_target_units_only() {
        let wrapper = rustc_wrapper(
            "2.36",
            &[
                triple("x86_64-unknown-linux-gnu"),
                triple("riscv64gc-unknown-linux-gnu"),
            ],
            false,
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sysroot");
        // Mounted already (the marker is there): the wrapper goes straight on.
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join(IMAGE_MARKER), "2.36\n").unwrap();
        let run = |args: &[&str]| {
            let (ok, out, err) = wrap(&wrapper, &root, args);
            assert!(ok, "{err}");
            out
        };
        assert_eq!(
            run(&[
                "--crate-name",
                "a",
                "--target",
                "x86_64-unknown-linux-gnu",
                "-C",
                "opt-level=3"
            ]),
            "--crate-name a --target x86_64-unknown-linux-gnu -C opt-level=3 \
             -C link-arg=--sysroot=/build/sysroot/x86_64-unknown-linux-gnu"
        );
        assert_eq!(
            run(&["--target=riscv64gc-unknown-linux-gnu", "x y"]),
            "--target=riscv64gc-unknown-linux-gnu x y \
             -C link-arg=--sysroot=/build/sysroot/riscv64gc-unknown-linux-gnu"
        );
        // A host unit (no --target: a build script), another triple, and cargo's queries.
        for args in [
            &["--crate-name", "build_script_build", "build.rs"][..],
            &["--target", "aarch64-unknown-linux-gnu", "lib.rs"],
            &["-vV"],
        ] {
            assert_eq!(run(args), args.join(" "));
        }
        // Offloaded: the same arguments go to the offload wrapper plan.env names, or to
        // rustc itself when it names none.
        let offloaded = rustc_wrapper(
            "2.36",
            &[
                triple("x86_64-unknown-linux-gnu"),
                triple("riscv64gc-unknown-linux-gnu"),
            ],
            true,
        );
        let next = dir.path().join("next wrapper");
        std::fs::write(&next, "#!/bin/sh\necho next \"$@\"\n").unwrap();
        std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let unit = ["--crate-name", "a", "--target", "x86_64-unknown-linux-gnu"];
        let linked = "--crate-name a --target x86_64-unknown-linux-gnu \
                      -C link-arg=--sysroot=/build/sysroot/x86_64-unknown-linux-gnu";
        for (named, expected) in [
            (next.to_str().unwrap(), format!("next echo {linked}")),
            ("", linked.to_owned()),
        ] {
            let (ok, out, err) = wrap_with(&offloaded, &root, &unit, Some(named));
            assert!(ok, "{err}");
            assert_eq!(out, expected);
        }
        // Not mounted, and nothing to mount here: the build fails, saying why, in the form
        // the driver reports as the first error.
        std::fs::remove_file(root.join(IMAGE_MARKER)).unwrap();
        let (ok, out, err) = wrap(&wrapper, &root, &["-vV"]);
        assert!(!ok && out.is_empty());
        assert!(
            err.starts_with(
                "error: cmbuild: cannot mount the glibc floor's sysroots (/dev/pmem3 on "
            ),
            "{err}"
        );
    }

    #[test]
    fn artifacts_above_the_floor_fail_the_check() {
        let floor = select(Some("2.36"), &shipped().unwrap()).unwrap().unwrap();
        let abi = |linkage: &str, min: Option<&str>| Abi {
            linkage: linkage.into(),
            glibc_symbol: min.map(|m| format!("GLIBC_{m}")),
            glibc_min: min.map(str::to_owned),
        };
        let ok = [
            abi("dynamic", Some("2.34")),
            abi("dynamic", Some("2.36")),
            abi("static", None),
            abi("dynamic", None),
        ];
        check_artifacts(&floor, ok.iter().map(|a| ("t/a".to_owned(), a))).unwrap();
        let bad = [
            abi("dynamic", Some("2.39")),
            abi("unreadable", None),
            abi("dynamic", Some("2.2.5")),
        ];
        let err = check_artifacts(
            &floor,
            bad.iter().enumerate().map(|(i, a)| (format!("t/{i}"), a)),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "the glibc floor is 2.36, but these artifacts need a newer glibc:\n  \
             t/0 needs glibc 2.39 (GLIBC_2.39)\n  t/1 is not a readable ELF file"
        );
    }
}
