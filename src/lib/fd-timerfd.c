/* timerfd: clock, time left, interval and expirations not yet read. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>

#include "fds.h"
#include "util.h"

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif

enum { TM_CLOCK, TM_TICKS, TM_FLAGS, TM_VAL_S, TM_VAL_NS, TM_INT_S, TM_INT_NS, TM_N };

static bool timerfd_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return strcmp(fi->link, "anon_inode:[timerfd]") == 0;
}

/* "it_value: (1, 999818949)" */
static int pair(const char *info, const char *key, uint64_t *s, uint64_t *ns)
{
	const char *p = strstr(info, key);
	unsigned long long a, b;
	if (!p || sscanf(p + strlen(key), ": (%llu, %llu)", &a, &b) != 2)
		return -EPROTO;
	*s = a;
	*ns = b;
	return 0;
}

static int timerfd_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                           struct ferry_error *err)
{
	_cleanup_free_ char *info = NULL;
	uint64_t v[TM_N] = {0};
	int r = fds_fdinfo(ctx->p->host_pid, fi->fd, &info);

	if (r < 0)
		return ferr(err, r, "fdinfo: %s", strerror(-r));
	if (fds_fdinfo_u64(info, "clockid", 10, &v[TM_CLOCK]) < 0 ||
	    fds_fdinfo_u64(info, "ticks", 10, &v[TM_TICKS]) < 0 ||
	    fds_fdinfo_u64(info, "settime flags", 8, &v[TM_FLAGS]) < 0 ||
	    pair(info, "it_value", &v[TM_VAL_S], &v[TM_VAL_NS]) < 0 ||
	    pair(info, "it_interval", &v[TM_INT_S], &v[TM_INT_NS]) < 0)
		return ferr(err, -EPROTO, "unexpected timerfd fdinfo");
	if (v[TM_FLAGS] & TFD_TIMER_CANCEL_ON_SET)
		return ferr(err, -ENOTSUP, "timerfd with TFD_TIMER_CANCEL_ON_SET (unsupported)");
	return fds_set_extra(e, v, TM_N, err);
}

static int timerfd_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                           struct ferry_error *err)
{
	if (e->nextra < TM_N)
		return ferr(err, -EPROTO, "timerfd record without its values");
	const uint64_t *v = e->extra;
	int fd = timerfd_create((int)v[TM_CLOCK],
	                        TFD_CLOEXEC | (e->flags & O_NONBLOCK ? TFD_NONBLOCK : 0));
	if (fd < 0)
		return ferr(err, -errno, "timerfd_create(clock %" PRIu64 "): %m", v[TM_CLOCK]);
	/* the time left, relative: the time the component spent frozen does not count */
	struct itimerspec its = {
	        .it_interval = {(time_t)v[TM_INT_S], (long)v[TM_INT_NS]},
	        .it_value = {(time_t)v[TM_VAL_S], (long)v[TM_VAL_NS]},
	};
	if ((its.it_value.tv_sec || its.it_value.tv_nsec) && timerfd_settime(fd, 0, &its, NULL) < 0)
		goto fail;
	if (v[TM_TICKS] && ioctl(fd, TFD_IOC_SET_TICKS, &v[TM_TICKS]) < 0)
		goto fail;
	return fd;
fail:;
	int r = -errno;
	safe_close(fd);
	return ferr(err, r, "timerfd: arming: %s", strerror(-r));
}

static void timerfd_describe(const struct fd_entry *e, char *buf, size_t len)
{
	if (e->nextra < TM_N) {
		snprintf(buf, len, "timerfd");
		return;
	}
	const uint64_t *v = e->extra;
	const char *clk = v[TM_CLOCK] == 0   ? "CLOCK_REALTIME"
	                  : v[TM_CLOCK] == 1 ? "CLOCK_MONOTONIC"
	                  : v[TM_CLOCK] == 7 ? "CLOCK_BOOTTIME"
	                                     : "clock";
	if (!v[TM_VAL_S] && !v[TM_VAL_NS])
		snprintf(buf, len, "timerfd %s, disarmed, %" PRIu64 " expirations unread", clk,
		         v[TM_TICKS]);
	else
		snprintf(buf, len,
		         "timerfd %s, fires in %" PRIu64 ".%03" PRIu64 " s, then every %" PRIu64
		         ".%03" PRIu64 " s, %" PRIu64 " expirations unread",
		         clk, v[TM_VAL_S], v[TM_VAL_NS] / 1000000, v[TM_INT_S],
		         v[TM_INT_NS] / 1000000, v[TM_TICKS]);
}

static int timerfd_kernel_probe(char *detail, size_t len)
{
	_cleanup_close_ int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	uint64_t ticks = 3, got = 0;
	bool ok = fd >= 0 && ioctl(fd, TFD_IOC_SET_TICKS, &ticks) == 0 &&
	          read(fd, &got, sizeof(got)) == (ssize_t)sizeof(got) && got == 3;
	snprintf(detail, len, "%s",
	         ok ? "TFD_IOC_SET_TICKS restores unread expirations"
	            : "TFD_IOC_SET_TICKS missing (CONFIG_CHECKPOINT_RESTORE)");
	return ok;
}

const struct fd_ops fd_timerfd_ops = {
        .name = "timerfd",
        .kind = FD_TIMERFD,
        .probe = timerfd_probe,
        .capture = timerfd_capture,
        .restore = timerfd_restore,
        .describe = timerfd_describe,
        .kernel_probe = timerfd_kernel_probe,
};
