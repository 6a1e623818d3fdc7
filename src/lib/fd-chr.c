/* Character devices (/dev/null, /dev/zero, /dev/urandom...), reopened by path. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "fds.h"
#include "util.h"

/* Terminals carry a session and a controlling process; they are not a plain device. */
static bool is_terminal(dev_t rdev)
{
	unsigned maj = major(rdev);
	return maj == 4 || maj == 5 || (maj >= 136 && maj <= 143);
}

static bool chr_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return S_ISCHR(fi->st.st_mode) && fi->link[0] == '/' && !is_terminal(fi->st.st_rdev);
}

static int chr_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                       struct ferry_error *err)
{
	e->path = strdup(fi->link);
	e->rdev = fi->st.st_rdev;
	return e->path ? 0 : ferr(err, -ENOMEM, "out of memory");
}

static int chr_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                       struct ferry_error *err)
{
	struct stat sb;
	int fd = open(e->path, (int)(e->flags & ~(uint32_t)(O_CREAT | O_EXCL | O_TRUNC)) |
	                               O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return ferr(err, -errno, "open %s: %m", e->path);
	if (fstat(fd, &sb) < 0 || sb.st_rdev != e->rdev) {
		safe_close(fd);
		return ferr(err, -ESTALE, "%s is device %u:%u here, %u:%u in the image", e->path,
		            major(sb.st_rdev), minor(sb.st_rdev), major(e->rdev), minor(e->rdev));
	}
	return fd;
}

static void chr_describe(const struct fd_entry *e, char *buf, size_t len)
{
	snprintf(buf, len, "character device %s (%u:%u)", e->path ? e->path : "?", major(e->rdev),
	         minor(e->rdev));
}

const struct fd_ops fd_chr_ops = {
        .name = "chr",
        .kind = FD_CHR,
        .probe = chr_probe,
        .capture = chr_capture,
        .restore = chr_restore,
        .describe = chr_describe,
};
