#!/usr/bin/env bash
# A Docker host for the container end-to-end tests, bootstrapped by `make test` and `make demo`:
# the packages (as root, when missing), a running dockerd, and stand-ins for the base images the
# generated Dockerfile names, built offline once per machine (about a minute) and then reused.
#
# Docker Hub and ghcr are out of reach on the machines this runs on, so the stand-ins carry the
# names the Dockerfile expects: python:<version>-slim-bookworm is a Debian bookworm minbase with
# Debian's python3 (3.11, hence python_version 3.11 in the tests) and this machine's CA
# certificates, so `uv sync` inside the build reaches the package index through the same
# TLS-inspecting egress as the host; ghcr.io/astral-sh/uv:<version> holds the uv binary of the
# uv wheel the tools environment already has.
#
# Exit 0 with a Docker host ready, or exit 0 with a note on stderr when Docker cannot be had
# (not root, no packages): the Docker tests then skip, except under CI=true, where they fail.
set -euo pipefail

UV_VERSION=0.13.9
PYTHON_TAG=python:3.11-slim-bookworm
UV_TAG=ghcr.io/astral-sh/uv:${UV_VERSION}
# Bump when the recipe below changes, so cached stand-ins are rebuilt.
STAND_IN=copier-prefect-stand-in-2
HERE=$(cd "$(dirname "$0")" && pwd)
UV_BINARY=${UV_BINARY:-$HERE/../../.venv/bin/uv}

note() { echo "docker_host: $*" >&2; }

have_packages() { command -v dockerd >/dev/null && command -v debootstrap >/dev/null && command -v docker-registry >/dev/null; }

if ! have_packages; then
    if [[ $(id -u) != 0 ]]; then
        note "dockerd, debootstrap or docker-registry missing and not root: the Docker tests cannot run."
        exit 0
    fi
    note "installing docker.io, debootstrap and docker-registry"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq docker.io debootstrap docker-registry >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    if [[ $(id -u) != 0 ]]; then
        note "no Docker daemon reachable and not root to start one: the Docker tests cannot run."
        exit 0
    fi
    note "starting dockerd (log: /var/log/dockerd.log)"
    # Its own session: it outlives make and is not hit by the test run's Ctrl-C.
    setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { note "dockerd did not start: see /var/log/dockerd.log"; exit 1; }
fi

is_current() { [[ $(docker image inspect --format '{{ index .Config.Labels "stand-in" }}' "$1" 2>/dev/null) == "$STAND_IN" ]]; }

if ! is_current "$PYTHON_TAG"; then
    note "building the stand-in $PYTHON_TAG (debootstrap, about a minute, once per machine)"
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
        bookworm "$rootfs" >/dev/null
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL stand-in=$STAND_IN" \
        --change 'CMD ["python3"]' \
        - "$PYTHON_TAG" >/dev/null
fi

if ! is_current "$UV_TAG"; then
    note "building the stand-in $UV_TAG from $UV_BINARY"
    context=$(mktemp -d)
    cp "$UV_BINARY" "$context/uv"
    printf 'FROM scratch\nCOPY uv /uv\nLABEL stand-in=%s\n' "$STAND_IN" >"$context/Dockerfile"
    docker build --quiet --tag "$UV_TAG" "$context" >/dev/null
    rm -rf "$context"
fi
