/* bench-dirtier: a component rewriting a known share of its memory (incremental checkpoints). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*
 * Usage: bench-dirtier [-m step|rate] SIZE_MIB PERMILLE PERIOD_MS [GO_FILE]
 *        bench-dirtier -m pace SIZE_MIB MB_PER_S PERIOD_MS [GO_FILE]
 *        (the mode may also come from BENCH_DIRTIER_MODE; -m wins; default step)
 *
 * Maps SIZE_MIB of private anonymous memory with MADV_NOHUGEPAGE (so that the kernel tracks
 * writes per 4 KiB page, not per 2 MiB), fills every 8-byte word with a value that depends on
 * its position and on the "version" of its page (0 at the start), prints READY and then:
 *
 * step  Every PERIOD_MS it looks for the file GO_FILE.step-K, K = 1, 2, ... in order. When it
 *       appears it reads a permille from it (empty: PERMILLE) and rewrites exactly
 *       n = max(1, pages * permille / 1000) whole pages with version K: page
 *       floor(j * pages / n) + K mod floor(pages / n) for j = 0 .. n-1, so the pages are spread
 *       evenly and two steps less than pages/n apart write different pages. Then it prints
 *       `WROTE K n ms`. Create the step file atomically (write it elsewhere, rename it).
 *
 * rate  Writes one word per page, page after page, over the working set of step (PERMILLE of
 *       the pages, spread evenly, offset 0), round and round at full speed. Every PERIOD_MS it
 *       prints `RATE seq=S t0=T0 t1=T1 pages=N pps=P`: pages written between CLOCK_MONOTONIC
 *       times T0 and T1 (ms) and their rate.
 *
 * pace  The loop of rate over all the pages (PERMILLE 1000), but paced: it dirties
 *       MB_PER_S x 10^6 bytes of pages a second (one word per 4 KiB page, so a page counts
 *       4096 bytes), in 1 ms steps; 0 only sleeps. Time it spends stopped (a freeze, a
 *       migration) is not made up for later: it never writes more than 10 ms worth at once.
 *       Every PERIOD_MS it prints `PACE seq=S t0=T0 t1=T1 pages=N mbps=M`, the rate it kept.
 *
 * In both modes, once GO_FILE exists it checks every word of its memory against what it
 * wrote (step: it replays its steps; rate: the pass and position of the loop), prints PASS or
 * FAIL with the first wrong word, and then only sleeps. All output goes through write(2),
 * unbuffered, so the component's log shows it at once. Nothing here sends a signal.
 */

#define MIB        (1024UL * 1024UL)
#define PAGE       4096UL
#define WPP        (PAGE / sizeof(uint64_t)) /* words per page */
#define MAX_STEPS  65536
#define RATE_TAG   0x5a17c0de00000000ull
#define RATE_BATCH 4096 /* writes between two looks at the clock */
#define PACE_TICK  1    /* ms between two batches of pace mode */
#define PACE_DEBT  10   /* ms of writes pace mode may make up at most after a stop */

static uint64_t *mem;
static size_t npages;
static uint16_t step_permille[MAX_STEPS + 1]; /* permille of step k, k >= 1 */
static unsigned nsteps;

