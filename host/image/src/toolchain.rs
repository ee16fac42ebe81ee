//! The pinned Rust toolchains and how a project selects one.
//!
//! The pinned toolchains are the layers of [`crate::layers`]; a toolchain's version is the
//! upstream version of its locked `rustc` (or `rustc-web`) package
//! (`1.85.1+dfsg1-1+deb13u1` is 1.85.1). A project names the one it wants in
//! `rust-toolchain.toml` (`[toolchain] channel = "..."`), in the legacy one-line
//! `rust-toolchain` file, or the user passes `--toolchain`: `stable` is the newest pinned,
//! `1.96` the newest pinned 1.96.x, `1.96.0` exactly that one; naming none selects the
//! default toolchain (the request's `default_toolchain`, which adding a newer toolchain
//! does not move). Anything else (`nightly`, `beta`, a dated or custom toolchain) matches no
//! pinned toolchain.

use std::fmt;

/// A Rust release version, `1.85.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RustVersion {
    /// Major (1).
    pub major: u32,
    /// Minor (85).
    pub minor: u32,
    /// Patch (1).
    pub patch: u32,
}

impl fmt::Display for RustVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses `1`, `1.85` or `1.85.1` into its numbers (missing ones `None`).
fn parse_numbers(text: &str) -> Option<(u32, Option<u32>, Option<u32>)> {
    let mut parts = text.split('.');
    let number = |p: &str| -> Option<u32> {
        (!p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let major = number(parts.next()?)?;
    let minor = match parts.next() {
        Some(p) => Some(number(p)?),
        None => None,
    };
    let patch = match parts.next() {
        Some(p) => Some(number(p)?),
        None => None,
    };
    parts.next().is_none().then_some((major, minor, patch))
}

/// Why a toolchain could not be selected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToolchainError {
    /// The requested channel matches no pinned toolchain.
    #[error(
        "the Rust toolchain {channel:?} ({source_name}) is not one cmbuild has pinned; \
         the pinned toolchains are: {available}"
    )]
    NotPinned {
        /// The channel asked for.
        channel: String,
        /// Where it was asked for (`rust-toolchain.toml`, `--toolchain`, ...).
        source_name: String,
        /// The pinned versions, comma-separated.
        available: String,
    },
    /// A package needs a newer rustc than the selected toolchain.
    #[error(
        "package {package} requires rustc {required} (its rust-version), but the selected \
         toolchain is {selected}; the pinned toolchains are: {available}"
    )]
    TooOld {
        /// The package.
        package: String,
        /// Its `rust-version`.
        required: String,
        /// The selected toolchain's version.
        selected: RustVersion,
        /// The pinned versions, comma-separated.
        available: String,
    },
    /// A `rust-version` that is not a version.
    #[error("package {package} has rust-version {value:?}, which is not a version like 1.85")]
    BadRustVersion {
        /// The package.
        package: String,
        /// Its `rust-version`.
        value: String,
    },
    /// The toolchain file could not be read.
    #[error("{file} is invalid: {message}")]
    BadFile {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The lock pins no Rust toolchain.
    #[error("the guest-image lock pins no rustc package")]
    NonePinned,
}

/// The upstream Rust version of a Debian package version: `1.85.1+dfsg1-1+deb13u1` (with an
/// optional `N:` epoch) is 1.85.1.
pub fn upstream_version(debian: &str) -> Option<RustVersion> {
    let without_epoch = debian.split_once(':').map_or(debian, |(_, v)| v);
    let upstream = without_epoch
        .split(['+', '-', '~'])
        .next()
        .unwrap_or_default();
    match parse_numbers(upstream)? {
        (major, Some(minor), Some(patch)) => Some(RustVersion {
            major,
            minor,
            patch,
        }),
        _ => None,
    }
}

