/* The fd table: one ops table per kind of kernel object, dispatched from here. */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <linux/kcmp.h>

#include "fds.h"
#include "netlock.h"
#include "util.h"

/* Adding a kind = adding its file and a line here. Order matters: first probe wins. */
static const struct fd_ops *const kinds[] = {
        &fd_log_ops,      &fd_session_ops, &fd_deleted_ops, &fd_memfd_ops,
        &fd_file_ops,     &fd_chr_ops,     &fd_eventfd_ops, &fd_timerfd_ops,
        &fd_signalfd_ops, &fd_epoll_ops,   &fd_pipe_ops,    &fd_inet_ops,
        &fd_inotify_ops,  &fd_tcp_ops,     &fd_unix_ops,    &fd_fifo_ops,
};

int fds_sockopt(int s, int level, int name)
{
	int v = 0;
	socklen_t l = sizeof(v);
	return getsockopt(s, level, name, &v, &l) < 0 ? -1 : v;
}

void fds_sockaddr_str(const uint64_t *a, uint64_t alen, char *buf, size_t len)
{
	struct sockaddr_storage sa = {0};
	char host[INET6_ADDRSTRLEN] = "?";

	memcpy(&sa, a, MIN(alen, sizeof(uint64_t) * 4));
	if (sa.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&sa;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&sa;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(s4->sin_port));
	}
}

