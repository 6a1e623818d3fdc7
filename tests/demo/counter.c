/* demo-counter: a sample component whose progress is visible, to watch a checkpoint and restore. */
/*
 * Four worker threads each advance their own counter and, for every step, add one to a word
 * of a shared heap buffer. Every 200 ms the main thread takes a consistent snapshot and prints
 *
 *     tick 17: counters 1234 1235 1233 1236 sum=4938, checksum ok
 *
 * "checksum ok" means the heap buffer adds up to the sum of the counters and no counter went
 * backwards. After a restore the tick numbers and counters continue where the checkpoint left
 * them. Runs until killed, or for argv[1] ticks. Only libc and pthreads.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKERS      4
#define BUF_WORDS    (64 * 1024)     /* 512 KiB of heap the checksum covers */
#define BATCH(i)     (37 + 13 * (i)) /* steps per lock hold: the counters drift apart */
#define TICK_NS      (200 * 1000 * 1000L)
#define WORKER_PAUSE (1000 * 1000L) /* 1 ms between batches: progress without burning a CPU */

struct demo {
	pthread_mutex_t lock;
	uint64_t counters[WORKERS]; /* under lock */
	uint64_t *buf;              /* BUF_WORDS words, under lock */
};

struct worker {
	struct demo *demo;
	unsigned idx;
};

static void *worker_main(void *arg)
{
	const struct worker *w = arg;
	struct demo *d = w->demo;
	const struct timespec pause = {.tv_sec = 0, .tv_nsec = WORKER_PAUSE};

	for (;;) {
		pthread_mutex_lock(&d->lock);
		for (unsigned i = 0; i < BATCH(w->idx); i++) {
			uint64_t c = ++d->counters[w->idx];
			d->buf[(c * WORKERS + w->idx) * 7919 % BUF_WORDS]++;
		}
		pthread_mutex_unlock(&d->lock);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

static void timespec_add_ns(struct timespec *ts, long ns)
{
	ts->tv_nsec += ns;
	while (ts->tv_nsec >= 1000000000L) {
		ts->tv_nsec -= 1000000000L;
		ts->tv_sec++;
	}
}

int main(int argc, char **argv)
{
	long max_ticks = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
	struct demo *d = calloc(1, sizeof(*d));
	struct worker workers[WORKERS];
	uint64_t last[WORKERS] = {0};
	struct timespec next, now;
	int r;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!d || !(d->buf = calloc(BUF_WORDS, sizeof(uint64_t)))) {
		fprintf(stderr, "demo-counter: out of memory\n");
		return 1;
	}
	pthread_mutex_init(&d->lock, NULL);
	for (unsigned i = 0; i < WORKERS; i++) {
		pthread_t t;

		workers[i] = (struct worker){.demo = d, .idx = i};
		r = pthread_create(&t, NULL, worker_main, &workers[i]);
		if (r) {
			fprintf(stderr, "demo-counter: pthread_create: %s\n", strerror(r));
			return 1;
		}
	}
	printf("demo-counter: pid %d, %d workers, heap buffer at %p (%zu KiB)\n", getpid(), WORKERS,
	       (void *)d->buf, BUF_WORDS * sizeof(uint64_t) / 1024);

	clock_gettime(CLOCK_MONOTONIC, &next);
	for (long tick = 1; max_ticks <= 0 || tick <= max_ticks; tick++) {
		uint64_t snap[WORKERS], sum = 0, bufsum = 0;
		int ok = 1;

		timespec_add_ns(&next, TICK_NS);
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
			;
		/*
		 * After a restore the schedule lies in the past (the component did not run in
		 * between): start a fresh one rather than printing the missed ticks in a burst.
		 */
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - next.tv_sec) * 1000000000L + (now.tv_nsec - next.tv_nsec) >
		    TICK_NS)
			next = now;

		pthread_mutex_lock(&d->lock);
		memcpy(snap, d->counters, sizeof(snap));
		for (size_t i = 0; i < BUF_WORDS; i++)
			bufsum += d->buf[i];
		pthread_mutex_unlock(&d->lock);

		for (unsigned i = 0; i < WORKERS; i++) {
			sum += snap[i];
			if (snap[i] < last[i])
				ok = 0;
			last[i] = snap[i];
		}
		if (bufsum != sum)
			ok = 0;

		printf("tick %ld: counters", tick);
		for (unsigned i = 0; i < WORKERS; i++)
			printf(" %" PRIu64, snap[i]);
		if (ok) {
			printf(" sum=%" PRIu64 ", checksum ok\n", sum);
		} else {
			printf(" sum=%" PRIu64 ", checksum BAD (heap buffer adds up to %" PRIu64
			       ")\n",
			       sum, bufsum);
			return 1;
		}
	}
	return 0;
}
