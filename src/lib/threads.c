/* Threads: registers, FPU/AVX state, signal mask, alternate stack, rseq and tid addresses. */
#include <elf.h>
#include <inttypes.h>
#include <linux/sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "procfs.h"
#include "threads.h"
#include "util.h"

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
struct rseq_conf {
	uint64_t rseq_abi_pointer;
	uint32_t rseq_abi_size;
	uint32_t signature;
	uint32_t flags;
	uint32_t pad;
};

int threads_capture(struct tracee *tr, const struct process *p, struct thread *t,
                    struct ferry_error *err)
{
	struct iovec iov;
	struct rseq_conf rc = {0};
	struct stack_scratch sc;
	char path[96];
	_cleanup_free_ char *comm = NULL;
	long ret;
	int r;

	t->host_tid = tr->tid;
	t->regs = tr->regs;
	r = procfs_ns_tid(p->host_pid, tr->tid, &t->tid);
	if (r < 0)
		return ferr(err, r, "thread %d: namespace tid: %s", tr->tid, strerror(-r));
	snprintf(path, sizeof(path), "/proc/%d/task/%d/comm", p->host_pid, tr->tid);
	if (read_file(path, &comm, NULL) == 0) {
		comm[strcspn(comm, "\n")] = '\0';
		snprintf(t->comm, sizeof(t->comm), "%s", comm);
	}
	t->xstate = malloc(XSTATE_MAX);
	if (!t->xstate)
		return ferr(err, -ENOMEM, "out of memory");
	iov = (struct iovec){t->xstate, XSTATE_MAX};
	if (ptrace(PTRACE_GETREGSET, tr->tid, (void *)NT_X86_XSTATE, &iov) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_GETREGSET xstate: %m", tr->tid);
	t->xstate_len = (uint32_t)iov.iov_len;
	if (ptrace(PTRACE_GETSIGMASK, tr->tid, (void *)sizeof(uint64_t), &t->sigmask) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_GETSIGMASK: %m", tr->tid);
	if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tr->tid, (void *)sizeof(rc), &rc) > 0) {
		t->rseq_ptr = rc.rseq_abi_pointer;
		t->rseq_len = rc.rseq_abi_size;
		t->rseq_sig = rc.signature;
	}
	if (syscall(SYS_get_robust_list, tr->tid, &t->robust_head, &t->robust_len) < 0)
		return ferr(err, -errno, "thread %d: get_robust_list: %m", tr->tid);

	/* sigaltstack and the clear-tid address are only reachable from the thread itself */
	r = stack_scratch_take(&sc, p->host_pid, tr, err);
	if (r < 0)
		return r;
	uint64_t scratch = sc.addr;
	r = tracee_syscall(tr, &ret, NULL, SYS_sigaltstack, 0, scratch, 0, 0, 0, 0, err);
	if (r == 0 && ret < 0)
		r = ferr(err, (int)ret, "thread %d: sigaltstack: %s", tr->tid, strerror((int)-ret));
	if (r == 0) {
		stack_t ss;
		r = tracee_peek(p->host_pid, scratch, &ss, sizeof(ss));
		t->ss_sp = (uint64_t)(uintptr_t)ss.ss_sp;
		t->ss_size = ss.ss_size;
		t->ss_flags = ss.ss_flags;
	}
	if (r == 0)
		r = tracee_syscall(tr, &ret, NULL, SYS_prctl, PR_GET_TID_ADDRESS, scratch, 0, 0, 0,
		                   0, err);
	if (r == 0 && ret < 0)
		r = ferr(err, (int)ret, "thread %d: PR_GET_TID_ADDRESS: %s", tr->tid,
		         strerror((int)-ret));
	if (r == 0)
		r = tracee_peek(p->host_pid, scratch, &t->clear_tid, sizeof(t->clear_tid));
	int r2 = stack_scratch_release(&sc, err);
	if (r == 0)
		r = r2;
	return r;
}

/* Per-thread kernel state a thread must set itself (one batch of calls), then its registers. */
static int thread_set_state(struct restorer *rs, struct tracee *tr, const struct thread *t,
                            struct ferry_error *err)
{
	struct user_regs_struct regs = t->regs;
	struct iovec iov = {t->xstate, t->xstate_len};
	const uint64_t ss_at = rs->scratch + 1024, comm_at = rs->scratch + 1280;
	struct rs_batch *b = calloc(1, sizeof(*b));
	int r;

