#!/bin/sh
# The image's entrypoint: settings are checked and the programs started by
# procs.entrypoint (supervisord, or setup alone); arguments run instead.
set -eu
cd /app
exec python -m procs.entrypoint "$@"
