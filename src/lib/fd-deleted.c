/* Regular files deleted while open: their content travels in the image. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fds.h"
#include "util.h"

/* e->extra: where the content is in the page file, its size and checksum */
enum { DL_OFF, DL_LEN, DL_CSUM, DL_N };
#define MAX_DELETED (256ULL << 20)
#define SUFFIX      " (deleted)"

static bool deleted_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	size_t n = strlen(fi->link), s = strlen(SUFFIX);
	return S_ISREG(fi->st.st_mode) && fi->link[0] == '/' && n > s &&
	       strcmp(fi->link + n - s, SUFFIX) == 0 && fi->st.st_nlink == 0 &&
	       strncmp(fi->link, "/memfd:", 7) != 0;
}

static int deleted_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                           struct ferry_error *err)
{
	uint64_t v[DL_N] = {0, (uint64_t)fi->st.st_size, 0};
	char path[64];

	if (v[DL_LEN] > MAX_DELETED)
		return ferr(err, -EFBIG,
		            "%s: %" PRIu64 " bytes, more than a deleted file may carry", fi->link,
		            v[DL_LEN]);
	e->path = strndup(fi->link, strlen(fi->link) - strlen(SUFFIX));
	if (!e->path)
		return ferr(err, -ENOMEM, "out of memory");
	if (v[DL_LEN] && ctx->w) {
		snprintf(path, sizeof(path), "/proc/%d/fd/%d", ctx->p->host_pid, fi->fd);
		_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
		_cleanup_free_ uint8_t *data = malloc(v[DL_LEN]);
		if (fd < 0 || !data)
			return ferr(err, fd < 0 ? -errno : -ENOMEM, "%s: %m", fi->link);
		int r = pread_full(fd, data, v[DL_LEN], 0);
		if (r < 0)
			return ferr(err, r, "%s: reading its content: %s", fi->link, strerror(-r));
		v[DL_OFF] = image_pages_alloc(ctx->w, v[DL_LEN]);
		v[DL_CSUM] = image_checksum(data, v[DL_LEN]);
		r = pwrite_full(image_pages_fd(ctx->w), data, v[DL_LEN], (off_t)v[DL_OFF]);
		if (r < 0)
			return ferr(err, r, "%s: writing its content: %s", fi->link, strerror(-r));
	}
	return fds_set_extra(e, v, DL_N, err);
}

/* Write the carried content into fd, checking its checksum. */
static int fill(int fd, const struct fd_entry *e, struct fd_restore_ctx *ctx)
{
	if (!e->extra[DL_LEN])
		return 0;
	_cleanup_free_ uint8_t *data = malloc(e->extra[DL_LEN]);
	int r = data ? pread_full(ctx->pages_fd, data, e->extra[DL_LEN], (off_t)e->extra[DL_OFF])
	             : -ENOMEM;
	if (r == 0 && image_checksum(data, e->extra[DL_LEN]) != e->extra[DL_CSUM])
		r = -EBADMSG;
	if (r == 0)
		r = pwrite_full(fd, data, e->extra[DL_LEN], 0);
	return r;
}

/* Create the file again where it was (or beside it if that name is taken), fill it, open it
 * as the component had it, and delete it again. */
static int deleted_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                           struct ferry_error *err)
{
	char name[PATH_MAX];
	int fd = -1, r = 0;

	if (e->nextra != DL_N || !e->path)
		return ferr(err, -EPROTO, "deleted-file record without its content");
	if ((e->flags & O_TMPFILE) == O_TMPFILE) {
		/* it never had a name: an unnamed file in the same directory again (named after
		 * its new inode), opened with the same flags */
		snprintf(name, sizeof(name), "%s", e->path);
		char *slash = strrchr(name, '/');
		if (slash)
			slash[slash == name ? 1 : 0] = '\0';
		fd = open(name,
		          (int)(e->flags & ~(uint32_t)(O_CREAT | O_EXCL | O_TRUNC | O_APPEND)) |
		                  O_CLOEXEC,
		          e->mode & 07777);
		if (fd < 0)
			return ferr(err, -errno, "recreating a O_TMPFILE file in %s: %m", name);
		r = fill(fd, e, ctx);
		if (r == 0 && lseek(fd, (off_t)e->pos, SEEK_SET) < 0)
			r = -errno;
		if (r == 0 && (e->flags & O_APPEND) && fcntl(fd, F_SETFL, O_APPEND) < 0)
			r = -errno;
		if (r < 0) {
			safe_close(fd);
			return ferr(err, r, "recreating a O_TMPFILE file in %s: %s", name,
			            r == -EBADMSG ? "checksum mismatch" : strerror(-r));
		}
		return fd;
	}
	for (int i = 0; i < 100 && fd < 0; i++) {
		if (i == 0)
			snprintf(name, sizeof(name), "%s", e->path);
		else
			snprintf(name, sizeof(name), "%s.ferry-%d-%d", e->path, getpid(), i);
		fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, e->mode & 07777);
		if (fd < 0 && errno != EEXIST)
			return ferr(err, -errno, "recreating %s: %m", name);
	}
	if (fd < 0)
		return ferr(err, -EEXIST, "recreating %s: no free name", e->path);
	r = fill(fd, e, ctx);
	/* the component's own open file description, with its flags and offset */
	int own = -1;
	if (r == 0) {
		own = open(name,
		           (int)(e->flags & ~(uint32_t)(O_CREAT | O_EXCL | O_TRUNC | O_TMPFILE)) |
		                   O_CLOEXEC);
		if (own < 0)
			r = -errno;
	}
	if (r == 0 && !(e->flags & O_APPEND) && lseek(own, (off_t)e->pos, SEEK_SET) < 0)
		r = -errno;
	(void)unlink(name);
	safe_close(fd);
	if (r < 0) {
		safe_close(own);
		return ferr(err, r, "recreating deleted %s: %s", e->path,
		            r == -EBADMSG ? "checksum mismatch" : strerror(-r));
	}
	return own;
}

static void deleted_describe(const struct fd_entry *e, char *buf, size_t len)
{
	snprintf(buf, len,
	         "deleted file %s, %" PRIu64 " bytes carried in the image, offset %" PRIu64,
	         e->path ? e->path : "?", e->nextra == DL_N ? e->extra[DL_LEN] : 0, e->pos);
}

static int deleted_kernel_probe(char *detail, size_t len)
{
	_cleanup_close_ int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	struct stat sb;
	bool ok = fd >= 0 && write(fd, "x", 1) == 1 && fstat(fd, &sb) == 0 && sb.st_nlink == 0;
	snprintf(detail, len, "%s",
	         ok ? "O_TMPFILE recreates files that never had a name" : "O_TMPFILE refused");
	return ok;
}

const struct fd_ops fd_deleted_ops = {
        .kernel_probe = deleted_kernel_probe,
        .name = "deleted",
        .kind = FD_DELETED,
        .probe = deleted_probe,
        .capture = deleted_capture,
        .restore = deleted_restore,
        .describe = deleted_describe,
};
