#!/usr/bin/env bash
# System tools the suite runs besides Docker (tests/e2e/docker_host.sh), installed by `make test`
# as root when missing: rsync, which gitlab-ci-local copies a repository with before a job.
set -euo pipefail

missing=()
command -v rsync >/dev/null || missing+=(rsync)
[[ ${#missing[@]} == 0 ]] && exit 0
if [[ $(id -u) != 0 ]]; then
    echo "host_tools: ${missing[*]} missing and not root: install it, or the tests that need it fail." >&2
    exit 0
fi
echo "host_tools: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
