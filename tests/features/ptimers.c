/*
 * POSIX timers: a periodic CLOCK_MONOTONIC timer signalling the process (its sigev_value
 * checked on every tick), a periodic timer signalling one thread (SIGEV_THREAD_ID), a one-shot
 * CLOCK_REALTIME timer without notification far ahead, a disarmed CLOCK_BOOTTIME timer, and a
 * gap in the ids (a timer deleted). After the restore every timer answers by its old id with
 * its period and time left, the signals they raised before (blocked until then) are pending
 * still, the ticks go on to the right thread with the right value, and a new timer can be
 * made.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "feature.h"

static volatile sig_atomic_t ticks_a, ticks_c, bad_value, wrong_thread;
static volatile pid_t worker_tid;

static void on_tick(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGUSR1) {
		ticks_a++;
		if (si->si_value.sival_int != 111)
			bad_value++;
	} else {
		ticks_c++;
		if (si->si_value.sival_int != 333)
			bad_value++;
		if ((pid_t)syscall(SYS_gettid) != worker_tid)
			wrong_thread++;
	}
}

static volatile int go_flag;

/* Its SIGUSR2 (blocked until go, as every signal of the timers: their pending bits are part of
 * what the checkpoint compares, and stay set while blocked) */
static void *worker(void *arg)
{
	sigset_t usr2;

	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	while (!__atomic_load_n(&go_flag, __ATOMIC_ACQUIRE))
		feature_sleep_ms(5);
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
	for (;;)
		pause();
	return NULL;
}

static timer_t make(clockid_t clk, int notify, int sig, int value, pid_t tid)
{
	struct sigevent sev = {.sigev_notify = notify, .sigev_signo = sig};
	timer_t t;

	sev.sigev_value.sival_int = value;
	if (notify == SIGEV_THREAD_ID)
		sev._sigev_un._tid = tid;
	if (timer_create(clk, &sev, &t) < 0) {
		printf("FAIL: timer_create: %s\n", strerror(errno));
		exit(1);
	}
	return t;
}

static void arm(timer_t t, long value_ms, long interval_ms)
{
	struct itimerspec its = {{interval_ms / 1000, (interval_ms % 1000) * 1000000L},
	                         {value_ms / 1000, (value_ms % 1000) * 1000000L}};
	if (timer_settime(t, 0, &its, NULL) < 0) {
		printf("FAIL: timer_settime: %s\n", strerror(errno));
		exit(1);
	}
}

static void expect(timer_t t, const char *what, long interval_ms, double min_left_s,
                   double max_left_s)
{
	struct itimerspec its;
	if (timer_gettime(t, &its) < 0) {
		feature_fail("%s: timer_gettime by its old id: %s", what, strerror(errno));
		return;
	}
	long iv = its.it_interval.tv_sec * 1000 + its.it_interval.tv_nsec / 1000000;
	double left = (double)its.it_value.tv_sec + (double)its.it_value.tv_nsec / 1e9;
	if (iv != interval_ms)
		feature_fail("%s: interval %ld ms, expected %ld", what, iv, interval_ms);
	if (left < min_left_s || left > max_left_s)
		feature_fail("%s: %.3f s left, expected %.3f-%.3f", what, left, min_left_s,
		             max_left_s);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct sigaction sa = {.sa_sigaction = on_tick, .sa_flags = SA_SIGINFO | SA_RESTART};
	sigset_t usr1, usr2;
	pthread_t th;

	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	/* both blocked in both threads until go; SIGUSR2 stays blocked in this one */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	pthread_sigmask(SIG_BLOCK, &usr2, NULL);
	pthread_create(&th, NULL, worker, NULL);
	while (!worker_tid)
		feature_sleep_ms(1);

	timer_t gone = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, 0, 0);
	timer_t a = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, 111, 0);
	timer_t b = make(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 0);
	timer_t c = make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGUSR2, 333, worker_tid);
	timer_t d = make(CLOCK_BOOTTIME, SIGEV_SIGNAL, SIGUSR1, 444, 0);
	timer_delete(gone); /* a gap in the ids */
	arm(a, 20, 20);
	arm(b, 1000000, 0);
	arm(c, 30, 30);
	feature_sleep_ms(100); /* both have fired: their signals wait, pending */
	feature_ready();
	feature_wait_go(dir);

	expect(a, "periodic timer", 20, 0.0, 0.021);
	expect(b, "one-shot timer", 0, 900.0, 1000.0);
	expect(c, "thread timer", 30, 0.0, 0.031);
	expect(d, "disarmed timer", 0, 0.0, 0.0);
	sig_atomic_t a0 = ticks_a, c0 = ticks_c;
	__atomic_store_n(&go_flag, 1, __ATOMIC_RELEASE);
	pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
	feature_sleep_ms(400);
	if (ticks_a - a0 < 8)
		feature_fail("periodic timer: %d ticks in 400 ms at 20 ms", (int)(ticks_a - a0));
	if (ticks_c - c0 < 5)
		feature_fail("thread timer: %d ticks in 400 ms at 30 ms", (int)(ticks_c - c0));
	if (bad_value)
		feature_fail("%d ticks with a wrong sigev_value", (int)bad_value);
	if (wrong_thread)
		feature_fail("%d thread-timer ticks on another thread", (int)wrong_thread);
	if (timer_getoverrun(a) < 0)
		feature_fail("timer_getoverrun: %s", strerror(errno));
	timer_t e = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
	if (timer_delete(e) < 0 || timer_delete(d) < 0)
		feature_fail("timer_delete: %s", strerror(errno));
	return feature_finish();
}
