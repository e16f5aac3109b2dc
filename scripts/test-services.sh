#!/usr/bin/env bash
# Install (Debian packages) and start what the end-to-end tests talk to: Redis, Orthanc, dcmtk,
# dicom3tools (dciodvfy), promtool (Prometheus rules), and the Triton server from the nvidia-pytriton wheel in its own venv.
# The tests start their own Orthanc and tritonserver processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v Orthanc >/dev/null || need+=(orthanc orthanc-dicomweb)
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)  # promtool: alert rule checks
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if ! redis-cli ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
if [ -x scripts/triton-env.sh ]; then
  scripts/triton-env.sh
fi
if [ -x scripts/viewer-env.sh ]; then scripts/viewer-env.sh; fi
