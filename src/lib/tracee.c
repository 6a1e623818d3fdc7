/* Ptrace mechanics: seizing threads, injecting system calls, putting registers back. */
#include <string.h>
#include <time.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <linux/ptrace.h>

#include "tracee.h"
#include "util.h"

int tracee_wait(pid_t tid, int *ret_status, struct ferry_error *err)
{
	int status;
	for (;;) {
		pid_t r = waitpid(tid, &status, __WALL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return ferr(err, -errno, "thread %d: waitpid: %m", tid);
		}
		break;
	}
	if (WIFEXITED(status) || WIFSIGNALED(status))
		return ferr(err, -ESRCH, "thread %d: exited while being stopped", tid);
	*ret_status = status;
	return 0;
}

int tracee_getregs(pid_t tid, struct user_regs_struct *regs, struct ferry_error *err)
{
	if (ptrace(PTRACE_GETREGS, tid, NULL, regs) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_GETREGS: %m", tid);
	return 0;
}

int tracee_setregs(pid_t tid, const struct user_regs_struct *regs, struct ferry_error *err)
{
	if (ptrace(PTRACE_SETREGS, tid, NULL, regs) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_SETREGS: %m", tid);
	return 0;
}

int tracee_seize_stop(struct tracee *t, pid_t tid, unsigned long opts, struct ferry_error *err)
{
	int status, r;

	memset(t, 0, sizeof(*t));
	t->tid = tid;
	if (ptrace(PTRACE_SEIZE, tid, NULL, (void *)opts) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_SEIZE: %m", tid);
	t->seized = true;
	if (ptrace(PTRACE_INTERRUPT, tid, NULL, NULL) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_INTERRUPT: %m", tid);
	/*
	 * The first stop may be a signal-delivery stop for a signal that was already on its way;
	 * put such a signal back (by resuming with it... would run the handler), so instead keep
	 * it pending: a signal-delivery stop is resumed with the signal, which re-enters
	 * get_signal and then reports our interrupt as PTRACE_EVENT_STOP.
	 */
	for (;;) {
		r = tracee_wait(tid, &status, err);
		if (r < 0)
			return r;
		if (WIFSTOPPED(status) && (status >> 16) == PTRACE_EVENT_STOP)
			break;
		if (WIFSTOPPED(status)) {
			/* Signal-delivery stop: deliver it later by re-queueing through resume. */
			int sig = WSTOPSIG(status);
			if (ptrace(PTRACE_CONT, tid, NULL, (void *)(long)sig) < 0)
				return ferr(err, -errno, "thread %d: PTRACE_CONT: %m", tid);
			if (ptrace(PTRACE_INTERRUPT, tid, NULL, NULL) < 0)
				return ferr(err, -errno, "thread %d: PTRACE_INTERRUPT: %m", tid);
		}
	}
	t->stopped = true;
	return tracee_getregs(tid, &t->regs, err);
}

int tracee_detach(struct tracee *t, struct ferry_error *err)
{
	if (!t->seized)
		return 0;
	if (t->clobbered) {
		/* back to where it stopped, restarting an interrupted call ourselves */
		struct user_regs_struct r = t->regs;
		regs_for_resume(&r, false);
		(void)tracee_setregs(t->tid, &r, err);
		t->clobbered = false;
	}
	if (ptrace(PTRACE_DETACH, t->tid, NULL, (void *)(long)t->deferred_sig) < 0 &&
	    errno != ESRCH)
		return ferr(err, -errno, "thread %d: PTRACE_DETACH: %m", t->tid);
	t->seized = false;
	t->stopped = false;
	return 0;
}

/* Resume with PTRACE_SYSCALL until the next syscall stop, passing event stops. A signal
 * arriving meanwhile is held back and delivered when the thread is detached. */
static int step_to_syscall_stop(struct tracee *t, pid_t *ret_new_tid, struct ferry_error *err)
{
	pid_t tid = t->tid;
	int status, r;

	for (;;) {
		if (ptrace(PTRACE_SYSCALL, tid, NULL, NULL) < 0)
			return ferr(err, -errno, "thread %d: PTRACE_SYSCALL: %m", tid);
		r = tracee_wait(tid, &status, err);
		if (r < 0)
			return r;
		if (!WIFSTOPPED(status))
			return ferr(err, -EPROTO, "thread %d: unexpected wait status 0x%x", tid,
			            status);
		if (WSTOPSIG(status) == (SIGTRAP | 0x80))
			return 0;
		if ((status >> 16) == PTRACE_EVENT_CLONE || (status >> 16) == PTRACE_EVENT_FORK) {
			unsigned long msg = 0;
			if (ptrace(PTRACE_GETEVENTMSG, tid, NULL, &msg) < 0)
				return ferr(err, -errno, "thread %d: PTRACE_GETEVENTMSG: %m", tid);
			if (ret_new_tid)
				*ret_new_tid = (pid_t)msg;
			continue;
		}
		if ((status >> 16) == PTRACE_EVENT_STOP)
			continue;
		if (t->deferred_sig && t->deferred_sig != WSTOPSIG(status))
			return ferr(err, -EINTR, "thread %d: second signal %d during injection",
			            tid, WSTOPSIG(status));
		t->deferred_sig = WSTOPSIG(status);
	}
}

int tracee_syscall(struct tracee *t, long *ret, pid_t *ret_new_tid, long nr, uint64_t a0,
                   uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                   struct ferry_error *err)
{
	struct user_regs_struct r = t->regs;
	int rc;

	if (!t->syscall_ip)
		return ferr(err, -EINVAL, "thread %d: no syscall instruction known", t->tid);
	r.rip = t->syscall_ip;
	r.rax = (uint64_t)nr;
	r.orig_rax = (uint64_t)-1; /* no restart fix-up of the call we interrupted */
	r.rdi = a0;
	r.rsi = a1;
	r.rdx = a2;
	r.r10 = a3;
	r.r8 = a4;
	r.r9 = a5;
	t->clobbered = true;
	rc = tracee_setregs(t->tid, &r, err);
	if (rc < 0)
		return rc;
	rc = step_to_syscall_stop(t, ret_new_tid, err); /* entry */
	if (rc < 0)
		return ferr_prefix(err, "injecting syscall %ld", nr);
	rc = step_to_syscall_stop(t, ret_new_tid, err); /* exit */
	if (rc < 0)
		return ferr_prefix(err, "injecting syscall %ld", nr);
	rc = tracee_getregs(t->tid, &r, err);
	if (rc < 0)
		return rc;
	*ret = (long)r.rax;
	/*
	 * Registers back at once, not at detach: if ferry dies now, the kernel lets the thread
	 * go on, and it must go on from where it was stopped (an interrupted call restarted).
	 */
	r = t->regs;
	regs_for_resume(&r, false);
	rc = tracee_setregs(t->tid, &r, err);
	if (rc < 0)
		return rc;
	t->clobbered = false;
	return 0;
}

int tracee_find_syscall_insn(pid_t pid, uint64_t vdso_start, uint64_t vdso_end, uint64_t *ret)
{
	size_t len = vdso_end - vdso_start;
	_cleanup_free_ uint8_t *buf = malloc(len);
	int r;

	if (!buf)
		return -ENOMEM;
	r = tracee_peek(pid, vdso_start, buf, len);
	if (r < 0)
		return r;
	for (size_t i = 0; i + 1 < len; i++) {
		if (buf[i] == 0x0f && buf[i + 1] == 0x05) {
			*ret = vdso_start + i;
			return 0;
		}
	}
	return -ENOENT;
}

int tracee_peek(pid_t pid, uint64_t addr, void *buf, size_t len)
{
	struct iovec local = {buf, len}, remote = {(void *)addr, len};
	ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EFAULT;
}

int tracee_poke(pid_t pid, uint64_t addr, const void *buf, size_t len)
{
	struct iovec local = {(void *)buf, len}, remote = {(void *)addr, len};
	ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EFAULT;
}

void regs_for_resume(struct user_regs_struct *r, bool restored)
{
	long ax = (long)r->rax;

	if ((long)r->orig_rax < 0)
		return;
	switch (ax) {
	case -ERESTARTNOHAND:
	case -ERESTARTSYS:
	case -ERESTARTNOINTR:
		r->rax = r->orig_rax;
		r->rip -= 2;
		break;
	case -ERESTART_RESTARTBLOCK:
		if ((r->orig_rax == SYS_clock_nanosleep && r->r10 && !(r->rsi & TIMER_ABSTIME)) ||
		    (r->orig_rax == SYS_nanosleep && r->rsi)) {
			/*
			 * A relative sleep with a `rem` buffer: the kernel wrote the time left into
			 * it when the sleep was interrupted, so sleep again for that long. Done
			 * the same way when the thread just goes on, so that a later checkpoint
			 * finds an ordinary sleep, not restart_syscall (whose restart block a
			 * restored process would not have).
			 */
			if (r->orig_rax == SYS_clock_nanosleep)
				r->rdx = r->r10;
			else
				r->rdi = r->rsi;
			r->rax = r->orig_rax;
			r->rip -= 2;
		} else if (!restored) {
			/* The kernel still holds the restart block: continue through it. */
			r->rax = SYS_restart_syscall;
			r->rip -= 2;
		} else {
			r->rax = (uint64_t)-EINTR;
		}
		break;
	default:
		break;
	}
	r->orig_rax = (uint64_t)-1;
}

int stack_scratch_take(struct stack_scratch *s, pid_t pid, const struct tracee *t,
                       struct ferry_error *err)
{
	s->pid = pid;
	s->addr = (t->regs.rsp - 128 - STACK_SCRATCH) & ~15ULL;
	int r = tracee_peek(pid, s->addr, s->saved, sizeof(s->saved));
	if (r < 0)
		return ferr(err, r, "thread %d: reading stack at 0x%llx: %s", t->tid,
		            (unsigned long long)s->addr, strerror(-r));
	return 0;
}

int stack_scratch_release(const struct stack_scratch *s, struct ferry_error *err)
{
	int r = tracee_poke(s->pid, s->addr, s->saved, sizeof(s->saved));
	if (r < 0)
		return ferr(err, r, "pid %d: putting stack bytes back at 0x%llx: %s", s->pid,
		            (unsigned long long)s->addr, strerror(-r));
	return 0;
}
