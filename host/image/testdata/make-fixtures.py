#!/usr/bin/env python3
"""Regenerates the test fixtures of cmbuild-image's lock tests (run from this directory).

Writes small hand-written Packages indices (each SHA256 is that of the line
"fake deb NAME VERSION ARCH\n", which the tests serve as the .deb), their gzipped copies,
an InRelease that lists the gzipped copies, clearsigned with a throwaway ed25519 key made
on the spot, and that key's public keyring. Needs gpg. The key is thrown away afterwards:
the fixtures only need to be verifiable, never re-signable.
"""
import gzip, hashlib, os, subprocess, tempfile
# name, version, arch, extra fields
def stanza(name, version, arch, extra=""):
    fn_ver = version.split(":")[-1]
    filename = f"pool/main/{name[0]}/{name}/{name}_{fn_ver}_{arch}.deb"
    body = f"fake deb {name} {version} {arch}\n".encode()
    return (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n{extra}"
            f"Filename: {filename}\nSize: {len(body)}\nSHA256: {hashlib.sha256(body).hexdigest()}\n")
common = [
  ("tzdata", "2025b-4", "all", "Multi-Arch: foreign\nPriority: required\nDepends: debconf (>= 0.5) | debconf-2.0\n"),
  ("debconf", "1.5.91", "all", "Multi-Arch: foreign\nPriority: required\nProvides: debconf-2.0\n"),
]
riscv = [
  ("dash", "0.5.12-12", "riscv64", "Essential: yes\nPriority: required\nMulti-Arch: foreign\n"),
  ("mailer", "1.0-1", "riscv64", "Depends: missing-mta | exim4 | postfix\n"),
  ("exim4", "4.98-1", "riscv64", "Provides: mail-transport-agent\n"),
  ("postfix", "3.10.1-1", "riscv64", "Provides: mail-transport-agent\n"),
  ("rustc", "1.85.1+dfsg1-1", "riscv64", "Multi-Arch: allowed\nDepends: libc6 (>= 2.34), libc-dev, awk-impl (>= 2)\n"),
  ("libc6", "2.41-12", "riscv64", "Multi-Arch: same\nPriority: optional\nDepends: libgcc-s1\n"),
  ("libgcc-s1", "14.2.0-19", "riscv64", "Multi-Arch: same\nPriority: optional\nDepends: libc6 (>= 2.35)\n"),
  ("libc6-dev", "2.41-12", "riscv64", "Multi-Arch: same\nProvides: libc-dev (= 2.41-12)\nDepends: libc6 (= 2.41-12), rpcsvc-proto, tzdata\n"),
  ("rpcsvc-proto", "1.4.3-1", "riscv64", "Multi-Arch: foreign\nPre-Depends: libc6 (>= 2.34)\n"),
  ("mawk", "1.3.4.20250131-1", "riscv64", "Multi-Arch: foreign\nPriority: required\nProvides: awk, awk-impl\n"),
  ("gawk", "1:5.2.1-2", "riscv64", "Multi-Arch: foreign\nPriority: optional\nProvides: awk, awk-impl (= 2)\n"),
  ("libfoo", "1.5-1", "riscv64", ""),
  ("libfoo", "2.1-1", "riscv64", ""),
  ("oldapp", "1.0", "riscv64", "Depends: libfoo (<< 2)\n"),
  ("newapp", "1.0", "riscv64", "Depends: libfoo (>= 2~), awk\n"),
  ("impossible", "1.0", "riscv64", "Depends: libfoo (>> 3)\n"),
]
amd = [
  ("libc6", "2.41-12", "amd64", "Multi-Arch: same\nPriority: optional\nDepends: libgcc-s1, tzdata\n"),
  ("libgcc-s1", "14.2.0-19", "amd64", "Multi-Arch: same\nPriority: optional\nDepends: libc6 (>= 2.35)\n"),
  ("libc6-dev", "2.41-12", "amd64", "Multi-Arch: same\nProvides: libc-dev (= 2.41-12)\nDepends: libc6 (= 2.41-12), rpcsvc-proto, tzdata\n"),
  ("rpcsvc-proto", "1.4.3-1", "amd64", "Multi-Arch: foreign\nPre-Depends: libc6 (>= 2.34)\n"),
]
indices = {
    "riscv64": "\n".join(stanza(*s) for s in riscv + common),
    "amd64": "\n".join(stanza(*s) for s in amd + common),
}
release = ("Origin: cmbuild tests\nSuite: testing\nVersion: 0.1\nCodename: testsuite\n"
           "Date: Sat, 01 Jan 2000 00:00:00 UTC\nAcquire-By-Hash: yes\n"
           "Architectures: amd64 riscv64\nComponents: main\nSHA256:\n")
for arch, text in indices.items():
    with open(f"Packages-{arch}", "w") as f:
        f.write(text)
    gz = gzip.compress(text.encode(), compresslevel=9, mtime=0)
    with open(f"Packages-{arch}.gz", "wb") as f:
        f.write(gz)
    release += f" {hashlib.sha256(gz).hexdigest()} {len(gz):8} main/binary-{arch}/Packages.gz\n"
with tempfile.TemporaryDirectory() as home:
    env = dict(os.environ, GNUPGHOME=home)
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(gpg + ["--quick-gen-key", "cmbuild test archive key (throwaway) <tests@cmbuild.invalid>",
                          "ed25519", "sign", "never"], env=env, check=True)
    subprocess.run(gpg + ["--yes", "--digest-algo", "SHA256", "--clearsign", "--output", "InRelease", "-"],
                   input=release.encode(), env=env, check=True)
    subprocess.run(gpg + ["--yes", "--output", "throwaway-keyring.gpg", "--export"], env=env, check=True)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)
