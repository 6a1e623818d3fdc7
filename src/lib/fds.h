/* The fd table: one ops table per kind of kernel object, dispatched from here. */
#pragma once

#include <stdbool.h>
#include <sys/stat.h>

#include "mem.h"
#include "model.h"

/* What capture knows of one fd before any kind claims it. */
struct fd_info {
	int fd;
	char link[PATH_MAX]; /* readlink of /proc/PID/fd/N */
	struct stat st;      /* stat through that link */
	uint32_t flags;      /* fdinfo flags without O_CLOEXEC */
	uint32_t cloexec;
	uint64_t pos;
	/* a socket, read once for every kind's probe (-1: not a socket, or unreadable) */
	int sock_domain, sock_type, sock_proto;
	bool sock_listening, sock_connected;
};

/* Sockets a capture changed while the component is frozen (TCP connections in repair mode):
 * our copies, released when it runs on or ends (fds_held_release). */
struct fd_held {
	int *fd;
	size_t n;
};

struct fd_capture_ctx {
	struct component *c;
	struct process *p;
	struct image_writer *w;
	struct mem_stats *st;
	const char *log_path; /* this component's log in the runtime */
	struct fd_held *held; /* where a kind keeps what the thaw must undo */
	bool inflight;        /* p is ours, its fd a file in flight (fds_inflight_resolve) */
};

/* An object restored once and shared by several fds (both ends of a pipe). */
struct fd_stash {
	uint64_t id; /* identity at capture (inode) */
	int fd[2];
	/* a socket pair whose queues carry files in flight, or a client whose connection waits
	 * to be accepted: done once every fd is in place (fd_unix_fill_all) */
	const struct fd_entry *fill;
};

struct fd_restore_ctx {
	const char *log_path; /* the restoring runtime's log for the component */
	const int *shmem_fd;  /* fds of shmem objects in the helper */
	int pages_fd;         /* the image's page file (data of pipes), in the helper */
	int stash_lo;         /* stashed objects live at fds >= this (above every image fd) */
	int share_lo;         /* the open file descriptions of a tree: share k at share_lo + k */
	struct fd_stash *stash;
	size_t nstash;
	const struct fd_entry *inflight; /* component.inflight */
	size_t ninflight;
	pid_t monitor_pid; /* the restoring monitor (host pid): relays of sessions (relay.c) */
	bool relay_all;    /* every unix session through a relay (a migration's) */
};

struct fd_ops {
	const char *name;
	uint32_t kind;
	/* probe: does this kind handle the fd? */
	bool (*probe)(const struct fd_info *fi, const struct fd_capture_ctx *ctx);
	int (*capture)(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
	               struct ferry_error *err);
	/* restore: runs in the restore helper; returns a new fd for e (placed by the caller) */
	int (*restore)(const struct fd_entry *e, struct fd_restore_ctx *ctx,
	               struct ferry_error *err);
	/* describe: the fd's meaning in words, for inspect and caps */
	void (*describe)(const struct fd_entry *e, char *buf, size_t len);
	/* restored after every other kind (it refers to other fds by number) */
	bool late;
	/* early (optional): restored before every other fd (a connection accepted from a
	 * listener, made through its name before the listener takes it) */
	bool (*early)(const struct fd_entry *e);
	/* kernel_probe (optional): does this kernel give what capture and restore need?
	 * 1 yes, 0 no; detail says what was seen (`ferry check`) */
	int (*kernel_probe)(char *detail, size_t len);
};

extern const struct fd_ops fd_file_ops, fd_log_ops, fd_memfd_ops, fd_chr_ops, fd_eventfd_ops,
        fd_timerfd_ops, fd_signalfd_ops, fd_epoll_ops, fd_pipe_ops, fd_deleted_ops, fd_inet_ops,
        fd_inotify_ops, fd_tcp_ops, fd_unix_ops, fd_fifo_ops, fd_session_ops;

/* fds_hold - keep fd (ours) until the component runs on or ends; on failure it stays the
 * caller's. */
int fds_hold(struct fd_capture_ctx *ctx, int fd);

