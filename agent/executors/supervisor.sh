# The supervisor beside each workload: its real parent, it reaps the workload and records its exit status.
# It is POSIX sh (dash on Debian: about 150 KiB PSS while it waits) so that a workload costs almost
# nothing extra, and it outlives the agent: the agent can be restarted or killed and re-adopts the
# workload by reading the pid and exit files this script writes. See docs/design.md.
#
# usage: supervisor.sh RUN_DIR ATTEMPT COMMAND [ARG...]
#   RUN_DIR/stdout.log, RUN_DIR/stderr.log   the workload's output, appended across attempts
#   RUN_DIR/pid-ATTEMPT                       the workload's pid, once it runs in its own session
#   RUN_DIR/exit-ATTEMPT                      its exit status (128 + n for death by signal n), written
#                                             atomically (temp file, fsync, rename, fsync of the dir)
# The first line on stdout is the workload's pid; then stdout is closed.

# Stray signals must not kill the supervisor (it would take the exit status with it). The workload
# gets default dispositions back through `env --default-signal`.
trap '' HUP INT TERM QUIT PIPE USR1 USR2
d=$1
n=$2
shift 2
# setsid gives the workload its own session and process group, so the agent can signal the whole group
# without touching this supervisor. The pid is reported only after setsid, so a signal never misses.
setsid /bin/sh -c 'd=$1; n=$2; shift 2; echo $$ >"$d/pid-$n"; echo $$ >&3; exec 3>&-; exec env --default-signal -- "$@"' \
    workload "$d" "$n" "$@" 3>&1 </dev/null >>"$d/stdout.log" 2>>"$d/stderr.log" &
child=$!
exec >/dev/null
wait "$child"
code=$?
printf '%s\n' "$code" >"$d/exit-$n.tmp" && sync "$d/exit-$n.tmp" && mv -f "$d/exit-$n.tmp" "$d/exit-$n" && sync "$d"
exit "$code"
