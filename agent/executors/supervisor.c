/* The native supervisor beside each workload, which also writes its logs (docs/design.md, "Workloads").
 *
 * usage: supervisor supervise RUN_DIR ATTEMPT NOFILE MAX_BYTES KEEP STDOUT_AT STDERR_AT COMMAND [ARG...]
 *
 * The contract of supervisor.sh (its header; the shell supervisor stays the fallback where no C compiler
 * is found), without its WRITER argument: one process does both jobs. Its files are format 2
 * (docs/upgrade.md):
 * - the workload runs in its own session and process group, stdin /dev/null, every signal disposition
 *   default and the mask empty, the soft RLIMIT_NOFILE set to NOFILE ("unlimited" or a number), in the
 *   cgroup named by RUN_DIR/cgroup-ATTEMPT if that file names one (joined before the exec: 125 if it
 *   cannot be, so the workload never runs uncontained); COMMAND is looked up with the PATH of the
 *   environment the supervisor was given, 127 if it is not found, 126 if it cannot be run (as env(1));
 * - the first line on stdout is the workload's pid, then stdout is /dev/null; RUN_DIR/pid-ATTEMPT is
 *   written after it;
 * - the workload's output comes through two pipes (made before the fork: the workload has its write ends
 *   from birth, so there are no FIFOs in the run directory) and is copied into segments
 *   RUN_DIR/<stream>.<OFFSET>.<ATTEMPT>.log of exactly MAX_BYTES bytes (OFFSET: 20 digits, where the
 *   segment's first byte sits in the stream's whole log, STDOUT_AT/STDERR_AT for the first). Before each
 *   new segment the oldest of that stream, whatever attempt wrote them, are removed until at most KEEP
 *   remain: a stream never holds more than MAX_BYTES x (1 + KEEP). Every byte read is written at once
 *   with write(2), whatever it is (no line buffering, NUL bytes and a last line without a newline kept);
 * - once the workload has exited, at most END_WAIT_MS for the ends of its streams (a process the
 *   workload left behind may hold them open: then a forked child goes on copying alone, to the end);
 *   then RUN_DIR/exit-ATTEMPT, atomically (temp file, fsync, rename, fsync of the directory): the
 *   workload's exit status, 128 + n for death by signal n, which the supervisor also exits with;
 * - the supervisor ignores HUP INT TERM QUIT PIPE USR1 USR2 (a stray signal must not take the exit status
 *   with it), from just after the fork on: the workload never starts with them ignored.
 * Exit status before the workload ran: 2 for a wrong usage (the agent's build check runs it with no
 * arguments), 1 if it could not be started (no pid on stdout then; said on stderr, supervisor.log).
 *
 * Why it is hand-written: nothing off the shelf does this. Process supervisors (daemontools, runit,
 * s6-supervise) restart a service and keep no exit status in a file the next agent reads; init shims
 * (tini, dumb-init) reap but neither report a pid nor record an exit; log writers that rotate by size
 * (s6-log, svlogd) are line loggers (a partial line reaches the disk only with its newline, the last one
 * without a newline was lost) that know no offsets, and logrotate copies and truncates, so a stream
 * overshoots its bound and loses what is written during the copy. The shell supervisor does it with
 * dash, setsid, env and a writer process of its own: about 11 ms of CPU per workload on a small VM,
 * against one static exec, one fork and the workload's exec here.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define END_WAIT_MS 2000 /* after the workload's exit, for the ends of its streams */
#define POLL_MS 100      /* without a signalfd (out of descriptors): how often the workload is looked at */
#define OFFSET_DIGITS 20
#define USAGE_EXIT 2
#define START_FAILED 1
#define CGROUP_FAILED 125 /* as supervisor.sh: the workload never runs outside its cgroup */
#define NOT_EXECUTABLE 126
#define NOT_FOUND 127
/* One read empties a full pipe (64 KiB by default). In .bss: a page is only resident once a read has
 * reached it, so a quiet workload's supervisor never pays for it. */
static char buffer[65536];

struct stream {
	const char *name;
	int in;                  /* the read end of its pipe, -1 once at its end (or given up) */
	int out;                 /* the segment being written, -1 until its first byte comes */
	unsigned long long at;   /* the offset of that segment's first byte */
	unsigned long long full; /* bytes in that segment */
};

static const char *run_dir, *attempt;
static unsigned long long max_bytes;
static unsigned long long keep;
static const int ignored[] = {SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2};

