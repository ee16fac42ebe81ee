# A build from a Dockerfile (issue 15, docs/containers.md): sourced from the input drive by
# plan.env, which the build driver sources (every variable exported) before it builds
# anything (guest-image/PROTOCOL.md, "Hooks"); it never returns (it ends with the
# driver's `finish`), so the root image needs no change when this script does.
#
# The input drive holds the project's tree at the release commit (src/, the build context),
# this script, and each base image the Dockerfile names as an OCI image layout
# (containers/images/N/), listed in containers/images.list ("N repository" a line). The
# scratch drive holds an MBR partition table: partition 1 is the container layer (an EROFS
# image: buildah, crun, netavark and the kernel modules below), partition 2 is left for
# container storage. plan.env sets CONTAINER_DOCKERFILE (a path under src/) and
# CONTAINER_TARGET_STAGE (empty: the last stage).
#
# The container system is the machine's root with the layer over it and a RAM upper layer,
# entered with chroot; storage (/var/lib/containers, and /var/tmp in it) is an ext2 file
# system made on partition 2. There is no network device in the machine: every RUN step
# runs with `--network none` anyway. The clock is set to SOURCE_DATE_EPOCH first. The image is written as an OCI image layout to
# /out/image (the host checks every digest in it and packs it); buildah's log goes to
# /out/build.log and, as it runs, to the console.
ctr_fail() {
    say "containers: $1"
    echo "$2" > /out/error
    finish
}
ctr=/run/cmbuild-containers
scratch=/dev/pmem3
# The scratch drive was filled after the kernel read its (then empty) partition table.
blockdev --rereadpt "$scratch" || ctr_fail "cannot read the scratch drive's partition table" scratch
ctr_tries=0
while [ ! -b "${scratch}p2" ]; do
    ctr_tries=$((ctr_tries + 1))
    [ "$ctr_tries" -lt 50 ] || ctr_fail "no partitions on the scratch drive" scratch
    sleep 0.1 2>/dev/null || sleep 1
done
mkdir -p "$ctr/layer" "$ctr/root" /tmp/ctr-upper /tmp/ctr-work
mount -t erofs -o ro "${scratch}p1" "$ctr/layer" || ctr_fail "cannot mount the container layer" layer
modules="$ctr/layer/usr/lib/cmbuild/containers/modules"
for module in $(cat "$modules/order"); do
    [ -d "/sys/module/$module" ] || insmod "$modules/$module.ko" ||
        ctr_fail "cannot load the kernel module $module" modules
done
mount -t overlay overlay \
    -o "lowerdir=$ctr/layer:/,upperdir=/tmp/ctr-upper,workdir=/tmp/ctr-work" "$ctr/root" ||
    ctr_fail "cannot stack the container layer over the root" layer
# Short names mean Docker Hub, as in a Dockerfile for `docker build` (the host names each
# base image so: `debian@sha256:…` is docker.io/library/debian), not buildah's aliases.
rm -f "$ctr/root/etc/containers/registries.conf.d/shortnames.conf"
printf 'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n' \
    > "$ctr/root/etc/containers/registries.conf" || ctr_fail "cannot configure the registries" layer
mke2fs -F "${scratch}p2" > /dev/null 2>&1 || ctr_fail "cannot make the storage file system" storage
mkdir -p "$ctr/root/var/lib/containers"
mount -t ext4 "${scratch}p2" "$ctr/root/var/lib/containers" ||
    ctr_fail "cannot mount the storage file system" storage
mkdir -p "$ctr/root/var/lib/containers/tmp" "$ctr/root/var/tmp"
mount --bind "$ctr/root/var/lib/containers/tmp" "$ctr/root/var/tmp"
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
for dir in proc sys dev; do
    mount --rbind "/$dir" "$ctr/root/$dir" || ctr_fail "cannot bind /$dir" mounts
done
mkdir -p "$ctr/root/run" "$ctr/root/tmp" "$ctr/root/out" "$ctr/root/build/in"
mount -t tmpfs -o mode=0755 tmpfs "$ctr/root/run"
mount --bind /tmp "$ctr/root/tmp"
mount --bind /out "$ctr/root/out"
mount --bind /build/in "$ctr/root/build/in"
# The machine's clock starts at the epoch; set it to the commit's time, so what a RUN step
# reads from the clock is the commit's (plus the machine time the build has taken).
date -u -s "@$SOURCE_DATE_EPOCH" > /dev/null 2>&1 || say "containers: cannot set the clock"
in_ctr() { chroot "$ctr/root" "$@"; }
say "containers: $(in_ctr buildah --version 2>&1)"

# The base images, each from its layout, named by its repository (the Dockerfile names
# each by repository and digest, and nothing may be pulled).
while read -r dir repository; do
    [ -n "$dir" ] || continue
    id=$(in_ctr buildah pull --quiet "oci:/build/in/containers/images/$dir" 2>/tmp/ctr-pull.log) ||
        { cat /tmp/ctr-pull.log; ctr_fail "cannot load the base image $repository" base-image; }
    in_ctr buildah tag "$id" "$repository" || ctr_fail "cannot name the base image $repository" base-image
    say "containers: base image $repository loaded"
done < /build/in/containers/images.list

set -- --pull=never --isolation oci --network none --timestamp "$SOURCE_DATE_EPOCH" \
    --file "/build/in/src/$CONTAINER_DOCKERFILE" --tag localhost/cmbuild-release
[ -z "${CONTAINER_TARGET_STAGE:-}" ] || set -- "$@" --target "$CONTAINER_TARGET_STAGE"
say "containers: buildah build $CONTAINER_DOCKERFILE${CONTAINER_TARGET_STAGE:+ (stage $CONTAINER_TARGET_STAGE)}"
{ in_ctr buildah build "$@" /build/in/src 2>&1; echo "$?" > /tmp/ctr-status; } | tee /out/build.log
[ "$(cat /tmp/ctr-status)" = 0 ] || ctr_fail "the Dockerfile's build failed" build
in_ctr buildah push --quiet localhost/cmbuild-release oci:/out/image ||
    ctr_fail "cannot write the image" push
say "containers: image written"
finish
