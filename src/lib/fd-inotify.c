/*
 * inotify: every watch with its watch descriptor and mask, on the path its inode has now (its
 * file handle, from fdinfo, opened through a mount of its filesystem). Events queued and not
 * read yet are not carried: such an fd is refused at checkpoint (the component runs on).
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>

#include "fds.h"
#include "util.h"

/* e->extra: the number of watches, then (wd, mask) each; e->path: their paths, one a line */
enum { NO_N, NO_FIRST };
#define NO_PER 2

static bool inotify_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return strcmp(fi->link, "anon_inode:inotify") == 0;
}

/* A mount of the filesystem whose superblock is the kernel's dev_t sdev, opened. */
static int mount_of(uint64_t sdev)
{
	_cleanup_free_ char *text = NULL;
	unsigned maj = (unsigned)(sdev >> 20), min = (unsigned)(sdev & 0xfffff);

	if (read_file("/proc/self/mountinfo", &text, NULL) < 0)
		return -EIO;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l;
	     l = strtok_r(NULL, "\n", &save)) {
		unsigned a, b;
		char point[PATH_MAX];
		if (sscanf(l, "%*u %*u %u:%u %*s %4095s", &a, &b, point) != 3 || a != maj ||
		    b != min)
			continue;
		int fd = open(point, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* not O_PATH: refused */
		if (fd >= 0)
			return fd;
	}
	return -ENOENT;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9'                     ? c - '0'
	       : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10
	                                                : -1;
}

/* The mount last opened for a watch: the watches of one fd are mostly on one filesystem, and
 * each lookup reads all of mountinfo (while the component is frozen). */
struct mount_cache {
	uint64_t sdev;
	int fd; /* -EBADF: none yet */
};

static void mount_cache_done(struct mount_cache *mc)
{
	mc->fd = safe_close(mc->fd);
}

/* The path of the inode one fdinfo "inotify" line names. */
static int watch_path(const char *line, struct mount_cache *mc, char *path, size_t len,
                      struct ferry_error *err)
{
	unsigned wd, bytes, type;
	uint64_t sdev;
	char hex[2 * MAX_HANDLE_SZ + 1];

	if (sscanf(strstr(line, "wd:"), "wd:%x", &wd) != 1 || !strstr(line, "sdev:") ||
	    sscanf(strstr(line, "sdev:"), "sdev:%" SCNx64, &sdev) != 1 ||
	    !strstr(line, "fhandle-bytes:") ||
	    sscanf(strstr(line, "fhandle-bytes:"),
	           "fhandle-bytes:%x fhandle-type:%x f_handle:%256s", &bytes, &type, hex) != 3 ||
	    bytes > MAX_HANDLE_SZ || strlen(hex) != 2 * bytes)
		return ferr(err, -EPROTO, "unreadable inotify watch: %s", line);
	_cleanup_free_ struct file_handle *fh = calloc(1, sizeof(*fh) + bytes);
	if (!fh)
		return ferr(err, -ENOMEM, "out of memory");
	fh->handle_bytes = bytes;
	fh->handle_type = (int)type;
	for (unsigned i = 0; i < bytes; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return ferr(err, -EPROTO, "unreadable inotify file handle: %s", hex);
		fh->f_handle[i] = (unsigned char)(hi << 4 | lo);
	}
	if (mc->fd < 0 || mc->sdev != sdev) {
		mc->fd = safe_close(mc->fd);
		mc->fd = mount_of(sdev);
		mc->sdev = sdev;
	}
	if (mc->fd < 0)
		return ferr(err, mc->fd, "watch %u: no mount of its filesystem (dev %u:%u)", wd,
		            (unsigned)(sdev >> 20), (unsigned)(sdev & 0xfffff));
	_cleanup_close_ int fd = open_by_handle_at(mc->fd, fh, O_PATH | O_CLOEXEC);
	if (fd < 0)
		return ferr(err, -errno, "watch %u: its file handle: %m", wd);
	char link[64];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, len - 1);
	if (n < 0)
		return ferr(err, -errno, "watch %u: %s: %m", wd, link);
	path[n] = '\0';
	if (strstr(path, " (deleted)") || path[0] != '/' || strchr(path, '\n'))
		return ferr(err, -ENOTSUP, "watch %u: on %s: no path to watch again", wd, path);
	return 0;
}

