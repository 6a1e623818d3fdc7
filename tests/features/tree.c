/*
 * A process tree: children with their own group, their own session, a group joined across the
 * tree, a grandchild, two zombies (one exited 7, one killed by SIGTERM) not reaped yet; a pipe
 * between processes with bytes in it, shared anonymous memory and a memfd written by one and
 * read by the other, a file whose open file description (and offset) two processes share.
 * After go every process checks its ids and its part, and reports through the pipe.
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "feature.h"

#define SHM 65536

static const char *dir;
static int res[2], data[2], ready[2], file_fd;
static volatile unsigned *shm, *mem;
static pid_t pid_a, pid_b, pid_c, pid_g, pid_z1, pid_z2;

/* One line to the root: "NAME ok" or "NAME FAIL: why" (a write below PIPE_BUF: atomic). */
static void report(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(const char *name, const char *fmt, ...)
{
	char why[200] = "", line[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	int n = snprintf(line, sizeof(line), "%s %s\n", name, why[0] ? why : "ok");
	if (write(res[1], line, (size_t)n) != n)
		_exit(3);
}

static void check_ids(const char *name, pid_t pid, pid_t ppid, pid_t pgid, pid_t sid, char *why,
                      size_t len)
{
	if (getpid() != pid || getppid() != ppid || getpgrp() != pgid || getsid(0) != sid)
		snprintf(why, len, "FAIL: %s: pid %d ppid %d pgid %d sid %d, expected %d %d %d %d",
		         name, getpid(), getppid(), getpgrp(), getsid(0), pid, ppid, pgid, sid);
}

static void signal_ready(void)
{
	if (write(ready[1], "r", 1) != 1)
		_exit(3);
}

static int child_g(void)
{
	char why[256] = "";
	pid_g = getpid();
	signal_ready();
	feature_wait_go(dir);
	check_ids("G", pid_g, pid_a, pid_a, 0, why, sizeof(why));
	report("G", "%s", why);
	return 0;
}

static int child_a(void)
{
	char why[256] = "", buf[16] = "";
	pid_a = getpid();
	setpgid(0, 0);
	pid_g = fork();
	if (pid_g == 0)
		_exit(child_g());
	signal_ready();
	feature_wait_go(dir);
	check_ids("A", pid_a, 1, pid_a, 0, why, sizeof(why));
	if (!why[0] && (read(data[0], buf, 5) != 5 || memcmp(buf, "hello", 5) != 0))
		snprintf(why, sizeof(why), "FAIL: A: the pipe from the root held \"%.5s\"", buf);
	if (!why[0] && (shm[0] != 0x1234 || mem[0] != 0x5678))
		snprintf(why, sizeof(why), "FAIL: A: shared memory holds %#x, memfd %#x", shm[0],
		         mem[0]);
	shm[1] = 0xabcd; /* the root must see it */
	mem[1] = 0xdcba;
	int st = 0;
	if (!why[0] && (waitpid(pid_g, &st, 0) != pid_g || !WIFEXITED(st) || WEXITSTATUS(st)))
		snprintf(why, sizeof(why), "FAIL: A: G ended with status %#x", st);
	report("A", "%s", why);
	return 0;
}

static int child_b(void)
{
	char why[256] = "", buf[4] = "";
	pid_b = getpid();
	setsid();
	signal_ready();
	feature_wait_go(dir);
	check_ids("B", pid_b, 1, pid_b, pid_b, why, sizeof(why));
	if (!why[0] && (read(file_fd, buf, 2) != 2 || memcmp(buf, "01", 2) != 0))
		snprintf(why, sizeof(why), "FAIL: B: read \"%.2s\" from the shared file", buf);
	report("B", "%s", why);
	return 0;
}

static int child_c(void)
{
	char why[256] = "";
	pid_c = getpid();
	if (setpgid(0, pid_a) < 0)
		_exit(4);
	signal_ready();
	feature_wait_go(dir);
	check_ids("C", pid_c, 1, pid_a, 0, why, sizeof(why));
	report("C", "%s", why);
	return 0;
}

static int exit7(void)
{
	return 7;
}

static int sigterm(void)
{
	signal(SIGTERM, SIG_DFL);
	raise(SIGTERM);
	return 5;
}

static pid_t spawn(int (*fn)(void))
{
	pid_t p = fork();
	if (p == 0)
		_exit(fn());
	if (p < 0) {
		printf("FAIL: fork: %s\n", strerror(errno));
		exit(1);
	}
	return p;
}

static void expect_status(pid_t p, const char *name, int want)
{
	int st = 0;
	if (waitpid(p, &st, 0) != p)
		feature_fail("waitpid %s (%d): %s", name, p, strerror(errno));
	else if (st != want)
		feature_fail("%s ended with status %#x, expected %#x", name, st, want);
}

int main(int argc, char **argv)
{
	dir = feature_dir(argc, argv);
	char path[PATH_MAX], buf[512];

	snprintf(path, sizeof(path), "%s/shared.txt", dir);
	file_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	int mfd = memfd_create("tree-mem", 0);
	shm = mmap(NULL, SHM, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (file_fd < 0 || mfd < 0 || ftruncate(mfd, SHM) < 0 || shm == MAP_FAILED ||
	    write(file_fd, "0123456789", 10) != 10 || lseek(file_fd, 0, SEEK_SET) != 0 ||
	    pipe(res) < 0 || pipe(data) < 0 || pipe(ready) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	mem = mmap(NULL, SHM, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (mem == MAP_FAILED) {
		printf("FAIL: mmap memfd: %s\n", strerror(errno));
		return 1;
	}
	shm[0] = 0x1234;
	mem[0] = 0x5678;
	pid_a = spawn(child_a);
	setpgid(pid_a, pid_a); /* as a shell does: in place before C joins it, whoever runs first */
	pid_b = spawn(child_b);
	pid_c = spawn(child_c); /* after A: it joins A's group */
	pid_z1 = spawn(exit7);
	pid_z2 = spawn(sigterm);
	/* all in place: four ready bytes (A, G, B, C), both zombies exited (not reaped) */
	for (int i = 0; i < 4; i++)
		if (read(ready[0], buf, 1) != 1) {
			printf("FAIL: a child did not get ready\n");
			return 1;
		}
	siginfo_t si;
	if (waitid(P_PID, (id_t)pid_z1, &si, WEXITED | WNOWAIT) < 0 ||
	    waitid(P_PID, (id_t)pid_z2, &si, WEXITED | WNOWAIT) < 0) {
		printf("FAIL: waitid: %s\n", strerror(errno));
		return 1;
	}
	/* bytes in flight between processes: to A, and one line of ours to ourselves */
	if (write(data[1], "hello", 5) != 5 || write(res[1], "R early\n", 8) != 8) {
		printf("FAIL: pipe write: %s\n", strerror(errno));
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);

	if (getpid() != 1)
		feature_fail("root is pid %d, not 1", getpid());
	/* five lines: ours from before, then A, B, C, G in any order */
	char got[5] = {0};
	size_t have = 0;
	for (int lines = 0; lines < 5;) {
		ssize_t n = read(res[0], buf + have, sizeof(buf) - 1 - have);
		if (n <= 0) {
			feature_fail("results pipe: %s", n ? strerror(errno) : "end of file");
			break;
		}
		have += (size_t)n;
		buf[have] = 0;
		char *nl;
		while ((nl = strchr(buf, '\n'))) {
			*nl = 0;
			if (strcmp(buf + 2, "ok") != 0 && strcmp(buf, "R early") != 0)
				feature_fail("%s", buf + 2);
			if (lines < 5)
				got[lines] = buf[0];
			lines++;
			size_t rest = have - (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, rest);
			have = rest;
			buf[have] = 0;
		}
	}
	if (got[0] != 'R')
		feature_fail("the line written before the checkpoint came as %c", got[0]);
	expect_status(pid_a, "A", 0);
	expect_status(pid_b, "B", 0);
	expect_status(pid_c, "C", 0);
	expect_status(pid_z1, "Z1 (exited 7)", 7 << 8);
	expect_status(pid_z2, "Z2 (killed by SIGTERM)", SIGTERM);
	if (shm[1] != 0xabcd || mem[1] != 0xdcba)
		feature_fail("A's writes not seen: shared memory %#x, memfd %#x", shm[1], mem[1]);
	char two[3] = "";
	if (read(file_fd, two, 2) != 2 || memcmp(two, "23", 2) != 0)
		feature_fail("the shared file's offset: read \"%.2s\" after B read 2 bytes", two);
	return feature_finish();
}
