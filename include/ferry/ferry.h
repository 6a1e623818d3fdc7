/* libferry: run, checkpoint and restore Linux programs as components (public API). */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct json_object;

/*
 * Every fallible call takes a struct ferry_error owned by the caller. On failure the call
 * returns -errno and fills it with the same code and a message naming what failed, on which
 * object (pid, fd, address, path) and why. The library never prints.
 */
#define FERRY_ERROR_MAX 1024
struct ferry_error {
	int code;                  /* -errno, 0 when unset */
	char msg[FERRY_ERROR_MAX]; /* human-readable, no trailing newline */
};

/* The runtime: where component state lives. Plain data, no hidden globals. */
struct ferry_runtime {
	char state_dir[PATH_MAX];
};

/*
 * ferry_runtime_init - select the state directory: state_dir if not NULL, else
 * $FERRY_STATE_DIR, else /run/ferry. Creates it (0700) when missing.
 */
int ferry_runtime_init(struct ferry_runtime *rt, const char *state_dir, struct ferry_error *err);

/* Component lifecycle states as recorded by its monitor. */
enum ferry_state {
	FERRY_STATE_STARTING = 0,
	FERRY_STATE_RUNNING = 1,
	FERRY_STATE_EXITED = 2,
};

#define FERRY_NAME_MAX 64

struct ferry_component {
	char name[FERRY_NAME_MAX];
	pid_t pid;         /* host pid of the component's first process (pid 1 in its namespace) */
	pid_t monitor_pid; /* host pid of the monitor that is its parent */
	enum ferry_state state;
	int exit_status; /* wait status when EXITED */
	int64_t started; /* unix seconds */
	int restored;    /* 1 when this incarnation came from an image */
	char log_path[PATH_MAX];
};

/* ferry_name_valid - 1 if NAME may name a component ([A-Za-z0-9_.-], 1..63, not . or ..). */
int ferry_name_valid(const char *name);

/*
 * ferry_run - start argv as component NAME. The component runs in new PID and mount
 * namespaces (it is pid 1 there), with stdin from /dev/null and stdout/stderr appended to
 * the component's log. Its parent is a detached monitor process, so the caller may exit.
 * Returns once the program has been exec'd, with its host pid in *ret_pid.
 */
int ferry_run(const struct ferry_runtime *rt, const char *name, char *const argv[], pid_t *ret_pid,
              struct ferry_error *err);

/* ferry_component_get - read the record of component NAME (-ENOENT if none). */
int ferry_component_get(const struct ferry_runtime *rt, const char *name,
                        struct ferry_component *ret, struct ferry_error *err);

/* ferry_list - all recorded components, sorted by name; *ret is malloc'd, caller frees. */
int ferry_list(const struct ferry_runtime *rt, struct ferry_component **ret, size_t *ret_n,
               struct ferry_error *err);

/*
 * ferry_kill - end component NAME (SIGKILL to its namespace init, which ends the namespace),
 * wait until it is gone and forget its record. A component that already exited is just forgotten.
 */
int ferry_kill(const struct ferry_runtime *rt, const char *name, struct ferry_error *err);

/* Flags of ferry_checkpoint. */
#define FERRY_CKPT_STOP (1u << 0) /* end the component once the image is durable */
/* a full image with a short freeze: memory is copied in rounds while the component runs, and
 * only what it wrote during the last round is copied while it is frozen */
#define FERRY_CKPT_LIVE (1u << 1)
/* incremental: no round of copying while the component runs before the freeze. For a component
 * that rewrites the same pages all the time the round copies them twice and doubles its
 * write-protect faults; ferry_checkpoint_every sets this itself when it sees so. */
#define FERRY_CKPT_NO_ROUNDS (1u << 2)

/* How to checkpoint. A zeroed struct asks for a full checkpoint. */
struct ferry_ckpt_opts {
	unsigned flags; /* FERRY_CKPT_* */
	const char
	        *parent; /* incremental: an image of NAME to take unwritten pages from, or NULL */
	unsigned keep;   /* bound on the pages files an image reads (0: no bound); older parent
	                    files holding the fewest pages are folded into the new image */
};

#define FERRY_FALLBACK_MAX 256

