#!/usr/bin/env bash
# Installs what building and testing torpor needs on Debian 12, idempotently:
# Debian's Slurm 22.05 (daemons, clients, headers), munge, clang/libclang (bindgen), rpm and
# binutils (make package), and the unprivileged users test jobs run as. Safe to run again;
# skips what is there.
set -euo pipefail

TEST_USER=${TORPOR_TEST_USER:-torpor-test}
# A second unprivileged user: the security tests check that it cannot read, restore or
# redirect the first one's images.
TEST_USER2=${TORPOR_TEST_USER2:-torpor-test2}
PACKAGES=(slurmctld slurmd slurm-client libslurm-dev munge libclang-dev clang
          python3 perl sqlite3 rpm binutils gcc g++ libc6-dev make util-linux procps)

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO=sudo; else
        echo "setup.sh: run as root (or install sudo): it installs packages and a test user" >&2
        exit 1
    fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # Debian's packages try to start system-wide daemons; torpor's tests never use them.
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

for u in "$TEST_USER" "$TEST_USER2"; do
    if ! id "$u" >/dev/null 2>&1; then
        echo "setup.sh: creating test user $u"
        $SUDO useradd --create-home --shell /bin/bash "$u"
    fi
done

if ! command -v cargo >/dev/null; then
    echo "setup.sh: cargo not found: install rustup (https://rustup.rs); rust-toolchain.toml pins the version" >&2
    exit 1
fi
# The engine suite runs under cargo-nextest (each case in its own process).
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup.sh: installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
# make test-fuzz: cargo-fuzz (libFuzzer is built with the C++ compiler above).
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
echo "setup.sh: ok (Slurm $(sinfo --version 2>/dev/null | awk '{print $2}'), test users $TEST_USER, $TEST_USER2)"