int fds_hold(struct fd_capture_ctx *ctx, int fd)
{
	if (!ctx->held)
		return -EINVAL;
	int *n = realloc(ctx->held->fd, (ctx->held->n + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	ctx->held->fd = n;
	n[ctx->held->n++] = fd;
	return 0;
}

int fds_held_lock(struct fd_held *h, struct ferry_error *err)
{
	if (!h->n)
		return 0;
	_cleanup_free_ struct netlock_conn *c = calloc(h->n, sizeof(*c));
	if (!c)
		return ferr(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < h->n; i++) {
		int r = fd_tcp_ends(h->fd[i], &c[i], err);
		if (r < 0)
			return r;
	}
	return netlock_lock(c, h->n, err);
}

void fds_held_release(struct fd_held *h, bool resume)
{
	for (size_t i = 0; i < h->n; i++)
		fd_tcp_release(h->fd[i], resume);
	free(h->fd);
	h->fd = NULL;
	h->n = 0;
}

const struct fd_ops *const *fds_kinds(size_t *ret_n)
{
	*ret_n = ARRAY_SIZE(kinds);
	return kinds;
}

int fds_fdinfo(pid_t pid, int fd, char **ret)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", pid, fd);
	return read_file(path, ret, NULL);
}

int fds_fdinfo_u64(const char *info, const char *key, int base, uint64_t *ret)
{
	size_t klen = strlen(key);
	for (const char *l = info; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (strncmp(l, key, klen) == 0 && l[klen] == ':') {
			*ret = strtoull(l + klen + 1, NULL, base);
			return 0;
		}
	return -ENOENT;
}

int fds_set_extra(struct fd_entry *e, const uint64_t *v, uint32_t n, struct ferry_error *err)
{
	e->extra = calloc(n ? n : 1, sizeof(*v));
	if (!e->extra)
		return ferr(err, -ENOMEM, "out of memory");
	memcpy(e->extra, v, n * sizeof(*v));
	e->nextra = n;
	return 0;
}

const struct fd_ops *fds_ops_of(uint32_t kind)
{
	for (size_t i = 0; i < ARRAY_SIZE(kinds); i++)
		if (kinds[i]->kind == kind)
			return kinds[i];
	return NULL;
}

void fds_flags_str(uint32_t flags, char *buf, size_t len)
{
	static const struct {
		uint32_t f;
		const char *n;
	} names[] = {
	        {O_APPEND, "O_APPEND"},       {O_NONBLOCK, "O_NONBLOCK"}, {O_DIRECT, "O_DIRECT"},
	        {O_DIRECTORY, "O_DIRECTORY"}, {O_NOATIME, "O_NOATIME"},   {O_SYNC, "O_SYNC"},
	        {O_DSYNC, "O_DSYNC"},         {O_PATH, "O_PATH"},         {O_LARGEFILE, ""}};
	const char *acc = (flags & O_ACCMODE) == O_RDONLY   ? "O_RDONLY"
	                  : (flags & O_ACCMODE) == O_WRONLY ? "O_WRONLY"
	                                                    : "O_RDWR";
	size_t n = (size_t)snprintf(buf, len, "%s", acc);
	for (size_t i = 0; i < ARRAY_SIZE(names) && n < len; i++)
		if ((flags & names[i].f) == names[i].f && names[i].n[0] &&
		    names[i].f != O_SYNC /* O_SYNC includes O_DSYNC; handled below */)
			n += (size_t)snprintf(buf + n, len - n, "|%s", names[i].n);
}

static int fd_info_read(pid_t pid, int fd, struct fd_info *fi)
{
	char path[64];
	_cleanup_free_ char *info = NULL;
	ssize_t n;
	int r;

	memset(fi, 0, sizeof(*fi));
	fi->fd = fd;
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, fd);
	n = readlink(path, fi->link, sizeof(fi->link) - 1);
	if (n < 0)
		return -errno;
	fi->link[n] = '\0';
	if (stat(path, &fi->st) < 0)
		return -errno;
	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", pid, fd);
	r = read_file(path, &info, NULL);
	if (r < 0)
		return r;
	char *pos = strstr(info, "pos:"), *flags = strstr(info, "flags:");
	if (!pos || !flags)
		return -EPROTO;
	fi->pos = strtoull(pos + 4, NULL, 10);
	uint32_t fl = (uint32_t)strtoul(flags + 6, NULL, 8);
	fi->cloexec = (fl & O_CLOEXEC) ? 1 : 0;
	fi->flags = fl & ~(uint32_t)O_CLOEXEC;
	fi->sock_domain = fi->sock_type = fi->sock_proto = -1;
	if (S_ISSOCK(fi->st.st_mode)) {
		_cleanup_close_ int s = pidfd_getfd_of(pid, fd);
		struct sockaddr_storage peer;
		socklen_t pl = sizeof(peer);
		if (s >= 0) {
			fi->sock_domain = fds_sockopt(s, SOL_SOCKET, SO_DOMAIN);
			fi->sock_type = fds_sockopt(s, SOL_SOCKET, SO_TYPE);
			fi->sock_proto = fds_sockopt(s, SOL_SOCKET, SO_PROTOCOL);
			fi->sock_listening = fds_sockopt(s, SOL_SOCKET, SO_ACCEPTCONN) == 1;
			fi->sock_connected = getpeername(s, (struct sockaddr *)&peer, &pl) == 0;
		}
	}
	return 0;
}

static const char *kind_word(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFSOCK:
		return "socket";
	case S_IFIFO:
		return "pipe or FIFO";
	case S_IFBLK:
		return "block device";
	case S_IFCHR:
		return "character device";
	case S_IFDIR:
		return "directory";
	case S_IFREG:
		return "regular file";
	default:
		return "anonymous inode";
	}
}

/*
 * In a component of several processes: is e's open file description one an earlier process
 * holds (inherited over fork, or passed)? Then e takes its share and captures nothing.
 */
static int find_share(struct fd_capture_ctx *ctx, struct fd_entry *e, const struct fd_ops *ops,
                      struct ferry_error *err)
{
	const struct component *c = ctx->c;

	for (const struct process *q = c->procs; q < ctx->p; q++)
		for (size_t i = 0; i < q->nfds; i++) {
			const struct fd_entry *f = &q->fds[i];
			if (f->dup_of >= 0 || f->kind != e->kind || f->cap_ino != e->cap_ino ||
			    f->cap_dev != e->cap_dev ||
			    syscall(SYS_kcmp, q->host_pid, ctx->p->host_pid, KCMP_FILE, f->fd,
			            e->fd) != 0)
				continue;
			if (f->share < 0)
				return ferr(err, -ENOTSUP,
				            "fd %d: a %s shared with pid %d (its fd %d) is not "
				            "supported",
				            e->fd, ops->name, q->pid, f->fd);
			e->share = f->share;
			return 0;
		}
	return 0;
}

