//! Compiles src/parse.c with the `cc` crate: inside cmbuild's machine `CC_<triple>` and
//! `CFLAGS_<triple>` point it at clang, and under a glibc floor at the floor's sysroot.

fn main() {
    cc::Build::new().file("src/parse.c").compile("parse");
    println!("cargo:rerun-if-changed=src/parse.c");
}
