#!/usr/bin/env bash
# Build the image from the Dockerfile with buildah (no Docker engine needed).
#
#   scripts/build-image.sh [IMAGE]     (default: localhost/ayon-server:VERSION, server/core/__init__.py)
#
# BASE_IMAGE picks the base; unset, the official slim Python image is used when
# it is present or can be pulled, else a local Debian base is made by
# scripts/build-base-image.sh. The runtime wheels are fetched on this machine
# into build/wheels and installed in the build with --no-index, so the build
# itself needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."

version="$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' server/core/__init__.py)"
image="${1:-localhost/ayon-server:${version}}"
official="docker.io/library/python:3.11-slim-bookworm"
local_base="localhost/ayon-base:bookworm"
python="${PYTHON:-.venv/bin/python}"
wheels="build/wheels"

say() { printf '[image] %s\n' "$*"; }

fetch_wheels() {
    local stamp
    stamp="${wheels}/.requirements-$(cksum < requirements.txt | cut -d' ' -f1)"
    if [ -e "${stamp}" ]; then
        say "wheels in ${wheels} are current"
        return
    fi
    say "fetching wheels for requirements.txt into ${wheels}"
    rm -rf "${wheels}"
    mkdir -p "${wheels}"
    # The image's Python is 3.11 on glibc (Debian bookworm), whatever this machine runs.
    "${python}" -m pip download --quiet --disable-pip-version-check --dest "${wheels}" \
        --only-binary=:all: --implementation cp --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
        --platform manylinux1_x86_64 --platform linux_x86_64 \
        -r requirements.txt
    touch "${stamp}"
}

pick_base() {
    if [ -n "${BASE_IMAGE:-}" ]; then
        echo "${BASE_IMAGE}"
    elif podman image exists "${official}" || timeout 60 podman pull --quiet "${official}" > /dev/null 2>&1; then
        echo "${official}"
    else
        say "no registry reachable: using the local Debian base ${local_base}" >&2
        scripts/build-base-image.sh "${local_base}" >&2
        echo "${local_base}"
    fi
}

fetch_wheels
base="$(pick_base)"
say "building ${image} from the Dockerfile on ${base}"
start=$(date +%s)
previous="$(podman image inspect --format '{{.Id}}' "${image}" 2> /dev/null || true)"
# --format docker keeps HEALTHCHECK, which the OCI image format has no field for.
buildah bud --quiet --isolation chroot --format docker --layers \
    --build-arg BASE_IMAGE="${base}" \
    --build-arg VERSION="$(git describe --always --dirty 2> /dev/null || echo dev)" \
    --tag "${image}" --file Dockerfile . > /dev/null
say "built ${image} in $(( $(date +%s) - start )) s"
current="$(podman image inspect --format '{{.Id}}' "${image}")"
if [ -n "${previous}" ] && [ "${previous}" != "${current}" ]; then
    # The image this name pointed at is untagged now: drop it and its unused layers.
    podman rmi "${previous}" > /dev/null 2>&1 || true
fi