/*
 * fds_held_release - the component runs on (resume: each connection leaves repair mode and
 * takes segments again) or has ended (its connections close without a FIN or RST, for a
 * restore to take over). h is emptied.
 */
void fds_held_release(struct fd_held *h, bool resume);

/*
 * fds_held_lock - before a component whose connections are held ends: each one's incoming
 * segments are dropped by the network lock (netlock.c) until a restore takes it over.
 */
int fds_held_lock(struct fd_held *h, struct ferry_error *err);

/* fd_tcp_ends - the two addresses of a held connection. */
struct netlock_conn;
int fd_tcp_ends(int fd, struct netlock_conn *c, struct ferry_error *err);

/* fd_tcp_release - one connection held by a capture, released (see fds_held_release). */
void fd_tcp_release(int fd, bool resume);

/* fds_fdinfo - /proc/PID/fdinfo/FD as text (malloc'd, NUL-terminated). */
int fds_fdinfo(pid_t pid, int fd, char **ret);

/* fds_fdinfo_u64 - the number after "key:" in fdinfo text (base 0: 0x, 0 prefixes honoured). */
int fds_fdinfo_u64(const char *info, const char *key, int base, uint64_t *ret);

/* fds_sockopt - an int socket option (-1 if it cannot be read). */
int fds_sockopt(int s, int level, int name);

/* fds_sockaddr_str - "1.2.3.4:80" or "[::1]:80" of a sockaddr kept as alen bytes at a. */
void fds_sockaddr_str(const uint64_t *a, uint64_t alen, char *buf, size_t len);

/* fds_set_extra - copy n numbers into e->extra. */
int fds_set_extra(struct fd_entry *e, const uint64_t *v, uint32_t n, struct ferry_error *err);

/* fds_kinds - the table of kinds (for ferry check); *ret_n entries. */
const struct fd_ops *const *fds_kinds(size_t *ret_n);

/* fds_capture - every fd of p; an fd no kind handles fails with "fd N: LINK: unsupported ...". */
int fds_capture(struct fd_capture_ctx *ctx, struct ferry_error *err);

/* fds_restore - open every fd of p at its number (in the helper); fds >= limit are untouched. */
int fds_restore(const struct process *p, struct fd_restore_ctx *ctx, struct ferry_error *err);

/*
 * fds_restore_shared - in the root of a tree, before it forks: every shared open file
 * description (fd_entry.share) made once, at ctx->share_lo + its index, for fds_restore in each
 * process to dup3 to its numbers.
 */
int fds_restore_shared(const struct component *c, struct fd_restore_ctx *ctx,
                       struct ferry_error *err);

/*
 * fds_inflight_resolve - once every process is captured: each file in flight (component.inflight,
 * our copies in inflight_local) is found among the fds of the processes (the same open file
 * description), or else captured like an fd of its own. base gives the writer and statistics.
 */
int fds_inflight_resolve(const struct fd_capture_ctx *base, struct ferry_error *err);

/*
 * fd_unix_preview - once, while a frozen component's fds are captured: a copy of every file in
 * flight in the queues of its Unix sockets (component.inflight_pre), for the capture of a pipe
 * whose other end is in no process (it may be in flight).
 */
int fd_unix_preview(struct component *c, struct ferry_error *err);

/*
 * fd_unix_fill_all - once every fd is in place: the queues of the pairs that carry files in
 * flight (SCM_RIGHTS), then the connections waiting to be accepted (their clients connect to
 * the listeners again, in queue order).
 */
int fd_unix_fill_all(struct fd_restore_ctx *ctx, struct ferry_error *err);

/* fds_stash_drop - close the objects restored once for several fds (their extra copies). */
void fds_stash_drop(struct fd_restore_ctx *ctx);

/* fds_ops_of - the ops of an fd_entry's kind (NULL if unknown). */
const struct fd_ops *fds_ops_of(uint32_t kind);

/* fds_flags_str - "O_WRONLY|O_APPEND" style rendering of open flags. */
void fds_flags_str(uint32_t flags, char *buf, size_t len);

/* fd_file_relock - take the files' POSIX and flock locks again, by injected calls, once every
 * temporary fd of the restore is closed. */
int fd_file_relock(struct restorer *rs, const struct process *p, struct ferry_error *err);
