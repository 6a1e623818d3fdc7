/* Small helpers shared by every subsystem: cleanup attributes, errors, clocks, safe signals. */
#pragma once

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#include "ferry/ferry.h"

#define _cleanup_(f)   __attribute__((cleanup(f)))
#define _unused_       __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_     __attribute__((noreturn))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)     ((a) < (b) ? (a) : (b))
#define MAX(a, b)     ((a) > (b) ? (a) : (b))

#define PAGE_SIZE_4K 4096UL

static inline void freep(void *p)
{
	free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

/* close(), keeping errno; EINTR from close() is not an error on Linux (the fd is gone). */
static inline int safe_close(int fd)
{
	if (fd >= 0) {
		int saved = errno;
		(void)close(fd);
		errno = saved;
	}
	return -EBADF;
}
static inline void closep(int *fd)
{
	*fd = safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

/* Hand ownership over: returns the value and leaves the variable empty. */
#define TAKE_FD(fd)                                                                                \
	({                                                                                         \
		int _fd_ = (fd);                                                                   \
		(fd) = -EBADF;                                                                     \
		_fd_;                                                                              \
	})
#define TAKE_PTR(p)                                                                                \
	({                                                                                         \
		__typeof__(p) _p_ = (p);                                                           \
		(p) = NULL;                                                                        \
		_p_;                                                                               \
	})

/* ferr_set - record code (a -errno) and a formatted message in err (which may be NULL). */
void ferr_set(struct ferry_error *err, int code, const char *fmt, ...) _printf_(3, 4);

/*
 * ferr - record an error and evaluate to its code, so callers write
 * `return ferr(err, -EINVAL, "fd %d: ...", fd);`. A macro so that analysers see the value.
 */
#define ferr(err, code, ...)                                                                       \
	({                                                                                         \
		int _ferr_code_ = (code);                                                          \
		ferr_set((err), _ferr_code_, __VA_ARGS__);                                         \
		_ferr_code_;                                                                       \
	})

/* ferr_prefix - prepend "what: " context to an already recorded message; returns err->code. */
int ferr_prefix(struct ferry_error *err, const char *fmt, ...) _printf_(2, 3);

/*
 * safe_kill - the one place ferry sends signals. Refuses pid <= 0 with -EINVAL (kill(-1) as
 * root ends every process on the machine; kill(0) the caller's own group).
 */
int safe_kill(pid_t pid, int sig);

/* safe_tgkill - thread-directed variant, same refusal for tgid or tid <= 0. */
int safe_tgkill(pid_t tgid, pid_t tid, int sig);

/* now_ns - CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);

/* cmp_u64 - qsort/bsearch order of uint64_t values. */
int cmp_u64(const void *a, const void *b);

/* read_full / write_full - loop over short transfers and EINTR; 0 or -errno (-EIO on EOF). */
/* populate - fault in the whole pages of [p, p + len) for writing, contents kept (first touches
 * of memory cost a page fault each; a migration's downtime should not pay them). */
void populate(void *p, size_t len);

int read_full(int fd, void *buf, size_t len);
int write_full(int fd, const void *buf, size_t len);
int pread_full(int fd, void *buf, size_t len, off_t off);
int pwrite_full(int fd, const void *buf, size_t len, off_t off);

/*
 * read_file - read a whole (small, e.g. /proc) file into a malloc'd NUL-terminated buffer.
 * *ret_len excludes the NUL. 0 or -errno.
 */
int read_file(const char *path, char **ret, size_t *ret_len);
int read_file_at(int dirfd, const char *path, char **ret, size_t *ret_len);

/* mkdir_p - create a directory and its parents with mode; 0 if it exists. */
int mkdir_p(const char *path, mode_t mode);

/* fsync_dir - fsync the directory containing path entries (for rename durability). */
int fsync_dir(const char *dir);

/*
 * pidfd_getfd_of - a copy of fd number fd of process pid (pidfd_open + pidfd_getfd), opened
 * O_CLOEXEC in the caller; >= 0 or -errno.
 */
int pidfd_getfd_of(pid_t pid, int fd);

/* addr_split - HOST:PORT or [V6]:PORT into host and port (node.c); 0 or -EINVAL. */
int addr_split(const char *addr, char *host, size_t hlen, char *port, size_t plen);

/* addr_resolve - HOST:PORT resolved for a stream socket (passive: to listen on); *ret freed
 * with freeaddrinfo (node.c). */
struct addrinfo;
int addr_resolve(const char *addr, bool passive, struct addrinfo **ret, struct ferry_error *err);

/*
 * ranges_push - append [s, e) to a list of ranges kept as pairs (*v has 2 * *n entries),
 * merging it into the last one when they touch. Ranges must come in address order. 0 or -ENOMEM.
 */
int ranges_push(uint64_t **v, size_t *n, uint64_t s, uint64_t e);
