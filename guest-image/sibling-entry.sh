# A sibling job (issue 13, docs/parallel-builds.md): sourced from the sibling's own input
# drive (mounted on /build/in) by its plan.env, which the build driver sources before it
# builds anything (guest-image/PROTOCOL.md, "Hooks"); so the root image needs no change
# when this script does, and it never returns (it ends with the driver's `finish`). The
# drive holds:
#   job.json         the job's canonical JSON line, as the parent's wrapper sent it
#   cmbuild-offload  the guest's tool, whose run-job runs the job
#   root/build/      the job's input files at their paths under /build
# Each top-level directory of root/build/ is mounted at /build/<name> as an overlay (its
# upper layer in /tmp, RAM), so rustc finds every input where the parent had it and writes
# its outputs beside them. `cmbuild-offload run-job` runs the job and writes its result;
# the driver's `finish` puts /out on the output drive. Before that, run-job writes the
# job's metadata record at the start of the output drive (`$output`, the driver's) and
# yields when rustc announces its .rmeta (pipelining, docs/parallel-builds.md).
for dir in /build/in/root/build/*; do
    [ -d "$dir" ] || continue
    name=${dir##*/}
    mkdir -p "/build/$name" "/tmp/sibling-upper/$name" "/tmp/sibling-work/$name" &&
        mount -t overlay overlay \
            -o "lowerdir=$dir,upperdir=/tmp/sibling-upper/$name,workdir=/tmp/sibling-work/$name" \
            "/build/$name" || {
        say "cannot mount the job's inputs under /build/$name"
        echo "sibling-mount" > /out/error
        finish
    }
done
mkdir -p /build/home
if ! /build/in/cmbuild-offload run-job /build/in/job.json /out/result "$output"; then
    say "run-job failed"
    echo "sibling-run-job" > /out/error
fi
finish
