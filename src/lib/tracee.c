/* Ptrace mechanics: seizing threads, injecting system calls, putting registers back. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <elf.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <linux/ptrace.h>

#include "procfs.h"
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

/*
 * The armed way: the thread first enters rt_sigreturn from the trampoline; at its entry stop
 * the call becomes nr, and its return address the trampoline again. Until the registers are
 * put back at the end, a thread let go by a dying tracer returns into rt_sigreturn, and the
 * frame on its stack puts it back where it was stopped.
 */
static void set_call(struct user_regs_struct *r, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
                     uint64_t a4, uint64_t a5)
{
	r->rdi = a0;
	r->rsi = a1;
	r->rdx = a2;
	r->r10 = a3;
	r->r8 = a4;
	r->r9 = a5;
}

/*
 * After the call: its result, and the registers back at once, not at detach: if ferry dies
 * now, the kernel lets the thread go on, and it must go on from where it was stopped (an
 * interrupted call restarted).
 */
static int call_done(struct tracee *t, long *ret, struct ferry_error *err)
{
	struct user_regs_struct r;
	int rc = tracee_getregs(t->tid, &r, err);

	if (rc < 0)
		return rc;
	*ret = (long)r.rax;
	r = t->regs;
	regs_for_resume(&r, false);
	rc = tracee_setregs(t->tid, &r, err);
	if (rc < 0)
		return rc;
	t->clobbered = false;
	return 0;
}

/*
 * For the tests: FERRY_TEST_DIE_IN_SYSCALL=NR:PHASE makes ferry SIGKILL itself while it
 * injects call NR, at PHASE "entry" (the thread stopped at the entry of rt_sigreturn) or "exit"
 * (NR done, its registers not yet put back): what a crash or an admin's kill -9 would do.
 */
static void test_die(long nr, const char *phase)
{
	const char *spec = getenv("FERRY_TEST_DIE_IN_SYSCALL");
	char want[48];

	snprintf(want, sizeof(want), "%ld:%s", nr, phase);
	if (spec && strcmp(spec, want) == 0)
		(void)safe_kill(getpid(), SIGKILL);
}

static int armed_syscall(struct tracee *t, long *ret, pid_t *ret_new_tid, long nr, uint64_t a0,
                         uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                         struct ferry_error *err)
{
	struct user_regs_struct r = t->regs;
	int rc;

	r.rip = t->sigreturn_ip;
	r.rsp = t->frame_sp;
	r.orig_rax = (uint64_t)-1;
	t->clobbered = true;
	rc = tracee_setregs(t->tid, &r, err);
	if (rc == 0)
		rc = step_to_syscall_stop(t, ret_new_tid, err); /* entry of rt_sigreturn */
	if (rc == 0)
		rc = tracee_getregs(t->tid, &r, err);
	if (rc < 0)
		return ferr_prefix(err, "injecting syscall %ld", nr);
	test_die(nr, "entry");
	r.orig_rax = (uint64_t)nr;
	set_call(&r, a0, a1, a2, a3, a4, a5);
	r.rip = t->sigreturn_ip; /* where the call returns to: rt_sigreturn */
	rc = tracee_setregs(t->tid, &r, err);
	if (rc == 0)
		rc = step_to_syscall_stop(t, ret_new_tid, err); /* exit of nr */
	if (rc < 0)
		return ferr_prefix(err, "injecting syscall %ld", nr);
	test_die(nr, "exit");
	return call_done(t, ret, err);
}

int tracee_syscall(struct tracee *t, long *ret, pid_t *ret_new_tid, long nr, uint64_t a0,
                   uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                   struct ferry_error *err)
{
	struct user_regs_struct r = t->regs;
	int rc;

	if (t->frame_sp && t->sigreturn_ip)
		return armed_syscall(t, ret, ret_new_tid, nr, a0, a1, a2, a3, a4, a5, err);
	if (!t->syscall_ip)
		return ferr(err, -EINVAL, "thread %d: no syscall instruction known", t->tid);
	r.rip = t->syscall_ip;
	r.rax = (uint64_t)nr;
	r.orig_rax = (uint64_t)-1; /* no restart fix-up of the call we interrupted */
	set_call(&r, a0, a1, a2, a3, a4, a5);
	t->clobbered = true;
	rc = tracee_setregs(t->tid, &r, err);
	if (rc < 0)
		return rc;
	rc = step_to_syscall_stop(t, ret_new_tid, err); /* entry */
	if (rc < 0)
		return ferr_prefix(err, "injecting syscall %ld", nr);
	test_die(nr, "entry");
	rc = step_to_syscall_stop(t, ret_new_tid, err); /* exit */
	if (rc < 0)
		return ferr_prefix(err, "injecting syscall %ld", nr);
	test_die(nr, "exit");
	return call_done(t, ret, err);
}

