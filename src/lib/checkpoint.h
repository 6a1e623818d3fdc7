/* Checkpoint: freeze a component, capture its model (and pages), thaw it. */
#pragma once

#include "mem.h"
#include "tracee.h"
#include "model.h"

/* The seized threads of a frozen component. */
struct frozen {
	struct tracee *t;
	size_t n;
};

/* checkpoint_thaw - detach every thread (they run on); fz is emptied. */
void checkpoint_thaw(struct frozen *fz);

/*
 * checkpoint_capture - freeze every thread of the component whose init is host pid, capture
 * it into a new model (*ret), leaving it frozen in fz: the caller thaws it (also on failure). With
 * w NULL no page data is read (the model still lists which pages hold data). log_path identifies
 * the runtime's log among the fds. pre (npre entries, may be NULL): the component's smaps read
 * just before, so that inside the freeze only /proc/PID/maps is read. */
int checkpoint_capture(pid_t pid, const char *log_path, struct image_writer *w, struct frozen *fz,
                       struct component **ret, struct mem_stats *st, struct mem_track *mt,
                       const struct proc_map *pre, size_t npre, struct ferry_error *err);