static int inotify_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                           struct ferry_error *err)
{
	_cleanup_free_ char *info = NULL, *paths = NULL;
	_cleanup_free_ uint64_t *v = NULL;
	size_t n = 0, plen = 0;
	int queued = 0;
	_cleanup_(mount_cache_done) struct mount_cache mc = {.fd = -EBADF};
	int r = fds_fdinfo(ctx->p->host_pid, fi->fd, &info);

	if (r < 0)
		return ferr(err, r, "fdinfo: %s", strerror(-r));
	/* the events it holds would be lost: refused, not dropped */
	_cleanup_close_ int copy = pidfd_getfd_of(ctx->p->host_pid, fi->fd);
	if (copy < 0)
		return ferr(err, copy, "pidfd_getfd: %s", strerror(-copy));
	if (ioctl(copy, FIONREAD, &queued) < 0)
		return ferr(err, -errno, "FIONREAD: %m");
	if (queued > 0)
		return ferr(err, -EBUSY,
		            "inotify holds %d bytes of events not read yet (they cannot be put "
		            "back): try again once the component has read them",
		            queued);
	for (char *save = NULL, *l = strtok_r(info, "\n", &save); l;
	     l = strtok_r(NULL, "\n", &save)) {
		unsigned wd, mask;
		char path[PATH_MAX];
		if (strncmp(l, "inotify ", 8) != 0)
			continue;
		if (sscanf(l, "inotify wd:%x", &wd) != 1 || !strstr(l, " mask:") ||
		    sscanf(strstr(l, " mask:"), " mask:%x", &mask) != 1)
			return ferr(err, -EPROTO, "unreadable inotify watch: %s", l);
		r = watch_path(l, &mc, path, sizeof(path), err);
		if (r < 0)
			return r;
		uint64_t *nv = realloc(v, (NO_FIRST + (n + 1) * NO_PER) * sizeof(*v));
		char *np = realloc(paths, plen + strlen(path) + 2);
		if (nv)
			v = nv;
		if (np)
			paths = np;
		if (!nv || !np)
			return ferr(err, -ENOMEM, "out of memory");
		v[NO_FIRST + n * NO_PER] = wd;
		v[NO_FIRST + n * NO_PER + 1] = mask;
		plen += (size_t)sprintf(paths + plen, "%s\n", path);
		n++;
	}
	if (!v && !(v = calloc(1, sizeof(*v))))
		return ferr(err, -ENOMEM, "out of memory");
	v[NO_N] = n;
	free(e->path);
	e->path = paths ? TAKE_PTR(paths) : strdup("");
	if (!e->path)
		return ferr(err, -ENOMEM, "out of memory");
	return fds_set_extra(e, v, (uint32_t)(NO_FIRST + n * NO_PER), err);
}

struct watch {
	int wd;
	uint32_t mask;
	const char *path;
};

static int cmp_wd(const void *a, const void *b)
{
	return ((const struct watch *)a)->wd - ((const struct watch *)b)->wd;
}

/*
 * Each watch again with its number: the kernel hands them out in increasing order, so a number
 * skipped (a watch removed before the checkpoint) is taken by a watch made and removed. Each
 * removal queues an IN_IGNORED event, read away before the component runs.
 */
