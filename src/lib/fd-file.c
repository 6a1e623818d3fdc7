/* Regular files and directories reopened by path; the runtime's log; memfds. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include "fds.h"
#include "task.h"
#include "util.h"

#define REOPEN_MASK (~(uint32_t)(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY))

static bool file_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return (S_ISREG(fi->st.st_mode) || S_ISDIR(fi->st.st_mode)) && fi->link[0] == '/' &&
	       !strstr(fi->link, " (deleted)");
}

/*
 * Locks taken through this open file (POSIX record locks of the process, flock and open file
 * description locks), from the "lock:" lines of its fdinfo, as triples (LK_* flags, start, end)
 * in e->extra. fdinfo lists a lock under the open file it was taken through, so every lock is
 * seen once. Not /proc/locks: reading it costs an RCU grace period (it takes the file lock
 * rwsem for writing), milliseconds inside the freeze, and it does not name OFD locks' owners.
 */
#define LK_WRITE (1u << 0) /* an exclusive lock, else shared */
#define LK_FLOCK (1u << 1) /* flock() */
#define LK_OFD   (1u << 2) /* an open file description lock (F_OFD_SETLK) */

static int locks_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                         struct ferry_error *err)
{
	_cleanup_free_ char *info = NULL;
	uint64_t v[48];
	uint32_t n = 0;

	if (fds_fdinfo(ctx->p->host_pid, fi->fd, &info) < 0)
		return 0;
	for (char *l = strstr(info, "lock:\t"); l; l = strstr(l + 1, "lock:\t")) {
		char kind[16], mode[16], rw[16], end[32];
		unsigned long long start;
		if (sscanf(l, "lock:\t%*d: %15s %15s %15s %*d %*x:%*x:%*u %llu %31s", kind, mode,
		           rw, &start, end) != 5)
			continue;
		uint64_t f = strcmp(rw, "WRITE") == 0 ? LK_WRITE : 0;
		if (strcmp(kind, "FLOCK") == 0)
			f |= LK_FLOCK;
		else if (strcmp(kind, "OFDLCK") == 0)
			f |= LK_OFD;
		else if (strcmp(kind, "POSIX") != 0)
			return ferr(err, -ENOTSUP, "%s holds a %s lock (unsupported)", fi->link,
			            kind);
		if (n + 3 > ARRAY_SIZE(v))
			return ferr(err, -ENOTSUP, "%s: more than 16 locks (unsupported)",
			            fi->link);
		v[n++] = f;
		v[n++] = start;
		v[n++] = strcmp(end, "EOF") == 0 ? UINT64_MAX : strtoull(end, NULL, 10);
	}
	return n ? fds_set_extra(e, v, n, err) : 0;
}

int fd_file_relock(struct restorer *rs, const struct process *p, struct ferry_error *err)
{
	/*
	 * Last of all, by the restored process itself: a POSIX lock is dropped when the process
	 * closes any fd of the file, and restore closes temporary fds until the very end.
	 */
	for (size_t k = 0; k < p->nfds; k++) {
		const struct fd_entry *e = &p->fds[k];
		if (e->kind != FD_FILE || e->dup_of >= 0)
			continue;
		for (uint32_t i = 0; i + 2 < e->nextra; i += 3) {
			uint64_t f = e->extra[i], start = e->extra[i + 1], end = e->extra[i + 2];
			long r;
			if (f & LK_FLOCK) {
				r = rs_sys(rs, "flock", SYS_flock, (uint64_t)e->fd,
				           (f & LK_WRITE ? LOCK_EX : LOCK_SH) | LOCK_NB, 0, 0, 0, 0,
				           err);
			} else {
				struct flock fl = {
				        .l_type = f & LK_WRITE ? F_WRLCK : F_RDLCK,
				        .l_whence = SEEK_SET,
				        .l_start = (off_t)start,
				        .l_len = end == UINT64_MAX ? 0 : (off_t)(end - start + 1)};
				int w = tracee_poke(rs->pid, rs->scratch, &fl, sizeof(fl));
				if (w < 0)
					return ferr(err, w, "scratch write: %s", strerror(-w));
				r = rs_sys(rs, "fcntl(F_SETLK)", SYS_fcntl, (uint64_t)e->fd,
				           f & LK_OFD ? F_OFD_SETLK : F_SETLK, rs->scratch, 0, 0, 0,
				           err);
			}
			if (r < 0)
				return ferr_prefix(
				        err, "fd %d %s: taking its lock again (held by another?)",
				        e->fd, e->path);
		}
	}
	return 0;
}

