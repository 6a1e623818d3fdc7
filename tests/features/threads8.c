/* Feature: 8 threads (spinning and sleeping) keep running from where they were; join works.
 * Built a second time as threads40 (NTHREADS 40): more threads than a restore sets up at once. */
#include "feature.h"

#include <stdint.h>
#include <sys/syscall.h>

#ifndef NTHREADS
#define NTHREADS 8
#endif
/* Four threads spin, whatever NTHREADS is: with 20 spinners on a 2-core machine every other
 * process (the ferry commands of the test, their LeakSanitizer pass at exit) got seconds late. */
#define SPIN_EVERY (NTHREADS / 4)

struct worker {
	int id;
	pid_t tid;
	uint64_t count; /* shared copy of the thread's own counter, written only by it */
	int errors;
};

static struct worker workers[NTHREADS];
static int stop;

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t n = 0; /* lives in a register or on this thread's stack */

	w->tid = (pid_t)syscall(SYS_gettid);
	while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
		if (__atomic_load_n(&w->count, __ATOMIC_RELAXED) != n)
			w->errors++; /* memory and registers disagree */
		__atomic_store_n(&w->count, ++n, __ATOMIC_RELEASE);
		if (w->id % SPIN_EVERY)
			feature_sleep_ms(1); /* most threads mostly sleep in nanosleep */
		else if (n % (1 << 18) == 0)
			feature_sleep_ms(1); /* four mostly spin in user space */
	}
	if ((pid_t)syscall(SYS_gettid) != w->tid)
		feature_fail("thread %d: tid %d, was %d", w->id, (int)syscall(SYS_gettid), w->tid);
	return (void *)(uintptr_t)n;
}

static void snapshot(uint64_t *v)
{
	for (int i = 0; i < NTHREADS; i++)
		v[i] = __atomic_load_n(&workers[i].count, __ATOMIC_ACQUIRE);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	pthread_t th[NTHREADS];
	uint64_t seen[NTHREADS], at_go[NTHREADS], later[NTHREADS];

	for (int i = 0; i < NTHREADS; i++) {
		workers[i].id = i;
		if (pthread_create(&th[i], NULL, worker_main, &workers[i]) != 0) {
			feature_fail("pthread_create failed");
			return feature_finish();
		}
	}
	do {
		feature_sleep_ms(10);
		snapshot(seen);
	} while (!seen[0] || !seen[1] || !seen[2] || !seen[3] || !seen[4] || !seen[5] || !seen[6] ||
	         !seen[7]);
	feature_ready();
	while (!feature_go(dir)) { /* the last values seen before go: none may go backwards */
		feature_sleep_ms(10);
		snapshot(seen);
	}

	snapshot(at_go);
	feature_sleep_ms(300);
	snapshot(later);
	for (int i = 0; i < NTHREADS; i++) {
		if (at_go[i] < seen[i])
			feature_fail("counter %d went backwards: %llu -> %llu", i,
			             (unsigned long long)seen[i], (unsigned long long)at_go[i]);
		if (later[i] <= at_go[i])
			feature_fail("counter %d stopped at %llu", i, (unsigned long long)at_go[i]);
	}
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < NTHREADS; i++) {
		void *ret = NULL;

		if (feature_join(th[i], &ret, "counter thread", 5) != 0)
			continue;
		if ((uint64_t)(uintptr_t)ret != workers[i].count)
			feature_fail("thread %d: own counter %llu, shared copy %llu", i,
			             (unsigned long long)(uintptr_t)ret,
			             (unsigned long long)workers[i].count);
		if (workers[i].errors)
			feature_fail("thread %d: counter differed from its copy %d times", i,
			             workers[i].errors);
	}
	return feature_finish();
}
