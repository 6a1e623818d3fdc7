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
 * the runtime's log among the fds. */
int checkpoint_capture(pid_t pid, const char *log_path, struct image_writer *w, struct frozen *fz,
                       struct component **ret, struct mem_stats *st, struct mem_track *mt,
                       struct ferry_error *err);
