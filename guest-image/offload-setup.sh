# The parent side of an offloaded build (issue 13, docs/parallel-builds.md): sourced from
# the input drive by plan.env, which the build driver sources (with every variable
# exported) before it builds anything (guest-image/PROTOCOL.md, "Hooks").
#
# Finds the channel's port (the virtio-console port named cmbuild.offload), starts the
# multiplexer of cmbuild-offload (on the input drive: the host compiled it once with the
# pinned rustc in a machine of the same template) on the port, and points cargo at its
# rustc wrapper with enough jobs to hand every ready rustc to the host at once. If any of
# that fails the build goes on alone, in this machine: slower, with the same artifacts.
offload_port=""
for offload_name in /sys/class/virtio-ports/*/name; do
    if [ "$(cat "$offload_name" 2>/dev/null)" = "cmbuild.offload" ]; then
        offload_dir="${offload_name%/name}"
        offload_port="/dev/${offload_dir##*/}"
        break
    fi
done
mkdir -p /build/offload
offload_tool=/build/in/offload/cmbuild-offload
if [ -z "$offload_port" ] || [ ! -c "$offload_port" ]; then
    say "no offload channel: building in this machine alone"
elif [ ! -x "$offload_tool" ]; then
    say "no cmbuild-offload on the input drive: building in this machine alone"
else
    "$offload_tool" mux "$offload_port" /build/offload/mux.sock &
    offload_tries=0
    while [ ! -S /build/offload/mux.sock ] && [ "$offload_tries" -lt 100 ]; do
        sleep 0.05 2>/dev/null || sleep 1
        offload_tries=$((offload_tries + 1))
    done
    # RUSTC_WRAPPER takes no arguments: under a name ending in rustc-wrapper the tool is
    # the wrapper.
    ln -s "$offload_tool" /build/offload/rustc-wrapper
    RUSTC_WRAPPER=/build/offload/rustc-wrapper
    CMBUILD_OFFLOAD_SOCKET=/build/offload/mux.sock
    CARGO_BUILD_JOBS="${OFFLOAD_CARGO_JOBS:-32}"
    say "offloading rustc jobs through $offload_port, cargo -j $CARGO_BUILD_JOBS"
fi
