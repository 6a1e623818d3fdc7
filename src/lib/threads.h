/* Threads: registers, FPU/AVX state, signal mask, alternate stack, rseq and tid addresses. */
#pragma once

#include "model.h"
#include "restore.h"
#include "tracee.h"

/*
 * threads_capture - fill t from the seized, stopped thread tr of process p. Injects two
 * harmless system calls (sigaltstack, prctl PR_GET_TID_ADDRESS) using scratch memory below
 * the thread's stack red zone, which is put back afterwards.
 */
int threads_capture(struct tracee *tr, const struct process *p, struct thread *t,
                    struct ferry_error *err);

/*
 * threads_restore - create the threads of p other than the main one in the helper (clone3
 * with their tids) and give each its state and registers; the main thread's own calls are
 * queued in main_calls (a batch of the main thread, run by the caller with its own), after
 * which threads_restore_main gives it its FPU state, signal mask and registers. The threads
 * stay stopped. ret_tracees (n = p->nthreads) receives every other seized thread from 1 on.
 */
int threads_restore(struct restorer *rs, const struct process *p, struct tracee *ret_tracees,
                    struct rs_batch *main_calls, struct ferry_error *err);
int threads_restore_main(struct restorer *rs, const struct process *p, struct ferry_error *err);

/* thread_state_describe - "in syscall nanosleep (restarts)" and similar, for inspect. */
void thread_state_describe(const struct thread *t, char *buf, size_t len);

/* threads_probe_ptrace - `ferry check`: seize, interrupt, xstate and rseq of a child. */
int threads_probe_ptrace(char *detail, size_t len);
