//! The target triples cmbuild builds, in one table: for each, the Rust target, the clang
//! target it links with, the Debian architecture whose `libstd-rust-dev` serves it, the
//! multiarch directory its C runtime lives in, and the linker settings.
//!
//! Everything that names triples derives from [`TABLE`]: the image (which standard
//! libraries make a toolchain), the run (which targets a project may ask for, in what
//! order), and the guest side — `guest-image/cargo-config.toml` is [`cargo_config`]'s output
//! and the target `case` of `guest-image/build-driver.sh` is [`driver_case`]'s; tests keep
//! both committed files byte-identical to the generated text (they are part of the root
//! image, so their bytes are part of its CID).

use std::fmt;
use std::str::FromStr;

/// One supported target triple and how it is built.
#[derive(Debug, PartialEq, Eq)]
pub struct TripleSpec {
    /// The Rust target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub rust: &'static str,
    /// The clang `--target` that links it, e.g. `x86_64-linux-gnu`.
    pub clang: &'static str,
    /// The Debian architecture of its standard library package, e.g. `amd64` (`all` for
    /// the WebAssembly targets, whose std is architecture-independent).
    pub debian_arch: &'static str,
    /// The Debian package of its standard library, e.g. `libstd-rust-dev`.
    pub std_package: &'static str,
    /// The multiarch directory of its C runtime under `/usr/lib`, e.g. `x86_64-linux-gnu`
    /// (`None`: the target has no C runtime in the image).
    pub multiarch: Option<&'static str>,
    /// What cargo appends to a binary's name for this target (`.wasm` for WebAssembly).
    pub exe_suffix: &'static str,
    /// Whether a run builds it when the project names no targets.
    pub default: bool,
    /// The linker cargo runs for it.
    pub linker: &'static str,
    /// Extra linker arguments (passed as `-C link-arg=...`).
    pub link_args: &'static [&'static str],
    /// The shell `case` pattern the build driver matches the triple with.
    pub driver_pattern: &'static str,
}

/// Every triple cmbuild builds, in the order a run builds them by default.
pub const TABLE: &[TripleSpec] = &[
    TripleSpec {
        rust: "x86_64-unknown-linux-gnu",
        clang: "x86_64-linux-gnu",
        debian_arch: "amd64",
        std_package: "libstd-rust-dev",
        multiarch: Some("x86_64-linux-gnu"),
        exe_suffix: "",
        default: true,
        linker: "clang",
        link_args: &["--target=x86_64-linux-gnu", "-fuse-ld=lld"],
        driver_pattern: "x86_64-*",
    },
    TripleSpec {
        rust: "aarch64-unknown-linux-gnu",
        clang: "aarch64-linux-gnu",
        debian_arch: "arm64",
        std_package: "libstd-rust-dev",
        multiarch: Some("aarch64-linux-gnu"),
        exe_suffix: "",
        default: true,
        linker: "clang",
        link_args: &["--target=aarch64-linux-gnu", "-fuse-ld=lld"],
        driver_pattern: "aarch64-*",
    },
    TripleSpec {
        rust: "riscv64gc-unknown-linux-gnu",
        clang: "riscv64-linux-gnu",
        debian_arch: "riscv64",
        std_package: "libstd-rust-dev",
        multiarch: Some("riscv64-linux-gnu"),
        exe_suffix: "",
        default: true,
        linker: "clang",
        link_args: &["--target=riscv64-linux-gnu", "-fuse-ld=lld"],
        driver_pattern: "riscv64*",
    },
    TripleSpec {
        rust: "wasm32-unknown-unknown",
        clang: "wasm32-unknown-unknown",
        debian_arch: "all",
        std_package: "libstd-rust-dev-wasm32",
        multiarch: None,
        exe_suffix: ".wasm",
        default: false,
        linker: "wasm-ld",
        link_args: &[],
        driver_pattern: "wasm32-unknown-unknown",
    },
    TripleSpec {
        rust: "wasm32-wasip1",
        clang: "wasm32-wasip1",
        debian_arch: "all",
        std_package: "libstd-rust-dev-wasm32",
        multiarch: None,
        exe_suffix: ".wasm",
        default: false,
        linker: "wasm-ld",
        link_args: &[],
        driver_pattern: "wasm32-wasip1",
    },
];

