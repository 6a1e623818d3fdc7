/* Pipes whose ends are all in the component (in one process or several), and FIFOs (named
 * pipes, reopened by their path), with the bytes sitting in them. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "fds.h"
#include "util.h"

/* e->extra: identity, which end, buffer size, where its bytes are in the page file, and where
 * its other end is (pid in the namespace << 32 | fd; images before it stop at PP_PEER) */
enum { PP_INO, PP_END, PP_SIZE, PP_OFF, PP_LEN, PP_CSUM, PP_PEER, PP_N };
#define MAX_PIPE (16u << 20)

static bool pipe_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return S_ISFIFO(fi->st.st_mode) && strncmp(fi->link, "pipe:[", 6) == 0;
}

static bool fifo_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return S_ISFIFO(fi->st.st_mode) && fi->link[0] == '/';
}

/* An fd of the process on the same pipe with the given access mode, or -1. */
static int other_end(pid_t pid, ino_t ino, int want_write)
{
	char path[64];
	DIR *d;
	struct dirent *de;
	int found = -1;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	d = opendir(path);
	if (!d)
		return -1;
	while (found < 0 && (de = readdir(d))) {
		char p2[96], info[64];
		struct stat sb;
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		snprintf(p2, sizeof(p2), "%s/%s", path, de->d_name);
		if (stat(p2, &sb) < 0 || !S_ISFIFO(sb.st_mode) || sb.st_ino != ino)
			continue;
		snprintf(info, sizeof(info), "/proc/%d/fdinfo/%s", pid, de->d_name);
		_cleanup_free_ char *text = NULL;
		uint64_t flags;
		if (read_file(info, &text, NULL) < 0 ||
		    fds_fdinfo_u64(text, "flags", 8, &flags) < 0)
			continue;
		if (((flags & O_ACCMODE) == O_WRONLY) == (want_write != 0))
			found = atoi(de->d_name);
	}
	closedir(d);
	return found;
}

/*
 * The other end in the component: this process first, then the others (live ones), then the
 * files in flight in its sockets (our copies: fd_unix_preview), reported as pid 0 and our pid.
 * -ENOENT if it is nowhere, another -errno (err says why) if the search failed.
 */
static int other_end_in(const struct fd_capture_ctx *ctx, ino_t ino, int want_write,
                        int32_t *ret_pid, pid_t *ret_host, struct ferry_error *err)
{
	int fd = other_end(ctx->p->host_pid, ino, want_write);

	*ret_pid = ctx->p->pid;
	*ret_host = ctx->p->host_pid;
	for (size_t i = 0; fd < 0 && i < ctx->c->nprocs; i++) {
		const struct process *q = &ctx->c->procs[i];
		if (q == ctx->p || q->zombie)
			continue;
		fd = other_end(q->host_pid, ino, want_write);
		*ret_pid = q->pid;
		*ret_host = q->host_pid;
	}
	if (fd < 0) {
		int r = fd_unix_preview(ctx->c, err);
		if (r < 0)
			return r == -ENOENT ? -EIO : r;
	}
	for (size_t i = 0; fd < 0 && i < ctx->c->ninflight_pre; i++) {
		struct stat sb;
		int f = ctx->c->inflight_pre[i];
		int fl = fcntl(f, F_GETFL);
		if (fstat(f, &sb) == 0 && S_ISFIFO(sb.st_mode) && sb.st_ino == ino && fl >= 0 &&
		    ((fl & O_ACCMODE) == O_WRONLY) == (want_write != 0)) {
			fd = f;
			*ret_pid = 0;
			*ret_host = getpid();
		}
	}
	return fd >= 0 ? fd : -ENOENT;
}

