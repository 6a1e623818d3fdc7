/*
 * Incremental checkpoints: 4 threads writing memory as fast as they can, each into its own
 * 16 MiB region, so that every checkpoint catches pages mid-rewrite.
 *
 * Protocol (argv[1] = scratch dir): READY once the threads run. Thread t loops over iterations
 * n = 1, 2, ...: it fills page n % NPAGES of its region with the 64-bit value n, then stores n in
 * its counter. So at an iteration boundary page j holds the largest n <= counter with
 * n % NPAGES == j, or 0 if there is none. Every 4096 iterations each thread looks for
 * <dir>/go; once it exists, the thread stops at an iteration boundary and checks its whole
 * region against its counter. The main thread joins them and prints PASS or FAIL.
 */
#include <stdint.h>
#include <sys/mman.h>

#include "feature.h"

#define NTHREADS 4
#define PG       4096UL
#define NPAGES   4096UL /* 16 MiB per thread */
#define WORDS    (PG / sizeof(uint64_t))
#define GO_EVERY 4096

struct worker {
	int id;
	uint64_t *region;
	uint64_t counter; /* the last finished iteration; written only by the thread */
	uint64_t final;   /* the thread's own n when it stopped */
};

static struct worker workers[NTHREADS];

/* expected - what page j holds after iterations 1..c. */
static uint64_t expected(uint64_t c, uint64_t j)
{
	uint64_t back = (c + NPAGES - j % NPAGES) % NPAGES; /* (c - j) mod NPAGES */

	return back < c ? c - back : 0;
}

static void verify(struct worker *w)
{
	uint64_t c = __atomic_load_n(&w->counter, __ATOMIC_RELAXED);

	if (c != w->final)
		feature_fail("thread %d: counter in memory %llu, its own n %llu", w->id,
		             (unsigned long long)c, (unsigned long long)w->final);
	for (uint64_t j = 0; j < NPAGES; j++) {
		const uint64_t *p = w->region + j * WORDS;
		uint64_t want = expected(c, j);

		for (size_t k = 0; k < WORDS; k++)
			if (p[k] != want) {
				feature_fail("thread %d: page %llu word %zu is %llu, expected %llu "
				             "(counter %llu)",
				             w->id, (unsigned long long)j, k,
				             (unsigned long long)p[k], (unsigned long long)want,
				             (unsigned long long)c);
				return;
			}
	}
}

static const char *scratch;

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t n = 0;

	for (;;) {
		uint64_t *p;

		n++;
		p = w->region + (n % NPAGES) * WORDS;
		for (size_t k = 0; k < WORDS; k++)
			p[k] = n;
		__atomic_store_n(&w->counter, n, __ATOMIC_RELEASE);
		if (n % GO_EVERY == 0 && feature_go(scratch))
			break;
	}
	w->final = n;
	verify(w);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th[NTHREADS];
	int started = 0;

	scratch = feature_dir(argc, argv);
	for (int i = 0; i < NTHREADS; i++) {
		workers[i].id = i;
		workers[i].region = mmap(NULL, NPAGES * PG, PROT_READ | PROT_WRITE,
		                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (workers[i].region == MAP_FAILED) {
			printf("FAIL: mmap: %s\n", strerror(errno));
			return 1;
		}
	}
	for (int i = 0; i < NTHREADS; i++) {
		if (pthread_create(&th[i], NULL, worker_main, &workers[i]) != 0) {
			feature_fail("pthread_create failed");
			break;
		}
		started++;
	}
	if (started < NTHREADS)
		return feature_finish(); /* exiting ends the threads that did start */
	for (int i = 0; i < NTHREADS; i++)
		while (!__atomic_load_n(&workers[i].counter, __ATOMIC_ACQUIRE))
			feature_sleep_ms(1);
	feature_ready();
	for (int i = 0; i < started; i++)
		feature_join(th[i], NULL, "writer thread", 60);
	return feature_finish();
}