	if (!b)
		return ferr(err, -ENOMEM, "out of memory");
	b->t = tr;
	r = rs_batch_add(rs, b, "set_tid_address", SYS_set_tid_address, t->clear_tid, 0, 0, 0, 0, 0,
	                 err);
	if (r == 0 && t->robust_head)
		r = rs_batch_add(rs, b, "set_robust_list", SYS_set_robust_list, t->robust_head,
		                 t->robust_len, 0, 0, 0, 0, err);
	stack_t ss = {.ss_sp = (void *)(uintptr_t)t->ss_sp,
	              .ss_size = t->ss_size,
	              .ss_flags = t->ss_flags & ~SS_ONSTACK};
	if (r == 0 && !(t->ss_flags & SS_DISABLE)) {
		r = tracee_poke(rs->pid, ss_at, &ss, sizeof(ss));
		r = r < 0 ? ferr(err, r, "scratch write: %s", strerror(-r))
		          : rs_batch_add(rs, b, "sigaltstack", SYS_sigaltstack, ss_at, 0, 0, 0, 0,
		                         0, err);
	}
	if (r == 0 && t->rseq_ptr)
		r = rs_batch_add(rs, b, "rseq", SYS_rseq, t->rseq_ptr, t->rseq_len, 0, t->rseq_sig,
		                 0, 0, err);
	if (r == 0) {
		r = tracee_poke(rs->pid, comm_at, t->comm, sizeof(t->comm));
		r = r < 0 ? ferr(err, r, "scratch write: %s", strerror(-r))
		          : rs_batch_add(rs, b, "prctl(PR_SET_NAME)", SYS_prctl, PR_SET_NAME,
		                         comm_at, 0, 0, 0, 0, err);
	}
	if (r == 0)
		r = rs_batch_run(rs, b, err);
	free(b);
	if (r < 0)
		return ferr_prefix(err, "thread %d", t->tid);
	if (t->xstate_len && ptrace(PTRACE_SETREGSET, tr->tid, (void *)NT_X86_XSTATE, &iov) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_SETREGSET xstate: %m", t->tid);
	if (ptrace(PTRACE_SETSIGMASK, tr->tid, (void *)sizeof(uint64_t), &t->sigmask) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_SETSIGMASK: %m", t->tid);
	regs_for_resume(&regs, true);
	tr->regs = regs;
	tr->clobbered = false;
	return tracee_setregs(tr->tid, &regs, err);
}

int threads_restore(struct restorer *rs, const struct process *p, struct tracee *ret_tracees,
                    struct ferry_error *err)
{
	const struct thread *main_t = NULL;
	size_t n = 1;
	int r;

	for (size_t i = 0; i < p->nthreads; i++)
		if (p->threads[i].tid == p->pid)
			main_t = &p->threads[i];
	if (!main_t)
		return ferr(err, -EPROTO, "process %d: no main thread in the image", p->pid);
	/* other threads first: they are cloned from the main thread, still ours */
	for (size_t i = 0; i < p->nthreads; i++) {
		const struct thread *t = &p->threads[i];
		struct tracee *tr = &ret_tracees[n];
		pid_t host_tid = 0;
		long ret;
		int status;

		if (t == main_t)
			continue;
		struct clone_args ca = {
		        .flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
		                 CLONE_SYSVSEM,
		        .set_tid = rs->scratch + 128,
		        .set_tid_size = 1,
		};
		int32_t tid = t->tid;
		r = tracee_poke(rs->pid, rs->scratch, &ca, sizeof(ca));
		if (r == 0)
			r = tracee_poke(rs->pid, rs->scratch + 128, &tid, sizeof(tid));
		if (r < 0)
			return ferr(err, r, "thread %d: scratch write: %s", tid, strerror(-r));
		r = tracee_syscall(&rs->main, &ret, &host_tid, SYS_clone3, rs->scratch, sizeof(ca),
		                   0, 0, 0, 0, err);
		if (r == 0 && ret < 0)
			r = ferr(err, (int)ret, "clone3 with tid %d: %s", tid, strerror((int)-ret));
		if (r < 0)
			return r;
		if (ret != tid)
			return ferr(err, -EPROTO, "clone3 gave tid %ld, not %d", ret, tid);
		/* the new thread starts traced and stopped */
		memset(tr, 0, sizeof(*tr));
		tr->tid = host_tid;
		tr->seized = true;
		r = tracee_wait(host_tid, &status, err);
		if (r < 0)
			return r;
		tr->stopped = true;
		tr->syscall_ip = rs->main.syscall_ip;
		r = tracee_getregs(host_tid, &tr->regs, err);
		if (r < 0)
			return r;
		n++;
		r = thread_set_state(rs, tr, t, err);
		if (r < 0)
			return r;
	}
	r = thread_set_state(rs, &rs->main, main_t, err);
	if (r < 0)
		return r;
	ret_tracees[0] = rs->main;
	return 0;
}

static const char *syscall_name(long nr)
{
	switch (nr) {
	case SYS_read:
		return "read";
	case SYS_write:
		return "write";
	case SYS_nanosleep:
		return "nanosleep";
	case SYS_clock_nanosleep:
		return "clock_nanosleep";
	case SYS_futex:
		return "futex";
	case SYS_poll:
		return "poll";
	case SYS_ppoll:
		return "ppoll";
	case SYS_select:
		return "select";
	case SYS_pselect6:
		return "pselect6";
	case SYS_epoll_wait:
		return "epoll_wait";
	case SYS_epoll_pwait:
		return "epoll_pwait";
	case SYS_wait4:
		return "wait4";
	case SYS_rt_sigsuspend:
		return "rt_sigsuspend";
	case SYS_pause:
		return "pause";
	case SYS_accept:
		return "accept";
	case SYS_accept4:
		return "accept4";
	case SYS_recvfrom:
		return "recvfrom";
	case SYS_restart_syscall:
		return "restart_syscall";
	case SYS_rt_sigtimedwait:
		return "rt_sigtimedwait";
	default:
		return NULL;
	}
}

void thread_state_describe(const struct thread *t, char *buf, size_t len)
{
	long ax = (long)t->regs.rax, nr = (long)t->regs.orig_rax;
	const char *name = syscall_name(nr);
	char num[32];

	if (nr < 0) {
		snprintf(buf, len, "running");
		return;
	}
	if (!name) {
		snprintf(num, sizeof(num), "#%ld", nr);
		name = num;
	}
	if (ax == -ERESTARTSYS || ax == -ERESTARTNOHAND || ax == -ERESTARTNOINTR)
		snprintf(buf, len, "in syscall %s (restarts)", name);
	else if (ax == -ERESTART_RESTARTBLOCK)
		snprintf(buf, len, "in syscall %s (restarts with the time left)", name);
	else
		snprintf(buf, len, "after syscall %s", name);
}

int threads_probe_ptrace(char *detail, size_t len)
{
	pid_t child = fork();
	int st, ok = 0;
	uint8_t *xs = malloc(XSTATE_MAX);
	struct iovec iov = {xs, XSTATE_MAX};
	struct rseq_conf rc = {0};

	if (child == 0) {
		for (;;)
			pause();
	}
	if (child < 0 || !xs) {
		free(xs);
		snprintf(detail, len, "could not fork a probe");
		return 0;
	}
	if (ptrace(PTRACE_SEIZE, child, NULL, NULL) == 0 &&
	    ptrace(PTRACE_INTERRUPT, child, NULL, NULL) == 0 &&
	    waitpid(child, &st, __WALL) == child && (st >> 16) == PTRACE_EVENT_STOP &&
	    ptrace(PTRACE_GETREGSET, child, (void *)NT_X86_XSTATE, &iov) == 0) {
		long rs = ptrace(PTRACE_GET_RSEQ_CONFIGURATION, child, (void *)sizeof(rc), &rc);
		snprintf(detail, len, "seize, interrupt; xstate %zu bytes; rseq %s", iov.iov_len,
		         rs > 0 && rc.rseq_abi_pointer ? "registered (glibc)" : "not registered");
		ok = 1;
	} else {
		snprintf(detail, len, "PTRACE_SEIZE/INTERRUPT/GETREGSET: %s", strerror(errno));
	}
	(void)safe_kill(child, SIGKILL);
	waitpid(child, NULL, __WALL);
	free(xs);
	return ok;
}
