# Builds cmbuild-offload (issue 13, docs/parallel-builds.md, "The tool") in a sibling of the
# template, once per template and source: sourced from this machine's input drive by its
# plan.env, which the build driver sources before it builds anything
# (guest-image/PROTOCOL.md, "Hooks"). The pinned rustc compiles the sources under
# /build/in/offload/src; the binary goes to the output drive as /out/cmbuild-offload, and
# the host keeps it in the mirror by its content. Ends the machine with `finish`.
if rustc --edition 2021 --crate-name cmbuild_offload -C opt-level=2 -C panic=abort \
    -C debuginfo=0 -C strip=symbols --remap-path-prefix=/build/in/offload=/offload \
    -o /out/cmbuild-offload /build/in/offload/src/main.rs >/out/build.log 2>&1; then
    say "cmbuild-offload built"
else
    say "cmbuild-offload did not build"
    head -c 4000 /out/build.log
    echo "offload-bootstrap" > /out/error
fi
finish