/* The bytes in the pipe, copied with tee() from our own copy of its read end: not consumed. */
static int peek(pid_t pid, int read_fd, uint8_t **ret, size_t *ret_len, int *ret_size)
{
	_cleanup_close_ int ours = pidfd_getfd_of(pid, read_fd);
	int tmp[2];
	ssize_t n;

	if (ours < 0)
		return ours;
	*ret_size = fcntl(ours, F_GETPIPE_SZ);
	if (*ret_size <= 0 || (unsigned)*ret_size > MAX_PIPE)
		return -EPROTO;
	if (pipe2(tmp, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	(void)fcntl(tmp[1], F_SETPIPE_SZ, *ret_size);
	n = tee(ours, tmp[1], (size_t)*ret_size, SPLICE_F_NONBLOCK);
	if (n < 0 && errno == EAGAIN)
		n = 0;
	int r = n < 0 ? -errno : 0;
	uint8_t *buf = n > 0 ? malloc((size_t)n) : NULL;
	if (r == 0 && n > 0 && !buf)
		r = -ENOMEM;
	if (r == 0 && n > 0)
		r = read_full(tmp[0], buf, (size_t)n);
	safe_close(tmp[0]);
	safe_close(tmp[1]);
	if (r < 0) {
		free(buf);
		return r;
	}
	*ret = buf;
	*ret_len = (size_t)n;
	return 0;
}

/* The size of an earlier fd's pipe (of this kind and inode) in the component: it carries the
 * bytes, this one only its numbers; false if e is the first. */
static bool earlier_end(const struct fd_capture_ctx *ctx, const struct fd_entry *e, uint32_t kind,
                        uint64_t ino, uint64_t *ret_size)
{
	for (size_t k = 0; k < ctx->c->nprocs; k++) {
		const struct process *o = &ctx->c->procs[k];
		for (size_t i = 0; i < o->nfds && &o->fds[i] != e; i++)
			if (o->fds[i].kind == kind && o->fds[i].nextra >= PP_PEER &&
			    o->fds[i].extra[PP_INO] == ino) {
				*ret_size = o->fds[i].extra[PP_SIZE];
				return true;
			}
		if (o == ctx->p)
			break;
	}
	return false;
}

/* The bytes in the pipe behind pid's fd, peeked, into the pages file (v: size, length, place,
 * checksum). */
static int save_bytes(struct fd_capture_ctx *ctx, uint64_t *v, pid_t pid, int fd, const char *what,
                      struct ferry_error *err)
{
	_cleanup_free_ uint8_t *data = NULL;
	size_t len = 0;
	int size = 0;
	int r = peek(pid, fd, &data, &len, &size);

	if (r < 0)
		return ferr(err, r, "%s: reading what is in it: %s", what, strerror(-r));
	v[PP_SIZE] = (uint64_t)size;
	v[PP_LEN] = len;
	if (len && ctx->w) {
		v[PP_OFF] = image_pages_alloc(ctx->w, len);
		v[PP_CSUM] = image_checksum(data, len);
		r = pwrite_full(image_pages_fd(ctx->w), data, len, (off_t)v[PP_OFF]);
		if (r < 0)
			return ferr(err, r, "%s: writing its bytes: %s", what, strerror(-r));
	}
	return 0;
}

/* Its size set and its bytes, checked, written into a write end wr. */
static int fill_bytes(const uint64_t *v, struct fd_restore_ctx *ctx, int wr, const char *what,
                      struct ferry_error *err)
{
	(void)fcntl(wr, F_SETPIPE_SZ, (int)v[PP_SIZE]); /* a limit: the default still holds them */
	if (!v[PP_LEN])
		return 0;
	_cleanup_free_ uint8_t *data = malloc(v[PP_LEN]);
	int r = data ? pread_full(ctx->pages_fd, data, v[PP_LEN], (off_t)v[PP_OFF]) : -ENOMEM;
	if (r == 0 && image_checksum(data, v[PP_LEN]) != v[PP_CSUM])
		r = -EBADMSG;
	if (r == 0)
		r = write_full(wr, data, v[PP_LEN]);
	if (r < 0)
		return ferr(err, r, "%s: its %" PRIu64 " bytes: %s", what, v[PP_LEN],
		            r == -EBADMSG ? "checksum mismatch" : strerror(-r));
	return 0;
}

/* The object of inode id made once (by make) and kept in the stash for its other fds. */
static struct fd_stash *stash_get(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                                  int (*make)(const struct fd_entry *, struct fd_restore_ctx *,
                                              struct fd_stash *, struct ferry_error *),
                                  struct ferry_error *err)
{
	for (size_t i = 0; i < ctx->nstash; i++)
		if (ctx->stash[i].id == e->extra[PP_INO])
			return &ctx->stash[i];
	if (GROW(ctx->stash, ctx->nstash) < 0) {
		ferr(err, -ENOMEM, "out of memory");
		return NULL;
	}
	struct fd_stash *st = &ctx->stash[ctx->nstash];
	memset(st, 0, sizeof(*st));
	if (make(e, ctx, st, err) < 0)
		return NULL;
	ctx->nstash++;
	return st;
}

static int pipe_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                        struct ferry_error *err)
{
	uint64_t v[PP_N] = {fi->st.st_ino, (fi->flags & O_ACCMODE) == O_WRONLY ? 1 : 0};
	int write_end = (int)v[PP_END];
	int32_t q_pid;
	pid_t q_host;
	int other = other_end_in(ctx, fi->st.st_ino, !write_end, &q_pid, &q_host, err);

	if (other < 0 && other != -ENOENT)
		return other; /* the error says why */
	if (other < 0)
		return ferr(err, -ENOTSUP,
		            "%s: its other end is outside the component (a pipe to or from "
		            "another program cannot be restored)",
		            fi->link);
	v[PP_PEER] = (uint64_t)(uint32_t)q_pid << 32 | (uint32_t)other;
	/* the bytes go with the first fd of the pipe only */
	if (earlier_end(ctx, e, FD_PIPE, fi->st.st_ino, &v[PP_SIZE]))
		return fds_set_extra(e, v, PP_N, err);
	int r = write_end ? save_bytes(ctx, v, q_host, other, fi->link, err)
	                  : save_bytes(ctx, v, ctx->p->host_pid, fi->fd, fi->link, err);
	return r < 0 ? r : fds_set_extra(e, v, PP_N, err);
}

static int pipe_create(const struct fd_entry *e, struct fd_restore_ctx *ctx, struct fd_stash *st,
                       struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		return ferr(err, -errno, "pipe2: %m");
	char what[48];
	snprintf(what, sizeof(what), "pipe:[%" PRIu64 "]", v[PP_INO]);
	int r = fill_bytes(v, ctx, p[1], what, err);
	if (r < 0) {
		safe_close(p[0]);
		safe_close(p[1]);
		return r;
	}
	/* parked above every fd of the image, so that placing fds cannot close them */
	for (int i = 0; i < 2; i++) {
		st->fd[i] = fcntl(p[i], F_DUPFD_CLOEXEC, ctx->stash_lo);
		safe_close(p[i]);
	}
	if (st->fd[0] < 0 || st->fd[1] < 0)
		return ferr(err, -EMFILE, "parking a pipe: %m");
	st->id = v[PP_INO];
	return 0;
}

static int pipe_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                        struct ferry_error *err)
{
	if (e->nextra < PP_PEER)
		return ferr(err, -EPROTO, "pipe record without its values");
	struct fd_stash *st = stash_get(e, ctx, pipe_create, err);
	if (!st)
		return err->code ? err->code : -EIO;
	int end = st->fd[e->extra[PP_END] ? 1 : 0];
	/* O_NONBLOCK belongs to the end (the open file description), shared by its dups */
	if (fcntl(end, F_SETFL, (int)(e->flags & O_NONBLOCK)) < 0)
		return ferr(err, -errno, "pipe: F_SETFL: %m");
	int fd = fcntl(end, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return ferr(err, -errno, "pipe: dup: %m");
	return fd;
}

static void pipe_describe(const struct fd_entry *e, char *buf, size_t len)
{
	if (e->nextra < PP_PEER) {
		snprintf(buf, len, "pipe");
		return;
	}
	int n = snprintf(buf, len, "pipe:[%" PRIu64 "] %s end, ", e->extra[PP_INO],
	                 e->extra[PP_END] ? "write" : "read");
	if (n >= 0 && (size_t)n < len && e->nextra > PP_PEER && !(e->extra[PP_PEER] >> 32))
		n += snprintf(buf + n, len - (size_t)n, "other end in flight (SCM_RIGHTS), ");
	else if (n >= 0 && (size_t)n < len && e->nextra > PP_PEER)
		n += snprintf(buf + n, len - (size_t)n, "other end: pid %u fd %u, ",
		              (unsigned)(e->extra[PP_PEER] >> 32),
		              (unsigned)(e->extra[PP_PEER] & 0xffffffffu));
	if (n >= 0 && (size_t)n < len)
		snprintf(buf + n, len - (size_t)n,
		         "%" PRIu64 " bytes in it, buffer %" PRIu64 " KiB", e->extra[PP_LEN],
		         e->extra[PP_SIZE] / 1024);
}

/*
 * A FIFO: its path, which end (the access mode: read, write or both), and the bytes in it with
 * the first fd of it in the component. They are read with tee() from one of its fds that reads,
 * or from a read end ferry opens on the path (opening one does not disturb the FIFO).
 */
static int fifo_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                        struct ferry_error *err)
{
	uint64_t v[PP_N] = {fi->st.st_ino, fi->flags & O_ACCMODE};

	if (strstr(fi->link, " (deleted)"))
		return ferr(err, -ENOTSUP, "FIFO %s: deleted (unsupported)", fi->link);
	e->path = strdup(fi->link);
	if (!e->path)
		return ferr(err, -ENOMEM, "out of memory");
	if (earlier_end(ctx, e, FD_FIFO, fi->st.st_ino, &v[PP_SIZE]))
		return fds_set_extra(e, v, PP_N, err);
	_cleanup_close_ int own = -EBADF;
	pid_t from = ctx->p->host_pid;
	int fd = fi->fd;
	if ((fi->flags & O_ACCMODE) == O_WRONLY) {
		struct stat sb;
		own = open(fi->link, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (own < 0 || fstat(own, &sb) < 0 || sb.st_ino != fi->st.st_ino)
			return ferr(err, -ENOTSUP,
			            "FIFO %s: cannot open a read end on it to see what it holds",
			            fi->link);
		from = getpid();
		fd = own;
	}
	int r = save_bytes(ctx, v, from, fd, fi->link, err);
	return r < 0 ? r : fds_set_extra(e, v, PP_N, err);
}

/* The FIFO opened once for both ends (so that no open waits for the other end) and filled. */
static int fifo_keeper(const struct fd_entry *e, struct fd_restore_ctx *ctx, struct fd_stash *st,
                       struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	struct stat sb;
	int k = open(e->path, O_RDWR | O_NONBLOCK | O_CLOEXEC);

	if (k < 0)
		return ferr(err, -errno, "FIFO %s: %m", e->path);
	if (fstat(k, &sb) < 0 || !S_ISFIFO(sb.st_mode)) {
		safe_close(k);
		return ferr(err, -ENOTSUP, "%s is no longer a FIFO", e->path);
	}
	int r = fill_bytes(v, ctx, k, e->path, err);
	if (r < 0) {
		safe_close(k);
		return r;
	}
	st->fd[0] = fcntl(k, F_DUPFD_CLOEXEC, ctx->stash_lo);
	st->fd[1] = -EBADF;
	safe_close(k);
	if (st->fd[0] < 0)
		return ferr(err, -EMFILE, "parking a FIFO: %m");
	st->id = v[PP_INO];
	return 0;
}

static int fifo_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                        struct ferry_error *err)
{
	if (e->nextra < PP_PEER || !e->path)
		return ferr(err, -EPROTO, "FIFO record without its values");
	if (!stash_get(e, ctx, fifo_keeper, err))
		return err->code ? err->code : -EIO;
	/* its own open file description, with the access mode it had */
	int fd = open(e->path, (int)(e->extra[PP_END] & O_ACCMODE) | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return ferr(err, -errno, "FIFO %s: %m", e->path);
	if (fcntl(fd, F_SETFL, (int)(e->flags & O_NONBLOCK)) < 0) {
		int r = -errno;
		safe_close(fd);
		return ferr(err, r, "FIFO %s: F_SETFL: %s", e->path, strerror(-r));
	}
	return fd;
}

static void fifo_describe(const struct fd_entry *e, char *buf, size_t len)
{
	if (e->nextra < PP_PEER) {
		snprintf(buf, len, "FIFO %s", e->path ? e->path : "?");
		return;
	}
	uint64_t m = e->extra[PP_END];
	snprintf(buf, len, "FIFO %s, %s end, %" PRIu64 " bytes in it, buffer %" PRIu64 " KiB",
	         e->path ? e->path : "?",
	         m == O_RDONLY   ? "read"
	         : m == O_WRONLY ? "write"
	                         : "read and write",
	         e->extra[PP_LEN], e->extra[PP_SIZE] / 1024);
}

static int pipe_kernel_probe(char *detail, size_t len)
{
	int p[2];
	uint8_t *data = NULL;
	size_t n = 0;
	int size = 0, r = -EPIPE;

	if (pipe2(p, O_CLOEXEC) == 0) {
		r = write_full(p[1], "ferry", 5);
		if (r == 0)
			r = peek(getpid(), p[0], &data, &n, &size);
		if (r == 0 && (n != 5 || memcmp(data, "ferry", 5) != 0))
			r = -EPROTO;
		char c[8];
		if (r == 0 && read(p[0], c, sizeof(c)) != 5) /* still there: tee did not consume */
			r = -EPROTO;
		free(data);
		safe_close(p[0]);
		safe_close(p[1]);
	}
	snprintf(detail, len, "%s",
	         r == 0 ? "pidfd_getfd + tee read a pipe without consuming it" : strerror(-r));
	return r == 0;
}

const struct fd_ops fd_pipe_ops = {
        .name = "pipe",
        .kind = FD_PIPE,
        .probe = pipe_probe,
        .capture = pipe_capture,
        .restore = pipe_restore,
        .describe = pipe_describe,
        .kernel_probe = pipe_kernel_probe,
};

const struct fd_ops fd_fifo_ops = {
        .name = "fifo",
        .kind = FD_FIFO,
        .probe = fifo_probe,
        .capture = fifo_capture,
        .restore = fifo_restore,
        .describe = fifo_describe,
};
