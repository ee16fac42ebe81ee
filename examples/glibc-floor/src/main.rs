//! Prints what its C computed and what a child process returned: the C tells which glibc
//! headers it was compiled against, and spawning a process is where the standard library
//! reaches for glibc's newest process functions (pidfd_spawnp, GLIBC_2.39, when linked
//! against a glibc that has them).

use std::ffi::CString;
use std::os::raw::{c_char, c_long};

extern "C" {
    fn floor_parse(text: *const c_char) -> c_long;
}

fn main() {
    let text = CString::new("0b101").expect("no NUL inside");
    // SAFETY: src/parse.c's function reads the NUL-terminated string and nothing else.
    let parsed = unsafe { floor_parse(text.as_ptr()) };
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 3"])
        .status()
        .map(|status| status.code());
    println!("parse(0b101)={parsed} child={child:?}");
}
