/* signalfd: the set of signals it accepts (the signals themselves stay pending in the queues). */
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>

#include "fds.h"
#include "util.h"

static bool signalfd_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return strcmp(fi->link, "anon_inode:[signalfd]") == 0;
}

static int signalfd_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi,
                            struct fd_entry *e, struct ferry_error *err)
{
	_cleanup_free_ char *info = NULL;
	uint64_t mask;
	int r = fds_fdinfo(ctx->p->host_pid, fi->fd, &info);

	if (r < 0)
		return ferr(err, r, "fdinfo: %s", strerror(-r));
	if (fds_fdinfo_u64(info, "sigmask", 16, &mask) < 0)
		return ferr(err, -EPROTO, "fdinfo has no sigmask");
	return fds_set_extra(e, &mask, 1, err);
}

static int signalfd_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                            struct ferry_error *err)
{
	sigset_t set;
	sigemptyset(&set);
	for (int sig = 1; e->nextra && sig <= 64; sig++)
		if (e->extra[0] & (1ULL << (sig - 1)))
			sigaddset(&set, sig);
	int fd = signalfd(-1, &set, SFD_CLOEXEC | (e->flags & O_NONBLOCK ? SFD_NONBLOCK : 0));
	if (fd < 0)
		return ferr(err, -errno, "signalfd: %m");
	return fd;
}

static void signalfd_describe(const struct fd_entry *e, char *buf, size_t len)
{
	size_t n = (size_t)snprintf(buf, len, "signalfd for");
	for (int sig = 1; e->nextra && sig <= 64 && n < len; sig++)
		if (e->extra[0] & (1ULL << (sig - 1))) {
			const char *ab = sigabbrev_np(sig);
			n += (size_t)(ab ? snprintf(buf + n, len - n, " SIG%s", ab)
			                 : snprintf(buf + n, len - n, " %d", sig));
		}
}

static int signalfd_kernel_probe(char *detail, size_t len)
{
	char path[64];
	_cleanup_free_ char *info = NULL;
	sigset_t set;
	uint64_t mask = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	_cleanup_close_ int fd = signalfd(-1, &set, SFD_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	bool ok = fd >= 0 && read_file(path, &info, NULL) == 0 &&
	          fds_fdinfo_u64(info, "sigmask", 16, &mask) == 0 && mask == 1ULL << (SIGUSR2 - 1);
	snprintf(detail, len, "%s", ok ? "signal mask readable in fdinfo" : "no sigmask in fdinfo");
	return ok;
}

const struct fd_ops fd_signalfd_ops = {
        .kernel_probe = signalfd_kernel_probe,
        .name = "signalfd",
        .kind = FD_SIGNALFD,
        .probe = signalfd_probe,
        .capture = signalfd_capture,
        .restore = signalfd_restore,
        .describe = signalfd_describe,
};
