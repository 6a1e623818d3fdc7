/* eventfd (plain and semaphore), timerfd (armed, and with an unread expiry), signalfd, epoll. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

#include "feature.h"

static int has(const struct epoll_event *ev, int n, uint64_t data)
{
	for (int i = 0; i < n; i++)
		if (ev[i].data.u64 == data)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	sigset_t usr1;
	uint64_t v;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	int efd = eventfd(4242, EFD_NONBLOCK);
	int sem = eventfd(3, EFD_SEMAPHORE);
	int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
	int tfd2 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int sfd = signalfd(-1, &usr1, 0);
	int ep = epoll_create1(0);
	struct itimerspec armed = {.it_interval = {0, 100000000}, .it_value = {1, 500000000}};
	struct itimerspec once = {.it_value = {0, 10000000}};
	if (efd < 0 || sem < 0 || tfd < 0 || tfd2 < 0 || sfd < 0 || ep < 0 ||
	    timerfd_settime(tfd, 0, &armed, NULL) < 0 ||
	    timerfd_settime(tfd2, 0, &once, NULL) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	struct epoll_event e1 = {.events = EPOLLIN, .data.u64 = 0xE1},
	                   e2 = {.events = EPOLLIN, .data.u64 = 0x71},
	                   e3 = {.events = EPOLLIN | EPOLLET, .data.u64 = 0x51};
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e1);
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e2);
	epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &e3);
	raise(SIGUSR1);       /* pending, blocked: for the signalfd */
	feature_sleep_ms(50); /* tfd2 expires once, unread */
	feature_ready();
	feature_wait_go(dir);

	struct epoll_event ev[8];
	int n = epoll_wait(ep, ev, 8, 3000);
	if (n < 0 || !has(ev, n, 0xE1) || !has(ev, n, 0x51))
		feature_fail("epoll_wait gave %d events without the eventfd and signalfd ones", n);
	if (!(fcntl(efd, F_GETFL) & O_NONBLOCK))
		feature_fail("eventfd lost O_NONBLOCK");
	if (read(efd, &v, 8) != 8 || v != 4242)
		feature_fail("eventfd counter %llu, expected 4242 (fdinfo shows it in hex)",
		             (unsigned long long)v);
	if (read(sem, &v, 8) != 8 || v != 1 || read(sem, &v, 8) != 8 || v != 1)
		feature_fail("semaphore eventfd does not count down by one");
	if (read(tfd2, &v, 8) != 8 || v != 1)
		feature_fail("timerfd lost its unread expiry (%llu)", (unsigned long long)v);
	struct itimerspec cur;
	timerfd_gettime(tfd, &cur);
	if (cur.it_interval.tv_sec != 0 || cur.it_interval.tv_nsec != 100000000 ||
	    (cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0))
		feature_fail("timerfd not armed as before (interval %ld ns)",
		             cur.it_interval.tv_nsec);
	n = epoll_wait(ep, ev, 8, 3000); /* the timer fires within its 1.5 s */
	if (n <= 0 || !has(ev, n, 0x71))
		feature_fail("timerfd did not fire through epoll");
	struct signalfd_siginfo si;
	if (read(sfd, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != SIGUSR1)
		feature_fail("signalfd did not deliver the pending SIGUSR1");
	return feature_finish();
}
