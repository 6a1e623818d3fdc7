/* Checkpoint: freeze a component, capture its model (and pages), thaw it. */
#pragma once

#include "fds.h"
#include "mem.h"
#include "tracee.h"
#include "model.h"

/* Where the threads of one process of a frozen component are in frozen.t. */
struct frozen_span {
	size_t first, n;
};

/* The seized threads of a frozen component: those of each of its live processes in a row
 * (span[i] for component.procs[i]; a zombie's span is empty). */
struct frozen {
	struct tracee *t;
	size_t n;
	struct frozen_span *span;
	size_t nspan;
	struct fd_held held; /* connections the capture put in repair mode */
};

/* What a checkpoint learns of the component just before freezing it. */
struct prefreeze {
	struct proc_map *maps; /* its smaps: inside the freeze only /proc/PID/maps is read */
	size_t nmaps;
	uint64_t sigreturn_ip; /* an rt_sigreturn trampoline in it (tracee_arm), or 0 */
};

/* checkpoint_freeze - seize and stop every thread of pid into fz, again and again until no new
 * thread appears (a stopped thread cannot clone, so this ends); on failure, fz holds those
 * seized so far, for checkpoint_thaw. */
int checkpoint_freeze(pid_t pid, struct frozen *fz, struct ferry_error *err);

/* checkpoint_thaw - detach every thread (they run on); fz is emptied. */
void checkpoint_thaw(struct frozen *fz);

/*
 * checkpoint_capture - freeze every thread of every process of the component whose init is
 * host pid (its descendants found through /proc/PID/task/TID/children), capture
 * it into a new model (*ret), leaving it frozen in fz: the caller thaws it (also on failure). With
 * w NULL no page data is read (the model still lists which pages hold data). log_path identifies
 * the runtime's log among the fds. pf (may be NULL): what was read just before the freeze.
 * Every thread is armed (tracee_arm) while system calls are injected into it, so that the
 * component survives ferry dying at any moment. rt and name: the node's services and the
 * component's re-created sessions (fd-session.c); ending: it ends after this capture, so its
 * sessions' receive sides are shut before their queues are read (nothing comes after). */
int checkpoint_capture(const struct ferry_runtime *rt, const char *name, bool ending, pid_t pid,
                       const char *log_path, struct image_writer *w, struct frozen *fz,
                       struct component **ret, struct mem_stats *st, struct mem_track *mt,
                       const struct prefreeze *pf, struct ferry_error *err);
