#!/usr/bin/env bash
# Install what the viewer tests (tests/viewer) need: Debian chromium, Orthanc with DICOMweb, the pinned
# npm playwright-core (tests/viewer/package-lock.json), and OHIF's built viewer from `npm pack
# @ohif/app@3.13.2` (its dist/ only, ~204 MB, cached outside the repository in LLNM_VIEWER_CACHE,
# default ~/.cache/llnm-viewer). `npm install @ohif/app` is never run: it would pull the whole
# dependency tree of the OHIF monorepo. Idempotent: what is present is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
OHIF_VERSION=3.13.2
cache="${LLNM_VIEWER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llnm-viewer}"

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v Orthanc >/dev/null || need+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 \
  || need+=(orthanc-dicomweb)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ ! -d tests/viewer/node_modules/playwright-core ]; then
  (cd tests/viewer && npm ci --no-audit --no-fund --ignore-scripts)
fi

dist="$cache/ohif-$OHIF_VERSION/dist"
if [ ! -f "$dist/index.html" ]; then
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack "@ohif/app@$OHIF_VERSION" --silent >/dev/null)
  mkdir -p "$tmp/ohif"
  tar -xzf "$tmp/ohif-app-$OHIF_VERSION.tgz" -C "$tmp/ohif" --strip-components=1 package/dist
  rm -rf "$cache/ohif-$OHIF_VERSION"
  mv "$tmp/ohif" "$cache/ohif-$OHIF_VERSION"
fi
echo "viewer env: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), OHIF $OHIF_VERSION in $dist"