int fds_capture(struct fd_capture_ctx *ctx, struct ferry_error *err)
{
	struct process *p = ctx->p;
	char path[64];
	DIR *d;
	struct dirent *de;
	int r = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", p->host_pid);
	d = opendir(path);
	if (!d)
		return ferr(err, -errno, "%s: %m", path);
	while ((de = readdir(d)) && r == 0) {
		struct fd_info fi;
		const struct fd_ops *ops = NULL;

		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		int fd = atoi(de->d_name);
		r = fd_info_read(p->host_pid, fd, &fi);
		if (r == -ENOENT) {
			r = 0; /* closed meanwhile (cannot happen while frozen, but harmless) */
			continue;
		}
		if (r < 0) {
			r = ferr(err, r, "fd %d: %s", fd, strerror(-r));
			break;
		}
		for (size_t i = 0; i < ARRAY_SIZE(kinds) && !ops; i++)
			if (kinds[i]->probe(&fi, ctx))
				ops = kinds[i];
		if (!ops) {
			r = ferr(err, -ENOTSUP, "fd %d: %s: unsupported kind (%s)", fd, fi.link,
			         kind_word(fi.st.st_mode));
			break;
		}
		if (GROW(p->fds, p->nfds) < 0) {
			r = ferr(err, -ENOMEM, "out of memory");
			break;
		}
		struct fd_entry *e = &p->fds[p->nfds++];
		memset(e, 0, sizeof(*e));
		e->fd = fd;
		e->kind = ops->kind;
		e->flags = fi.flags;
		e->cloexec = fi.cloexec;
		e->pos = fi.pos;
		e->shmem = -1;
		e->mode = fi.st.st_mode;
		e->dup_of = -1;
		e->share = -1;
		e->cap_dev = fi.st.st_dev;
		e->cap_ino = fi.st.st_ino;
		/* the same open file description as an earlier fd (dup, dup2, fork)? */
		for (size_t i = 0; i + 1 < p->nfds && e->dup_of < 0; i++)
			if (p->fds[i].kind == e->kind && p->fds[i].dup_of < 0 &&
			    syscall(SYS_kcmp, p->host_pid, p->host_pid, KCMP_FILE, p->fds[i].fd,
			            fd) == 0)
				e->dup_of = p->fds[i].fd;
		if (e->dup_of >= 0)
			continue; /* restored by dup3 of the first: nothing of its own to capture */
		if (ctx->c->nprocs > 1) {
			r = find_share(ctx, e, ops, err);
			if (r < 0 || e->share >= 0)
				continue; /* an earlier process holds it: captured there */
		}
		r = ops->capture(ctx, &fi, e, err);
		if (r < 0)
			ferr_prefix(err, "fd %d (%s)", fd, ops->name);
		/* in a tree every open file description is made once, by the root before it forks
		 * (so that all its holders share it); one that names other fds by number (epoll)
		 * is made by its own process */
		else if (ctx->c->nprocs > 1 && !ops->late)
			e->share = (int32_t)ctx->c->nshares++;
	}
	closedir(d);
	return r;
}

/* What waits for every fd to be in place (Unix queues with files in flight, connections
 * waiting to be accepted). */
static int fill_pending(struct fd_restore_ctx *ctx, struct ferry_error *err)
{
	return fd_unix_fill_all(ctx, err);
}

