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
struct component; /* an image's model, inside libferry */

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
/* post-copy migration, with FERRY_CKPT_STOP and a handover callback: the image records where
 * the private anonymous pages hold data and reserves their room in its pages file, but does not
 * copy them (the file has holes there, their checksums are 0); the handover callback copies them
 * from the frozen component itself. Such an image restores only lazily, from that copy. */
#define FERRY_CKPT_DEFER_ANON (1u << 3)

/* How to checkpoint. A zeroed struct asks for a full checkpoint. */
struct ferry_ckpt_opts {
	unsigned flags; /* FERRY_CKPT_* */
	const char
	        *parent; /* incremental: an image of NAME to take unwritten pages from, or NULL */
	unsigned keep;   /* bound on the pages files an image reads (0: no bound); older parent
	                    files holding the fewest pages are folded into the new image */
	/* with FERRY_CKPT_STOP: called once the image is committed, the component still frozen
	 * (since frozen_at_ns, CLOCK_MONOTONIC), with the model the image holds.
	 * Returns 1 to end the component, 0 to let it run on (the checkpoint still succeeds),
	 * < 0 to let it run on and fail with that error. NULL: end it. */
	int (*handover)(void *arg, uint64_t frozen_at_ns, const struct component *image,
	                struct ferry_error *err);
	void *handover_arg;
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
	uint64_t pages_shared;  /* pages a forked process still shares with its parent (copy on
	                           write): stored once, named by both */
	uint64_t bytes_written; /* bytes of all image files */
	uint32_t processes;     /* live ones and zombies */
	uint32_t threads;       /* of every process */
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

/* ---- Nodes and live migration ---- */

#define FERRY_NODE_NAME_MAX 64
#define FERRY_ADDR_MAX      128

/*
 * A node: a state directory, a name, the address peers reach it at, and the cluster key every
 * node of the cluster holds (channels between nodes are authenticated and encrypted with it).
 */
struct ferry_node {
	struct ferry_runtime rt;
	char name[FERRY_NODE_NAME_MAX];
	char listen[FERRY_ADDR_MAX]; /* HOST:PORT */
	uint8_t key[32];
};

/* ferry_node_init - load the key file and describe the node. */
int ferry_node_init(struct ferry_node *n, const char *name, const char *listen,
                    const char *state_dir, const char *key_path, struct ferry_error *err);

/* ferry_key_generate - write a new random cluster key to path (mode 0600). */
int ferry_key_generate(const char *path, struct ferry_error *err);

/* ferry_node_listen - the TCP socket peers connect to; ferry_node_control_listen - the Unix
 * socket (STATE_DIR/ferryd.sock) the local CLI talks to. */
int ferry_node_listen(const struct ferry_node *n, int *ret_fd, struct ferry_error *err);
int ferry_node_control_listen(const struct ferry_node *n, int *ret_fd, struct ferry_error *err);

/* ferry_node_serve_peer - one connection from another node (a migration coming in, or a
 * question about one); ferry_node_serve_control - one connection from the local CLI. Each runs
 * in a process of its own that ends with the node (ferryd forks them). */
int ferry_node_serve_peer(const struct ferry_node *n, int fd, struct ferry_error *err);
int ferry_node_serve_control(const struct ferry_node *n, int fd, struct ferry_error *err);

/* ferry_node_recover - at start: settle migrations a killed node left in doubt (a component
 * frozen for its hand-over is ended if it was handed over, thawed otherwise), remove partial
 * incoming images. */
int ferry_node_recover(const struct ferry_node *n, struct ferry_error *err);

/* ---- Node services ---- */

/*
 * A service of a node, declared by its ferryd (--service, --config): a name that is the same
 * on every node, and where this node's instance is: a Unix socket, a TCP endpoint, or a
 * read-only file ("ROM": configuration or calibration data each node keeps its own version
 * of). A component reaches them by name at the same path on every node (/run/ferry/services/NAME,
 * /run/ferry/rom/NAME); its sessions are re-created on restore and migration (docs/sessions.md).
 */
enum ferry_service_kind {
	FERRY_SERVICE_UNIX = 1,
	FERRY_SERVICE_TCP = 2,
	FERRY_SERVICE_ROM = 3,
};

struct ferry_service {
	char name[FERRY_NAME_MAX];
	enum ferry_service_kind kind;
	char target[4096]; /* a path (unix, rom) or HOST:PORT (tcp) */
	/* unix: the service speaks the session-resume protocol (docs/sessions.md): a session
	 * ferry re-creates begins with a FERRY-RESUME line */
	bool resume;
};

/* ferry_service_kind_name - "unix", "tcp", "rom". */
const char *ferry_service_kind_name(enum ferry_service_kind k);

/* ferry_service_parse - "NAME=KIND:TARGET[,resume]" (KIND unix, tcp or rom) into *s; a ROM's
 * file must be a readable regular file, a unix path absolute, a tcp target HOST:PORT; resume
 * only for unix. */
int ferry_service_parse(const char *spec, struct ferry_service *s, struct ferry_error *err);

/*
 * ferry_services_config - add the services of a configuration file to *list (*n of them): one
 * a line, "service NAME KIND:TARGET [resume]"; blank lines and lines from '#' on are ignored. An
 * error names the file and line.
 */
int ferry_services_config(const char *path, struct ferry_service **list, size_t *n,
                          struct ferry_error *err);

/* ferry_services_publish - the node's services, for its CLI and its components' monitors
 * (STATE_DIR/.services, replaced atomically); two of one name are refused. */
int ferry_services_publish(const struct ferry_runtime *rt, const struct ferry_service *list,
                           size_t n, struct ferry_error *err);

/* ferry_services_list - the services the node published (none if it published none). */
int ferry_services_list(const struct ferry_runtime *rt, struct ferry_service **ret, size_t *ret_n,
                        struct ferry_error *err);

/* ferry_service_status - whether this node's instance is there now: a ROM's size, a socket
 * that accepts a connection (tcp: within 200 ms); 1 up, 0 down, detail says what was seen. */
int ferry_service_status(const struct ferry_service *s, char *detail, size_t len);

enum ferry_migrate_mode {
	FERRY_MIGRATE_PRECOPY = 0,
	FERRY_MIGRATE_STOP_AND_COPY = 1,
	FERRY_MIGRATE_POSTCOPY = 2,
};

/* What a migration is doing, for progress displays. */
struct ferry_migrate_progress {
	const char *phase; /* "setup", "precopy", "stop", "handover", "done" */
	uint32_t round;
	uint64_t bytes;            /* sent so far over the wire */
	uint64_t rate;             /* bytes/s measured on the link */
	uint64_t dirty_rate;       /* bytes/s the component writes */
	uint64_t expected_down_ns; /* if it were stopped now */
};

struct ferry_migrate_opts {
	enum ferry_migrate_mode mode;
	unsigned max_downtime_ms; /* pre-copy: stop once the rest fits (0: 20 ms) */
	unsigned max_rounds;      /* pre-copy: at most this many rounds (0: 30) */
	bool carry_files;         /* send open files the destination lacks or has otherwise */
	bool compress;            /* zstd on the stream */
	void (*progress)(void *arg, const struct ferry_migrate_progress *p);
	void *progress_arg;
};

struct ferry_migrate_stats {
	char id[33];
	char dest_node[FERRY_NODE_NAME_MAX];
	pid_t dest_pid;         /* host pid of the component on the destination */
	uint64_t total_ns;      /* request -> running at the destination */
	uint64_t setup_ns;      /* connection, authentication, offer */
	uint64_t downtime_ns;   /* frozen at the source -> running at the destination */
	uint64_t restore_ns;    /* of the downtime: the destination's restore */
	uint64_t bytes_precopy; /* wire bytes sent while the component ran */
	uint64_t bytes_downtime;
	uint64_t bytes_postcopy;
	uint64_t bytes_total;
	uint32_t rounds;
	uint64_t dirty_rate; /* bytes/s written by the component during pre-copy (last round) */
	uint64_t rate;       /* bytes/s of the link */
	uint32_t files_carried;
	bool confirmed;       /* the destination said the component runs */
	char post_error[256]; /* post-copy: why streaming the rest failed after the hand-over */
};

/*
 * ferry_migrate - move component NAME of node n to the node at `to` (HOST:PORT). On any
 * failure before the hand-over the component runs on here, unharmed; after it, it runs only
 * at the destination. Runs in the calling process (ferryd runs it in a worker).
 */
int ferry_migrate(const struct ferry_node *n, const char *name, const char *to,
                  const struct ferry_migrate_opts *o, struct ferry_migrate_stats *ret,
                  struct ferry_error *err);

/* ferry_migrate_request - ask the local node (ferryd of state dir rt) to migrate NAME, with
 * progress reported to o->progress as it goes. */
int ferry_migrate_request(const struct ferry_runtime *rt, const char *name, const char *to,
                          const struct ferry_migrate_opts *o, struct ferry_migrate_stats *ret,
                          struct ferry_error *err);

#ifdef __cplusplus
}
#endif