/* Figures of one checkpoint, all times in nanoseconds. */
struct ferry_ckpt_stats {
	uint64_t freeze_ns;     /* all threads stopped -> all threads running again */
	uint64_t total_ns;      /* call start -> image committed */
	uint64_t write_ns;      /* page data copy + write */
	uint64_t pages_scanned; /* pages in dumpable mappings */
	uint64_t pages_written; /* pages the image holds in its own pages file */
	uint64_t pages_frozen;  /* of them, pages copied while the component was frozen */
	uint64_t pages_folded;  /* pages copied from older images of a chain to bound its length */
	uint64_t bytes_written; /* bytes of all image files */
	uint32_t threads;
	uint32_t vmas;
	uint32_t fds;
	uint32_t files;          /* pages files the image reads (1 for a full image) */
	uint32_t precopy_rounds; /* live: rounds of copying while the component ran */
	uint64_t precopy_bytes;  /* live: bytes copied in those rounds */
	bool incremental;        /* pages not written since the parent were taken from it */
	bool tracked;            /* dirty tracking runs on after this checkpoint */
	char fallback[FERRY_FALLBACK_MAX]; /* why an incremental checkpoint became full, or "" */
};

/*
 * ferry_checkpoint - freeze every thread of NAME, capture it into image directory DIR and
 * let it run on (or end it with FERRY_CKPT_STOP once the image is durable). On any failure
 * the component is left running unharmed and any earlier image in DIR stays valid.
 * Every checkpoint that lets the component run on starts (or continues) tracking the pages it
 * writes, with userfaultfd write-protection; with opts->parent, the image then holds only the
 * pages written since that image was taken and reads the rest through it. A parent that is not
 * the latest checkpoint of this run of NAME, or no tracking, gives a full image and says why
 * in ret_stats->fallback. The freeze covers collecting and copying the written pages into
 * memory; they are written to DIR after the component runs again.
 */
int ferry_checkpoint(const struct ferry_runtime *rt, const char *name, const char *dir,
                     const struct ferry_ckpt_opts *opts, struct ferry_ckpt_stats *ret_stats,
                     struct ferry_error *err);

/*
 * Called by ferry_checkpoint_every after each checkpoint (st set) and after each wait (st
 * NULL); a non-zero return ends the loop.
 */
typedef int (*ferry_tick_fn)(void *arg, const struct ferry_ckpt_stats *st);

/*
 * ferry_checkpoint_every - continuous checkpoints of NAME into DIR, one every interval_ns
 * (count of them, 0: until tick says stop). Each is incremental on the one before (the first
 * on the image already in DIR when it is of this run) and committed atomically: DIR always
 * holds the newest complete checkpoint. opts->keep bounds the files a restore reads.
 */
int ferry_checkpoint_every(const struct ferry_runtime *rt, const char *name, const char *dir,
                           const struct ferry_ckpt_opts *opts, uint64_t interval_ns, uint64_t count,
                           ferry_tick_fn tick, void *arg, struct ferry_error *err);

/* Figures over the checkpoints of the current run of a component. */
struct ferry_stat_summary {
	uint64_t min, median, max;
};
struct ferry_stats {
	uint64_t count;
	struct ferry_ckpt_stats latest;
	struct ferry_stat_summary freeze_ns, total_ns, pages_scanned, pages_written, bytes_written;
	uint64_t incremental; /* how many were incremental */
};

/* ferry_stats - figures of NAME's checkpoints since it was started or restored. */
int ferry_stats(const struct ferry_runtime *rt, const char *name, struct ferry_stats *ret,
                struct ferry_error *err);

struct ferry_restore_stats {
	uint64_t total_ns;  /* call start -> component running */
	uint64_t verify_ns; /* image verification (part of total) */
	uint64_t pages_ns;  /* page data load (part of total) */
	uint64_t pages_loaded;
};

/*
 * ferry_restore - recreate the component saved in DIR as NAME (NULL: the name in the image),
 * with the same pids, tids, addresses, fds and registers, as a child of a new monitor.
 * The image is verified completely before the component executes anything; a bad image is
 * refused with a message naming the file and what is wrong. -EEXIST if NAME is running.
 */
int ferry_restore(const struct ferry_runtime *rt, const char *dir, const char *name, pid_t *ret_pid,
                  struct ferry_restore_stats *ret_stats, struct ferry_error *err);

/*
 * ferry_inspect - describe the image in DIR (threads, registers, memory map, fds and their
 * meaning) as a JSON object; caller owns *ret (json_object_put).
 */
int ferry_inspect(const char *dir, struct json_object **ret, struct ferry_error *err);

/*
 * ferry_caps - the same description for running component NAME, taken with a brief freeze
 * and no page contents.
 */
int ferry_caps(const struct ferry_runtime *rt, const char *name, struct json_object **ret,
               struct ferry_error *err);

/* ferry_check - probe every kernel feature ferry relies on; JSON array of {feature, ok, detail}. */
int ferry_check(struct json_object **ret, struct ferry_error *err);

#ifdef __cplusplus
}
#endif
