//! Compiles this project's C file and the assembly file of the target's architecture
//! with the `cc` crate: inside cmbuild's machine, `CC_<triple>` and `CFLAGS_<triple>`
//! point it at clang with the triple's `--target`.

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    let asm = match arch.as_str() {
        "x86_64" => "src/asm/x86_64.S",
        "aarch64" => "src/asm/aarch64.S",
        "riscv64" => "src/asm/riscv64.S",
        other => panic!("no assembly for {other}"),
    };
    cc::Build::new()
        .file("src/mix.c")
        .file(asm)
        .compile("mix");
    println!("cargo:rerun-if-changed=src");
}