static int inotify_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                           struct ferry_error *err)
{
	uint64_t n = e->nextra > NO_N ? e->extra[NO_N] : UINT64_MAX;
	bool skipped = false;

	if (n > 1u << 20 || e->nextra < NO_FIRST + n * NO_PER || !e->path)
		return ferr(err, -EPROTO, "inotify record without its watches");
	_cleanup_free_ struct watch *w = calloc(n ? n : 1, sizeof(*w));
	_cleanup_free_ char *paths = strdup(e->path);
	if (!w || !paths)
		return ferr(err, -ENOMEM, "out of memory");
	char *save = NULL, *l = strtok_r(paths, "\n", &save);
	for (uint64_t i = 0; i < n; i++, l = strtok_r(NULL, "\n", &save)) {
		if (!l)
			return ferr(err, -EPROTO,
			            "inotify record: %" PRIu64 " watches, fewer paths", n);
		w[i] = (struct watch){(int)e->extra[NO_FIRST + i * NO_PER],
		                      (uint32_t)e->extra[NO_FIRST + i * NO_PER + 1], l};
	}
	qsort(w, n, sizeof(*w), cmp_wd);
	int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (fd < 0)
		return ferr(err, -errno, "inotify_init1: %m");
	for (uint64_t i = 0; i < n; i++) {
		for (;;) {
			int wd = inotify_add_watch(fd, w[i].path, w[i].mask);
			if (wd < 0) {
				int r = -errno;
				safe_close(fd);
				return ferr(err, r, "inotify watch %d on %s: %s", w[i].wd,
				            w[i].path, strerror(-r));
			}
			if (wd == w[i].wd)
				break;
			if (wd > w[i].wd) {
				safe_close(fd);
				return ferr(err, -EEXIST, "inotify watch %d on %s came back as %d",
				            w[i].wd, w[i].path, wd);
			}
			(void)inotify_rm_watch(fd, wd);
			skipped = true;
		}
	}
	if (skipped) {
		char buf[4096];
		while (read(fd, buf, sizeof(buf)) > 0)
			;
	}
	if (!(e->flags & O_NONBLOCK)) {
		int fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
			int r = -errno;
			safe_close(fd);
			return ferr(err, r, "inotify: F_SETFL: %s", strerror(-r));
		}
	}
	(void)ctx;
	return fd;
}

static void inotify_describe(const struct fd_entry *e, char *buf, size_t len)
{
	uint64_t n = e->nextra > NO_N ? e->extra[NO_N] : 0;
	int off = snprintf(buf, len, "inotify, %" PRIu64 " watch%s", n, n == 1 ? "" : "es");
	const char *p = e->path ? e->path : "";

	for (uint64_t i = 0; i < n && e->nextra >= NO_FIRST + (i + 1) * NO_PER && *p; i++) {
		const char *nl = strchr(p, '\n');
		int plen = nl ? (int)(nl - p) : (int)strlen(p);
		if (off >= 0 && (size_t)off < len)
			off += snprintf(buf + off, len - (size_t)off,
			                "%s %" PRIu64 ": %.*s (mask 0x%" PRIx64 ")", i ? "," : ":",
			                e->extra[NO_FIRST + i * NO_PER], plen, p,
			                e->extra[NO_FIRST + i * NO_PER + 1]);
		p = nl ? nl + 1 : p + plen;
	}
}

static int inotify_kernel_probe(char *detail, size_t len)
{
	_cleanup_close_ int fd = inotify_init1(IN_CLOEXEC);
	_cleanup_free_ char *info = NULL;
	char path[64], wpath[PATH_MAX];
	struct ferry_error e = {0};
	bool ok = false;

	if (fd >= 0 && inotify_add_watch(fd, "/", IN_DELETE_SELF) == 1) {
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
		char *l = read_file(path, &info, NULL) == 0 ? strstr(info, "inotify ") : NULL;
		if (l && strchr(l, '\n'))
			*strchr(l, '\n') = '\0';
		_cleanup_(mount_cache_done) struct mount_cache mc = {.fd = -EBADF};
		ok = l && watch_path(l, &mc, wpath, sizeof(wpath), &e) == 0 &&
		     strcmp(wpath, "/") == 0;
	}
	snprintf(detail, len, "%s",
	         ok ? "watches and their file handles in fdinfo, opened again by handle"
	            : (e.msg[0] ? e.msg : "no inotify file handles in fdinfo"));
	return ok;
}

const struct fd_ops fd_inotify_ops = {
        .name = "inotify",
        .kind = FD_INOTIFY,
        .probe = inotify_probe,
        .capture = inotify_capture,
        .restore = inotify_restore,
        .describe = inotify_describe,
        .kernel_probe = inotify_kernel_probe,
};