/// A supported target triple: a handle on its row of [`TABLE`]. Parsing refuses any
/// other text, so a `Triple` is always safe to use as a path component or a shell word.
#[derive(Clone, Copy)]
pub struct Triple(&'static TripleSpec);

/// A triple cmbuild does not build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target {0:?} is not supported; cmbuild builds {list}", list = Triple::list())]
pub struct UnsupportedTriple(pub String);

impl Triple {
    /// Every supported triple, in [`TABLE`] order.
    pub const ALL: [Triple; 5] = [
        Triple(&TABLE[0]),
        Triple(&TABLE[1]),
        Triple(&TABLE[2]),
        Triple(&TABLE[3]),
        Triple(&TABLE[4]),
    ];

    /// The triples a run builds when the project names none ([`TripleSpec::default`]), in
    /// [`TABLE`] order.
    pub fn defaults() -> Vec<Triple> {
        Triple::ALL.into_iter().filter(|t| t.0.default).collect()
    }

    /// The triple's row of the table.
    pub fn spec(self) -> &'static TripleSpec {
        self.0
    }

    /// The Rust triple, e.g. `x86_64-unknown-linux-gnu`.
    pub fn as_str(self) -> &'static str {
        self.0.rust
    }

    /// The file name cargo gives binary `bin` for this target (`bin`, or `bin.wasm`).
    pub fn artifact_name(self, bin: &str) -> String {
        format!("{bin}{}", self.0.exe_suffix)
    }

    /// The supported triples as a comma-separated list, for messages.
    pub fn list() -> String {
        TABLE.iter().map(|t| t.rust).collect::<Vec<_>>().join(", ")
    }
}

impl FromStr for Triple {
    type Err = UnsupportedTriple;

    fn from_str(s: &str) -> Result<Triple, UnsupportedTriple> {
        TABLE
            .iter()
            .find(|t| t.rust == s)
            .map(Triple)
            .ok_or_else(|| UnsupportedTriple(s.to_owned()))
    }
}