/* What the supervisor has to say goes to RUN_DIR/supervisor.log, created only then (the agent gives it
 * /dev/null as stderr): a file less to create per workload, where creating one costs more than the rest of
 * the spawn on a busy ext4. */
static void complain(const char *format, ...) {
	static int log_open;
	int error = errno, fd;
	va_list arguments;
	if (!log_open) {
		char path[PATH_MAX];
		log_open = 1;
		if (snprintf(path, sizeof path, "%s/supervisor.log", run_dir) < PATH_MAX) {
			fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
			if (fd >= 0 && fd != 2) {
				dup2(fd, 2);
				close(fd);
			}
		}
	}
	errno = error;
	va_start(arguments, format);
	vfprintf(stderr, format, arguments);
	va_end(arguments);
}

static void say(const char *what, const char *name) {
	complain("supervisor: %s %s/%s: %s\n", what, run_dir, name, strerror(errno));
}

/* Every file is named through the run directory's path, never relative to a descriptor or the working
 * directory: once the agent has renamed the directory away to remove it (ProcessExecutor.remove), a
 * writer still running (one left to a process the workload left behind) can add nothing to it. False if
 * the name does not fit. */
static int in_run_dir(char *path, const char *name) {
	if (snprintf(path, PATH_MAX, "%s/%s", run_dir, name) >= PATH_MAX) {
		errno = ENAMETOOLONG;
		say("cannot name", name);
		return 0;
	}
	return 1;
}

static int number(const char *text, unsigned long long *value) {
	char *end;
	if (*text < '0' || *text > '9')
		return 0;
	errno = 0;
	*value = strtoull(text, &end, 10);
	return errno == 0 && *end == '\0';
}

/* A segment of `stream`: "<stream>.<20 digits>.<digits>.log". Names sort as the segments do, oldest
 * first (the offset is zero-padded), as the shell's glob lists them. */
static int is_segment(const char *name, const char *stream) {
	size_t length = strlen(stream), digits;
	if (strncmp(name, stream, length) != 0 || name[length] != '.')
		return 0;
	name += length + 1;
	for (digits = 0; name[digits] >= '0' && name[digits] <= '9'; digits++)
		;
	if (digits != OFFSET_DIGITS || name[digits] != '.')
		return 0;
	name += digits + 1;
	for (digits = 0; name[digits] >= '0' && name[digits] <= '9'; digits++)
		;
	return digits > 0 && strcmp(name + digits, ".log") == 0;
}

/* Removes the oldest segments of the stream until at most `keep` remain: one pass to count and find the
 * oldest, one more per removal (a few dozen entries at most: no sorting, no allocation). */
static int prune(const struct stream *s) {
	char oldest[NAME_MAX + 1], path[PATH_MAX];
	for (;;) {
		unsigned long long count = 0;
		struct dirent *entry;
		DIR *dir = opendir(run_dir);
		if (dir == NULL) {
			say("cannot list", "");
			return 0;
		}
		while ((errno = 0, entry = readdir(dir)) != NULL) {
			if (!is_segment(entry->d_name, s->name))
				continue;
			if (count++ == 0 || strcmp(entry->d_name, oldest) < 0)
				snprintf(oldest, sizeof oldest, "%s", entry->d_name);
		}
		if (errno != 0) {
			say("cannot list", "");
			closedir(dir);
			return 0;
		}
		closedir(dir);
		if (count <= keep)
			return 1;
		if (!in_run_dir(path, oldest))
			return 0;
		if (unlink(path) != 0 && errno != ENOENT) {
			say("cannot remove", oldest);
			return 0;
		}
	}
}

/* RUN_DIR/format ("2"), with the first segment: readers need it only where there is a log to read (a
 * run directory without one reads the same in every format), and a quiet workload then costs no file for
 * it (a file creation is the dearest step of a spawn on a busy ext4). */
static void mark_format(void) {
	static int marked;
	char path[PATH_MAX];
	int fd;
	if (marked)
		return;
	marked = 1;
	if (!in_run_dir(path, "format"))
		return;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (fd < 0) {
		if (errno != EEXIST)
			say("cannot create", "format");
		return;
	}
	if (write(fd, "2\n", 2) != 2)
		say("cannot write", "format");
	close(fd);
}