static int file_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                        struct ferry_error *err)
{
	e->path = strdup(fi->link);
	if (!e->path)
		return ferr(err, -ENOMEM, "out of memory");
	e->fid.dev = (uint64_t)fi->st.st_dev;
	e->fid.ino = fi->st.st_ino;
	e->fid.size = (uint64_t)fi->st.st_size;
	return S_ISREG(fi->st.st_mode) ? locks_capture(ctx, fi, e, err) : 0;
}

static int reopen(const char *path, const struct fd_entry *e, struct ferry_error *err)
{
	int fd = open(path, (int)(e->flags & REOPEN_MASK) | O_CLOEXEC);
	if (fd < 0)
		return ferr(err, -errno, "open %s: %m", path);
	if (!(e->flags & O_APPEND) && !S_ISDIR(e->mode) && lseek(fd, (off_t)e->pos, SEEK_SET) < 0) {
		int r = -errno;
		safe_close(fd);
		return ferr(err, r, "%s: seek to %" PRIu64 ": %s", path, e->pos, strerror(-r));
	}
	return fd;
}

static int file_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                        struct ferry_error *err)
{
	return reopen(e->path, e, err); /* its locks come last: fd_file_relock */
}

static void file_describe(const struct fd_entry *e, char *buf, size_t len)
{
	size_t n = (size_t)snprintf(buf, len, "%s %s, offset %" PRIu64,
	                            S_ISDIR(e->mode) ? "directory" : "file",
	                            e->path ? e->path : "?", e->pos);
	for (uint32_t i = 0; i + 2 < e->nextra && n < len; i += 3)
		n += (size_t)snprintf(buf + n, len - n, ", %s %s lock",
		                      e->extra[i] & LK_WRITE ? "write" : "read",
		                      e->extra[i] & LK_FLOCK ? "flock"
		                      : e->extra[i] & LK_OFD ? "OFD"
		                                             : "POSIX");
}

const struct fd_ops fd_file_ops = {
        .name = "file",
        .kind = FD_FILE,
        .probe = file_probe,
        .capture = file_capture,
        .restore = file_restore,
        .describe = file_describe,
};

/* The log: the component's stdout/stderr, a file the runtime owns and re-points on restore. */
static bool log_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	struct stat sb;
	return ctx->log_path && S_ISREG(fi->st.st_mode) && stat(ctx->log_path, &sb) == 0 &&
	       sb.st_dev == fi->st.st_dev && sb.st_ino == fi->st.st_ino;
}

static int log_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                       struct ferry_error *err)
{
	if (!ctx->log_path)
		return ferr(err, -EINVAL, "no log to attach to");
	return reopen(ctx->log_path, e, err);
}

static void log_describe(const struct fd_entry *e, char *buf, size_t len)
{
	snprintf(buf, len, "the runtime's log of this component (ferry logs)");
}

const struct fd_ops fd_log_ops = {
        .name = "log",
        .kind = FD_LOG,
        .probe = log_probe,
        .capture = file_capture,
        .restore = log_restore,
        .describe = log_describe,
};

/* memfd: its data lives in the shmem table, shared with any mapping of it. */
static bool memfd_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return S_ISREG(fi->st.st_mode) && strncmp(fi->link, "/memfd:", 7) == 0;
}

static int memfd_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                         struct ferry_error *err)
{
	char path[64], name[256];
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", ctx->p->host_pid, fi->fd);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ferr(err, -errno, "reopening %s: %m", path);
	snprintf(name, sizeof(name), "%s", fi->link + 7);
	char *del = strstr(name, " (deleted)");
	if (del)
		*del = '\0';
	int idx = shmem_lookup(ctx->c, fd, SHMEM_MEMFD, name, ctx->w, ctx->st, err);
	if (idx < 0)
		return idx;
	e->shmem = idx;
	e->path = strdup(fi->link);
	return e->path ? 0 : ferr(err, -ENOMEM, "out of memory");
}

static int memfd_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                         struct ferry_error *err)
{
	char path[64];
	int src = ctx->shmem_fd[e->shmem];
	/* a new open file description of the same memfd, with this fd's own flags and offset */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", src);
	return reopen(path, e, err);
}

static void memfd_describe(const struct fd_entry *e, char *buf, size_t len)
{
	snprintf(buf, len, "memfd %s (shared memory object #%d), offset %" PRIu64,
	         e->path ? e->path : "?", e->shmem, e->pos);
}

const struct fd_ops fd_memfd_ops = {
        .name = "memfd",
        .kind = FD_MEMFD,
        .probe = memfd_probe,
        .capture = memfd_capture,
        .restore = memfd_restore,
        .describe = memfd_describe,
};
