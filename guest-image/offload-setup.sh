# The parent side of an offloaded build (issue 13, docs/parallel-builds.md): sourced from
# the input drive by plan.env, which the build driver sources (with every variable
# exported) before it builds anything (guest-image/PROTOCOL.md, "Hooks").
#
# Finds the channel's port (the virtio-console port named cmbuild.offload), compiles
# cmbuild-offload from the sources on the input drive with the pinned rustc, starts its
# multiplexer on the port, and points cargo at its rustc wrapper with enough jobs to hand
# every ready rustc to the host at once. If any of that fails the build goes on alone,
# in this machine: slower, with the same artifacts.
offload_port=""
for offload_name in /sys/class/virtio-ports/*/name; do
    if [ "$(cat "$offload_name" 2>/dev/null)" = "cmbuild.offload" ]; then
        offload_dir="${offload_name%/name}"
        offload_port="/dev/${offload_dir##*/}"
        break
    fi
done
mkdir -p /build/offload
if [ -z "$offload_port" ] || [ ! -c "$offload_port" ]; then
    say "no offload channel: building in this machine alone"
elif ! rustc --edition 2021 --crate-name cmbuild_offload -C opt-level=2 -C panic=abort \
    -C debuginfo=0 -C strip=symbols --remap-path-prefix=/build/in/offload=/offload \
    -o /build/offload/cmbuild-offload /build/in/offload/src/main.rs \
    >/build/offload/build.log 2>&1; then
    say "cmbuild-offload did not build: building in this machine alone"
    head -c 2000 /build/offload/build.log
else
    /build/offload/cmbuild-offload mux "$offload_port" /build/offload/mux.sock &
    offload_tries=0
    while [ ! -S /build/offload/mux.sock ] && [ "$offload_tries" -lt 100 ]; do
        sleep 0.05 2>/dev/null || sleep 1
        offload_tries=$((offload_tries + 1))
    done
    printf '#!/bin/sh\nexec /build/offload/cmbuild-offload rustc-wrapper "$@"\n' \
        >/build/offload/rustc-wrapper
    chmod 755 /build/offload/rustc-wrapper
    RUSTC_WRAPPER=/build/offload/rustc-wrapper
    CMBUILD_OFFLOAD_SOCKET=/build/offload/mux.sock
    CARGO_BUILD_JOBS="${OFFLOAD_CARGO_JOBS:-32}"
    say "offloading rustc jobs through $offload_port, cargo -j $CARGO_BUILD_JOBS"
fi
