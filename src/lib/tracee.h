/* Ptrace mechanics: seizing threads, injecting system calls, putting registers back. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/user.h>

#include "ferry/ferry.h"

/* A thread under our control. */
struct tracee {
	pid_t tid;
	bool seized;
	bool stopped;
	struct user_regs_struct regs; /* as found at the stop (what resume puts back) */
	uint64_t syscall_ip;          /* address of a `syscall` instruction in its address space */
	bool clobbered;               /* registers changed by injection: put back on detach */
	int deferred_sig;             /* a signal that arrived mid-injection, delivered on detach */
	/* armed (tracee_arm): a signal frame of the thread's own state lies on its stack, so that
	 * injected calls can be made to return into rt_sigreturn if ferry dies meanwhile */
	uint64_t sigreturn_ip; /* address of `mov $15,%rax; syscall` in the process */
	uint64_t frame_sp;     /* the stack pointer rt_sigreturn expects, or 0 */
	uint64_t saved_at;     /* stack bytes the frame covers, put back by tracee_disarm */
	uint8_t *saved;
	size_t saved_len;
};

/* tracee_seize - PTRACE_SEIZE tid with opts (PTRACE_O_*), then interrupt it and wait for the stop.
 */
int tracee_seize_stop(struct tracee *t, pid_t tid, unsigned long opts, struct ferry_error *err);

/* tracee_wait_stop - wait for the next ptrace stop of tid; *ret_status is waitpid's status. */
int tracee_wait(pid_t tid, int *ret_status, struct ferry_error *err);

/*
 * tracee_syscall - run one system call nr(a0..a5) in thread t, which must be stopped and have
 * syscall_ip set. Its registers are put back afterwards (as they must be to resume: an
 * interrupted call set to restart), so that the thread can go on correctly even if ferry
 * dies between calls. *ret gets the raw return value (-errno on failure).
 * Handles PTRACE_EVENT_CLONE stops on the way (new tids in *ret_new_tid when not NULL).
 */
int tracee_syscall(struct tracee *t, long *ret, pid_t *ret_new_tid, long nr, uint64_t a0,
                   uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                   struct ferry_error *err);

/* tracee_setregs / tracee_getregs - PTRACE_SETREGS / GETREGS with context in err. */
int tracee_setregs(pid_t tid, const struct user_regs_struct *regs, struct ferry_error *err);
int tracee_getregs(pid_t tid, struct user_regs_struct *regs, struct ferry_error *err);

/*
 * tracee_find_sigreturn - the address of an rt_sigreturn trampoline (`mov $15,%rax; syscall`,
 * glibc's __restore_rt, or musl's `mov $15,%eax; syscall`) in the executable mappings of pid
 * (maps: its /proc maps; libc first). -ENOENT if there is none.
 */
struct proc_map;
int tracee_find_sigreturn(pid_t pid, const struct proc_map *maps, size_t nmaps, uint64_t *ret);

/*
 * tracee_arm - make the injected calls into stopped thread t safe against ferry dying: write
 * below its stack scratch a signal frame (rt_sigframe with its registers as they must resume,
 * its signal mask and its FPU/vector state) and inject every later call through sigreturn_ip,
 * with the call's return leading into rt_sigreturn. Should the tracer die at any moment, the
 * kernel lets the thread run on and it restores its own state from the frame. The stack bytes
 * the frame covers are saved; tracee_disarm puts them back. A thread whose stack has no room
 * (an error here) can still be injected into, unprotected.
 */
int tracee_arm(struct tracee *t, uint64_t sigreturn_ip, struct ferry_error *err);

/* tracee_disarm - put back the stack bytes under the frame (registers must be back already). */
int tracee_disarm(struct tracee *t, struct ferry_error *err);

/* tracee_detach - PTRACE_DETACH (resumes the thread). */
int tracee_detach(struct tracee *t, struct ferry_error *err);

/*
 * tracee_find_syscall_insn - address of a `syscall` instruction in the [vdso] of pid (maps: its
 * mappings); -ENOENT if there is none.
 */
struct proc_map;
int tracee_find_syscall_insn(pid_t pid, const struct proc_map *maps, size_t nmaps, uint64_t *ret);

/*
 * Scratch memory for the arguments and results of injected calls in a stopped thread: just
 * below its stack's red zone (dead by the ABI), with the bytes that were there saved by take
 * and put back by release, so the component's memory ends exactly as it was.
 */
#define STACK_SCRATCH 256
struct stack_scratch {
	pid_t pid;
	uint64_t addr;
	uint8_t saved[STACK_SCRATCH];
};
int stack_scratch_take(struct stack_scratch *s, pid_t pid, const struct tracee *t,
                       struct ferry_error *err);
int stack_scratch_release(const struct stack_scratch *s, struct ferry_error *err);

/*
 * tracee_syscalls - a stopped thread runs calls[0..n) one after the other in one go: one ptrace
 * round trip for all of them instead of two stops each. Its process must have, at code, an
 * executable page of which TRACEE_CALLS_CODE bytes are free, and at table room for n entries
 * of 64 bytes. It stops at the first call that fails. Each call's result is in calls[i].ret
 * (a call not run keeps 0); *ret_done: how many ran, the failed one included. The thread's
 * registers are put back as they were (t->regs). Returns 0 or -errno (the injection failed).
 */
#define TRACEE_CALLS_CODE 64
#define TRACEE_CALL_BYTES 64
struct tracee_call {
	long nr;
	uint64_t a[6];
	long ret;
};
int tracee_syscalls(struct tracee *t, uint64_t code, uint64_t table, struct tracee_call *calls,
                    size_t n, size_t *ret_done, struct ferry_error *err);

/*
 * tracee_syscalls_start / tracee_syscalls_finish - tracee_syscalls in two halves, so that
 * several threads run their calls at the same time: start writes the calls (and the loop, if
 * write_code) and lets the thread go; finish waits until it has run them. If cl is given,
 * finish records in it the host tids of the threads the calls created (clone events), in order.
 */
struct tracee_clones {
	pid_t *tids;
	size_t n, max;
};
int tracee_syscalls_start(struct tracee *t, uint64_t code, uint64_t table,
                          struct tracee_call *calls, size_t n, bool write_code,
                          struct ferry_error *err);
int tracee_syscalls_finish(struct tracee *t, uint64_t code, uint64_t table,
                           struct tracee_call *calls, size_t n, size_t *ret_done,
                           struct tracee_clones *cl, struct ferry_error *err);

/* tracee_poke / tracee_peek - copy to / from another process's memory (process_vm_*v). */
int tracee_poke(pid_t pid, uint64_t addr, const void *buf, size_t len);
int tracee_peek(pid_t pid, uint64_t addr, void *buf, size_t len);

/*
 * regs_for_resume - the registers a thread must get so that a system call it was interrupted
 * in is restarted correctly when it resumes outside the kernel's restart logic.
 * restored: the thread is being restored (the kernel's restart block is lost), so a
 * -ERESTART_RESTARTBLOCK call is restarted as the original call with its remaining time
 * where that is known (nanosleep), else made to return -EINTR.
 */
void regs_for_resume(struct user_regs_struct *r, bool restored);

/* Kernel-internal restart codes, visible to ptrace in rax. */
#define ERESTARTSYS           512
#define ERESTARTNOINTR        513
#define ERESTARTNOHAND        514
#define ERESTART_RESTARTBLOCK 516
