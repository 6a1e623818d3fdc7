/* Interval timers: a periodic ITIMER_REAL (SIGALRM ticks go on) and an armed ITIMER_VIRTUAL. */
#include <signal.h>
#include <sys/time.h>

#include "feature.h"

static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = SA_RESTART};
	struct itimerval real = {{0, 50000}, {0, 50000}}, virt = {{7, 0}, {100, 0}}, cur;

	sigaction(SIGALRM, &sa, NULL);
	if (setitimer(ITIMER_REAL, &real, NULL) < 0 || setitimer(ITIMER_VIRTUAL, &virt, NULL) < 0) {
		printf("FAIL: setitimer: %s\n", strerror(errno));
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);

	getitimer(ITIMER_REAL, &cur);
	if (cur.it_interval.tv_sec != 0 || cur.it_interval.tv_usec != 50000)
		feature_fail("ITIMER_REAL interval %ld.%06ld, expected 0.050000",
		             (long)cur.it_interval.tv_sec, (long)cur.it_interval.tv_usec);
	getitimer(ITIMER_VIRTUAL, &cur);
	if (cur.it_interval.tv_sec != 7 || cur.it_value.tv_sec > 100 ||
	    (cur.it_value.tv_sec == 0 && cur.it_value.tv_usec == 0))
		feature_fail("ITIMER_VIRTUAL not armed as before (interval %ld s, value %ld s)",
		             (long)cur.it_interval.tv_sec, (long)cur.it_value.tv_sec);
	sig_atomic_t before = ticks;
	feature_sleep_ms(500);
	if (ticks - before < 3)
		feature_fail("SIGALRM ticks stopped: %d in 500 ms", (int)(ticks - before));
	return feature_finish();
}
