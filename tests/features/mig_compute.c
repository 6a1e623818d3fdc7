/*
 * Migration workload: 4 threads, each updating 8 MiB of its own at pseudo-random places for
 * ROUNDS rounds, then waiting for <dir>/go; the main thread prints progress, then RESULT, a
 * digest of every thread's memory and running sum. The result depends only on ROUNDS, never
 * on timing, so a run that was migrated any number of times prints what an uninterrupted run
 * prints. Usage: feature-mig_compute DIR [ROUNDS]
 */
#include "feature.h"

#include <stdint.h>

#define NTHREADS 4
#define WORDS    (1u << 20) /* 8 MiB per thread */
#define STEPS    (1u << 18) /* updates per round */

struct worker {
	unsigned id;
	unsigned rounds;
	uint64_t *mem;
	uint64_t sum;
	unsigned done; /* rounds done, read by the main thread */
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t seed = 0x9e3779b97f4a7c15ull * (w->id + 1);

	for (unsigned r = 0; r < w->rounds; r++) {
		for (unsigned i = 0; i < STEPS; i++) {
			uint64_t x = xorshift(&seed);
			uint64_t *p = &w->mem[x % WORDS];
			*p = *p * 31 + x;
			w->sum += *p >> 7;
		}
		__atomic_store_n(&w->done, r + 1, __ATOMIC_RELEASE);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	unsigned rounds = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 200;
	struct worker w[NTHREADS];
	pthread_t th[NTHREADS];

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (unsigned i = 0; i < NTHREADS; i++) {
		w[i] = (struct worker){.id = i, .rounds = rounds};
		w[i].mem = calloc(WORDS, sizeof(uint64_t));
		if (!w[i].mem || pthread_create(&th[i], NULL, worker_main, &w[i]) != 0) {
			printf("FAIL setup\n");
			return 1;
		}
	}
	printf("READY\n");
	unsigned last = ~0u;
	for (;;) {
		unsigned total = 0;
		for (unsigned i = 0; i < NTHREADS; i++)
			total += __atomic_load_n(&w[i].done, __ATOMIC_ACQUIRE);
		if (total / 10 != last / 10 || total == NTHREADS * rounds) {
			printf("progress %u/%u\n", total, NTHREADS * rounds);
			last = total;
		}
		if (total == NTHREADS * rounds)
			break;
		feature_sleep_ms(20);
	}
	for (unsigned i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	feature_wait_go(dir);
	uint64_t digest = 0xcbf29ce484222325ull;
	for (unsigned i = 0; i < NTHREADS; i++) {
		for (unsigned j = 0; j < WORDS; j++)
			digest = (digest ^ w[i].mem[j]) * 0x100000001b3ull;
		digest = (digest ^ w[i].sum) * 0x100000001b3ull;
	}
	printf("RESULT %016llx\n", (unsigned long long)digest);
	return 0;
}