fn list(available: &[RustVersion]) -> String {
    if available.is_empty() {
        return "none".into();
    }
    available
        .iter()
        .map(RustVersion::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Selects the pinned toolchain a channel names (`None`: no preference, `default`, or the
/// newest when there is no default). `source_name` says where the channel came from, for
/// the error.
pub fn select(
    channel: Option<&str>,
    source_name: &str,
    available: &[RustVersion],
    default: Option<RustVersion>,
) -> Result<RustVersion, ToolchainError> {
    let newest = available.iter().max().copied();
    let not_pinned = || ToolchainError::NotPinned {
        channel: channel.unwrap_or_default().to_owned(),
        source_name: source_name.to_owned(),
        available: list(available),
    };
    let chosen = match channel.map(str::trim) {
        None => default.filter(|d| available.contains(d)).or(newest),
        Some("stable") => newest,
        Some(text) => match parse_numbers(text).ok_or_else(not_pinned)? {
            (major, Some(minor), None) => available
                .iter()
                .filter(|v| v.major == major && v.minor == minor)
                .max()
                .copied(),
            (major, Some(minor), Some(patch)) => available
                .iter()
                .find(|v| {
                    **v == RustVersion {
                        major,
                        minor,
                        patch,
                    }
                })
                .copied(),
            _ => None,
        },
    };
    match (chosen, newest) {
        (Some(v), _) => Ok(v),
        (None, None) => Err(ToolchainError::NonePinned),
        (None, Some(_)) => Err(not_pinned()),
    }
}

/// The channel a project asks for and where it was asked: `cli` (`--toolchain`), else its
/// `rust-toolchain` file, else its `rust-toolchain.toml` (the legacy file wins when both
/// exist, as with rustup), else none. Each file is given as its bytes, if present.
pub fn project_channel(
    cli: Option<&str>,
    legacy: Option<&[u8]>,
    toml: Option<&[u8]>,
) -> Result<(Option<String>, &'static str), ToolchainError> {
    let text = |bytes: &[u8], file: &str| {
        String::from_utf8(bytes.to_vec()).map_err(|_| ToolchainError::BadFile {
            file: file.to_owned(),
            message: "not UTF-8".into(),
        })
    };
    Ok(match (cli, legacy, toml) {
        (Some(channel), _, _) => (Some(channel.to_owned()), "--toolchain"),
        (None, Some(bytes), _) => (
            channel_of_legacy(&text(bytes, "rust-toolchain")?)?,
            "rust-toolchain",
        ),
        (None, None, Some(bytes)) => (
            channel_of_toml(&text(bytes, "rust-toolchain.toml")?)?,
            "rust-toolchain.toml",
        ),
        (None, None, None) => (None, "no toolchain file"),
    })
}

/// Checks a package's `rust-version` (`1.88` or `1.88.0`) against the selected toolchain.
pub fn check_rust_version(
    package: &str,
    rust_version: &str,
    selected: RustVersion,
    available: &[RustVersion],
) -> Result<(), ToolchainError> {
    let bad = || ToolchainError::BadRustVersion {
        package: package.to_owned(),
        value: rust_version.to_owned(),
    };
    let (major, minor, patch) = parse_numbers(rust_version.trim()).ok_or_else(bad)?;
    let required = RustVersion {
        major,
        minor: minor.ok_or_else(bad)?,
        patch: patch.unwrap_or(0),
    };
    if required > selected {
        return Err(ToolchainError::TooOld {
            package: package.to_owned(),
            required: rust_version.trim().to_owned(),
            selected,
            available: list(available),
        });
    }
    Ok(())
}

/// The channel a `rust-toolchain.toml` names (`None` when it names none, e.g. only
/// components or targets).
pub fn channel_of_toml(text: &str) -> Result<Option<String>, ToolchainError> {
    let bad = |message: String| ToolchainError::BadFile {
        file: "rust-toolchain.toml".into(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let Some(toolchain) = table.get("toolchain") else {
        return Err(bad("it has no [toolchain] table".into()));
    };
    if toolchain.get("path").is_some() {
        return Err(bad(
            "a custom toolchain `path` cannot be built with; name a channel".into(),
        ));
    }
    match toolchain.get("channel") {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad("toolchain.channel must be a string".into())),
    }
}

/// The channel a legacy `rust-toolchain` file names: its one line, or, when it holds TOML,
/// its `[toolchain] channel` as rustup reads it.
pub fn channel_of_legacy(text: &str) -> Result<Option<String>, ToolchainError> {
    let trimmed = text.trim();
    if trimmed.contains('[') || trimmed.contains('=') {
        return channel_of_toml(text).map_err(|e| match e {
            ToolchainError::BadFile { message, .. } => ToolchainError::BadFile {
                file: "rust-toolchain".into(),
                message,
            },
            e => e,
        });
    }
    if trimmed.is_empty() || trimmed.lines().count() != 1 {
        return Err(ToolchainError::BadFile {
            file: "rust-toolchain".into(),
            message: "expected one line naming a channel".into(),
        });
    }
    Ok(Some(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> RustVersion {
        RustVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn debian_versions_are_read() {
        assert_eq!(
            upstream_version("1.85.1+dfsg1-1+deb13u1"),
            Some(v(1, 85, 1))
        );
        assert_eq!(upstream_version("1:1.96.0~beta-1"), Some(v(1, 96, 0)));
        assert_eq!(upstream_version("1.96"), None);
    }

    #[test]
    fn channels_select_a_pinned_toolchain() {
        let pinned = [v(1, 85, 1), v(1, 96, 0), v(1, 96, 1)];
        let default = Some(v(1, 85, 1));
        assert_eq!(select(None, "-", &pinned, default), Ok(v(1, 85, 1)));
        assert_eq!(select(None, "-", &pinned, None), Ok(v(1, 96, 1)));
        assert_eq!(
            select(Some("stable"), "-", &pinned, default),
            Ok(v(1, 96, 1))
        );
        assert_eq!(select(Some("1.96"), "-", &pinned, default), Ok(v(1, 96, 1)));
        assert_eq!(
            select(Some("1.96.0"), "-", &pinned, default),
            Ok(v(1, 96, 0))
        );
        assert_eq!(
            select(Some(" 1.96.1 "), "-", &pinned, default),
            Ok(v(1, 96, 1))
        );
        assert_eq!(select(Some("1.85"), "-", &pinned, default), Ok(v(1, 85, 1)));
        for channel in [
            "1.97",
            "1.96.2",
            "nightly",
            "beta",
            "1",
            "1.96-x86_64-unknown-linux-gnu",
        ] {
            let err = select(Some(channel), "rust-toolchain.toml", &pinned, default).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "the Rust toolchain {channel:?} (rust-toolchain.toml) is not one cmbuild \
                     has pinned; the pinned toolchains are: 1.85.1, 1.96.0, 1.96.1"
                )
            );
        }
        assert_eq!(
            select(None, "-", &[], None),
            Err(ToolchainError::NonePinned)
        );
    }

    #[test]
    fn rust_version_is_checked() {
        let pinned = [v(1, 85, 1)];
        check_rust_version("p", "1.85", v(1, 85, 1), &pinned).unwrap();
        check_rust_version("p", "1.85.1", v(1, 85, 1), &pinned).unwrap();
        check_rust_version("p", "1.70", v(1, 85, 1), &pinned).unwrap();
        let err = check_rust_version("p", "1.88", v(1, 85, 1), &pinned).unwrap_err();
        assert_eq!(
            err.to_string(),
            "package p requires rustc 1.88 (its rust-version), but the selected toolchain is \
             1.85.1; the pinned toolchains are: 1.85.1"
        );
        assert!(check_rust_version("p", "1.85.2", v(1, 85, 1), &pinned).is_err());
        assert!(matches!(
            check_rust_version("p", "soon", v(1, 85, 1), &pinned),
            Err(ToolchainError::BadRustVersion { .. })
        ));
        assert!(check_rust_version("p", "1", v(1, 85, 1), &pinned).is_err());
    }

    #[test]
    fn the_project_channel_comes_from_the_flag_then_the_files() {
        let legacy: &[u8] = b"1.96\n";
        let toml: &[u8] = b"[toolchain]\nchannel = \"1.97.1\"\n";
        assert_eq!(
            project_channel(Some("1.85"), Some(legacy), Some(toml)),
            Ok((Some("1.85".into()), "--toolchain"))
        );
        assert_eq!(
            project_channel(None, Some(legacy), Some(toml)),
            Ok((Some("1.96".into()), "rust-toolchain"))
        );
        assert_eq!(
            project_channel(None, None, Some(toml)),
            Ok((Some("1.97.1".into()), "rust-toolchain.toml"))
        );
        assert_eq!(
            project_channel(None, None, None),
            Ok((None, "no toolchain file"))
        );
        assert!(project_channel(None, Some(b"\xff"), None).is_err());
    }

    #[test]
    fn toolchain_files_are_read() {
        assert_eq!(
            channel_of_toml("[toolchain]\nchannel = \"1.96\"\ncomponents = [\"clippy\"]\n"),
            Ok(Some("1.96".into()))
        );
        assert_eq!(
            channel_of_toml("[toolchain]\ntargets = [\"wasm32-unknown-unknown\"]\n"),
            Ok(None)
        );
        assert!(channel_of_toml("[toolchain]\npath = \"/opt/rust\"\n").is_err());
        assert!(channel_of_toml("channel = \"1.96\"\n").is_err());
        assert!(channel_of_toml("[toolchain\n").is_err());
        assert_eq!(channel_of_legacy("1.96.0\n"), Ok(Some("1.96.0".into())));
        assert_eq!(
            channel_of_legacy("[toolchain]\nchannel = \"stable\"\n"),
            Ok(Some("stable".into()))
        );
        assert!(channel_of_legacy("\n").is_err());
        assert!(channel_of_legacy("a\nb\n").is_err());
    }
}