static int open_segment(struct stream *s) {
	char name[NAME_MAX + 1], path[PATH_MAX];
	s->out = -1;
	mark_format();
	if (!prune(s))
		return 0;
	snprintf(name, sizeof name, "%s.%0*llu.%s.log", s->name, OFFSET_DIGITS, s->at, attempt);
	if (!in_run_dir(path, name))
		return 0;
	/* As the shell's `>` makes it: truncated (a spawn of this attempt cut short may have left one), mode
	 * 0666 less the umask. */
	s->out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (s->out < 0) {
		say("cannot create", name);
		return 0;
	}
	s->full = 0;
	return 1;
}

/* A stream whose segments cannot be written is given up: its pipe is closed, so the workload's next
 * write to it fails (EPIPE) as it did when the shell's writer died, and the supervisor goes on to record
 * the exit. */
static void give_up(struct stream *s) {
	if (s->in >= 0)
		close(s->in);
	if (s->out >= 0)
		close(s->out);
	s->in = s->out = -1;
}

static int write_all(struct stream *s, const char *data, size_t size) {
	while (size > 0) {
		ssize_t done = write(s->out, data, size);
		if (done < 0) {
			if (errno == EINTR)
				continue;
			say("cannot write a segment of", s->name);
			return 0;
		}
		data += done;
		size -= (size_t)done;
	}
	return 1;
}

/* One read from the stream's pipe, written out at once; never across a segment's end. */
static void copy(struct stream *s) {
	unsigned long long room = max_bytes - s->full;
	ssize_t got = read(s->in, buffer, room < sizeof buffer ? (size_t)room : sizeof buffer);
	if (got > 0 && s->out < 0 && !open_segment(s)) {
		give_up(s);
		return;
	}
	if (got < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return; /* nothing to read yet, but a writer holds the pipe open */
		say("cannot read", s->name);
		give_up(s);
		return;
	}
	if (got == 0) { /* no process holds the pipe open any more: the end of the stream */
		give_up(s);
		return;
	}
	if (!write_all(s, buffer, (size_t)got)) {
		give_up(s);
		return;
	}
	s->full += (unsigned long long)got;
	if (s->full == max_bytes) {
		close(s->out);
		s->at += max_bytes;
		if (!open_segment(s))
			give_up(s);
	}
}

static long long now_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The first line of RUN_DIR/cgroup-ATTEMPT into `cgroup` ("" without one); false if it cannot be read. */
static int recorded_cgroup(char *cgroup) {
	char name[NAME_MAX + 1], path[PATH_MAX];
	ssize_t got;
	int fd;
	cgroup[0] = '\0';
	snprintf(name, sizeof name, "cgroup-%s", attempt);
	if (!in_run_dir(path, name))
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 1;
		say("cannot read", name);
		return 0;
	}
	got = read(fd, cgroup, PATH_MAX - 1);
	close(fd);
	if (got < 0) {
		say("cannot read", name);
		return 0;
	}
	cgroup[got] = '\0';
	cgroup[strcspn(cgroup, "\n")] = '\0';
	return 1;
}

/* In the forked child: becomes the workload, or exits with the status env(1) or supervisor.sh would. Its
 * stdin, stdout and stderr are set first, so what goes wrong is said on the workload's own stderr. */
static void become_workload(char **command, const char *procs, rlim_t nofile, int out, int err) {
	struct rlimit limit;
	struct sigaction dfl;
	sigset_t none;
	int fd, i, null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		_exit(START_FAILED);
	if (procs[0] != '\0') {
		/* "0" names the writer: the workload joins before its exec, so all it ever starts is contained. */
		fd = open(procs, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "0", 1) != 1) {
			fprintf(stderr, "supervisor: cannot join the cgroup %s: %s\n", procs, strerror(errno));
			_exit(CGROUP_FAILED);
		}
		close(fd);
	}
	setsid(); /* the supervisor leads its own session, so its child is no group leader: this cannot fail */
	/* Lowering a soft limit cannot fail; if it did, the workload would get the agent's (as with ulimit). */
	if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
		limit.rlim_cur = nofile;
		setrlimit(RLIMIT_NOFILE, &limit);
	}
	/* Every disposition default before the mask is emptied: a signal sent since the fork was held
	 * pending (blocked signals are never discarded, even where ignored) and now acts as it should. */
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	for (i = 1; i < NSIG; i++)
		sigaction(i, &dfl, NULL); /* EINVAL for KILL, STOP and the C library's own: nothing to reset */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execvp(command[0], command);
	i = errno == ENOENT ? NOT_FOUND : NOT_EXECUTABLE;
	fprintf(stderr, "supervisor: '%s': %s\n", command[0], strerror(errno));
	_exit(i);
}

