/* Regular files and directories reopened by path; the runtime's log; memfds. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fds.h"
#include "task.h"
#include "util.h"

#define REOPEN_MASK (~(uint32_t)(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY))

static bool file_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return (S_ISREG(fi->st.st_mode) || S_ISDIR(fi->st.st_mode)) && fi->link[0] == '/' &&
	       !strstr(fi->link, " (deleted)");
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
	return 0;
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

static int file_restore(const struct fd_entry *e, const struct fd_restore_ctx *ctx,
                        struct ferry_error *err)
{
	return reopen(e->path, e, err);
}

static void file_describe(const struct fd_entry *e, char *buf, size_t len)
{
	snprintf(buf, len, "%s %s, offset %" PRIu64, S_ISDIR(e->mode) ? "directory" : "file",
	         e->path ? e->path : "?", e->pos);
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

static int log_restore(const struct fd_entry *e, const struct fd_restore_ctx *ctx,
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

static int memfd_restore(const struct fd_entry *e, const struct fd_restore_ctx *ctx,
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
