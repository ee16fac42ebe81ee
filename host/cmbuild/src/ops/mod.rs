//! One operation per subcommand: what `cmbuild <command>` does, as a library call.
//!
//! The binary's `commands/<name>.rs` parses arguments into an options struct and calls one
//! function here (`ops::vendor::vendor(&opts)`, `ops::verify::verify(&opts, ...)`), which
//! returns a typed error (one `thiserror` enum per module). What an operation reports is
//! returned as data; the binary prints it. Long operations report progress through what
//! they are handed (a `note` callback, `vendor::FetchProgress`, `run::Progress`, an output
//! writer for the benchmark): the library never prints to the terminal itself.

pub mod attest;
pub mod bench;
pub mod bench_guest;
pub mod compare;
pub mod image;
pub mod key;
pub mod log;
pub mod machine;
pub mod mirror;
pub mod oci;
pub mod prove;
pub mod run;
pub mod vendor;
pub mod verify;
pub mod verify_attestations;

/// Sizes as people read them: `12.9 MB` (powers of 1000, like Debian's tools).
pub fn human_size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(12_910_137), "12.9 MB");
        assert_eq!(human_size(1_500), "1.5 kB");
        assert_eq!(human_size(2_345_000_000), "2.35 GB");
    }
}
