#!/bin/sh
# The image's entrypoint: settings are checked and the programs started by
# procs.entrypoint (supervisord, or setup alone); arguments run instead.
set -eu
cd /app
# Every open event stream is a file descriptor: the soft open-files limit goes up to the hard one
# (the container's `ulimits`/`--ulimit nofile`), which every program inherits. The server warns at
# start when it is below AYON_STREAM_MAX_SUBSCRIBERS.
# The image's sh (dash) has ulimit -n and -H.
# shellcheck disable=SC3045
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python -m procs.entrypoint "$@"