/*
 * The loop a thread runs for tracee_syscalls (x86-64): rbx points at the table, r12 counts the
 * calls left; each entry is nr, six arguments, the result. It ends at int3: after the last
 * call, or at the first result in [-4095, -1].
 */
static const uint8_t calls_code[] = {
        0x4d, 0x85, 0xe4,                   /* 0:  test r12, r12 */
        0x74, 0x32,                         /* 3:  jz 55 */
        0x48, 0x8b, 0x03,                   /* 5:  mov rax, [rbx] */
        0x48, 0x8b, 0x7b, 0x08,             /* 8:  mov rdi, [rbx + 8] */
        0x48, 0x8b, 0x73, 0x10,             /* 12: mov rsi, [rbx + 16] */
        0x48, 0x8b, 0x53, 0x18,             /* 16: mov rdx, [rbx + 24] */
        0x4c, 0x8b, 0x53, 0x20,             /* 20: mov r10, [rbx + 32] */
        0x4c, 0x8b, 0x43, 0x28,             /* 24: mov r8, [rbx + 40] */
        0x4c, 0x8b, 0x4b, 0x30,             /* 28: mov r9, [rbx + 48] */
        0x0f, 0x05,                         /* 32: syscall */
        0x48, 0x89, 0x43, 0x38,             /* 34: mov [rbx + 56], rax */
        0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, /* 38: cmp rax, -4095 */
        0x73, 0x09,                         /* 44: jae 55 */
        0x48, 0x83, 0xc3, 0x40,             /* 46: add rbx, 64 */
        0x49, 0xff, 0xcc,                   /* 50: dec r12 */
        0xeb, 0xc9,                         /* 53: jmp 0 */
        0xcc,                               /* 55: int3 */
};
_Static_assert(sizeof(calls_code) <= TRACEE_CALLS_CODE, "calls_code");
_Static_assert(sizeof(struct tracee_call) == TRACEE_CALL_BYTES, "tracee_call layout");

int tracee_syscalls_start(struct tracee *t, uint64_t code, uint64_t table,
                          struct tracee_call *calls, size_t n, bool write_code,
                          struct ferry_error *err)
{
	struct user_regs_struct r = t->regs;
	pid_t tid = t->tid;
	int rc = 0;

	for (size_t i = 0; i < n; i++)
		calls[i].ret = 0;
	if (write_code)
		rc = tracee_poke(tid, code, calls_code, sizeof(calls_code));
	if (rc == 0)
		rc = tracee_poke(tid, table, calls, n * sizeof(*calls));
	if (rc < 0)
		return ferr(err, rc, "thread %d: writing %zu calls: %s", tid, n, strerror(-rc));
	r.rip = code;
	r.rbx = table;
	r.r12 = n;
	r.orig_rax = (uint64_t)-1; /* no restart fix-up of the call we interrupted */
	t->clobbered = true;
	rc = tracee_setregs(tid, &r, err);
	if (rc == 0 && ptrace(PTRACE_CONT, tid, NULL, NULL) < 0)
		rc = ferr(err, -errno, "thread %d: PTRACE_CONT: %m", tid);
	return rc;
}

int tracee_syscalls_finish(struct tracee *t, uint64_t code, uint64_t table,
                           struct tracee_call *calls, size_t n, size_t *ret_done,
                           struct tracee_clones *cl, struct ferry_error *err)
{
	struct user_regs_struct r;
	pid_t tid = t->tid;
	int status, rc;