int fds_inflight_resolve(const struct fd_capture_ctx *base, struct ferry_error *err)
{
	struct component *c = base->c;
	struct process self = {.host_pid = getpid()};
	struct fd_capture_ctx ctx = *base;

	ctx.p = &self;
	ctx.inflight = true;
	for (size_t k = 0; k < c->ninflight; k++) {
		struct fd_entry *e = &c->inflight[k];
		int local = c->inflight_local[k];
		const struct fd_ops *ops = NULL;
		struct fd_info fi;
		char from[48];
		int r = fd_info_read(self.host_pid, local, &fi);

		if (c->nprocs > 1)
			snprintf(from, sizeof(from), "pid %d fd %d",
			         (int)(c->inflight_from[k] >> 32),
			         (int)(uint32_t)c->inflight_from[k]);
		else
			snprintf(from, sizeof(from), "fd %d", (int)(uint32_t)c->inflight_from[k]);
		if (r < 0)
			return ferr(err, r, "%s: file in flight %zu: %s", from, k, strerror(-r));
		for (size_t i = 0; i < ARRAY_SIZE(kinds) && !ops; i++)
			if (kinds[i]->probe(&fi, &ctx))
				ops = kinds[i];
		if (!ops)
			return ferr(err, -ENOTSUP,
			            "%s: a file in flight (SCM_RIGHTS): %s: unsupported kind (%s)",
			            from, fi.link, kind_word(fi.st.st_mode));
		e->fd = (int32_t)k;
		e->kind = ops->kind;
		e->flags = fi.flags;
		e->pos = fi.pos;
		e->mode = fi.st.st_mode;
		e->cap_dev = fi.st.st_dev;
		e->cap_ino = fi.st.st_ino;
		/* an open file description a process of the component holds too? */
		const struct process *hq = NULL;
		const struct fd_entry *hf = NULL;
		for (size_t i = 0; i < c->nprocs && !hf; i++) {
			const struct process *q = &c->procs[i];
			for (size_t j = 0; j < q->nfds && !hf && !q->zombie; j++) {
				const struct fd_entry *f = &q->fds[j];
				if (f->kind == e->kind && f->cap_ino == e->cap_ino &&
				    f->cap_dev == e->cap_dev &&
				    syscall(SYS_kcmp, self.host_pid, q->host_pid, KCMP_FILE, local,
				            f->fd) == 0) {
					hq = q;
					hf = f;
				}
			}
		}
		/* the first match is the description's first fd in its process (a dup of it comes
		 * later), which holds what was captured */
		if (hf) {
			if (c->nprocs == 1) {
				e->dup_of = hf->fd;
				continue;
			}
			if (hf->share < 0)
				return ferr(
				        err, -ENOTSUP,
				        "%s: a file in flight (SCM_RIGHTS): a %s also held by pid "
				        "%d (its fd %d): unsupported",
				        from, ops->name, hq->pid, hf->fd);
			e->share = hf->share;
			continue;
		}
		/* no process holds it: captured here, like an fd of its own */
		if (ops->late ||
		    (ops->kind != FD_FILE && ops->kind != FD_MEMFD && ops->kind != FD_DELETED &&
		     ops->kind != FD_PIPE && ops->kind != FD_FIFO && ops->kind != FD_UNIX &&
		     ops->kind != FD_EVENTFD && ops->kind != FD_INET))
			return ferr(err, -ENOTSUP,
			            "%s: a file in flight (SCM_RIGHTS) that no process holds: %s "
			            "(%s): unsupported",
			            from, fi.link, ops->name);
		r = ops->capture(&ctx, &fi, e, err);
		if (r < 0)
			return ferr_prefix(err, "%s: a file in flight (SCM_RIGHTS), %s (%s)", from,
			                   fi.link, ops->name);
	}
	return 0;
}

