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
/*
 * Each thread's own calls run in it, several threads at once: each has an area of the scratch
 * pages (past the first) for its table of calls, its sigaltstack argument and its name.
 */
#define THREAD_AREA     512
#define THREAD_AREA_SS  320 /* after a table of at most five calls */
#define THREAD_AREA_COM 384
/* threads created and set up at once (their clone3 arguments share the first scratch page) */
#define THREAD_GROUP 16
#define CLONE_ARGS   128 /* bytes of the first scratch page per thread: clone_args, then its tid */
_Static_assert(THREAD_GROUP *THREAD_AREA <= (RS_SCRATCH_PAGES - 1) * MODEL_PAGE, "areas");
_Static_assert(THREAD_GROUP *CLONE_ARGS <= RS_CODE_OFF, "clone arguments");

/* Queue in b (b->t: the thread) the calls that give thread t its kernel state. */
static int thread_queue(struct restorer *rs, struct rs_batch *b, const struct thread *t,
                        uint64_t area, struct ferry_error *err)
{
	const uint64_t ss_at = area + THREAD_AREA_SS, comm_at = area + THREAD_AREA_COM;
	int r = rs_batch_add(rs, b, "set_tid_address", SYS_set_tid_address, t->clear_tid, 0, 0, 0,
	                     0, 0, err);

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
	return r;
}

/* After its calls: the thread's FPU/AVX state, signal mask and registers. */
static int thread_finish(struct tracee *tr, const struct thread *t, struct ferry_error *err)
{
	struct user_regs_struct regs = t->regs;
	struct iovec iov = {t->xstate, t->xstate_len};

	if (t->xstate_len && ptrace(PTRACE_SETREGSET, tr->tid, (void *)NT_X86_XSTATE, &iov) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_SETREGSET xstate: %m", t->tid);
	if (ptrace(PTRACE_SETSIGMASK, tr->tid, (void *)sizeof(uint64_t), &t->sigmask) < 0)
		return ferr(err, -errno, "thread %d: PTRACE_SETSIGMASK: %m", t->tid);
	regs_for_resume(&regs, true);
	tr->regs = regs;
	tr->clobbered = false;
	return tracee_setregs(tr->tid, &regs, err);
}

/*
 * Threads ts[0..n) other than the main one: the main thread creates them, with their tids, in
 * one batch (each clone3 stops it once, for the new thread's host tid); then each runs its own
 * calls, all at the same time.
 */
static int threads_group(struct restorer *rs, const struct thread *const *ts, size_t n,
                         struct tracee *out, struct rs_batch *bs, struct ferry_error *err)
{
	uint8_t args[THREAD_GROUP * CLONE_ARGS] = {0};
	pid_t hosts[THREAD_GROUP];
	struct tracee_clones cl = {.tids = hosts, .max = n};
	struct rs_batch *b = &bs[0];
	int r = 0;

	b->t = &rs->main;
	b->n = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct clone_args ca = {
		        .flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
		                 CLONE_SYSVSEM,
		        .set_tid = rs->scratch + i * CLONE_ARGS + 96,
		        .set_tid_size = 1,
		};
		int32_t tid = ts[i]->tid;
		memcpy(args + i * CLONE_ARGS, &ca, sizeof(ca));
		memcpy(args + i * CLONE_ARGS + 96, &tid, sizeof(tid));
		r = rs_batch_add(rs, b, "clone3 of a thread with its tid", SYS_clone3,
		                 rs->scratch + i * CLONE_ARGS, sizeof(ca), 0, 0, 0, 0, err);
	}
	if (r == 0) {
		r = tracee_poke(rs->pid, rs->scratch, args, n * CLONE_ARGS);
		if (r < 0)
			r = ferr(err, r, "scratch write: %s", strerror(-r));
	}
	if (r == 0)
		r = rs_batch_start(rs, b, rs->scratch + MODEL_PAGE, true, err);
	if (r == 0)
		r = rs_batch_finish(rs, b, rs->scratch + MODEL_PAGE, &cl, err);
	if (r < 0)
		return r;
	if (cl.n != n)
		return ferr(err, -EPROTO, "%zu threads created, %zu seen", n, cl.n);
	for (size_t i = 0; i < n; i++) {
		if (b->calls[i].ret != ts[i]->tid)
			return ferr(err, -EPROTO, "clone3 gave tid %ld, not %d", b->calls[i].ret,
			            ts[i]->tid);
		/* the new thread starts traced and stopped */
		struct tracee *tr = &out[i];
		int status;
		memset(tr, 0, sizeof(*tr));
		tr->tid = hosts[i];
		tr->seized = true;
		r = tracee_wait(hosts[i], &status, err);
		if (r < 0)
			return r;
		tr->stopped = true;
		tr->syscall_ip = rs->main.syscall_ip;
		r = tracee_getregs(hosts[i], &tr->regs, err);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t area = rs->scratch + MODEL_PAGE + i * THREAD_AREA;
		bs[i].t = &out[i];
		bs[i].n = 0;
		r = thread_queue(rs, &bs[i], ts[i], area, err);
		if (r == 0)
			r = rs_batch_start(rs, &bs[i], area, false, err);
		if (r < 0)
			return ferr_prefix(err, "thread %d", ts[i]->tid);
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t area = rs->scratch + MODEL_PAGE + i * THREAD_AREA;
		r = rs_batch_finish(rs, &bs[i], area, NULL, err);
		if (r == 0)
			r = thread_finish(&out[i], ts[i], err);
		if (r < 0)
			return ferr_prefix(err, "thread %d", ts[i]->tid);
	}
	return 0;
}

static const struct thread *main_thread(const struct process *p)
{
	for (size_t i = 0; i < p->nthreads; i++)
		if (p->threads[i].tid == p->pid)
			return &p->threads[i];
	return NULL;
}

int threads_restore(struct restorer *rs, const struct process *p, struct tracee *ret_tracees,
                    struct rs_batch *main_calls, struct ferry_error *err)
{
	const struct thread *main_t = main_thread(p), *group[THREAD_GROUP];
	size_t n = 1, ng = 0;
	int r = 0;

	if (!main_t)
		return ferr(err, -EPROTO, "process %d: no main thread in the image", p->pid);
	_cleanup_free_ struct rs_batch *bs = calloc(THREAD_GROUP, sizeof(*bs));
	if (!bs)
		return ferr(err, -ENOMEM, "out of memory");
	/* other threads first, a group at a time: they are cloned from the main thread */
	for (size_t i = 0; i <= p->nthreads && r == 0; i++) {
		if (i < p->nthreads && &p->threads[i] != main_t)
			group[ng++] = &p->threads[i];
		if (ng == THREAD_GROUP || (i == p->nthreads && ng > 0)) {
			r = threads_group(rs, group, ng, &ret_tracees[n], bs, err);
			n += ng;
			ng = 0;
		}
	}
	if (r < 0)
		return r;
	/* its area past the first pages of main_calls' table */
	r = thread_queue(rs, main_calls, main_t, rs->scratch + 2 * MODEL_PAGE, err);
	return r < 0 ? ferr_prefix(err, "thread %d", main_t->tid) : 0;
}

int threads_restore_main(struct restorer *rs, const struct process *p, struct ferry_error *err)
{
	const struct thread *main_t = main_thread(p);
	int r = main_t ? thread_finish(&rs->main, main_t, err)
	               : ferr(err, -EPROTO, "process %d: no main thread in the image", p->pid);
	return r < 0 ? ferr_prefix(err, "thread %d", p->pid) : 0;
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