	*ret_done = 0;
	for (;;) {
		rc = tracee_wait(tid, &status, err);
		if (rc < 0)
			return rc;
		if (!WIFSTOPPED(status))
			return ferr(err, -EPROTO, "thread %d: unexpected wait status 0x%x", tid,
			            status);
		if (WSTOPSIG(status) == SIGTRAP && (status >> 16) == 0)
			break;
		if ((status >> 16) == PTRACE_EVENT_CLONE && cl) {
			unsigned long msg = 0;
			if (ptrace(PTRACE_GETEVENTMSG, tid, NULL, &msg) < 0)
				return ferr(err, -errno, "thread %d: PTRACE_GETEVENTMSG: %m", tid);
			if (cl->n < cl->max)
				cl->tids[cl->n++] = (pid_t)msg;
		} else if ((status >> 16) == 0) {
			if (WSTOPSIG(status) == SIGSEGV || WSTOPSIG(status) == SIGBUS ||
			    WSTOPSIG(status) == SIGILL)
				return ferr(err, -EFAULT, "thread %d: signal %d running the calls",
				            tid, WSTOPSIG(status));
			if (t->deferred_sig && t->deferred_sig != WSTOPSIG(status))
				return ferr(err, -EINTR,
				            "thread %d: second signal %d during injection", tid,
				            WSTOPSIG(status));
			t->deferred_sig = WSTOPSIG(status);
		}
		/* a ptrace event stop, or a signal kept for later: on with the calls */
		if (ptrace(PTRACE_CONT, tid, NULL, NULL) < 0)
			return ferr(err, -errno, "thread %d: PTRACE_CONT: %m", tid);
	}
	rc = tracee_getregs(tid, &r, err);
	if (rc < 0)
		return rc;
	if (r.rip != code + sizeof(calls_code) || r.r12 > n)
		return ferr(err, -EPROTO, "thread %d: the calls stopped at 0x%llx", tid, r.rip);
	size_t done = n - (size_t)r.r12 + (r.r12 ? 1 : 0);
	rc = tracee_peek(tid, table, calls, done * sizeof(*calls));
	if (rc < 0)
		return ferr(err, rc, "thread %d: reading results: %s", tid, strerror(-rc));
	*ret_done = done;
	r = t->regs;
	regs_for_resume(&r, false);
	rc = tracee_setregs(tid, &r, err);
	if (rc < 0)
		return rc;
	t->clobbered = false;
	return 0;
}

int tracee_syscalls(struct tracee *t, uint64_t code, uint64_t table, struct tracee_call *calls,
                    size_t n, size_t *ret_done, struct ferry_error *err)
{
	*ret_done = 0;
	if (n == 0)
		return 0;
	int rc = tracee_syscalls_start(t, code, table, calls, n, true, err);
	return rc < 0 ? rc : tracee_syscalls_finish(t, code, table, calls, n, ret_done, NULL, err);
}

int tracee_find_syscall_insn(pid_t pid, const struct proc_map *maps, size_t nmaps, uint64_t *ret)
{
	for (size_t m = 0; m < nmaps; m++) {
		if (strcmp(maps[m].path, "[vdso]") != 0)
			continue;
		size_t len = maps[m].end - maps[m].start;
		_cleanup_free_ uint8_t *buf = malloc(len);
		if (!buf)
			return -ENOMEM;
		int r = tracee_peek(pid, maps[m].start, buf, len);
		if (r < 0)
			return r;
		for (size_t i = 0; i + 1 < len; i++) {
			if (buf[i] == 0x0f && buf[i + 1] == 0x05) {
				*ret = maps[m].start + i;
				return 0;
			}
		}
	}
	return -ENOENT;
}

int tracee_find_sigreturn(pid_t pid, const struct proc_map *maps, size_t nmaps, uint64_t *ret)
{
	static const uint8_t glibc[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};
	static const uint8_t musl[] = {0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};

	/* libc first: that is where the trampoline is; then any other executable file */
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < nmaps; i++) {
			const struct proc_map *m = &maps[i];
			bool libc = strstr(m->path, "/libc") != NULL;
			if (m->perms[2] != 'x' || m->path[0] != '/' || libc != (pass == 0))
				continue;
			size_t len = m->end - m->start;
			_cleanup_free_ uint8_t *buf = len <= (64u << 20) ? malloc(len) : NULL;
			if (!buf || tracee_peek(pid, m->start, buf, len) < 0)
				continue;
			const uint8_t *at = memmem(buf, len, glibc, sizeof(glibc));
			if (!at)
				at = memmem(buf, len, musl, sizeof(musl));
			if (at) {
				*ret = m->start + (uint64_t)(at - buf);
				return 0;
			}
		}
	return -ENOENT;
}

/* The kernel's struct rt_sigframe on x86_64 (arch/x86/include/asm/sigframe.h), flat. */
struct kframe {
	uint64_t pretcode;
	uint64_t uc_flags;
	uint64_t uc_link;
	uint64_t ss_sp;
	int32_t ss_flags;
	int32_t ss_pad;
	uint64_t ss_size;
	uint64_t gregs[18]; /* r8..r15 rdi rsi rbp rbx rdx rax rcx rsp rip eflags */
	uint16_t cs, gs, fs, ss;
	uint64_t err, trapno, oldmask, cr2, fpstate;
	uint64_t reserved1[8];
	uint64_t sigmask;
	uint8_t info[128];
};
_Static_assert(sizeof(struct kframe) == 440, "struct rt_sigframe is 440 bytes");

