/* Feature: __thread variables of the main thread and 4 threads keep their per-thread values. */
#include "feature.h"

#include <stdint.h>
#include <sys/syscall.h>

#define NTHREADS 4

static __thread uint64_t tls_word = 0x5555; /* .tdata: initialised */
static __thread char tls_text[48];          /* .tbss */

struct worker {
	int id;
	const char *dir;
	pthread_t self;
	pid_t tid;
	uint64_t *word_addr; /* &tls_word as seen by the thread */
	int ready;
};

static void tls_set(int id)
{
	tls_word = 0x1000 + (uint64_t)id * 0x10101;
	snprintf(tls_text, sizeof(tls_text), "thread %d text", id);
}

static void tls_check(int id, struct worker *w)
{
	char expect[48];

	snprintf(expect, sizeof(expect), "thread %d text", id);
	if (tls_word != 0x1000 + (uint64_t)id * 0x10101)
		feature_fail("thread %d: tls_word %#llx", id, (unsigned long long)tls_word);
	if (strcmp(tls_text, expect) != 0)
		feature_fail("thread %d: tls_text \"%.47s\"", id, tls_text);
	if (w && &tls_word != w->word_addr)
		feature_fail("thread %d: &tls_word moved %p -> %p", id, (void *)w->word_addr,
		             (void *)&tls_word);
	if (w && !pthread_equal(pthread_self(), w->self))
		feature_fail("thread %d: pthread_self() changed", id);
	if (w && (pid_t)syscall(SYS_gettid) != w->tid)
		feature_fail("thread %d: tid %d, was %d", id, (int)syscall(SYS_gettid), w->tid);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	tls_set(w->id);
	w->self = pthread_self();
	w->tid = (pid_t)syscall(SYS_gettid);
	w->word_addr = &tls_word;
	__atomic_store_n(&w->ready, 1, __ATOMIC_RELEASE);
	while (!feature_go(w->dir))
		feature_sleep_ms(10);
	tls_check(w->id, w);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct worker w[NTHREADS];
	pthread_t th[NTHREADS];

	tls_set(0);
	for (int i = 0; i < NTHREADS; i++) {
		w[i] = (struct worker){.id = i + 1, .dir = dir};
		if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0) {
			feature_fail("pthread_create failed");
			return feature_finish();
		}
	}
	for (int i = 0; i < NTHREADS; i++)
		while (!__atomic_load_n(&w[i].ready, __ATOMIC_ACQUIRE))
			feature_sleep_ms(1);
	feature_ready();
	feature_wait_go(dir);

	tls_check(0, NULL);
	for (int i = 0; i < NTHREADS; i++) {
		/* Each thread's copy is distinct and still holds its value (read from main). */
		if (*w[i].word_addr != 0x1000 + (uint64_t)w[i].id * 0x10101)
			feature_fail("thread %d's tls_word read from main: %#llx", w[i].id,
			             (unsigned long long)*w[i].word_addr);
	}
	for (int i = 0; i < NTHREADS; i++)
		feature_join(th[i], NULL, "tls worker", 5);
	return feature_finish();
}
