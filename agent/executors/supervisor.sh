# The shell supervisor beside each workload: its real parent, it reaps the workload and records its exit
# status. The agent runs it where it could not build the native supervisor (supervisor.c, the same
# contract in one process: no compiler on the node); it is POSIX sh (dash on Debian) so that it runs
# everywhere, and it outlives the agent: the agent can be restarted or killed and re-adopts the
# workload by reading the pid and exit files this script writes. See docs/design.md.
#
# Its files are format 2 of a contract between agent versions (docs/upgrade.md): change them only as it says.
#
# usage: supervisor.sh RUN_DIR ATTEMPT NOFILE MAX_BYTES KEEP STDOUT_AT STDERR_AT COMMAND [ARG...]
#   NOFILE                                    the soft open-files limit the workload gets (the agent's own
#                                             as it was started: the agent raises its own, agent/open_files.py)
#   RUN_DIR/stdout.fifo, RUN_DIR/stderr.fifo  made by the agent: the workload writes its output into them
#   RUN_DIR/stdout.<OFFSET>.<ATTEMPT>.log      the output, in segments of MAX_BYTES, written by writers
#   RUN_DIR/stderr.<OFFSET>.<ATTEMPT>.log      beside the supervisor (OFFSET: 20 digits, where the segment
#                                              starts in the stream's whole log, STDOUT_AT/STDERR_AT for
#                                              the first; at most KEEP full segments and the one written)
#   RUN_DIR/pid-ATTEMPT                       the workload's pid
#   RUN_DIR/exit-ATTEMPT                      its exit status (128 + n for death by signal n), written
#                                             atomically (temp file, fsync, rename, fsync of the dir)
#   RUN_DIR/cgroup-ATTEMPT                    read, if the agent wrote it: the directory of the attempt's
#                                             cgroup, which the workload joins before it execs
# The first line on stdout is the workload's pid; then stdout is closed.

d=$1
n=$2
ulimit -S -n "$3" || :  # lowering a soft limit cannot fail; if it did, the workload would get the agent's
max=$4
keep=$5
out_at=$6
err_at=$7
shift 7

# The log writer of one stream (docs/design.md, "Workload logs"): copies the FIFO into segments of exactly
# $max bytes with head, which writes what it reads at once, whatever the bytes (no line buffering); before
# each new segment the oldest are removed so that at most $keep full ones remain. It outlives the agent,
# so the bound holds and the workload never blocks on its output while the agent is down. Offsets are
# zero-padded so that the glob lists segments oldest first.
segments() { # STREAM OFFSET
	# Its tools from the usual places first: the workload's spec may set a PATH of its own (this runs in
	# a subshell forked after the workload, so the workload keeps the PATH its spec asked for).
	PATH=/usr/bin:/bin:$PATH
	s=$1
	pos=$2
	while :; do
		set -- "$d/$s".*.log
		[ -e "$1" ] || set -- # no segment yet: the glob stayed a pattern
		while [ $# -gt "$keep" ]; do
			rm -f "$1"
			shift
		done
		f=$(printf '%s/%s.%020d.%s.log' "$d" "$s" "$pos" "$n")
		stdbuf -o0 head -c "$max" >"$f" || exit 1
		size=$(wc -c <"$f")
		[ "$size" -lt "$max" ] && exit 0 # the end of the stream: every writer has closed it
		pos=$((pos + size))
	done
}
cg=
[ -e "$d/cgroup-$n" ] && read -r cg <"$d/cgroup-$n"
# setsid gives the workload its own session and process group (without a cgroup the agent signals the
# whole group, never this supervisor); it execs in the same process, so $! is the workload's pid from the
# start. With a cgroup, the forked shell first moves itself into it ("0" names the writer: no fork, no
# exec more), so everything the workload ever starts is in it; this supervisor stays outside, to live
# through cgroup.kill and record the exit status. 125 if it cannot join: the workload never runs uncontained.
if [ -n "$cg" ]; then
	{ echo 0 >"$cg/cgroup.procs" || exit 125; exec setsid env --default-signal -- "$@"; } </dev/null >"$d/stdout.fifo" 2>"$d/stderr.fifo" &
else
	setsid env --default-signal -- "$@" </dev/null >"$d/stdout.fifo" 2>"$d/stderr.fifo" &
fi
child=$!
# Stray signals must not kill the supervisor (it would take the exit status with it). Set only after the
# fork, so the workload never starts with TERM ignored; `env --default-signal` also restores the INT and
# QUIT that sh ignores for a background job.
trap '' HUP INT TERM QUIT PIPE USR1 USR2
echo "$child"
exec >/dev/null
# The writers start after the pid went out (the workload's open of its FIFO waits for them meanwhile);
# they are outside the workload's cgroup and session, so a stop never kills them before they have written
# everything the workload wrote.
segments stdout "$out_at" <"$d/stdout.fifo" &
out=$!
segments stderr "$err_at" <"$d/stderr.fifo" &
err=$!
# After the pid went to the agent: creating a file costs half a millisecond, and the agent only needs this
# one if it dies before recording the pid, which takes it longer than this.
echo "$child" >"$d/pid-$n"
wait "$child"
code=$?
# The exit file tells the agent the attempt's output is complete: wait for the writers to reach the end of
# their streams first, but no more than 2 s (a process the workload left behind may hold them open; the
# writers then go on without the supervisor).
# A workload that died before it opened both FIFOs (killed right after the spawn) leaves a writer
# blocked in its open for ever. Opening a FIFO for reading and writing never blocks (Linux): that open
# lets such a writer's open return, and closing it at once gives the writer its end of stream. Done
# again after the wait below, for a writer that only reached its open later.
unblock() {
	exec 3<>"$d/stdout.fifo" 4<>"$d/stderr.fifo"
	exec 3>&- 4>&-
}
unblock
# The timer is a session of its own (setsid execs in the forked shell, so $! is its leader), killed
# whole: killing the shell alone would leave its sleep behind for the rest of the 2 s.
trap : USR2
setsid sh -c 'sleep 2 && kill -s USR2 "$1"' timer $$ 2>/dev/null &
timer=$!
wait "$out" "$err"
kill -s KILL -- "-$timer" 2>/dev/null || kill -s KILL "$timer" 2>/dev/null
unblock
rm -f "$d/stdout.fifo" "$d/stderr.fifo" # opened by all who use them: the names only get in a copy's way
printf '%s\n' "$code" >"$d/exit-$n.tmp" && sync "$d/exit-$n.tmp" && mv -f "$d/exit-$n.tmp" "$d/exit-$n" && sync "$d"
exit "$code"