#define UC_FP_XSTATE         0x1
#define UC_SIGCONTEXT_SS     0x2
#define UC_STRICT_RESTORE_SS 0x4
#ifndef FP_XSTATE_MAGIC2
#define FP_XSTATE_MAGIC2 0x46505845u
#endif
#define FRAME_XSTATE_MAX 16384

int tracee_arm(struct tracee *t, uint64_t sigreturn_ip, struct ferry_error *err)
{
	_cleanup_free_ uint8_t *xs = calloc(1, FRAME_XSTATE_MAX + 64);
	struct iovec iov = {xs, FRAME_XSTATE_MAX};
	struct user_regs_struct r = t->regs;
	struct kframe f = {0};
	uint64_t mask = 0;
	uint32_t xsize;

	if (!xs)
		return ferr(err, -ENOMEM, "out of memory");
	if (ptrace(PTRACE_GETREGSET, t->tid, (void *)NT_X86_XSTATE, &iov) < 0 ||
	    ptrace(PTRACE_GETSIGMASK, t->tid, (void *)sizeof(mask), &mask) < 0)
		return ferr(err, -errno, "thread %d: reading its state for a signal frame: %m",
		            t->tid);
	/* the xsave area as a signal frame holds it: sw_reserved (filled in by the kernel for
	 * ptrace too) says its size; FP_XSTATE_MAGIC2 follows it */
	memcpy(&xsize, xs + 464 + 12, sizeof(xsize));
	if (xsize < 576 || xsize > iov.iov_len)
		xsize = (uint32_t)iov.iov_len;
	uint32_t magic2 = FP_XSTATE_MAGIC2;
	memcpy(xs + xsize, &magic2, sizeof(magic2));
	/* below the red zone and the stack scratch: [frame][pad][xsave area, 64-aligned] */
	uint64_t top = ((r.rsp - 128 - STACK_SCRATCH) & ~15ULL);
	uint64_t fp = (top - xsize - 4) & ~63ULL;
	uint64_t fr = ((fp - sizeof(f)) & ~15ULL) - 8; /* like the kernel: frame + 8 aligned */
	regs_for_resume(&r, false); /* the state to go on from: an interrupted call restarts */
	const uint64_t g[18] = {r.r8,  r.r9,  r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi,
	                        r.rsi, r.rbp, r.rbx, r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.eflags};
	memcpy(f.gregs, g, sizeof(g));
	f.uc_flags = UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS;
	f.ss_flags = 3; /* an invalid mode: rt_sigreturn's sigaltstack fails, leaving it as is */
	f.cs = (uint16_t)r.cs;
	f.ss = (uint16_t)r.ss;
	f.fpstate = fp;
	f.sigmask = mask;
	size_t len = top - fr;
	t->saved = malloc(len);
	if (!t->saved)
		return ferr(err, -ENOMEM, "out of memory");
	int rc = tracee_peek(t->tid, fr, t->saved, len);
	if (rc == 0)
		rc = tracee_poke(t->tid, fp, xs, xsize + 4);
	if (rc == 0)
		rc = tracee_poke(t->tid, fr, &f, sizeof(f));
	if (rc < 0) {
		/* no room on this stack (or it cannot be read): put back what may be written */
		if (t->saved)
			(void)tracee_poke(t->tid, fr, t->saved, len);
		free(t->saved);
		t->saved = NULL;
		return ferr(err, rc, "thread %d: signal frame at 0x%" PRIx64 ": %s", t->tid, fr,
		            strerror(-rc));
	}
	t->saved_at = fr;
	t->saved_len = len;
	t->sigreturn_ip = sigreturn_ip;
	t->frame_sp = fr + 8; /* rt_sigreturn finds the frame at sp - 8 */
	return 0;
}

int tracee_disarm(struct tracee *t, struct ferry_error *err)
{
	int rc = 0;

	if (t->saved) {
		rc = tracee_poke(t->tid, t->saved_at, t->saved, t->saved_len);
		if (rc < 0)
			ferr(err, rc, "thread %d: putting stack bytes back at 0x%" PRIx64 ": %s",
			     t->tid, t->saved_at, strerror(-rc));
		free(t->saved);
	}
	t->saved = NULL;
	t->saved_len = 0;
	t->frame_sp = 0;
	return rc;
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
