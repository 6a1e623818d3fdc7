/* Shared protocol of the feature programs: READY, wait for <dir>/go, then PASS or FAIL. */
#pragma once

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* First failure found (by any thread), kept until feature_finish() reports it. */
static char feature_failure[512];
static int feature_failed;

static inline void feature_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void feature_fail(const char *fmt, ...)
{
	va_list ap;

	if (__atomic_exchange_n(&feature_failed, 1, __ATOMIC_ACQ_REL))
		return;
	va_start(ap, fmt);
	vsnprintf(feature_failure, sizeof(feature_failure), fmt, ap);
	va_end(ap);
}

/* feature_dir - argv[1], the scratch directory; exits with a usage message when missing. */
static inline const char *feature_dir(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
		exit(2);
	}
	return argv[1];
}

static inline void feature_ready(void)
{
	fputs("READY\n", stdout);
	fflush(stdout);
}

static inline void feature_sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* feature_go - 1 once <dir>/go exists. */
static inline int feature_go(const char *dir)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/go", dir);
	return access(path, F_OK) == 0;
}

/* feature_wait_go - poll for <dir>/go every 10 ms. */
static inline void feature_wait_go(const char *dir)
{
	while (!feature_go(dir))
		feature_sleep_ms(10);
}

static inline double feature_now(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * feature_join - join th within timeout_s seconds; a thread that does not end (or a join that
 * never returns because the kernel does not clear its tid) is a failure, not a hang.
 */
static inline int feature_join(pthread_t th, void **ret, const char *what, double timeout_s)
{
	struct timespec dl;
	int r;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += (time_t)timeout_s;
	dl.tv_nsec += (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	r = pthread_timedjoin_np(th, ret, &dl);
	if (r != 0)
		feature_fail("joining %s: %s", what, strerror(r));
	return -r;
}

/* feature_finish - print PASS or the first failure; returns the exit status. */
static inline int feature_finish(void)
{
	int failed = __atomic_load_n(&feature_failed, __ATOMIC_ACQUIRE);

	if (failed)
		printf("FAIL: %s\n", feature_failure);
	else
		puts("PASS");
	fflush(stdout);
	return failed ? 1 : 0;
}