/* splitmix64: distinct, never a run of zeroes, cheap to recompute. */
static uint64_t mix(uint64_t x)
{
	uint64_t z = (x + 1) * 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The word at index i (of the whole area) of a page at version v. */
static uint64_t word_at(uint64_t i, uint64_t v)
{
	return mix(i ^ (v << 40));
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!write(STDOUT_FILENO, buf,
		             (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static size_t set_size(unsigned permille)
{
	size_t n = npages * permille / 1000;

	return n ? n : 1;
}

/* The j-th page of a working set of n pages, shifted by off (< pages / n). */
static size_t set_page(size_t j, size_t n, size_t off)
{
	return (size_t)((uint64_t)j * npages / n) + off; /* < 2^56 for up to 1 TiB */
}

static size_t step_offset(unsigned k, size_t n)
{
	return k % (npages / n);
}

static void write_page(size_t page, uint64_t v)
{
	uint64_t *p = mem + page * WPP;

	for (size_t w = 0; w < WPP; w++)
		p[w] = word_at(page * WPP + w, v);
}

/* One step: rewrite the step's pages with version k. */
static void do_step(unsigned k, unsigned permille)
{
	size_t n = set_size(permille), off = step_offset(k, n);
	double t0 = now_ms();

	for (size_t j = 0; j < n; j++)
		write_page(set_page(j, n, off), k);
	step_permille[k] = (uint16_t)permille;
	nsteps = k;
	say("WROTE %u %zu %.1f\n", k, n, now_ms() - t0);
}

/* report - PASS, or FAIL with the first wrong word. */
static void report(size_t bad_word, uint64_t want, double ms)
{
	if (bad_word == (size_t)-1)
		say("PASS all %zu words of %zu pages intact (%.0f ms)\n", npages * WPP, npages, ms);
	else
		say("FAIL word %zu (page %zu, offset 0x%zx) is 0x%016llx, want 0x%016llx\n",
		    bad_word, bad_word / WPP, bad_word * sizeof(uint64_t),
		    (unsigned long long)mem[bad_word], (unsigned long long)want);
}

/* Step mode: replay the steps into a version per page, then check every word. */
static void verify_steps(void)
{
	double t0 = now_ms();
	uint32_t *ver = calloc(npages, sizeof(*ver));

	if (!ver) {
		say("FAIL cannot verify: out of memory\n");
		return;
	}
	for (unsigned k = 1; k <= nsteps; k++) {
		size_t n = set_size(step_permille[k]), off = step_offset(k, n);
		for (size_t j = 0; j < n; j++)
			ver[set_page(j, n, off)] = k;
	}
	for (size_t i = 0; i < npages * WPP; i++) {
		uint64_t want = word_at(i, ver[i / WPP]);
		if (mem[i] != want) {
			free(ver);
			report(i, want, 0);
			return;
		}
	}
	free(ver);
	report((size_t)-1, 0, now_ms() - t0);
}

/*
 * Rate mode: pages of the set before position pos were last written in pass `pass`, the others
 * in pass - 1 (none yet if pass is 0); word 0 of a set page holds RATE_TAG ^ pass << 32 ^ page.
 */
static void verify_rate(size_t n, uint64_t pass, size_t pos)
{
	double t0 = now_ms();
	size_t j = 0, next = set_page(0, n, 0);

	for (size_t page = 0; page < npages; page++) {
		for (size_t w = 0; w < WPP; w++) {
			size_t i = page * WPP + w;
			uint64_t want = word_at(i, 0);
			if (page == next && w == 0) {
				bool written = j < pos || pass > 0;
				uint64_t p = j < pos ? pass : pass - 1;
				if (written)
					want = RATE_TAG ^ (p << 32) ^ page;
			}
			if (mem[i] != want) {
				report(i, want, 0);
				return;
			}
		}
		if (page == next && ++j < n)
			next = set_page(j, n, 0);
	}
	report((size_t)-1, 0, now_ms() - t0);
}

static bool exists(const char *path)
{
	return path && access(path, F_OK) == 0;
}

/* read_permille - the permille in path; dflt if it is empty; 0 if unreadable or malformed. */
static unsigned read_permille(const char *path, unsigned dflt)
{
	char buf[32], *end;
	unsigned long v;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return 0;
	buf[n] = '\0';
	if (strspn(buf, " \t\n") == (size_t)n)
		return dflt;
	errno = 0;
	v = strtoul(buf, &end, 10);
	if (errno || end == buf || strspn(end, " \t\n") != strlen(end) || v == 0 || v > 1000)
		return 0;
	return (unsigned)v;
}

static void nap(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void run_step(unsigned dflt, unsigned period_ms, const char *go)
{
	char path[4096];
	bool verified = false;

	for (;;) {
		nap(period_ms);
		if (go && !verified && exists(go)) {
			verify_steps();
			verified = true;
		}
		if (!go || nsteps >= MAX_STEPS)
			continue;
		snprintf(path, sizeof(path), "%s.step-%u", go, nsteps + 1);
		if (!exists(path))
			continue;
		unsigned permille = read_permille(path, dflt);
		if (!permille) {
			say("BADSTEP %u %s: want a permille 1..1000 or nothing\n", nsteps + 1,
			    path);
			permille = dflt;
		}
		do_step(nsteps + 1, permille);
	}
}

static void run_rate(unsigned permille, unsigned period_ms, const char *go)
{
	volatile uint64_t *vm = mem;
	size_t n = set_size(permille), pos = 0, page = 0, rem = 0;
	/* page = set_page(pos, n, 0) = floor(pos * pages / n), stepped without a division */
	const size_t q = npages / n, r = npages % n;
	uint64_t pass = 0, count = 0, seq = 0;
	double t0 = now_ms(), next = t0 + period_ms;

	say("RATE start set_pages=%zu\n", n);
	for (;;) {
		for (int b = 0; b < RATE_BATCH; b++) {
			vm[page * WPP] = RATE_TAG ^ (pass << 32) ^ page;
			if (++pos == n) {
				pos = page = rem = 0;
				pass++;
				continue;
			}
			page += q;
			rem += r;
			if (rem >= n) {
				page++;
				rem -= n;
			}
		}
		count += RATE_BATCH;
		double t = now_ms();
		if (t < next)
			continue;
		say("RATE seq=%llu t0=%.3f t1=%.3f pages=%llu pps=%.0f\n",
		    (unsigned long long)++seq, t0, t, (unsigned long long)count,
		    (double)count * 1000.0 / (t - t0));
		count = 0;
		t0 = t;
		next = t + period_ms;
		if (exists(go)) {
			verify_rate(n, pass, pos);
			for (;;)
				nap(100);
		}
	}
}

/*
 * Pace mode: the rate loop over every page (set of npages, so set_page(j) = j), at most
 * mbps x 10^6 / PAGE pages a second; verify_rate checks it.
 */
static void run_pace(unsigned mbps, unsigned period_ms, const char *go)
{
	const double pages_per_ms = (double)mbps * 1e6 / PAGE / 1e3;
	size_t pos = 0;
	uint64_t pass = 0, count = 0, seq = 0;
	double t0 = now_ms(), next = t0 + period_ms, last = t0, owed = 0;

	say("PACE start mbps=%u pages_per_s=%.0f\n", mbps, pages_per_ms * 1e3);
	for (;;) {
		nap(PACE_TICK);
		double t = now_ms();
		owed += (t - last) * pages_per_ms;
		if (owed > PACE_DEBT * pages_per_ms)
			owed = PACE_DEBT * pages_per_ms;
		last = t;
		for (; owed >= 1; owed -= 1) {
			mem[pos * WPP] = RATE_TAG ^ (pass << 32) ^ pos;
			count++;
			if (++pos == npages) {
				pos = 0;
				pass++;
			}
		}
		if (t < next)
			continue;
		say("PACE seq=%llu t0=%.3f t1=%.3f pages=%llu mbps=%.1f\n",
		    (unsigned long long)++seq, t0, t, (unsigned long long)count,
		    (double)count * PAGE / 1e3 / (t - t0));
		count = 0;
		t0 = t;
		next = t + period_ms;
		if (exists(go)) {
			verify_rate(npages, pass, pos);
			for (;;)
				nap(100);
		}
	}
}

static unsigned long number(const char *what, const char *s, unsigned long lo, unsigned long hi)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "bench-dirtier: bad %s '%s' (%lu..%lu)\n", what, s, lo, hi);
		exit(2);
	}
	return v;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench-dirtier [-m step|rate] SIZE_MIB PERMILLE PERIOD_MS [GO_FILE]\n"
	           "       bench-dirtier -m pace SIZE_MIB MB_PER_S PERIOD_MS [GO_FILE]\n"
	           "  step (default): on GO_FILE.step-K rewrite PERMILLE/1000 of the pages "
	           "(or the permille in that file), print WROTE K n ms\n"
	           "  rate: write one word per page over PERMILLE/1000 of the pages at full "
	           "speed, print RATE ... pps=P every PERIOD_MS\n"
	           "  pace: the rate loop over all pages, dirtying MB_PER_S x 10^6 bytes of "
	           "pages a second (0: none), print PACE ... mbps=M every PERIOD_MS\n"
	           "  all: on GO_FILE check every word, print PASS or FAIL\n"
	           "  the mode may also come from BENCH_DIRTIER_MODE\n");
}

int main(int argc, char **argv)
{
	const char *mode = getenv("BENCH_DIRTIER_MODE"), *go;
	unsigned long mib, permille, period;
	int opt;

	while ((opt = getopt(argc, argv, "+m:h")) != -1) {
		switch (opt) {
		case 'm':
			mode = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!mode || !*mode)
		mode = "step";
	if ((strcmp(mode, "step") && strcmp(mode, "rate") && strcmp(mode, "pace")) ||
	    argc - optind < 3 || argc - optind > 4) {
		usage(stderr);
		return 2;
	}
	mib = number("size (MiB)", argv[optind], 1, 1UL << 20);
	if (strcmp(mode, "pace") == 0)
		permille = number("rate (MB/s)", argv[optind + 1], 0, 100000);
	else
		permille = number("permille", argv[optind + 1], 1, 1000);
	period = number("period (ms)", argv[optind + 2], 1, 3600 * 1000);
	go = argc - optind == 4 ? argv[optind + 3] : NULL;
	if (strcmp(mode, "step") == 0 && !go) {
		fprintf(stderr,
		        "bench-dirtier: step mode needs GO_FILE (its steps are GO_FILE.step-K)\n");
		return 2;
	}

	npages = mib * MIB / PAGE;
	mem = mmap(NULL, mib * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "bench-dirtier: mmap %lu MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	/* 4 KiB pages: a write marks one small page dirty, not a 2 MiB one */
	if (madvise(mem, mib * MIB, MADV_NOHUGEPAGE) < 0) {
		fprintf(stderr, "bench-dirtier: madvise(MADV_NOHUGEPAGE): %s\n", strerror(errno));
		return 1;
	}
	for (size_t page = 0; page < npages; page++)
		write_page(page, 0);
	if (strcmp(mode, "pace") == 0) {
		say("READY mode=pace size_mib=%lu pages=%zu mbps=%lu pid=%d addr=%p\n", mib, npages,
		    permille, (int)getpid(), (void *)mem);
		run_pace((unsigned)permille, (unsigned)period, go);
		return 0;
	}
	say("READY mode=%s size_mib=%lu pages=%zu permille=%lu set_pages=%zu pid=%d addr=%p\n",
	    mode, mib, npages, permille, set_size((unsigned)permille), (int)getpid(), (void *)mem);
	if (strcmp(mode, "rate") == 0)
		run_rate((unsigned)permille, (unsigned)period, go);
	else
		run_step((unsigned)permille, (unsigned)period, go);
	return 0;
}
