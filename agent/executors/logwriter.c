/* The native log writer beside each workload (docs/design.md, "Workload logs").
 *
 * usage: logwriter RUN_DIR ATTEMPT MAX_BYTES KEEP STDOUT_AT STDERR_AT WORKLOAD_PID
 *
 * Copies RUN_DIR/stdout.fifo and RUN_DIR/stderr.fifo into segments RUN_DIR/<stream>.<OFFSET>.<ATTEMPT>.log
 * of exactly MAX_BYTES bytes (OFFSET: 20 digits, where the segment's first byte sits in the stream's
 * whole log, STDOUT_AT/STDERR_AT for the first). Before each new segment it removes the oldest segments
 * of that stream, whatever attempt wrote them, until at most KEEP remain: so a stream never holds more
 * than MAX_BYTES x (1 + KEEP). Every byte read is written at once with write(2), whatever it is (no line
 * buffering, NUL bytes and a last line without a newline kept). These are format 2's files
 * (docs/upgrade.md), the same the supervisor's shell writers (`segments` in supervisor.sh) make.
 *
 * Exit status: 0 once both streams reached their end, 1 on an error (a segment that cannot be written,
 * a FIFO that cannot be read; said on stderr, the supervisor's log), 2 for a wrong usage. Once the
 * workload has exited it waits at most END_WAIT_MS for the ends of its streams; a process the workload
 * left behind may hold them open longer: the writer then forks and exits, so the supervisor can record
 * the exit, while its child goes on copying until the end.
 *
 * Why it is hand-written: no tool or library does this. Rotation by size with deletion, exact to the
 * byte, with the offset of every segment in its name and nothing added or lost, in one process: s6-log
 * and svlogd rotate by size but are line loggers (a partial line reaches the disk only with its newline,
 * the last one without a newline was lost) that know no offsets, and were slower (bench/logcap.py);
 * logrotate copies and truncates, so a stream overshoots its bound by what is written between two runs
 * and loses what is written during the copy; `head -c` per segment, run by dash (the shell writers),
 * is exact but costs two shells and two heads per workload, about 450 KiB of memory (bench/restart.py),
 * against a few tens of KiB here.
 *
 * How it learns the workload's end: a FIFO's end of stream comes when its last writer closes it; a
 * workload killed before it opened its FIFOs never opens them, so the writer also watches the workload
 * through a pidfd (the supervisor forks the workload before the writer and reaps it only after, so the
 * pid names the workload: for it to name another process the kernel would have to give out every other
 * pid meanwhile). Once the workload has exited, a FIFO that no process holds open is at its end.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define END_WAIT_MS 2000 /* after the workload's exit, for the ends of its streams */
#define POLL_MS 100      /* without a pidfd (Linux before 5.3): how often the workload is looked at */
#define OFFSET_DIGITS 20
/* One read empties a full pipe (64 KiB by default). In .bss: a page is only resident once a read has
 * reached it, so a quiet workload's writer never pays for it. */
static char buffer[65536];

struct stream {
	const char *name;
	int in;                  /* its FIFO, -1 once at its end */
	int out;                 /* the segment being written */
	unsigned long long at;   /* the offset of that segment's first byte */
	unsigned long long full; /* bytes in that segment */
};

static const char *run_dir, *attempt;
static unsigned long long max_bytes;
static unsigned long long keep;

static void fail(const char *what, const char *name) {
	fprintf(stderr, "logwriter: %s %s/%s: %s\n", what, run_dir, name, strerror(errno));
	exit(1);
}

/* Every file is named through the run directory's path, never relative to a descriptor or the working
 * directory: once the agent has renamed the directory away to remove it (ProcessExecutor.remove), a
 * writer still running (one left to a process the workload left behind) can add nothing to it. */
