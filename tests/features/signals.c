/* Feature: dispositions, masks, a blocked queued signal and the alternate stack are kept. */
#include "feature.h"

#include <signal.h>
#include <stdint.h>

#define ALTSTACK_SIZE (64 << 10)

static volatile sig_atomic_t usr1_runs, rt_runs, rt_value, usr1_on_altstack, usr1_mask_ok;
static stack_t alt;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	char here;
	sigset_t cur;

	usr1_runs++;
	usr1_on_altstack = (uintptr_t)&here >= (uintptr_t)alt.ss_sp &&
	                   (uintptr_t)&here < (uintptr_t)alt.ss_sp + alt.ss_size;
	/* While the handler runs the kernel blocks sa_mask plus SIGUSR1 itself. */
	sigprocmask(SIG_BLOCK, NULL, &cur);
	usr1_mask_ok = sigismember(&cur, SIGUSR1) && sigismember(&cur, SIGTERM) &&
	               sigismember(&cur, SIGRTMIN + 5) && !sigismember(&cur, SIGINT);
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	rt_runs++;
	rt_value = si->si_value.sival_int;
}

static void check_action(int sig, const struct sigaction *want)
{
	struct sigaction now;

	sigaction(sig, NULL, &now);
	if (now.sa_sigaction != want->sa_sigaction)
		feature_fail("signal %d: handler %p, expected %p", sig, (void *)now.sa_sigaction,
		             (void *)want->sa_sigaction);
	if (now.sa_flags != want->sa_flags)
		feature_fail("signal %d: sa_flags %#x, expected %#x", sig, now.sa_flags,
		             want->sa_flags);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&now.sa_mask, s) != sigismember(&want->sa_mask, s))
			feature_fail("signal %d: sa_mask differs at signal %d", sig, s);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	static struct sigaction want[NSIG]; /* every disposition, as the kernel reports it */
	struct sigaction sa = {0};
	sigset_t blocked, now;
	stack_t alt_now;

	alt = (stack_t){.ss_sp = malloc(ALTSTACK_SIZE), .ss_size = ALTSTACK_SIZE};
	if (!alt.ss_sp || sigaltstack(&alt, NULL) < 0) {
		feature_fail("sigaltstack: %s", strerror(errno));
		return feature_finish();
	}
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaddset(&sa.sa_mask, SIGRTMIN + 5);
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sa.sa_flags = 0;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR2, &sa, NULL);
	sa.sa_sigaction = on_rt;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGRTMIN + 2, &sa, NULL);
	for (int s = 1; s < NSIG; s++) /* SA_RESTORER added; all others must stay SIG_DFL */
		sigaction(s, NULL, &want[s]);

	sigemptyset(&blocked);
	sigaddset(&blocked, SIGRTMIN + 2);
	sigaddset(&blocked, SIGHUP);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	if (sigqueue(getpid(), SIGRTMIN + 2, (union sigval){.sival_int = 42}) < 0) {
		feature_fail("sigqueue: %s", strerror(errno));
		return feature_finish();
	}
	feature_ready();
	feature_wait_go(dir);

	for (int s = 1; s < NSIG; s++)
		check_action(s, &want[s]);
	sigprocmask(SIG_BLOCK, NULL, &now);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&now, s) != sigismember(&blocked, s))
			feature_fail("blocked mask differs at signal %d", s);
	sigaltstack(NULL, &alt_now);
	if (alt_now.ss_sp != alt.ss_sp || alt_now.ss_size != alt.ss_size || alt_now.ss_flags != 0)
		feature_fail("sigaltstack is %p+%zu flags %#x, expected %p+%zu", alt_now.ss_sp,
		             alt_now.ss_size, alt_now.ss_flags, alt.ss_sp, alt.ss_size);
	sigpending(&now);
	if (!sigismember(&now, SIGRTMIN + 2))
		feature_fail("queued signal %d is no longer pending", SIGRTMIN + 2);

	sigprocmask(SIG_UNBLOCK, &blocked, NULL); /* delivered before sigprocmask returns */
	if (rt_runs != 1 || rt_value != 42)
		feature_fail("queued signal: handler ran %d times, si_value %d (expected once, 42)",
		             (int)rt_runs, (int)rt_value);
	raise(SIGUSR2); /* ignored: nothing happens */
	raise(SIGUSR1);
	if (usr1_runs != 1)
		feature_fail("SIGUSR1 handler ran %d times", (int)usr1_runs);
	else if (!usr1_on_altstack)
		feature_fail("SIGUSR1 handler did not run on the alternate stack");
	else if (!usr1_mask_ok)
		feature_fail("SIGUSR1 handler ran with the wrong blocked mask");
	return feature_finish();
}
