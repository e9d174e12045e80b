#!/bin/sh
# /usr/bin/mpconvert: runs the application installed beside it (../lib/mpconvert) with the system's Node.js.
# exec: under systemd the daemon is the unit's main process (Type=notify, NotifyAccess=main).
here=$(dirname "$(readlink -f "$0")")
exec "${MPCONVERT_NODE:-node}" "$here/../lib/mpconvert/dist/src/cli/entry.js" "$@"
