//! Prints what its C, its assembly and the zlib it links computed, so a test can check
//! that all three were built for the target.

use std::ffi::CStr;

extern "C" {
    fn cdemo_mix(a: u32, b: u32) -> u32;
    fn cdemo_add(a: u32, b: u32) -> u32;
}

fn main() {
    // SAFETY: both are plain functions of two integers (src/mix.c, src/asm/*.S).
    let (mixed, sum) = unsafe { (cdemo_mix(7, 64), cdemo_add(40, 2)) };
    // SAFETY: zlibVersion returns a static NUL-terminated string.
    let zlib = unsafe { CStr::from_ptr(libz_sys::zlibVersion()) };
    let crc = {
        let data = b"cmbuild";
        // SAFETY: the pointer and length describe `data`.
        unsafe { libz_sys::crc32(0, data.as_ptr(), data.len() as u32) }
    };
    println!("mix={mixed} add={sum} crc32={crc:08x} zlib={}", zlib.to_string_lossy());
}
