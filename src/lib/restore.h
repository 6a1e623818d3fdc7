/* Restore: the helper process that becomes the component, driven from its monitor by ptrace. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include "model.h"
#include "tracee.h"

/*
 * The state of one process being restored. The helper (a clone of the monitor, pid 1 of a new
 * pid namespace) first prepares in plain C what it can (fds, cwd, signal dispositions) and
 * opens the files its mappings need at fixed temporary fd numbers; then it blocks and the
 * monitor seizes it and replaces its memory, threads and registers by injected system calls.
 */
struct restorer {
	pid_t pid;          /* host pid of the helper */
	struct tracee main; /* its main thread, seized and stopped */
	uint64_t scratch;   /* RS_SCRATCH_PAGES in the helper: system call arguments, rs_batch */
	int temp_lo;        /* first temporary fd number in the helper */
	int *pages_fds;     /* the image's pages files, in the helper (index as in page runs) */
	uint32_t npages_fds;
	const int *local_fds; /* the same files, opened in the restoring process (index alike) */
	int exe_fd;           /* the executable, in the helper */
	int *vma_fd;          /* per vma: fd of its file in the helper, or -1 */
	int *shmem_fd;        /* per shmem object: fd in the helper, or -1 */
	/* a tree: per vma, whether the process has it already, inherited from the init's helper,
	 * which loaded it before forking (the pages it shares copy-on-write stay shared); base:
	 * the init, whose runs it holds (NULL: none kept) */
	const uint8_t *kept;
	const struct process *base;
	uint64_t pages_loaded;
	uint64_t pages_ns;
};

/*
 * rs_sys - run one system call in the helper's main thread; returns its result (>= 0) or
 * -errno with err naming the call (what) and the reason.
 */
long rs_sys(struct restorer *rs, const char *what, long nr, uint64_t a0, uint64_t a1, uint64_t a2,
            uint64_t a3, uint64_t a4, uint64_t a5, struct ferry_error *err);

/*
 * The scratch area: its first page holds system call arguments (below RS_CODE_OFF) and
 * tracee_syscalls' loop; the rest the table of an rs_batch.
 */
#define RS_SCRATCH_PAGES 8
#define RS_CODE_OFF      (MODEL_PAGE - TRACEE_CALLS_CODE)
#define RS_BATCH_MAX     ((RS_SCRATCH_PAGES - 1) * MODEL_PAGE / TRACEE_CALL_BYTES)

/*
 * rs_batch - system calls a thread of the helper runs in one go (tracee_syscalls), for those
 * whose results nothing waits for: each stop of a thread costs tens of microseconds, which a
 * restore's hundred calls would add to a migration's downtime. rs_batch_add queues a call
 * (running the batch first when it is full); rs_batch_run runs what is queued and fails, as
 * rs_sys does, with the first call that failed named by its what.
 */
struct rs_batch {
	struct tracee *t;
	struct tracee_call calls[RS_BATCH_MAX];
	const char *what[RS_BATCH_MAX];
	size_t n;
};
int rs_batch_add(struct restorer *rs, struct rs_batch *b, const char *what, long nr, uint64_t a0,
                 uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                 struct ferry_error *err);
int rs_batch_run(struct restorer *rs, struct rs_batch *b, struct ferry_error *err);
/*
 * rs_batch_start / rs_batch_finish - rs_batch_run in two halves, so that several threads run
 * their batches at once, each with its table at its own table address in the scratch pages
 * (past the first page). write_code: write the loop too (once, before any thread runs it).
 * finish records in cl (if given) the threads the calls created.
 */
struct tracee_clones;
int rs_batch_start(struct restorer *rs, struct rs_batch *b, uint64_t table, bool write_code,
                   struct ferry_error *err);
int rs_batch_finish(struct restorer *rs, struct rs_batch *b, uint64_t table,
                    struct tracee_clones *cl, struct ferry_error *err);

/* Restoring for someone else's decision (a migration): the hold callback runs in the monitor
 * first (RESTORE_BEGIN: < 0 fails the restore), once the component is rebuilt and verified,
 * still stopped (RESTORE_HOLD: return 0 to let it run, < 0 to end it before it ran a single
 * instruction), and once it runs (RESTORE_RUNNING). */
enum restore_phase { RESTORE_BEGIN, RESTORE_HOLD, RESTORE_RUNNING };
typedef int (*restore_hold_fn)(void *arg, enum restore_phase phase, pid_t pid,
                               const struct ferry_restore_stats *st, struct ferry_error *err);

#define RESTORE_FILES_CHECKED (1u << 0) /* files were compared by content: skip size/mtime */
/* page data of private anonymous mappings is supplied on first touch and in the background
 * after the component runs; the caller vouches for the image's integrity: no checksum
 * verification before it runs */
#define RESTORE_LAZY (1u << 1)
/* the calling process becomes the component's monitor (monitor_here), no fork: on success it
 * must call monitor_wait once done */
#define RESTORE_IN_PLACE (1u << 2)
/* every session to a unix service is restored through a relay (relay.c): a migration's late
 * bytes (session_late) are queued behind what the image holds */
#define RESTORE_SESSION_RELAY (1u << 3)

struct lazy_source;

/*
 * A helper made in advance (a migration's destination makes it at the offer): the new pid and
 * mount namespaces are ready when the image arrives, and it reads the image itself.
 */
struct restore_helper {
	pid_t pid;   /* 0: none (or taken by a restore) */
	int go_wr;   /* the image to restore is written here */
	int sync_wr; /* the helper waits on this until it is seized */
	int rep_rd;  /* its report: a byte when prepared, or a message */
};

/* restore_helper_spawn - make one, for component name; restore_opts.pre hands it over. */
int restore_helper_spawn(const struct ferry_runtime *rt, const char *name, struct restore_helper *h,
                         struct ferry_error *err);
/* restore_helper_drop - end one that was not used (its process killed and reaped). */
void restore_helper_drop(struct restore_helper *h);

struct restore_opts {
	unsigned flags;
	struct restore_helper *pre; /* a helper made in advance, or NULL: restore_image takes it
	                               (and ends it if it fails before it is used) */
	const struct lazy_source *lazy_src; /* RESTORE_LAZY: where pages come from (NULL: the
	                                       image's pages files) */
	restore_hold_fn hold;
	void *hold_arg;
};

/* restore_image - ferry_restore with options. */
int restore_image(const struct ferry_runtime *rt, const char *dir, const char *name,
                  const struct restore_opts *o, pid_t *ret_pid,
                  struct ferry_restore_stats *ret_stats, struct ferry_error *err);
