#!/usr/bin/env bash
# Build the operator image without a registry: a Debian base made with mmdebstrap from Debian's
# packages, the project's wheel and its pinned dependencies from PyPI (scripts/image-constraints.txt),
# assembled by podman from the Containerfile. The result is cached as an archive in
# ~/.cache/llmscale/image-<version>-<inputs hash>.tar, keyed on everything that goes into it, and
# loaded into podman's store as localhost/llmscale:<version>.
#   scripts/build-image.sh            build (or load the cached archive), check, report the size
#   scripts/build-image.sh --print    print the cached archive's path (building it if needed)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${LLMSCALE_CACHE:-$HOME/.cache/llmscale}
VENV=${LLMSCALE_VENV:-$ROOT/.venv}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates,tzdata
# Essential packages only (no apt, no perl) plus Python; no docs, manuals or translations.
BASE_RECIPE=(--variant=essential --format=tar
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*')
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}  # 2026-01-01: fixed file times in the base
export SOURCE_DATE_EPOCH

say() { printf '[image] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

mkdir -p "$CACHE/build-logs"
need=()
for tool in podman runc mmdebstrap newuidmap; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  say "installing podman, runc, mmdebstrap, uidmap from Debian (missing: ${need[*]})"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      podman runc mmdebstrap uidmap containernetworking-plugins fuse-overlayfs; } >"$CACHE/build-logs/podman-apt.log" 2>&1 \
    || die "apt-get install podman runc mmdebstrap failed (log: $CACHE/build-logs/podman-apt.log)"
fi
[ -x "$VENV/bin/python" ] || die "no Python env at $VENV: run scripts/setup.sh python first"

# crun (podman's default) refuses hybrid cgroups, and the default ulimits fail with EPERM here.
PODMAN=(podman --runtime /usr/sbin/runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

version=$("$VENV/bin/python" -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])')
mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

# Everything that decides the image's content, hashed: the key of the cached archive.
inputs=$(cd "$ROOT" && { echo "$SUITE $BASE_PACKAGES ${BASE_RECIPE[*]} $SOURCE_DATE_EPOCH"; cat Containerfile scripts/image-constraints.txt pyproject.toml README.md;
                         find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' | LC_ALL=C sort | xargs sha256sum; } \
         | sha256sum | cut -c1-12)
archive="$CACHE/image-$version-$inputs.tar"
image="localhost/llmscale:$version"

if [ ! -f "$archive" ]; then
  base="$CACHE/debian-$SUITE-python3-$(echo "$BASE_PACKAGES ${BASE_RECIPE[*]} $SOURCE_DATE_EPOCH" | sha256sum | cut -c1-8).tar"
  if [ ! -f "$base" ]; then
    say "debian $SUITE base with $BASE_PACKAGES (mmdebstrap from $mirror)"
    mmdebstrap "${BASE_RECIPE[@]}" --include="$BASE_PACKAGES" \
      "$SUITE" "$base.tmp" "$mirror" >"$CACHE/build-logs/image-base.log" 2>&1 \
      || die "mmdebstrap failed (log: $CACHE/build-logs/image-base.log)"
    mv "$base.tmp" "$base"
  fi
  base_ref="localhost/llmscale-base:$SUITE-$(basename "$base" .tar | sed 's/.*-//')"
  "${PODMAN[@]}" image exists "$base_ref" || "${PODMAN[@]}" import --quiet "$base" "$base_ref" >/dev/null

  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  say "wheels: llmscale $version and its pinned dependencies"
  { "$VENV/bin/pip" wheel --quiet --no-deps -w "$ctx/wheels" "$ROOT" \
    && "$VENV/bin/pip" download --quiet --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
         --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
         -d "$ctx/wheels" -r "$ROOT/scripts/image-constraints.txt"; } >"$CACHE/build-logs/image-wheels.log" 2>&1 \
    || die "pip wheel/download failed (log: $CACHE/build-logs/image-wheels.log)"
  cp "$ROOT/Containerfile" "$ctx/"
  say "podman build $image"
  "${PODMAN[@]}" build --quiet "${LIMITS[@]}" --network none --build-arg BASE="$base_ref" --build-arg VERSION="$version" --build-arg INPUTS="$inputs" \
    --timestamp "$SOURCE_DATE_EPOCH" -t "$image" "$ctx" >"$CACHE/build-logs/image-build.log" 2>&1 \
    || die "podman build failed (log: $CACHE/build-logs/image-build.log)"
  "${PODMAN[@]}" save --quiet -o "$archive.tmp" "$image" && mv "$archive.tmp" "$archive"
  # Keep the two newest archives (each checkout's image differs): the cache must not grow for ever.
  ls -t "$CACHE"/image-*.tar 2>/dev/null | tail -n +3 | xargs -r rm -f
else
  "${PODMAN[@]}" image exists "$image" && [ "$("${PODMAN[@]}" image inspect -f '{{index .Labels "io.llmscale.inputs"}}' "$image" 2>/dev/null)" = "$inputs" ] \
    || "${PODMAN[@]}" load --quiet -i "$archive" >/dev/null
fi

if [ "${1:-}" = --print ]; then
  echo "$archive"
  exit 0
fi

# What the chart asks of it: not root, a read-only root filesystem, no capabilities.
got=$("${PODMAN[@]}" run --rm "${LIMITS[@]}" --network none --read-only --user 65532:65532 --cap-drop ALL \
        --security-opt no-new-privileges "$image" --version) || die "the image does not run: $got"
[ "$got" = "llmscale $version" ] || die "llmscale --version inside the image says '$got', expected 'llmscale $version'"
size=$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$image")
say "$image: $got, $((size / 1024 / 1024)) MiB, archive $archive"
