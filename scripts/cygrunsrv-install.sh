#!/bin/sh
# Run `filerexec serve SPOOL` as a Windows service under Cygwin, the seed's route.
#
#   scripts/cygrunsrv-install.sh SPOOL [SERVICE]    install and start (default SERVICE: filerexec)
#   scripts/cygrunsrv-install.sh --remove [SERVICE] stop and remove
#
# Run it from a Cygwin shell opened "as administrator". The service runs as the
# invoking user (cygrunsrv asks for that account's password), never as SYSTEM.
# Windows restarts it a minute after a crash. Stopping it sends SIGTERM to the
# daemon only: running jobs keep running and the next start adopts them.
# Python: $FILEREXEC_PYTHON, else the python3 on PATH (one with filerexec installed).
set -eu

if [ "${1:-}" = "--remove" ]; then
    name=${2:-filerexec}
    cygrunsrv --stop "$name" || true
    cygrunsrv --remove "$name"
    echo "removed service $name"
    exit 0
fi

spool=${1:?usage: $0 SPOOL [SERVICE] | $0 --remove [SERVICE]}
name=${2:-filerexec}
python=${FILEREXEC_PYTHON:-$(command -v python3)}
spool=$(cygpath -a "$spool")
user=$(whoami)

cygrunsrv --install "$name" \
    --path "$python" \
    --args "-m filerexec serve \"$spool\"" \
    --env "PYTHONUNBUFFERED=1" \
    --desc "filerexec: run jobs dropped into $spool" \
    --user "$user" \
    --termsig TERM \
    --shutdown
# Restart after a crash, as Restart=always does under systemd.
sc failure "$name" reset= 86400 actions= restart/60000/restart/60000/restart/60000
cygrunsrv --start "$name"
echo "installed and started service $name: $python -m filerexec serve $spool (as $user)"
