#!/usr/bin/env bash
# Make the base image the Dockerfile starts FROM when no image registry is reachable:
# a minimal Debian root filesystem from the apt mirror (debootstrap), imported as an image.
#   docker/base-image.sh [TAG] [MIRROR]      (as root; needs debootstrap and docker)
# TAG defaults to silo-base:bookworm; MIRROR to the first Debian mirror apt uses here.
set -euo pipefail
tag=${1:-silo-base:bookworm}
suite=bookworm  # the image's Python (3.11) must match the cp311 torch wheel
mirror=${2:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
    2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase "$suite" "$root" "$mirror" >&2
cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
SOURCES
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "$tag"
