#!/bin/sh
# cmbuild's build driver, run by /init inside the guest's root image (see PROTOCOL.md).
#
# Mounts the input drive (an EROFS image: plan.env, cargo-config.toml, src/, vendor/)
# read-only with a writable overlay over the two trees, refuses a plan version it does
# not know, builds every triple of the plan with cargo
# --offline --locked (the full log to /out/<triple>/build.log, one progress line per
# crate and the first error line to the console), copies the planned binaries to
# /out/<triple>/, and writes /out as one tar onto the output drive. Paths are
# fixed (/build/...), and remapped in every artifact, so nothing of the build leaks.

export PATH=/usr/bin:/usr/sbin:/usr/lib/cmbuild/bin
export LANG=C.UTF-8 TZ=UTC
set -u
input="${CMBUILD_INPUT:-/dev/pmem1}"
output="${CMBUILD_OUTPUT:-/dev/pmem2}"

say() { echo "cmbuild-driver: $*"; }
finish() {
    tar -C /out -cf "$output" . || say "cannot write the output drive $output"
    sync
    say "done"
    poweroff -f
    sleep 10
}

mkdir -p /build/src /build/vendor /build/cargo-home /build/home /out
# The ready point (PROTOCOL.md, "The template"): the toolchain answers, then the guest
# yields to the host (HTIF yield, device 2) with no drive but the root read yet. The host
# snapshots the machine here once per image (the template) and resumes every build from
# it with the input drive filled in; the block caches of the other drives are dropped on
# both sides of the yield, so nothing read before it (the kernel's partition scan) can be
# stale after it.
# The host answers the yield in HTIF fromhost (2 << 56 | the input's length in bytes);
# the input is a filesystem, so its length is informational.
say "toolchain: $(rustc -V 2>&1), $(cargo -V 2>&1)"
for drive in "$input" "$output" /dev/pmem3; do blockdev --flushbufs "$drive" 2>/dev/null; done
devmem 0x40008000 64 0x0200000000000000 2>/dev/null
answer=$(devmem 0x40008008 64 2>/dev/null) || answer=0
for drive in "$input" "$output" /dev/pmem3; do blockdev --flushbufs "$drive" 2>/dev/null; done
: "${answer:=0}"
mkdir -p /build/in
if ! mount -t erofs -o ro "$input" /build/in || [ ! -f /build/in/plan.env ]; then
    say "cannot read the build plan from $input"
    echo "input" > /out/error
    finish
fi
set -a
. /build/in/plan.env
set +a
# The plan versions this driver reads (PROTOCOL.md); any other is refused before building.
case "${CMBUILD_PLAN_VERSION:-}" in
    2) ;;
    *)
        say "unsupported build plan version (this driver reads version 2)"
        echo "plan-version" > /out/error
        finish
        ;;
esac
# The source and the vendored crates, read in place: cargo writes target/ (and a build
# script whatever it writes next to its sources) into the overlay's upper layer, in RAM.
overlay() {
    mkdir -p "/build/upper/$1" "/build/work/$1" &&
        mount -t overlay overlay \
            -o "lowerdir=/build/in/$1,upperdir=/build/upper/$1,workdir=/build/work/$1" "/build/$1"
}
overlay src && overlay vendor || {
    say "cannot mount the source or the vendored crates"
    echo "unpack" > /out/error
    finish
}

export CARGO_HOME=/build/cargo-home
cp /usr/lib/cmbuild/cargo-config.toml "$CARGO_HOME/config.toml"
export CARGO_TERM_COLOR=never CARGO_TERM_PROGRESS_WHEN=never CARGO_INCREMENTAL=0

cd /build/src || finish
total=$(grep -c '^\[\[package\]\]$' Cargo.lock 2>/dev/null) || total=0
for target in $TARGETS; do
    case "$target" in
        x86_64-*) link_flags="-C linker=clang -C link-arg=--target=x86_64-linux-gnu -C link-arg=-fuse-ld=lld" exe_suffix="" ;;
        aarch64-*) link_flags="-C linker=clang -C link-arg=--target=aarch64-linux-gnu -C link-arg=-fuse-ld=lld" exe_suffix="" ;;
        riscv64*) link_flags="-C linker=clang -C link-arg=--target=riscv64-linux-gnu -C link-arg=-fuse-ld=lld" exe_suffix="" ;;
        wasm32-unknown-unknown) link_flags="-C linker=wasm-ld" exe_suffix=".wasm" ;;
        wasm32-wasip1) link_flags="-C linker=wasm-ld" exe_suffix=".wasm" ;;
        *) link_flags="" exe_suffix="" ;;
    esac
    # RUSTFLAGS replaces the config's per-target rustflags, so it carries the linker
    # flags too; they apply to the target's artifacts only (build scripts use cc).
    RUSTFLAGS="--remap-path-prefix=/build/src=/src --remap-path-prefix=/build/vendor=/vendor --remap-path-prefix=/build/cargo-home=/cargo $link_flags"
    export RUSTFLAGS
    mkdir -p "/out/$target"
    say "building $target"
    # The full log goes to the output drive; the console (a slow UART) gets one
    # `cmbuild-progress: T n/N crate version` line per crate cargo compiles (N: the
    # packages of Cargo.lock, an upper bound) and the first error line.
    # shellcheck disable=SC2086 # CARGO_FLAGS is a word list by design.
    { cargo build --release --locked --offline --config /build/in/cargo-config.toml \
        --target "$target" ${CARGO_FLAGS:-}; echo "$?" > "/build/$target.status"; } 2>&1 |
        awk -v target="$target" -v total="$total" -v logfile="/out/$target/build.log" '
            { print > logfile }
            $1 == "Compiling" && NF >= 3 {
                n++
                print "cmbuild-progress: " target " " n "/" total " " $2 " " $3
                fflush()
            }
            !failed && /^error(\[E[0-9]+\])?: / {
                failed = 1
                print "cmbuild-error: " target " " substr($0, 1, 300)
                fflush()
            }'
    status=$(cat "/build/$target.status" 2>/dev/null) || status=1
    echo "$status" > "/out/$target/status"
    say "$target finished with status $status"
    for bin in ${BINS:-}; do
        if [ -f "target/$target/release/$bin$exe_suffix" ]; then
            cp "target/$target/release/$bin$exe_suffix" "/out/$target/$bin$exe_suffix"
        fi
    done
done
finish
