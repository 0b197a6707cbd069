#!/usr/bin/env bash
# Build a local Python 3.11 base image from Debian packages, for machines that cannot pull from a registry.
#
#   docker/build-base.sh [TAG]          # default tag: alexnet-serve-base:bookworm
#   docker build --build-arg BASE_IMAGE=alexnet-serve-base:bookworm -t alexnet-serve .
#
# The image is a debootstrap'd Debian (minbase + python3, python3-venv, ca-certificates) fed to
# `docker import`. The host's locally added CA certificates (what update-ca-certificates picked up from
# /usr/local/share/ca-certificates, plus any certificate dropped straight into /etc/ssl/certs) are
# trusted inside it, and pip is pointed at the system bundle, so `pip install` works behind a
# TLS-intercepting proxy exactly as it does on the host.
#
# Needs root, debootstrap and a reachable Debian mirror. Environment:
#   DOCKER          docker client command (default: docker; DOCKER_HOST is honoured as usual)
#   DEBIAN_SUITE    default: bookworm (its python3 is 3.11)
#   DEBIAN_MIRROR   default: http://deb.debian.org/debian
set -euo pipefail

tag=${1:-alexnet-serve-base:bookworm}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker_cmd=${DOCKER:-docker}

if [[ $(id -u) -ne 0 ]]; then
    echo "build-base.sh: debootstrap needs root; run it with sudo" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    echo "build-base.sh: debootstrap is missing; install it with: apt-get install debootstrap" >&2
    exit 1
}

rootfs=$(mktemp -d /var/tmp/alexnet-serve-base.XXXXXX)
cleanup() {
    # debootstrap mounts these inside the target; never let rm walk into the host's /proc or /sys.
    for mount_point in dev/pts dev proc sys; do
        if mountpoint -q "$rootfs/$mount_point"; then umount -l "$rootfs/$mount_point"; fi
    done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror"

# Locally added CAs: the tree update-ca-certificates reads, and stray PEM files that are not links
# into the distribution's bundle.
cert_dir="$rootfs/usr/local/share/ca-certificates/host"
mkdir -p "$cert_dir"
if [[ -d /usr/local/share/ca-certificates ]]; then
    find /usr/local/share/ca-certificates -type f -name '*.crt' -exec cp -t "$cert_dir" {} +
fi
find /etc/ssl/certs -maxdepth 1 -type f -name '*.pem' -print0 |
    while IFS= read -r -d '' pem; do cp "$pem" "$cert_dir/$(basename "${pem%.pem}").crt"; done
chroot "$rootfs" update-ca-certificates --fresh >/dev/null

# pip vendors certifi; make it (and anything using requests) trust the system bundle instead.
cat >"$rootfs/etc/pip.conf" <<'EOF'
[global]
cert = /etc/ssl/certs/ca-certificates.crt
timeout = 180
disable-pip-version-check = true
EOF

chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*

tar --numeric-owner -C "$rootfs" -c . |
    "$docker_cmd" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        --message "debootstrap $suite minbase + python3 + host CA certificates" \
        - "$tag" >/dev/null
echo "built $tag"