/* exit-ATTEMPT, atomically: the agent reads it as "the attempt's output is complete". */
static void record_exit(int code) {
	char name[NAME_MAX + 1], temporary[PATH_MAX], final[PATH_MAX], text[16];
	int fd, length = snprintf(text, sizeof text, "%d\n", code);
	snprintf(name, sizeof name, "exit-%s.tmp", attempt);
	if (!in_run_dir(temporary, name))
		return;
	snprintf(name, sizeof name, "exit-%s", attempt);
	if (!in_run_dir(final, name))
		return;
	fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd < 0 || write(fd, text, (size_t)length) != length || fsync(fd) != 0 || close(fd) != 0) {
		say("cannot write", name);
		return;
	}
	if (rename(temporary, final) != 0) {
		say("cannot rename into", name);
		return;
	}
	fd = open(run_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) != 0)
		say("cannot sync", "");
	if (fd >= 0)
		close(fd);
}

static void write_pid_file(pid_t pid) {
	char name[NAME_MAX + 1], path[PATH_MAX], text[24];
	int fd, length = snprintf(text, sizeof text, "%d\n", (int)pid);
	snprintf(name, sizeof name, "pid-%s", attempt);
	if (!in_run_dir(path, name))
		return;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd < 0 || write(fd, text, (size_t)length) != length)
		say("cannot write", name);
	if (fd >= 0)
		close(fd);
}

/* Reaps the workload if it has exited: true then, with its status in `code`. */
static int reaped(pid_t child, int *code) {
	int status;
	pid_t done;
	do
		done = waitpid(child, &status, WNOHANG);
	while (done < 0 && errno == EINTR);
	if (done != child)
		return 0;
	*code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
	return 1;
}

