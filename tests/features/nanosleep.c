/* Feature: threads asleep in nanosleep (relative, with rem) and clock_nanosleep (absolute) wake. */
#include "feature.h"

#define SLEEP_S 3

struct sleeper {
	const char *dir;
	double start, end, deadline;
	int ret, err, retries, done;
};

/* Relative sleep, retried with the remaining time on EINTR as the man page says. */
static void *rel_sleeper(void *arg)
{
	struct sleeper *s = arg;
	struct timespec req = {SLEEP_S, 0}, rem;

	s->start = feature_now(CLOCK_MONOTONIC);
	__atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
	while ((s->ret = nanosleep(&req, &rem)) < 0 && errno == EINTR) {
		s->retries++;
		req = rem;
	}
	s->err = s->ret < 0 ? errno : 0;
	s->end = feature_now(CLOCK_MONOTONIC);
	__atomic_store_n(&s->done, 2, __ATOMIC_RELEASE);
	feature_wait_go(s->dir); /* stay alive: the thread count must not change before go */
	return NULL;
}

/* Absolute sleep until a deadline on CLOCK_MONOTONIC. */
static void *abs_sleeper(void *arg)
{
	struct sleeper *s = arg;
	struct timespec dl;

	clock_gettime(CLOCK_MONOTONIC, &dl);
	s->start = (double)dl.tv_sec + (double)dl.tv_nsec / 1e9;
	dl.tv_sec += SLEEP_S;
	s->deadline = (double)dl.tv_sec + (double)dl.tv_nsec / 1e9;
	__atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
	while ((s->ret = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL)) == EINTR)
		s->retries++;
	s->err = s->ret;
	s->end = feature_now(CLOCK_MONOTONIC);
	__atomic_store_n(&s->done, 2, __ATOMIC_RELEASE);
	feature_wait_go(s->dir);
	return NULL;
}

static void check(const char *what, pthread_t th, struct sleeper *s)
{
	/* Whatever happened before go, the sleep ends within SLEEP_S + 5 s from now. */
	if (feature_join(th, NULL, what, SLEEP_S + 5) != 0)
		return;
	if (s->done != 2 || s->ret != 0)
		feature_fail("%s returned %d (%s) after %d EINTR retries", what, s->ret,
		             strerror(s->err), s->retries);
	else if (s->end - s->start < SLEEP_S)
		feature_fail("%s woke after %.3f s of %d", what, s->end - s->start, SLEEP_S);
	else if (s->deadline && s->end < s->deadline)
		feature_fail("%s woke %.3f s before its deadline", what, s->deadline - s->end);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct sleeper rel = {.dir = dir}, abst = {.dir = dir};
	pthread_t trel, tabs;

	if (pthread_create(&trel, NULL, rel_sleeper, &rel) != 0 ||
	    pthread_create(&tabs, NULL, abs_sleeper, &abst) != 0) {
		feature_fail("pthread_create failed");
		return feature_finish();
	}
	while (!__atomic_load_n(&rel.done, __ATOMIC_ACQUIRE) ||
	       !__atomic_load_n(&abst.done, __ATOMIC_ACQUIRE))
		feature_sleep_ms(1);
	feature_sleep_ms(20); /* let both enter the sleep */
	feature_ready();
	feature_wait_go(dir);

	check("nanosleep", trel, &rel);
	check("clock_nanosleep", tabs, &abst);
	return feature_finish();
}
