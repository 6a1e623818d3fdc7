/* epoll: every registered fd with its events and data, re-registered after the other fds. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "fds.h"
#include "util.h"

static bool epoll_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return strcmp(fi->link, "anon_inode:[eventpoll]") == 0;
}

/* fdinfo lines "tfd:        5 events:       19 data:                5  pos:0 ino:40e sdev:f" */
static int epoll_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                         struct ferry_error *err)
{
	_cleanup_free_ char *info = NULL;
	_cleanup_free_ uint64_t *v = NULL;
	uint32_t n = 0, cap = 0;
	int r = fds_fdinfo(ctx->p->host_pid, fi->fd, &info);

	if (r < 0)
		return ferr(err, r, "fdinfo: %s", strerror(-r));
	for (const char *l = strstr(info, "tfd:"); l; l = strstr(l + 4, "tfd:")) {
		int tfd;
		unsigned events;
		unsigned long long data;
		if (sscanf(l, "tfd: %d events: %x data: %llx", &tfd, &events, &data) != 3)
			return ferr(err, -EPROTO, "unexpected epoll fdinfo line");
		/* the target must be an fd of the process: it is re-registered by number */
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/fd/%d", ctx->p->host_pid, tfd);
		if (access(path, F_OK) < 0)
			return ferr(err, -ENOTSUP,
			            "watches fd %d, which is closed (the file lives on only in "
			            "the epoll set: unsupported)",
			            tfd);
		if (n + 3 > cap) {
			cap = cap ? cap * 2 : 24;
			uint64_t *nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				return ferr(err, -ENOMEM, "out of memory");
			v = nv;
		}
		v[n++] = (uint64_t)tfd;
		v[n++] = events;
		v[n++] = data;
	}
	return fds_set_extra(e, v, n, err);
}

static int epoll_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                         struct ferry_error *err)
{
	int fd = epoll_create1(EPOLL_CLOEXEC);
	if (fd < 0)
		return ferr(err, -errno, "epoll_create1: %m");
	for (uint32_t i = 0; i + 2 < e->nextra; i += 3) {
		struct epoll_event ev = {.events = (uint32_t)e->extra[i + 1],
		                         .data.u64 = e->extra[i + 2]};
		if (epoll_ctl(fd, EPOLL_CTL_ADD, (int)e->extra[i], &ev) < 0) {
			int r = -errno;
			safe_close(fd);
			return ferr(err, r, "epoll: watching fd %d again: %s", (int)e->extra[i],
			            strerror(-r));
		}
	}
	return fd;
}

static void epoll_describe(const struct fd_entry *e, char *buf, size_t len)
{
	size_t n = (size_t)snprintf(buf, len, "epoll watching");
	if (e->nextra < 3)
		snprintf(buf + n, len - n, " nothing");
	for (uint32_t i = 0; i + 2 < e->nextra && n < len; i += 3)
		n += (size_t)snprintf(
		        buf + n, len - n, "%s fd %d (events 0x%" PRIx64 ", data 0x%" PRIx64 ")",
		        i ? "," : "", (int)e->extra[i], e->extra[i + 1], e->extra[i + 2]);
}

static int epoll_kernel_probe(char *detail, size_t len)
{
	char path[64];
	_cleanup_free_ char *info = NULL;
	_cleanup_close_ int ep = epoll_create1(EPOLL_CLOEXEC);
	_cleanup_close_ int ev = eventfd(0, EFD_CLOEXEC);
	struct epoll_event e = {.events = EPOLLIN, .data.u64 = 0xfe};
	unsigned long long data = 0;
	int tfd = -1;
	unsigned events;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ep);
	bool ok = ep >= 0 && ev >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0 &&
	          read_file(path, &info, NULL) == 0 && strstr(info, "tfd:") &&
	          sscanf(strstr(info, "tfd:"), "tfd: %d events: %x data: %llx", &tfd, &events,
	                 &data) == 3 &&
	          tfd == ev && data == 0xfe;
	snprintf(detail, len, "%s",
	         ok ? "watched fds, events and data readable in fdinfo"
	            : "unexpected epoll fdinfo");
	return ok;
}

const struct fd_ops fd_epoll_ops = {
        .kernel_probe = epoll_kernel_probe,
        .name = "epoll",
        .kind = FD_EPOLL,
        .probe = epoll_probe,
        .capture = epoll_capture,
        .restore = epoll_restore,
        .describe = epoll_describe,
        .late = true,
};
