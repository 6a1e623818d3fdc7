/* bench-floor: the floors and references ferry's checkpoint/restore figures are compared with. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * Every figure is taken once as a warm-up (the first use of memory the VM never touched costs
 * several times a later one; see docs/performance.md) and then ROUNDS times; the median and
 * the minimum are printed.
 *
 *   memcpy      one warm buffer into another
 *   vm_readv    process_vm_readv of a child's touched memory into a warm buffer
 *   touch       memset over fresh anonymous memory (what faulting pages in costs)
 *   save floor  a process writes its own touched memory into a new tmpfs file
 *   load floor  a fresh process reads that file into fresh anonymous memory
 */

#define MIB          (1024UL * 1024UL)
#define CHUNK        (64 * MIB) /* per write()/read()/process_vm_readv(); 64 MiB was best */
#define MAX_ROUNDS   64
#define DEFAULT_DIR  "/dev/shm"
#define PATTERN_SEED 0x2545f4914f6cdd1dull

struct figure {
	const char *key;   /* name in the machine-readable line */
	const char *label; /* what was measured, for people */
	double ms[MAX_ROUNDS];
	int n;
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* figure_median - median of the recorded rounds; sorts them, so ms[0] is the minimum after. */
static double figure_median(struct figure *f)
{
	qsort(f->ms, (size_t)f->n, sizeof(f->ms[0]), cmp_double);
	if (f->n % 2)
		return f->ms[f->n / 2];
	return (f->ms[f->n / 2 - 1] + f->ms[f->n / 2]) / 2;
}

static void figure_add(struct figure *f, double ms)
{
	if (f->n < MAX_ROUNDS)
		f->ms[f->n++] = ms;
}

static double gb_per_s(size_t size, double ms)
{
	return ms > 0 ? (double)size / 1e6 / ms : 0;
}

static size_t chunk_at(size_t off, size_t size)
{
	return size - off < CHUNK ? size - off : CHUNK;
}

/* Fill with distinct non-zero words so no page equals another or the zero page. */
static void fill(void *buf, size_t size)
{
	uint64_t *w = buf, x = PATTERN_SEED;

	for (size_t i = 0; i < size / sizeof(*w); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
}

/* map_fresh - private anonymous mapping of size bytes, not populated; NULL on failure. */
static void *map_fresh(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* read_full - read exactly len bytes; -EIO on a short file. */
static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* reap - wait for child pid; 0 if it exited with status 0. */
static int reap(pid_t pid)
{
	int status;

	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -ECHILD;
}

static double time_memcpy(void *dst, const void *src, size_t size)
{
	double t0 = now_ms();

	memcpy(dst, src, size);
	/* keep the copy from being optimised away */
	__asm__ volatile("" : : "r"(dst) : "memory");
	return now_ms() - t0;
}

/*
 * vm_readv_rounds - fork a child that touches size bytes and waits; time process_vm_readv of
 * all of it into dst once per round (round 0 is the warm-up). The child ends when its pipe
 * closes, so no signal is ever sent. Returns 0 or -errno.
 */
static int vm_readv_rounds(void *dst, size_t size, int rounds, struct figure *f)
{
	int ready[2], hold[2], r;
	uintptr_t remote = 0;
	pid_t pid;

	if (pipe2(ready, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(hold, O_CLOEXEC) < 0) {
		r = -errno;
		close(ready[0]);
		close(ready[1]);
		return r;
	}
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(ready[0]);
		close(ready[1]);
		close(hold[0]);
		close(hold[1]);
		return r;
	}
	if (pid == 0) {
		char *p = map_fresh(size);
		char c;

		close(ready[0]);
		close(hold[1]);
		if (!p)
			_exit(1);
		fill(p, size);
		remote = (uintptr_t)p;
		if (write_full(ready[1], &remote, sizeof(remote)) < 0)
			_exit(1);
		while (read(hold[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(ready[1]);
	close(hold[0]);
	r = read_full(ready[0], &remote, sizeof(remote));
	close(ready[0]);

	for (int round = 0; r == 0 && round <= rounds; round++) {
		double t0 = now_ms();

		for (size_t off = 0; off < size;) {
			struct iovec local = {(char *)dst + off, chunk_at(off, size)};
			struct iovec rem = {(void *)(remote + off), chunk_at(off, size)};
			ssize_t n = process_vm_readv(pid, &local, 1, &rem, 1, 0);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				r = n < 0 ? -errno : -EIO;
				break;
			}
			off += (size_t)n;
		}
		if (r == 0 && round > 0)
			figure_add(f, now_ms() - t0);
	}
	close(hold[1]);
	int rr = reap(pid);
	return r ? r : rr;
}

/* time_touch - fault in size bytes of fresh anonymous memory with memset; ms or -errno. */
static double time_touch(size_t size)
{
	double t0 = now_ms(), ms;
	void *p = map_fresh(size);

	if (!p)
		return -errno;
	memset(p, 0x5a, size);
	ms = now_ms() - t0;
	munmap(p, size);
	return ms;
}

/* save_once - write src into the new file path (which must not exist) and time it. */
static int save_once(const void *src, size_t size, const char *path, double *ret_ms)
{
	double t0 = now_ms();
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	int r = 0;

	if (fd < 0)
		return -errno;
	for (size_t off = 0; r == 0 && off < size; off += CHUNK)
		r = write_full(fd, (const char *)src + off, chunk_at(off, size));
	close(fd);
	*ret_ms = now_ms() - t0;
	return r;
}

/*
 * load_once - in a new process, read path into fresh anonymous memory; the child times itself
 * (from open to the last read, the fresh mapping included) and reports through a pipe. The
 * file must start with the word check.
 */
static int load_once(const char *path, size_t size, uint64_t check, double *ret_ms)
{
	double ms = 0;
	int fds[2], r;
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(fds[0]);
		close(fds[1]);
		return r;
	}
	if (pid == 0) {
		double t0 = now_ms();
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		char *p = map_fresh(size);

		close(fds[0]);
		if (fd < 0 || !p)
			_exit(1);
		for (size_t off = 0; off < size; off += CHUNK)
			if (read_full(fd, p + off, chunk_at(off, size)) < 0)
				_exit(1);
		close(fd);
		ms = now_ms() - t0;
		if (*(uint64_t *)p != check)
			_exit(1);
		_exit(write_full(fds[1], &ms, sizeof(ms)) < 0);
	}
	close(fds[1]);
	r = read_full(fds[0], &ms, sizeof(ms));
	close(fds[0]);
	int rr = reap(pid);
	if (r == 0)
		r = rr;
	if (r == 0)
		*ret_ms = ms;
	return r;
}

static void usage(FILE *out)
{
	fprintf(out,
	        "usage: bench-floor [-r ROUNDS] [-d TMPFS_DIR] SIZE_MIB\n"
	        "Measures memcpy, process_vm_readv, fresh-memory touch, and the save and load\n"
	        "floors for SIZE_MIB of memory: a warm-up, then ROUNDS (default 3) rounds.\n");
}

int main(int argc, char **argv)
{
	struct figure figs[] = {
	        {.key = "memcpy", .label = "memcpy, warm buffers"},
	        {.key = "vm_readv", .label = "process_vm_readv, child -> warm buffer"},
	        {.key = "touch", .label = "memset over fresh anonymous memory"},
	        {.key = "save", .label = "save floor: own memory -> new tmpfs file"},
	        {.key = "load", .label = "load floor: tmpfs file -> fresh memory, new process"},
	};
	struct figure *f_memcpy = &figs[0], *f_readv = &figs[1], *f_touch = &figs[2];
	struct figure *f_save = &figs[3], *f_load = &figs[4];
	const char *dir = DEFAULT_DIR;
	int rounds = 3, opt, r;
	char path[4096], *end;
	unsigned long mib;
	void *src, *dst;
	size_t size;

	while ((opt = getopt(argc, argv, "r:d:h")) != -1) {
		switch (opt) {
		case 'r':
			rounds = atoi(optarg);
			break;
		case 'd':
			dir = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || rounds < 1 || rounds > MAX_ROUNDS) {
		usage(stderr);
		return 2;
	}
	errno = 0;
	mib = strtoul(argv[optind], &end, 10);
	if (errno || *end || mib == 0 || mib > (1UL << 20)) {
		fprintf(stderr, "bench-floor: bad size '%s' (MiB, 1..1048576)\n", argv[optind]);
		return 2;
	}
	size = mib * MIB;
	snprintf(path, sizeof(path), "%s/ferry-floor.%d", dir, (int)getpid());

	src = map_fresh(size);
	dst = map_fresh(size);
	if (!src || !dst) {
		fprintf(stderr, "bench-floor: mmap %lu MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	fill(src, size);
	memset(dst, 1, size);

	for (int round = 0; round <= rounds; round++) {
		double ms = time_memcpy(dst, src, size);
		if (round > 0)
			figure_add(f_memcpy, ms);
	}
	r = vm_readv_rounds(dst, size, rounds, f_readv);
	if (r < 0) {
		fprintf(stderr, "bench-floor: process_vm_readv of %lu MiB: %s\n", mib,
		        strerror(-r));
		return 1;
	}
	munmap(dst, size);

	/* One round: touch fresh memory, save into a new file, load it in a new process, delete. */
	for (int round = 0; round <= rounds; round++) {
		double touch_ms = time_touch(size), save_ms = 0, load_ms = 0;

		if (touch_ms < 0) {
			fprintf(stderr, "bench-floor: touch %lu MiB: %s\n", mib,
			        strerror((int)-touch_ms));
			return 1;
		}
		unlink(path);
		r = save_once(src, size, path, &save_ms);
		if (r == 0)
			r = load_once(path, size, *(uint64_t *)src, &load_ms);
		unlink(path);
		if (r < 0) {
			fprintf(stderr, "bench-floor: save/load %s (%lu MiB): %s\n", path, mib,
			        strerror(-r));
			return 1;
		}
		if (round == 0)
			continue;
		figure_add(f_touch, touch_ms);
		figure_add(f_save, save_ms);
		figure_add(f_load, load_ms);
	}
	munmap(src, size);

	printf("bench-floor: %lu MiB, %d rounds after a warm-up, files in %s\n", mib, rounds, dir);
	for (size_t i = 0; i < sizeof(figs) / sizeof(figs[0]); i++) {
		double med = figure_median(&figs[i]);

		printf("  %-52s median %8.1f ms  min %8.1f ms  %6.2f GB/s\n", figs[i].label, med,
		       figs[i].ms[0], gb_per_s(size, med));
	}
	/* one machine-readable line; bench/report.py reads it */
	printf("floor size_mib=%lu rounds=%d", mib, rounds);
	for (size_t i = 0; i < sizeof(figs) / sizeof(figs[0]); i++) {
		double med = figure_median(&figs[i]);

		printf(" %s_ms=%.1f %s_min_ms=%.1f %s_gbs=%.2f", figs[i].key, med, figs[i].key,
		       figs[i].ms[0], figs[i].key, gb_per_s(size, med));
	}
	printf("\n");
	return 0;
}
