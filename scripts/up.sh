#!/usr/bin/env bash
# Set up (idempotent) and run the platform's main job on embedded defaults:
# Prefect server + UI on 127.0.0.1:4200, nx-27017 on 27017, a worker, demo data, every
# deployment of prefect.yaml and a short first pipeline. Ctrl-C stops everything.
# Extra arguments go to `botai up` (e.g. --no-first-pipeline).
source "$(dirname "$0")/_env.sh"
exec .venv/bin/botai up "$@"
