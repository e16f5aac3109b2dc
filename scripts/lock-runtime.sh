#!/usr/bin/env bash
# Regenerate deploy/requirements.lock, the runtime image's dependency lock (deploy/Dockerfile installs it
# with `pip install --require-hashes`): pyproject's [project].dependencies (no extras: no torch), pinned
# to the versions installed in the project's tested .venv, with the sha256 of every file PyPI has for
# each pinned version (x86_64 and aarch64 wheels alike). Run after changing a runtime dependency or
# upgrading the .venv; needs uv (`pip install uv`) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-$(command -v uv || echo .venv/bin/uv)}"
constraints="$(mktemp --suffix=.txt)"
trap 'rm -f "$constraints"' EXIT
.venv/bin/pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' > "$constraints"
"$uv" pip compile pyproject.toml --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --constraints "$constraints" --annotation-style line \
  --custom-compile-command "scripts/lock-runtime.sh" --quiet -o deploy/requirements.lock
# the constraint file is a temporary copy of the .venv's versions: say so instead of naming it
sed -i -e "s#, -c ${constraints}##" -e "s#    \# via -c ${constraints}#    \# via (pinned to the tested .venv)#" \
  deploy/requirements.lock