impl PartialEq for Triple {
    fn eq(&self, other: &Triple) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Triple {}

impl PartialOrd for Triple {
    fn partial_cmp(&self, other: &Triple) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Ordered by name, like the strings they replace.
impl Ord for Triple {
    fn cmp(&self, other: &Triple) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Triple {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Display for Triple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Triple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl serde::Serialize for Triple {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Triple {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Triple, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The comment heading `guest-image/cargo-config.toml`.
const CARGO_CONFIG_HEADER: &str = "\
# Cargo configuration inside cmbuild's guest ($CARGO_HOME/config.toml).
#
# Debian's toolchain cross-links with clang driving lld: clang finds each triple's crt
# objects and libgcc in /usr/lib/<multiarch> and /usr/lib/gcc/<multiarch>/14 (from
# libc6-dev and libgcc-14-dev of that architecture). The build driver passes the same
# flags through RUSTFLAGS (which overrides these) together with its path remapping; this
# file makes a plain `cargo build --target T` inside the guest work too.
#
# [env] gives build scripts (the `cc` crate, cmake-rs) each triple's C toolchain: clang
# with --target=<clang target> (headers from /usr/include/<multiarch>, the multiarch
# libc6-dev; C++ from that architecture's libstdc++-14-dev), GNU ar (binutils; its
# generic ELF support indexes every Linux triple's objects). The riscv64 entry is also the
# native compiler of host-side build scripts. The WebAssembly targets link with wasm-ld
# (lld) and their std's self-contained C runtime; C for them compiles without a libc.
";

/// The guest's cargo configuration (`guest-image/cargo-config.toml`, installed as
/// `/usr/lib/cmbuild/cargo-config.toml` in the root image): one `[target.T]` section per
/// row of [`TABLE`], then offline mode.
pub fn cargo_config() -> String {
    let mut out = String::from(CARGO_CONFIG_HEADER);
    for t in TABLE {
        let flags: Vec<String> = t
            .link_args
            .iter()
            .flat_map(|a| ["\"-C\"".to_owned(), format!("\"link-arg={a}\"")])
            .collect();
        out += &format!(
            "\n[target.{}]\nlinker = \"{}\"\nrustflags = [{}]\n",
            t.rust,
            t.linker,
            flags.join(", ")
        );
    }
    out += "\n[env]\n";
    for t in TABLE {
        for (var, value) in c_toolchain_env(t) {
            out += &format!("{var} = \"{value}\"\n");
        }
    }
    out + "\n[net]\noffline = true\n"
}

/// The C toolchain variables a triple's build scripts see (cargo's `[env]` in
/// [`cargo_config`]), spelled as the `cc` crate reads them: `CC_<triple>` with the
/// triple's `-` as `_`. clang with `--target=<clang target>` compiles C and assembly for
/// every row (clang++ likewise for C++, where the triple's libstdc++ headers exist).
pub fn c_toolchain_env(t: &TripleSpec) -> [(String, String); 5] {
    let suffix = t.rust.replace('-', "_");
    let target = format!("--target={}", t.clang);
    [
        (format!("CC_{suffix}"), "clang".to_owned()),
        (format!("CXX_{suffix}"), "clang++".to_owned()),
        (format!("AR_{suffix}"), "ar".to_owned()),
        (format!("CFLAGS_{suffix}"), target.clone()),
        (format!("CXXFLAGS_{suffix}"), target),
    ]
}

/// The `case` of `guest-image/build-driver.sh` that gives each triple its linker flags
/// (the driver puts them into `RUSTFLAGS`) and its binaries' suffix.
pub fn driver_case() -> String {
    let mut out = String::from("    case \"$target\" in\n");
    for t in TABLE {
        let mut flags = format!("-C linker={}", t.linker);
        for arg in t.link_args {
            flags += &format!(" -C link-arg={arg}");
        }
        out += &format!(
            "        {}) link_flags=\"{flags}\" exe_suffix=\"{}\" ;;\n",
            t.driver_pattern, t.exe_suffix
        );
    }
    out + "        *) link_flags=\"\" exe_suffix=\"\" ;;\n    esac\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_cargo_config_is_the_generated_one() {
        // `CMBUILD_BLESS=1 cargo test -p cmbuild-image triple` rewrites the file after a
        // change to the table (then rebuild the image: the file is in it).
        if std::env::var_os("CMBUILD_BLESS").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../guest-image/cargo-config.toml"
            );
            std::fs::write(path, cargo_config()).unwrap();
        }
        // Byte for byte: the file is part of the root image.
        assert_eq!(
            cargo_config(),
            include_str!("../../../guest-image/cargo-config.toml")
        );
    }

    #[test]
    fn every_triple_gets_a_cross_c_toolchain_as_cc_reads_it() {
        let config = cargo_config();
        for t in TABLE {
            let suffix = t.rust.replace('-', "_");
            for line in [
                format!("CC_{suffix} = \"clang\"\n"),
                format!("CXX_{suffix} = \"clang++\"\n"),
                format!("AR_{suffix} = \"ar\"\n"),
                format!("CFLAGS_{suffix} = \"--target={}\"\n", t.clang),
                format!("CXXFLAGS_{suffix} = \"--target={}\"\n", t.clang),
            ] {
                assert!(config.contains(&line), "{line}");
            }
        }
        assert!(config.contains("CC_x86_64_unknown_linux_gnu = \"clang\""));
        let env = &config[config.find("\n[env]\n").unwrap()..config.find("\n[net]").unwrap()];
        assert_eq!(
            env.lines().filter(|l| l.contains(" = ")).count(),
            5 * TABLE.len()
        );
    }

    #[test]
    fn the_committed_driver_matches_the_table() {
        let driver = include_str!("../../../guest-image/build-driver.sh");
        assert!(driver.contains(&driver_case()), "{}", driver_case());
        // Every row's linker and arguments reach RUSTFLAGS, and its binaries are copied
        // with their suffix.
        for t in TABLE {
            let line = driver_case()
                .lines()
                .find(|l| {
                    l.trim_start()
                        .starts_with(&format!("{})", t.driver_pattern))
                })
                .unwrap()
                .to_owned();
            assert!(line.contains(&format!("-C linker={}", t.linker)), "{line}");
            for arg in t.link_args {
                assert!(line.contains(&format!("-C link-arg={arg}")), "{line}");
            }
            assert!(line.contains(&format!("exe_suffix=\"{}\"", t.exe_suffix)));
        }
        assert!(driver.contains("--remap-path-prefix=/build/cargo-home=/cargo $link_flags\""));
        assert!(driver.contains("cp \"target/$target/release/$bin$exe_suffix\""));
    }

    #[test]
    fn patterns_pick_each_triple_and_no_other() {
        // The shell takes the first matching pattern: each triple must reach its own row.
        for t in TABLE {
            let first = TABLE
                .iter()
                .find(|row| glob_matches(row.driver_pattern, t.rust))
                .unwrap();
            assert_eq!(first.rust, t.rust);
        }
    }

    /// The subset of shell patterns the table uses: literal text with a trailing `*`.
    fn glob_matches(pattern: &str, text: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => text.starts_with(prefix),
            None => pattern == text,
        }
    }

