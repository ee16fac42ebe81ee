//! `cmbuild-offload`: the guest's side of parallel builds (docs/parallel-builds.md).
//!
//! ```text
//! cmbuild-offload mux PORT SOCKET              own the port, serve the wrappers on SOCKET
//! cmbuild-offload rustc-wrapper RUSTC ARGS...  cargo's RUSTC_WRAPPER (socket: $CMBUILD_OFFLOAD_SOCKET)
//! cmbuild-offload run-job JOB RESULT [DRIVE]   in the sibling: run a job, write its result
//!                                              (its metadata point's record to DRIVE)
//! cmbuild-offload quit SOCKET                  tell the multiplexer to exit
//! ```
//!
//! Run under a name ending in `rustc-wrapper` (a symbolic link), the program is the
//! wrapper with its arguments as they come (cargo runs `$RUSTC_WRAPPER $RUSTC ARGS...`,
//! and `RUSTC_WRAPPER` cannot carry an argument).
//!
//! Std only, one crate: the guest's pinned rustc compiles it from this file, with no cargo.

mod client;
mod json;
mod mux;
mod paths;
mod proto;
mod runjob;
mod sha256;
mod wire;
mod wrapper;

use std::ffi::OsString;
use std::path::Path;

const USAGE: &str = "usage: cmbuild-offload mux PORT SOCKET
       cmbuild-offload rustc-wrapper RUSTC ARGS...
       cmbuild-offload run-job JOB RESULT [DRIVE]
       cmbuild-offload quit SOCKET";

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as_wrapper = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("rustc-wrapper"));
    if invoked_as_wrapper && args.len() >= 2 {
        wrapper::run(args[1].clone(), args[2..].to_vec());
    }
    let text: Vec<Option<&str>> = args.iter().map(|a| a.to_str()).collect();
    let result = match text.get(1).copied().flatten() {
        Some("rustc-wrapper") if args.len() >= 3 => {
            wrapper::run(args[2].clone(), args[3..].to_vec())
        }
        Some("mux") if args.len() == 4 => match (text[2], text[3]) {
            (Some(port), Some(socket)) => mux::run(port, socket),
            _ => Err("the port and the socket must be UTF-8 paths".to_string()),
        },
        Some("run-job") if args.len() == 4 || args.len() == 5 => {
            match (text[2], text[3], text.get(4).copied()) {
                (Some(job), Some(result), drive) if drive != Some(None) => {
                    runjob::run(job, result, drive.flatten())
                }
                _ => Err("the job, the result and the drive must be UTF-8 paths".to_string()),
            }
        }
        Some("quit") if args.len() == 3 => match text[2] {
            Some(socket) => mux::quit(socket),
            None => Err("the socket must be a UTF-8 path".to_string()),
        },
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("cmbuild-offload: {e}");
        std::process::exit(1);
    }
}