static int supervise(int argc, char **argv) {
	struct stream streams[2] = {{"stdout", -1, -1, 0, 0}, {"stderr", -1, -1, 0, 0}};
	enum { RUNNING, ENDED, ALONE } workload = RUNNING; /* ALONE: let go of the supervisor, no bound left */
	unsigned long long attempt_number, nofile = 0;
	long long deadline = 0; /* once ENDED: when the exit is recorded, whatever the streams */
	char cgroup[PATH_MAX], procs[PATH_MAX], line[24];
	int pipes[2][2], code = 0, chld, i, length;
	struct sigaction ignore;
	sigset_t all, only_chld;
	pid_t child;

	if (argc < 10 || !number(argv[3], &attempt_number) || !number(argv[5], &max_bytes) || max_bytes == 0 ||
	    !number(argv[6], &keep) || !number(argv[7], &streams[0].at) || !number(argv[8], &streams[1].at) ||
	    (strcmp(argv[4], "unlimited") != 0 && !number(argv[4], &nofile)))
		return -1;
	run_dir = argv[2];
	attempt = argv[3];
	if (strcmp(argv[4], "unlimited") == 0)
		nofile = RLIM_INFINITY;
	if (!recorded_cgroup(cgroup))
		return START_FAILED;
	procs[0] = '\0';
	if (cgroup[0] != '\0' && snprintf(procs, sizeof procs, "%s/cgroup.procs", cgroup) >= PATH_MAX) {
		complain("supervisor: the cgroup's path is too long: %s\n", cgroup);
		return START_FAILED;
	}
	for (i = 0; i < 2; i++) {
		if (pipe2(pipes[i], O_CLOEXEC) != 0) {
			say("cannot make a pipe for", streams[i].name);
			return START_FAILED;
		}
		/* Only the supervisor's end: the workload's writes block on a full pipe as they would on a file. */
		fcntl(pipes[i][0], F_SETFL, O_NONBLOCK);
		streams[i].in = pipes[i][0];
	}
	/* Every signal held from here to the child's exec and the supervisor's own dispositions: a stop sent
	 * as soon as the pid is known reaches the workload with its default action, and cannot kill the
	 * supervisor before it ignores it. */
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	child = fork();
	if (child < 0) {
		complain("supervisor: cannot start the workload: %s\n", strerror(errno));
		return START_FAILED;
	}
	if (child == 0)
		become_workload(argv + 9, procs, (rlim_t)nofile, pipes[0][1], pipes[1][1]);
	close(pipes[0][1]);
	close(pipes[1][1]);
	memset(&ignore, 0, sizeof ignore);
	ignore.sa_handler = SIG_IGN;
	for (i = 0; i < (int)(sizeof ignored / sizeof ignored[0]); i++)
		sigaction(ignored[i], &ignore, NULL);
	/* SIGCHLD stays blocked, read from a signalfd: the workload's end wakes the same poll as its output. */
	sigemptyset(&only_chld);
	sigaddset(&only_chld, SIGCHLD);
	chld = signalfd(-1, &only_chld, SFD_NONBLOCK | SFD_CLOEXEC);
	sigprocmask(SIG_SETMASK, &only_chld, NULL);

	length = snprintf(line, sizeof line, "%d\n", (int)child);
	if (write(1, line, (size_t)length) != length)
		complain("supervisor: cannot report the pid %d: %s\n", (int)child, strerror(errno));
	i = open("/dev/null", O_WRONLY);
	if (i >= 0) {
		dup2(i, 1);
		close(i);
	}
	/* After the pid went to the agent: a file costs half a millisecond, and the agent only needs this one
	 * if it dies before recording the pid, which takes it longer than this. */
	write_pid_file(child);
	/* A segment is made with the stream's first byte, so a quiet stream costs no file (a quiet attempt
	 * has no segment: readers then find the stream empty). Except beside a format-1 log (an earlier
	 * attempt's, from an agent before format 2): readers take that log for an attempt that has no
	 * segment of its own (agent/streams.py, of_attempt), so the attempt gets one at once, empty if need be. */
	for (i = 0; i < 2; i++) {
		char live[16], path[PATH_MAX];
		snprintf(live, sizeof live, "%s.log", streams[i].name);
		if (in_run_dir(path, live) && access(path, F_OK) == 0 && !open_segment(&streams[i]))
			give_up(&streams[i]);
	}

	for (;;) {
		struct pollfd fds[3];
		int count = 0, timeout = -1;
		for (i = 0; i < 2; i++)
			if (streams[i].in >= 0)
				fds[count++] = (struct pollfd){.fd = streams[i].in, .events = POLLIN};
		if (workload == RUNNING && chld >= 0)
			fds[count++] = (struct pollfd){.fd = chld, .events = POLLIN};
		else if (workload == RUNNING)
			timeout = POLL_MS;
		else if (count == 0)
			break; /* both streams at their end */
		else if (workload == ENDED) {
			long long left = deadline - now_ms();
			timeout = left > 0 ? (int)left : 0;
		}
		if (poll(fds, (nfds_t)count, timeout) < 0) {
			if (errno != EINTR) /* not expected (ENOMEM): the loop tries again, the workload is still reaped */
				complain("supervisor: cannot poll: %s\n", strerror(errno));
			for (i = 0; i < count; i++)
				fds[i].revents = 0;
		}
		if (workload == RUNNING && (chld < 0 || fds[count - 1].revents != 0)) {
			struct signalfd_siginfo info;
			while (chld >= 0 && read(chld, &info, sizeof info) > 0)
				;
			if (reaped(child, &code)) {
				workload = ENDED;
				deadline = now_ms() + END_WAIT_MS;
			}
		}
		for (i = 0, count = 0; i < 2; i++)
			if (streams[i].in >= 0 && fds[count++].revents != 0)
				copy(&streams[i]);
		if (workload == ENDED && now_ms() >= deadline && (streams[0].in >= 0 || streams[1].in >= 0)) {
			/* Held open by what the workload left behind: the child goes on alone. If there can be no
			 * child (the node's process limit), the exit is recorded and the rest of the stream is lost. */
			pid_t copier = fork();
			if (copier != 0) {
				if (copier < 0)
					complain("supervisor: cannot go on copying in the background: %s\n", strerror(errno));
				break;
			}
			workload = ALONE;
		}
	}
	if (workload == ALONE)
		return 0;
	record_exit(code);
	return code;
}

int main(int argc, char **argv) {
	int code = argc > 1 && strcmp(argv[1], "supervise") == 0 ? supervise(argc, argv) : -1;
	if (code < 0) {
		fprintf(stderr, "usage: supervisor supervise RUN_DIR ATTEMPT NOFILE MAX_BYTES KEEP STDOUT_AT STDERR_AT "
		                "COMMAND [ARG...]\n");
		return USAGE_EXIT;
	}
	return code;
}
