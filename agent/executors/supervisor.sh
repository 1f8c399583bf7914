# The supervisor beside each workload: its real parent, it reaps the workload and records its exit status.
# It is POSIX sh (dash on Debian: about 150 KiB PSS while it waits) so that a workload costs almost
# nothing extra, and it outlives the agent: the agent can be restarted or killed and re-adopts the
# workload by reading the pid and exit files this script writes. See docs/design.md.
#
# Its files are format 1 of a contract between agent versions (docs/upgrade.md): change them only as it says.
#
# usage: supervisor.sh RUN_DIR ATTEMPT NOFILE COMMAND [ARG...]
#   NOFILE                                    the soft open-files limit the workload gets (the agent's own
#                                             as it was started: the agent raises its own, agent/open_files.py)
#   RUN_DIR/stdout.log, RUN_DIR/stderr.log   the workload's output, appended across attempts
#   RUN_DIR/pid-ATTEMPT                       the workload's pid
#   RUN_DIR/exit-ATTEMPT                      its exit status (128 + n for death by signal n), written
#                                             atomically (temp file, fsync, rename, fsync of the dir)
#   RUN_DIR/cgroup-ATTEMPT                    read, if the agent wrote it: the directory of the attempt's
#                                             cgroup, which the workload joins before it execs
# The first line on stdout is the workload's pid; then stdout is closed.

d=$1
n=$2
ulimit -S -n "$3" || :  # lowering a soft limit cannot fail; if it did, the workload would get the agent's
shift 3
cg=
[ -e "$d/cgroup-$n" ] && read -r cg <"$d/cgroup-$n"
# setsid gives the workload its own session and process group (without a cgroup the agent signals the
# whole group, never this supervisor); it execs in the same process, so $! is the workload's pid from the
# start. With a cgroup, the forked shell first moves itself into it ("0" names the writer: no fork, no
# exec more), so everything the workload ever starts is in it; this supervisor stays outside, to live
# through cgroup.kill and record the exit status. 125 if it cannot join: the workload never runs uncontained.
if [ -n "$cg" ]; then
	{ echo 0 >"$cg/cgroup.procs" || exit 125; exec setsid env --default-signal -- "$@"; } </dev/null >>"$d/stdout.log" 2>>"$d/stderr.log" &
else
	setsid env --default-signal -- "$@" </dev/null >>"$d/stdout.log" 2>>"$d/stderr.log" &
fi
child=$!
# Stray signals must not kill the supervisor (it would take the exit status with it). Set only after the
# fork, so the workload never starts with TERM ignored; `env --default-signal` also restores the INT and
# QUIT that sh ignores for a background job.
trap '' HUP INT TERM QUIT PIPE USR1 USR2
echo "$child"
exec >/dev/null
# After the pid went to the agent: creating a file costs half a millisecond, and the agent only needs this
# one if it dies before recording the pid, which takes it longer than this.
echo "$child" >"$d/pid-$n"
wait "$child"
code=$?
printf '%s\n' "$code" >"$d/exit-$n.tmp" && sync "$d/exit-$n.tmp" && mv -f "$d/exit-$n.tmp" "$d/exit-$n" && sync "$d"
exit "$code"
