#!/usr/bin/env bash
# Make a local Debian bookworm base image with Python 3.11 and venv, for
# machines that reach Debian's package mirror but no container registry.
#
#   scripts/build-base-image.sh [IMAGE]     (default: localhost/ayon-base:bookworm)
#
# The image is kept in podman's store; when it exists already nothing is done.
# The debootstrap tree is packed once into a tarball under IMAGE_CACHE
# (default ~/.cache/ayon-image), so a wiped podman store rebuilds in seconds.
set -euo pipefail

image="${1:-localhost/ayon-base:bookworm}"
cache="${IMAGE_CACHE:-${HOME}/.cache/ayon-image}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages="python3,python3-venv,ca-certificates,tzdata"
tarball="${cache}/bookworm-minbase-python3.tar"

say() { printf '[base-image] %s\n' "$*"; }

if podman image exists "${image}"; then
    say "${image} exists already"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "Error: debootstrap needs root to make ${image}" >&2
    exit 2
fi

mkdir -p "${cache}"
if [ ! -s "${tarball}" ]; then
    root="$(mktemp -d "${cache}/rootfs.XXXXXX")"
    # --one-file-system: never follow a /proc that debootstrap may leave mounted.
    trap 'rm -rf --one-file-system "${root}"' EXIT
    say "debootstrap --variant=minbase bookworm (${packages}) into ${root}: a few minutes"
    debootstrap --variant=minbase --include="${packages}" bookworm "${root}" "${mirror}" \
        > "${cache}/debootstrap.log" 2>&1 || {
        echo "Error: debootstrap failed; see ${cache}/debootstrap.log" >&2
        exit 1
    }
    # Package lists and caches only make the image bigger.
    rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/var/cache/apt/archives/*.deb
    tar -C "${root}" --one-file-system --numeric-owner -cf "${tarball}.partial" .
    mv "${tarball}.partial" "${tarball}"
    say "packed ${tarball} ($(du -h "${tarball}" | cut -f1))"
fi

say "podman import ${tarball} as ${image}"
podman import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "${tarball}" "${image}" > /dev/null
say "made ${image}"