    #[test]
    fn defaults_are_the_linux_triples_and_wasm_is_on_request() {
        let defaults: Vec<&str> = Triple::defaults().iter().map(|t| t.as_str()).collect();
        assert_eq!(
            defaults,
            [
                "x86_64-unknown-linux-gnu",
                "aarch64-unknown-linux-gnu",
                "riscv64gc-unknown-linux-gnu"
            ]
        );
        let wasm: Triple = "wasm32-unknown-unknown".parse().unwrap();
        assert_eq!(wasm.spec().exe_suffix, ".wasm");
        assert_eq!(wasm.spec().linker, "wasm-ld");
        assert!(wasm.spec().multiarch.is_none());
        assert!(cargo_config()
            .contains("[target.wasm32-wasip1]\nlinker = \"wasm-ld\"\nrustflags = []\n"));
    }

    #[test]
    fn triples_parse_print_and_order_by_name() {
        for (i, t) in Triple::ALL.iter().enumerate() {
            assert_eq!(t.spec(), &TABLE[i]);
            assert_eq!(t.as_str().parse::<Triple>().unwrap(), *t);
            assert!(t
                .as_str()
                .starts_with(t.spec().driver_pattern.trim_end_matches('*')));
            if let Some(multiarch) = t.spec().multiarch {
                assert_eq!(multiarch, t.spec().clang);
            }
        }
        let err = "../etc".parse::<Triple>().unwrap_err();
        assert!(
            err.to_string().contains("x86_64-unknown-linux-gnu"),
            "{err}"
        );
        let mut sorted = Triple::ALL;
        sorted.sort();
        assert_eq!(
            sorted.map(|t| t.spec().debian_arch),
            ["arm64", "riscv64", "all", "all", "amd64"]
        );
        let json = serde_json::to_string(&Triple::ALL[0]).unwrap();
        assert_eq!(json, "\"x86_64-unknown-linux-gnu\"");
        assert!(serde_json::from_str::<Triple>("\"/abs\"").is_err());
    }
}