int fds_restore(const struct process *p, struct fd_restore_ctx *ctx, struct ferry_error *err)
{
	for (size_t k = 0; k < 4 * p->nfds; k++) {
		/* four passes: what must come first (ops->early), the others, kinds that refer to
		 * other fds (epoll), then the fds that share an open file description with one
		 * restored before */
		const struct fd_entry *e = &p->fds[k % p->nfds];
		const struct fd_ops *ops = fds_ops_of(e->kind);
		size_t pass = k / p->nfds;
		int fd, r;

		if (!ops)
			return ferr(err, -EPROTO, "fd %d: unknown kind %u in the image", e->fd,
			            e->kind);
		if (e->share >= 0 && e->dup_of < 0) {
			/* made by the root before it forked (fds_restore_shared) */
			if (pass != 1)
				continue;
			if (dup3(ctx->share_lo + e->share, e->fd, e->cloexec ? O_CLOEXEC : 0) < 0)
				return ferr(err, -errno, "fd %d: dup3 of shared fd %d: %m", e->fd,
				            ctx->share_lo + e->share);
			continue;
		}
		if (e->dup_of >= 0) {
			if (pass != 3)
				continue;
			if (dup3(e->dup_of, e->fd, e->cloexec ? O_CLOEXEC : 0) < 0)
				return ferr(err, -errno, "fd %d: dup3 of fd %d: %m", e->fd,
				            e->dup_of);
			continue;
		}
		bool early = ops->early && ops->early(e);
		if (pass == 3 || (pass == 0) != early || (pass != 0 && ops->late != (pass == 2)))
			continue;
		fd = ops->restore(e, ctx, err);
		if (fd < 0)
			return ferr_prefix(err, "fd %d (%s)", e->fd, ops->name);
		if (fd != e->fd) {
			r = dup3(fd, e->fd, e->cloexec ? O_CLOEXEC : 0);
			safe_close(fd);
			if (r < 0)
				return ferr(err, -errno, "fd %d: dup3: %m", e->fd);
		} else if (fcntl(fd, F_SETFD, e->cloexec ? FD_CLOEXEC : 0) < 0) {
			return ferr(err, -errno, "fd %d: F_SETFD: %m", e->fd);
		}
	}
	int r = fill_pending(ctx, err);
	fds_stash_drop(ctx);
	return r;
}

int fds_restore_shared(const struct component *c, struct fd_restore_ctx *ctx,
                       struct ferry_error *err)
{
	for (uint32_t kk = 0; kk < 2 * c->nshares; kk++) {
		/* two passes: what must come first (ops->early), then the others */
		uint32_t k = kk % c->nshares;
		bool first_pass = kk < c->nshares;
		const struct fd_entry *e = NULL;
		const struct process *p = NULL;
		for (size_t i = 0; i < c->nprocs && !e; i++)
			for (size_t j = 0; j < c->procs[i].nfds && !e; j++)
				if (c->procs[i].fds[j].share == (int32_t)k &&
				    c->procs[i].fds[j].dup_of < 0) {
					e = &c->procs[i].fds[j];
					p = &c->procs[i];
				}
		if (!e)
			return ferr(err, -EPROTO, "shared open file %u: no fd holds it", k);
		const struct fd_ops *ops = fds_ops_of(e->kind);
		if (!ops || ops->late)
			return ferr(err, -EPROTO, "pid %d fd %d: kind %u cannot be shared", p->pid,
			            e->fd, e->kind);
		if (first_pass != (ops->early && ops->early(e)))
			continue;
		int fd = ops->restore(e, ctx, err);
		if (fd < 0)
			return ferr_prefix(err, "pid %d fd %d (%s)", p->pid, e->fd, ops->name);
		int slot = ctx->share_lo + (int)k;
		if (fd != slot) {
			int r = dup3(fd, slot, O_CLOEXEC);
			safe_close(fd);
			if (r < 0)
				return ferr(err, -errno, "pid %d fd %d: dup3 to %d: %m", p->pid,
				            e->fd, slot);
		}
	}
	int r = fill_pending(ctx, err);
	fds_stash_drop(ctx);
	return r;
}

void fds_stash_drop(struct fd_restore_ctx *ctx)
{
	/* objects shared by several fds are at their numbers now: drop our extra copies */
	for (size_t i = 0; i < ctx->nstash; i++) {
		safe_close(ctx->stash[i].fd[0]);
		safe_close(ctx->stash[i].fd[1]);
	}
	free(ctx->stash);
	ctx->stash = NULL;
	ctx->nstash = 0;
}
