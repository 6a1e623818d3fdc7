/* eventfd: its counter and semaphore mode. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>

#include "fds.h"
#include "util.h"

enum { EV_COUNT, EV_SEMAPHORE, EV_N };

static bool eventfd_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return strcmp(fi->link, "anon_inode:[eventfd]") == 0;
}

static int eventfd_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                           struct ferry_error *err)
{
	_cleanup_free_ char *info = NULL;
	uint64_t v[EV_N] = {0};
	int r = fds_fdinfo(ctx->p->host_pid, fi->fd, &info);

	if (r < 0)
		return ferr(err, r, "fdinfo: %s", strerror(-r));
	if (fds_fdinfo_u64(info, "eventfd-count", 16, &v[EV_COUNT]) < 0)
		return ferr(err, -EPROTO, "fdinfo has no eventfd-count");
	(void)fds_fdinfo_u64(info, "eventfd-semaphore", 10, &v[EV_SEMAPHORE]);
	return fds_set_extra(e, v, EV_N, err);
}

static int eventfd_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                           struct ferry_error *err)
{
	if (e->nextra < EV_N)
		return ferr(err, -EPROTO, "eventfd record without its counter");
	int flags = EFD_CLOEXEC | (e->flags & O_NONBLOCK ? EFD_NONBLOCK : 0) |
	            (e->extra[EV_SEMAPHORE] ? EFD_SEMAPHORE : 0);
	int fd = eventfd(0, flags);
	if (fd < 0)
		return ferr(err, -errno, "eventfd: %m");
	/* the counter may exceed eventfd()'s unsigned int: add it with a write */
	uint64_t count = e->extra[EV_COUNT];
	if (count && write(fd, &count, sizeof(count)) != (ssize_t)sizeof(count)) {
		int r = -errno;
		safe_close(fd);
		return ferr(err, r, "eventfd: setting the counter to %" PRIu64 ": %s", count,
		            strerror(-r));
	}
	return fd;
}

static void eventfd_describe(const struct fd_entry *e, char *buf, size_t len)
{
	snprintf(buf, len, "eventfd, counter %" PRIu64 "%s", e->nextra ? e->extra[EV_COUNT] : 0,
	         e->nextra > EV_SEMAPHORE && e->extra[EV_SEMAPHORE] ? " (semaphore)" : "");
}

static int eventfd_kernel_probe(char *detail, size_t len)
{
	char path[64];
	_cleanup_free_ char *info = NULL;
	uint64_t v = 0;
	_cleanup_close_ int fd = eventfd(5, EFD_CLOEXEC);

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	bool ok = fd >= 0 && read_file(path, &info, NULL) == 0 &&
	          fds_fdinfo_u64(info, "eventfd-count", 16, &v) == 0 && v == 5;
	snprintf(detail, len, "%s",
	         ok ? "counter readable in fdinfo" : "no eventfd-count in fdinfo");
	return ok;
}

const struct fd_ops fd_eventfd_ops = {
        .name = "eventfd",
        .kind = FD_EVENTFD,
        .probe = eventfd_probe,
        .capture = eventfd_capture,
        .restore = eventfd_restore,
        .describe = eventfd_describe,
        .kernel_probe = eventfd_kernel_probe,
};
