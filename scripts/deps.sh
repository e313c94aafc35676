#!/usr/bin/env bash
# Installs what building and testing voxgate needs on Debian, if it is missing: quiet when all is present.
#   scripts/deps.sh          build dependencies
#   scripts/deps.sh test     also cargo-nextest (to run the tests)
#   scripts/deps.sh audio    also espeak-ng and sox (to re-make the bundled recordings)
#   scripts/deps.sh wake     also the real music the wake-word benchmark plays (wesnoth-1.16-music, 150 MB)
#   scripts/deps.sh package  also cargo-deb, lintian and systemd-nspawn (to build and boot the Debian package)
set -euo pipefail
# systemd: systemd-analyze checks the unit, systemd-journald runs in the journald test.
packages=(libasound2-dev pkg-config systemd)
case "${1:-}" in
    audio) packages+=(espeak-ng sox) ;;
    wake) packages+=(espeak-ng sox wesnoth-1.16-music) ;;
    package) packages+=(dpkg-dev lintian systemd-container) ;;
esac
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "cargo is needed: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
if [ "${1:-}" = test ] && ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked --quiet cargo-nextest
fi
if [ "${1:-}" = package ] && ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb"
    cargo install --locked --quiet cargo-deb
fi