static const char *in_run_dir(char *path, const char *name) {
	if (snprintf(path, PATH_MAX, "%s/%s", run_dir, name) >= PATH_MAX) {
		errno = ENAMETOOLONG;
		fail("cannot name", name);
	}
	return path;
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
static void prune(const struct stream *s) {
	char oldest[NAME_MAX + 1], path[PATH_MAX];
	for (;;) {
		unsigned long long count = 0;
		struct dirent *entry;
		DIR *dir = opendir(run_dir);
		if (dir == NULL)
			fail("cannot list", "");
		while ((errno = 0, entry = readdir(dir)) != NULL) {
			if (!is_segment(entry->d_name, s->name))
				continue;
			if (count++ == 0 || strcmp(entry->d_name, oldest) < 0)
				snprintf(oldest, sizeof oldest, "%s", entry->d_name);
		}
		if (errno != 0)
			fail("cannot list", "");
		if (count <= keep) {
			closedir(dir);
			return;
		}
		closedir(dir);
		if (unlink(in_run_dir(path, oldest)) != 0 && errno != ENOENT)
			fail("cannot remove", oldest);
	}
}

static void open_segment(struct stream *s) {
	char name[NAME_MAX + 1], path[PATH_MAX];
	prune(s);
	snprintf(name, sizeof name, "%s.%0*llu.%s.log", s->name, OFFSET_DIGITS, s->at, attempt);
	/* As the shell's `>` makes it: truncated (a spawn of this attempt cut short may have left one), mode
	 * 0666 less the umask. */
	s->out = open(in_run_dir(path, name), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (s->out < 0)
		fail("cannot create", name);
	s->full = 0;
}

static void write_all(struct stream *s, const char *data, size_t size) {
	while (size > 0) {
		ssize_t done = write(s->out, data, size);
		if (done < 0) {
			if (errno == EINTR)
				continue;
			fail("cannot write a segment of", s->name);
		}
		data += done;
		size -= (size_t)done;
	}
}

/* One read from the stream's FIFO, written out at once; never across a segment's end. */
static void copy(struct stream *s) {
	unsigned long long room = max_bytes - s->full;
	ssize_t got = read(s->in, buffer, room < sizeof buffer ? (size_t)room : sizeof buffer);
	if (got < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return; /* nothing to read yet, but a writer holds the FIFO open */
		fail("cannot read", s->name);
	}
	if (got == 0) { /* no process holds the FIFO open any more: the end of the stream */
		close(s->in);
		close(s->out);
		s->in = -1;
		return;
	}
	write_all(s, buffer, (size_t)got);
	s->full += (unsigned long long)got;
	if (s->full == max_bytes) {
		close(s->out);
		s->at += max_bytes;
		open_segment(s);
	}
}

static long long now_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
	struct stream streams[2] = {{"stdout", -1, -1, 0, 0}, {"stderr", -1, -1, 0, 0}};
	unsigned long long pid, attempt_number;
	enum { RUNNING, ENDED, ALONE } workload = RUNNING; /* ALONE: let go of the supervisor, no bound left */
	long long deadline = 0;                             /* once ENDED: when the supervisor is let go */
	int pidfd, i;

	if (argc != 8 || !number(argv[2], &attempt_number) || !number(argv[3], &max_bytes) || max_bytes == 0 ||
	    !number(argv[4], &keep) || !number(argv[5], &streams[0].at) || !number(argv[6], &streams[1].at) ||
	    !number(argv[7], &pid) || pid == 0 || pid > INT_MAX) {
		fprintf(stderr, "usage: logwriter RUN_DIR ATTEMPT MAX_BYTES KEEP STDOUT_AT STDERR_AT WORKLOAD_PID\n");
		return 2;
	}
	run_dir = argv[1];
	attempt = argv[2];
	/* Opened without blocking: opening a FIFO for reading otherwise waits for a writer, which a workload
	 * killed before it opened its output never becomes. The workload's own open waits for this one. */
	for (i = 0; i < 2; i++) {
		char fifo[16], path[PATH_MAX];
		snprintf(fifo, sizeof fifo, "%s.fifo", streams[i].name);
		streams[i].in = open(in_run_dir(path, fifo), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (streams[i].in < 0)
			fail("cannot open", fifo);
		open_segment(&streams[i]);
	}
	/* Without a pidfd (ENOSYS before Linux 5.3, EMFILE) the workload is looked at every POLL_MS. */
	pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);

	for (;;) {
		struct pollfd fds[3];
		int count = 0, timeout = -1;
		for (i = 0; i < 2; i++)
			if (streams[i].in >= 0)
				fds[count++] = (struct pollfd){.fd = streams[i].in, .events = POLLIN};
		if (count == 0)
			return 0; /* both streams at their end */
		if (workload == RUNNING && pidfd < 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
			workload = ENDED; /* reaped by the supervisor (pidfd_open said ESRCH if it was at the start) */
			deadline = now_ms() + END_WAIT_MS;
		}
		if (workload == ENDED) {
			long long left = deadline - now_ms();
			timeout = left > 0 ? (int)left : 0;
		} else if (workload == RUNNING && pidfd >= 0) {
			fds[count++] = (struct pollfd){.fd = pidfd, .events = POLLIN};
		} else if (workload == RUNNING) {
			timeout = POLL_MS;
		}
		if (poll(fds, (nfds_t)count, timeout) < 0) {
			if (errno != EINTR)
				fail("cannot poll", "");
			for (i = 0; i < count; i++)
				fds[i].revents = 0;
		}
		if (workload == RUNNING && pidfd >= 0 && fds[count - 1].revents != 0) {
			workload = ENDED;
			deadline = now_ms() + END_WAIT_MS;
			close(pidfd);
		}
		/* What poll reported; once the workload has ended, every stream: one that no process holds open
		 * any more (a workload killed before it opened it, say) then reads as its end. */
		for (i = 0, count = 0; i < 2; i++)
			if (streams[i].in >= 0 && (fds[count++].revents != 0 || workload != RUNNING))
				copy(&streams[i]);
		if (workload == ENDED && now_ms() >= deadline && (streams[0].in >= 0 || streams[1].in >= 0)) {
			/* Held open by what the workload left behind: the child goes on alone. If there can be no
			 * child (the node's process limit), the exit is recorded and the rest of the stream is lost. */
			pid_t child = fork();
			if (child != 0) {
				if (child < 0)
					fprintf(stderr, "logwriter: cannot go on in the background: %s\n", strerror(errno));
				return 0;
			}
			workload = ALONE;
		}
	}
}
