/*
 * Unix sockets (stream, datagram, seqpacket), the connections: a connected pair whose two ends
 * are in the component is made again as a socketpair (a connection accepted from a listener:
 * through a listener of ours on the same name, so that its ends keep their names); listeners
 * and bound sockets take their address again; a client whose connection waits to be accepted
 * connects to its listener again; a datagram socket connected to a named socket outside the
 * component is connected to that name again. Their queues, and the files in flight with them,
 * are fd-unix-queue.c's. Refused: a connection to a stream socket outside the component (its
 * other end has state ferry cannot rebuild), connections from outside waiting to be accepted.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>

#include "fd-unix.h"
#include "util.h"

struct ux_diag {
	uint8_t state;
	uint8_t shutdown;
	uint32_t peer;
	uint32_t rq, wq;
	/* a listener: the clients of the connections waiting to be accepted, in queue order */
	uint32_t icons[256];
	uint32_t nicons;
};

/* What sock_diag knows of the Unix socket with inode ino: state, peer, queues, shutdown. */
static int unix_diag(uint32_t ino, struct ux_diag *d)
{
	_cleanup_close_ int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	struct {
		struct nlmsghdr h;
		struct unix_diag_req r;
	} req = {
	        .h = {.nlmsg_len = sizeof(req),
	              .nlmsg_type = SOCK_DIAG_BY_FAMILY,
	              .nlmsg_flags = NLM_F_REQUEST},
	        .r = {.sdiag_family = AF_UNIX,
	              .udiag_states = ~0u,
	              .udiag_ino = ino,
	              .udiag_show = UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_ICONS,
	              .udiag_cookie = {INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE}},
	};
	uint64_t buf[2048];

	if (nl < 0)
		return -errno;
	if (send(nl, &req, sizeof(req), 0) < 0)
		return -errno;
	ssize_t n = recv(nl, buf, sizeof(buf), 0);
	if (n < 0)
		return -errno;
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	if (!NLMSG_OK(h, (size_t)n))
		return -EPROTO;
	if (h->nlmsg_type == NLMSG_ERROR) {
		const struct nlmsgerr *e = NLMSG_DATA(h);
		return e->error ? e->error : -EPROTO;
	}
	const struct unix_diag_msg *m = NLMSG_DATA(h);
	*d = (struct ux_diag){.state = m->udiag_state};
	int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof(*m));
	for (struct rtattr *a = (struct rtattr *)(m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == UNIX_DIAG_PEER)
			memcpy(&d->peer, RTA_DATA(a), sizeof(d->peer));
		else if (a->rta_type == UNIX_DIAG_RQLEN) {
			const struct unix_diag_rqlen *q = RTA_DATA(a);
			d->rq = q->udiag_rqueue;
			d->wq = q->udiag_wqueue;
		} else if (a->rta_type == UNIX_DIAG_SHUTDOWN) {
			d->shutdown = *(const uint8_t *)RTA_DATA(a);
		} else if (a->rta_type == UNIX_DIAG_ICONS) {
			size_t k = RTA_PAYLOAD(a) / sizeof(uint32_t);
			d->nicons = (uint32_t)MIN(k, ARRAY_SIZE(d->icons));
			memcpy(d->icons, RTA_DATA(a), d->nicons * sizeof(uint32_t));
			if (k > ARRAY_SIZE(d->icons))
				d->nicons = UINT32_MAX; /* more than we keep */
		}
	}
	return 0;
}

static bool unix_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return fi->sock_domain == AF_UNIX;
}

/* The fd of a live process of the component on the socket with inode ino, or -1. */
static int find_sock(const struct fd_capture_ctx *ctx, uint64_t ino, const struct process **ret)
{
	for (size_t i = 0; i < ctx->c->nprocs; i++) {
		const struct process *q = &ctx->c->procs[i];
		char path[64];
		struct dirent *de;
		int found = -1;
		if (q->zombie)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fd", q->host_pid);
		DIR *d = opendir(path);
		while (d && found < 0 && (de = readdir(d))) {
			char p2[96];
			struct stat sb;
			snprintf(p2, sizeof(p2), "%s/%s", path, de->d_name);
			if (de->d_name[0] >= '0' && de->d_name[0] <= '9' && stat(p2, &sb) == 0 &&
			    S_ISSOCK(sb.st_mode) && sb.st_ino == ino)
				found = atoi(de->d_name);
		}
		if (d)
			closedir(d);
		if (found >= 0) {
			*ret = q;
			return found;
		}
	}
	return -1;
}

/*
 * A client whose connection waits to be accepted (connected, its peer not a socket yet): the
 * listener must be the component's, and nothing written on it yet (its bytes would be in the
 * connection the listener holds, where no peek reaches).
 */
int fd_unix_peer(uint32_t ino, uint32_t *peer)
{
	struct ux_diag d;
	int r = unix_diag(ino, &d);

	if (r < 0)
		return r;
	if (!d.peer)
		return -ENOTCONN;
	*peer = d.peer;
	return 0;
}

int fd_unix_queued(uint32_t ino, uint32_t *bytes)
{
	struct ux_diag d;
	int r = unix_diag(ino, &d);

	if (r < 0)
		return r;
	*bytes = d.rq;
	return 0;
}

int fd_unix_shutdown(uint32_t ino)
{
	struct ux_diag d;
	int r = unix_diag(ino, &d);

	return r < 0 ? r : d.shutdown;
}

static int pending_client(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                          uint64_t *v, int s, const struct ux_diag *d, struct ferry_error *err);
static void addr_str(const uint64_t *a, uint64_t alen, char *buf, size_t len);

static int unix_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                        struct ferry_error *err)
{
	_cleanup_close_ int s = pidfd_getfd_of(ctx->p->host_pid, fi->fd);
	uint64_t v[UX_N] = {fi->st.st_ino};
	struct sockaddr_un sa;
	socklen_t sl = sizeof(sa);
	struct ux_diag d;

	if (s < 0)
		return ferr(err, s, "%s: pidfd_getfd: %s", fi->link, strerror(-s));
	int r = unix_diag((uint32_t)fi->st.st_ino, &d);
	if (r < 0)
		return ferr(err, r, "%s: sock_diag: %s", fi->link, strerror(-r));
	int type = fds_sockopt(s, SOL_SOCKET, SO_TYPE);
	v[UX_TYPE] = (uint64_t)type;
	v[UX_STATE] = d.state;
	v[UX_PEER] = d.peer;
	v[UX_SNDBUF] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_SNDBUF);
	v[UX_RCVBUF] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_RCVBUF);
	v[UX_FLAGS] = (fds_sockopt(s, SOL_SOCKET, SO_PASSCRED) > 0 ? UX_PASSCRED : 0) |
	              ((d.shutdown & 1) ? UX_SHUT_RD : 0) | ((d.shutdown & 2) ? UX_SHUT_WR : 0);
	if (getsockname(s, (struct sockaddr *)&sa, &sl) < 0)
		return ferr(err, -errno, "%s: getsockname: %m", fi->link);
	v[UX_ALEN] = sl;
	memcpy(&v[UX_ADDR], &sa, MIN((size_t)sl, 14 * sizeof(uint64_t)));
	if (fds_sockopt(s, SOL_SOCKET, SO_ACCEPTCONN) == 1) {
		/* connections not accepted yet: made again by their clients, which must be in
		 * the component */
		if (d.rq > 0 && d.nicons != d.rq)
			return ferr(err, -ENOTSUP,
			            "%s: %u connections wait to be accepted, %u seen", fi->link,
			            d.rq, d.nicons);
		for (uint32_t i = 0; i < d.nicons; i++) {
			const struct process *q = NULL;
			if (find_sock(ctx, d.icons[i], &q) < 0)
				return ferr(
				        err, -ENOTSUP,
				        "%s: a connection from outside the component waits to be "
				        "accepted (socket:[%u]; unsupported)",
				        fi->link, d.icons[i]);
		}
		v[UX_FLAGS] |= UX_LISTEN;
		v[UX_BACKLOG] = d.wq;
		v[UX_QBYTES] = d.nicons; /* for describe */
		return fds_set_extra(e, v, UX_N, err);
	}
	if (!d.peer && d.state == 1 /* TCP_ESTABLISHED */ && type != SOCK_DGRAM)
		return pending_client(ctx, fi, e, v, s, &d, err);
	_cleanup_close_ int peer_s = -EBADF;
	if (d.peer && ctx->inflight)
		return ferr(err, -ENOTSUP, "%s: a connected Unix socket in flight (unsupported)",
		            fi->link);
	if (d.peer) {
		const struct process *q = NULL;
		int pfd = find_sock(ctx, d.peer, &q);
		if (pfd >= 0) {
			v[UX_FLAGS] |= UX_PAIR;
			v[UX_WHERE] = (uint64_t)(uint32_t)q->pid << 32 | (uint32_t)pfd;
			/* the queues go with the first end captured */
			for (size_t k = 0; k < ctx->c->nprocs; k++)
				for (size_t i = 0; i < ctx->c->procs[k].nfds; i++) {
					const struct fd_entry *o = &ctx->c->procs[k].fds[i];
					if (o != e && o->kind == FD_UNIX && o->nextra == UX_N &&
					    o->extra[UX_INO] == d.peer) {
						v[UX_PSNDBUF] = o->extra[UX_SNDBUF];
						v[UX_PRCVBUF] = o->extra[UX_RCVBUF];
						return fds_set_extra(e, v, UX_N, err);
					}
				}
			v[UX_FLAGS] |= UX_FIRST;
			peer_s = pidfd_getfd_of(q->host_pid, pfd);
			if (peer_s < 0)
				return ferr(err, peer_s, "%s: its peer: pidfd_getfd: %s", fi->link,
				            strerror(-peer_s));
			v[UX_PSNDBUF] = (uint64_t)fds_sockopt(peer_s, SOL_SOCKET, SO_SNDBUF);
			v[UX_PRCVBUF] = (uint64_t)fds_sockopt(peer_s, SOL_SOCKET, SO_RCVBUF);
			/* the peer's own name: with this end's, a connection accepted from a
			 * listener (one end named as the listener) is made that way again */
			struct sockaddr_un pa;
			socklen_t pl = sizeof(pa);
			if (getsockname(peer_s, (struct sockaddr *)&pa, &pl) == 0) {
				v[UX_RALEN] = pl;
				memcpy(&v[UX_RADDR], &pa, MIN((size_t)pl, 14 * sizeof(uint64_t)));
			}
		} else {
			struct sockaddr_un ra;
			socklen_t rl = sizeof(ra);
			if (type != SOCK_DGRAM || getpeername(s, (struct sockaddr *)&ra, &rl) < 0 ||
			    rl <= sizeof(sa_family_t))
				return ferr(err, -ENOTSUP,
				            "%s: connected to socket:[%u] outside the component "
				            "(unsupported)",
				            fi->link, d.peer);
			v[UX_FLAGS] |= UX_REMOTE;
			v[UX_RALEN] = rl;
			memcpy(&v[UX_RADDR], &ra, MIN((size_t)rl, 14 * sizeof(uint64_t)));
		}
	}
	r = ux_save_queues(ctx, v, fi->fd, s, peer_s, type, fi->link, err);
	if (r < 0)
		return r;
	if (!(v[UX_FLAGS] & UX_PAIR) && v[UX_LEN]) {
		/* a socket alone gets its messages again from a socket of ours, sent to its
		 * address (before it connects) */
		if (v[UX_FLAGS] & UX_RIGHTS)
			return ferr(err, -ENOTSUP,
			            "%s: files in flight to a socket whose sender is outside the "
			            "component (unsupported)",
			            fi->link);
		if (type != SOCK_DGRAM || v[UX_ALEN] <= sizeof(sa_family_t))
			return ferr(err, -ENOTSUP,
			            "%s: messages queued in a socket without an address "
			            "(unsupported)",
			            fi->link);
	}
	return fds_set_extra(e, v, UX_N, err);
}

static int pending_client(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                          uint64_t *v, int s, const struct ux_diag *d, struct ferry_error *err)
{
	struct sockaddr_un ra;
	socklen_t rl = sizeof(ra);

	if (ctx->inflight)
		return ferr(err, -ENOTSUP,
		            "%s: a Unix socket in flight whose connection waits to "
		            "be accepted (unsupported)",
		            fi->link);
	if (getpeername(s, (struct sockaddr *)&ra, &rl) < 0 || rl <= sizeof(sa_family_t))
		return ferr(err, -ENOTSUP, "%s: connected, but to no socket or name (unsupported)",
		            fi->link);
	/* the listener of the component whose queue holds it */
	for (size_t k = 0; k < ctx->c->nprocs; k++) {
		const struct process *q = &ctx->c->procs[k];
		char path[64];
		struct dirent *de;
		if (q->zombie)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fd", q->host_pid);
		DIR *dir = opendir(path);
		while (dir && (de = readdir(dir))) {
			char p2[96];
			struct stat sb;
			struct ux_diag ld;
			snprintf(p2, sizeof(p2), "%s/%s", path, de->d_name);
			if (de->d_name[0] < '0' || de->d_name[0] > '9' || stat(p2, &sb) < 0 ||
			    !S_ISSOCK(sb.st_mode) || unix_diag((uint32_t)sb.st_ino, &ld) < 0 ||
			    ld.state != 10 /* TCP_LISTEN */)
				continue;
			for (uint32_t i = 0; i < ld.nicons && i < ARRAY_SIZE(ld.icons); i++) {
				if (ld.icons[i] != fi->st.st_ino)
					continue;
				closedir(dir);
				if (d->wq)
					return ferr(err, -ENOTSUP,
					            "%s: bytes written on a connection that "
					            "socket:[%" PRIu64 "] has not accepted yet "
					            "(unsupported)",
					            fi->link, (uint64_t)sb.st_ino);
				v[UX_FLAGS] |= UX_PENDING;
				v[UX_PEER] = sb.st_ino;
				v[UX_WHERE] = i;
				v[UX_RALEN] = rl;
				memcpy(&v[UX_RADDR], &ra, MIN((size_t)rl, 14 * sizeof(uint64_t)));
				return fds_set_extra(e, v, UX_N, err);
			}
		}
		if (dir)
			closedir(dir);
	}
	char name[128];
	uint64_t raw[14] = {0};
	memcpy(raw, &ra, MIN((size_t)rl, sizeof(raw)));
	addr_str(raw, rl, name, sizeof(name));
	return ferr(err, -ENOTSUP,
	            "%s: its connection to %s (outside the component) waits to be accepted "
	            "(unsupported)",
	            fi->link, name);
}

/* The name of the one end of a pair that has one (a connection accepted from a listener has
 * the listener's), in sa; 0 this end, 1 the peer, -1 none or both. */
static int named_end(const uint64_t *v, struct sockaddr_un *sa, socklen_t *sl)
{
	bool me = v[UX_ALEN] > sizeof(sa_family_t), peer = v[UX_RALEN] > sizeof(sa_family_t);

	if (me == peer || v[UX_TYPE] == SOCK_DGRAM)
		return -1;
	memset(sa, 0, sizeof(*sa));
	*sl = (socklen_t)MIN(me ? v[UX_ALEN] : v[UX_RALEN], sizeof(*sa));
	memcpy(sa, me ? &v[UX_ADDR] : &v[UX_RADDR], *sl);
	return me ? 0 : 1;
}

/*
 * A connection accepted from a listener, made that way again so that its ends keep their
 * names: a listener of ours on the name (free now: named pairs are made before any listener,
 * see unix_early), a client connects, the listener accepts. sv[0] is the first end. 0, or
 * -errno and nothing made (the caller falls back to a socketpair: the names are lost).
 */
static int accepted_pair(const uint64_t *v, int sv[2])
{
	struct sockaddr_un sa;
	socklen_t sl;
	struct stat sb;
	int named = named_end(v, &sa, &sl), r = 0;

	if (named < 0)
		return -EINVAL;
	_cleanup_close_ int l = socket(AF_UNIX, (int)v[UX_TYPE] | SOCK_CLOEXEC, 0);
	_cleanup_close_ int c = socket(AF_UNIX, (int)v[UX_TYPE] | SOCK_CLOEXEC, 0);
	if (l < 0 || c < 0)
		return -errno;
	/* a path left by the socket that ended (a restore after --stop) */
	if (sa.sun_path[0] && lstat(sa.sun_path, &sb) == 0 && S_ISSOCK(sb.st_mode))
		(void)unlink(sa.sun_path);
	if (bind(l, (struct sockaddr *)&sa, sl) < 0 || listen(l, 1) < 0)
		return -errno;
	int a = -EBADF;
	if (connect(c, (struct sockaddr *)&sa, sl) < 0 ||
	    (a = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
		r = -errno;
	/* the path stays, as it stayed in the original (a listener of the image unlinks a
	 * socket's path before it binds) */
	if (r < 0)
		return r;
	sv[named] = a;
	sv[!named] = c;
	c = -EBADF;
	return 0;
}

/* Made before every other fd: a connection accepted from a listener (its listener's name must
 * be free for a moment). */
static bool unix_early(const struct fd_entry *e)
{
	struct sockaddr_un sa;
	socklen_t sl;

	return e->nextra == UX_N && (e->extra[UX_FLAGS] & UX_FIRST) &&
	       named_end(e->extra, &sa, &sl) >= 0;
}

/* Both ends of a pair parked in the stash; with their queues, unless these carry files in
 * flight (filled by fd_unix_fill once every fd is in place). */
static int pair_create(const struct fd_entry *e, struct fd_restore_ctx *ctx, struct fd_stash *st,
                       struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	int sv[2], r = 0;

	if (accepted_pair(v, sv) < 0 &&
	    socketpair(AF_UNIX, (int)v[UX_TYPE] | SOCK_CLOEXEC, 0, sv) < 0)
		return ferr(err, -errno, "socketpair: %m");
	/* room for the queues while they are filled; the real sizes after */
	ux_big_bufs(sv[0]);
	ux_big_bufs(sv[1]);
	if (!(v[UX_FLAGS] & UX_RIGHTS))
		r = ux_fill_pair(v, sv[0], sv[1], ctx, err);
	for (int k = 0; k < 2; k++) {
		st->fd[k] = r == 0 ? fcntl(sv[k], F_DUPFD_CLOEXEC, ctx->stash_lo) : -EBADF;
		safe_close(sv[k]);
	}
	if (r < 0)
		return r;
	if (st->fd[0] < 0 || st->fd[1] < 0)
		return ferr(err, -EMFILE, "parking a socket pair: %m");
	st->id = v[UX_INO];
	st->fill = (v[UX_FLAGS] & UX_RIGHTS) ? e : NULL;
	return 0;
}

/* A client connects to the listener, restored by now, as it had: its connection waits there
 * to be accepted. */
static int connect_pending(const struct fd_entry *e, int s, struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	struct sockaddr_un ra = {0};
	socklen_t rl = (socklen_t)MIN(v[UX_RALEN], sizeof(ra));
	int fl = fcntl(s, F_GETFL);

	memcpy(&ra, &v[UX_RADDR], rl);
	/* the listener's backlog holds it (it held it before): no wait */
	if (fl < 0 || fcntl(s, F_SETFL, fl | O_NONBLOCK) < 0)
		return ferr(err, -errno, "socket:[%" PRIu64 "]: F_SETFL: %m", v[UX_INO]);
	int r = connect(s, (struct sockaddr *)&ra, rl) < 0 ? -errno : 0;
	(void)fcntl(s, F_SETFL, fl);
	if (r < 0)
		return ferr(err, r, "socket:[%" PRIu64 "]: connecting to %s%s again: %s", v[UX_INO],
		            ra.sun_path[0] ? "" : "@", ra.sun_path + !ra.sun_path[0], strerror(-r));
	return 0;
}

int fd_unix_fill_all(struct fd_restore_ctx *ctx, struct ferry_error *err)
{
	uint64_t last = 0;
	bool more = false;

	/* the queues of pairs, then the connections waiting to be accepted, in the order of
	 * their listeners' queues (the stash may move while files in flight are made: what is
	 * needed of an entry is taken before) */
	for (size_t i = 0; i < ctx->nstash; i++) {
		const struct fd_entry *e = ctx->stash[i].fill;
		int s0 = ctx->stash[i].fd[0], s1 = ctx->stash[i].fd[1];
		if (!e)
			continue;
		if (e->extra[UX_FLAGS] & UX_PENDING) {
			last = MAX(last, e->extra[UX_WHERE]);
			more = true;
			continue;
		}
		ctx->stash[i].fill = NULL;
		int r = ux_fill_pair(e->extra, s0, s1, ctx, err);
		if (r < 0)
			return r;
	}
	for (uint64_t at = 0; more && at <= last; at++)
		for (size_t i = 0; i < ctx->nstash; i++) {
			const struct fd_entry *e = ctx->stash[i].fill;
			if (!e || e->extra[UX_WHERE] != at)
				continue;
			ctx->stash[i].fill = NULL;
			int r = connect_pending(e, ctx->stash[i].fd[0], err);
			if (r < 0)
				return r;
		}
	return 0;
}

/* A client whose connection waits to be accepted: connected once every fd is in place (the
 * listener with them), through a copy in the stash. */
static int park_pending(const struct fd_entry *e, int s, struct fd_restore_ctx *ctx,
                        struct ferry_error *err)
{
	if (GROW(ctx->stash, ctx->nstash) < 0)
		return ferr(err, -ENOMEM, "out of memory");
	struct fd_stash *st = &ctx->stash[ctx->nstash];
	memset(st, 0, sizeof(*st));
	st->id = e->extra[UX_INO];
	st->fd[0] = fcntl(s, F_DUPFD_CLOEXEC, ctx->stash_lo);
	st->fd[1] = -EBADF;
	if (st->fd[0] < 0)
		return ferr(err, -errno, "parking a socket: %m");
	st->fill = e;
	ctx->nstash++;
	return 0;
}

static int unix_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                        struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	int s, r = 0;

	if (e->nextra != UX_N)
		return ferr(err, -EPROTO, "unix socket record without its values");
	if (v[UX_FLAGS] & UX_PAIR) {
		/* the pair is made with its first end; the stash knows it by that end's inode */
		uint64_t first = (v[UX_FLAGS] & UX_FIRST) ? v[UX_INO] : v[UX_PEER];
		struct fd_stash *st = NULL;
		for (size_t i = 0; i < ctx->nstash && !st; i++)
			if (ctx->stash[i].id == first)
				st = &ctx->stash[i];
		if (!st) {
			if (!(v[UX_FLAGS] & UX_FIRST))
				return ferr(err, -EPROTO,
				            "socket:[%" PRIu64 "]: its peer's record comes later",
				            v[UX_INO]);
			if (GROW(ctx->stash, ctx->nstash) < 0)
				return ferr(err, -ENOMEM, "out of memory");
			st = &ctx->stash[ctx->nstash];
			memset(st, 0, sizeof(*st));
			r = pair_create(e, ctx, st, err);
			if (r < 0)
				return r;
			ctx->nstash++;
		}
		int end = st->fd[(v[UX_FLAGS] & UX_FIRST) ? 0 : 1];
		if (fcntl(end, F_SETFL, (int)(e->flags & O_NONBLOCK)) < 0)
			return ferr(err, -errno, "socket: F_SETFL: %m");
		s = fcntl(end, F_DUPFD_CLOEXEC, 0);
		if (s < 0)
			return ferr(err, -errno, "socket: dup: %m");
	} else {
		s = socket(AF_UNIX, (int)v[UX_TYPE] | SOCK_CLOEXEC, 0);
		if (s < 0)
			return ferr(err, -errno, "socket: %m");
		struct sockaddr_un sa = {0};
		socklen_t sl = (socklen_t)MIN(v[UX_ALEN], sizeof(sa));
		memcpy(&sa, &v[UX_ADDR], sl);
		if (sl > sizeof(sa_family_t)) {
			struct stat sb;
			/* a path left by the socket that ended (a restore after --stop) */
			if (sa.sun_path[0] && lstat(sa.sun_path, &sb) == 0 && S_ISSOCK(sb.st_mode))
				(void)unlink(sa.sun_path);
			if (bind(s, (struct sockaddr *)&sa, sl) < 0)
				r = ferr(err, -errno, "bind to %s%.*s: %m",
				         sa.sun_path[0] ? "" : "@",
				         (int)(sl - sizeof(sa_family_t) - !sa.sun_path[0]),
				         sa.sun_path + !sa.sun_path[0]);
		}
		if (r == 0 && (v[UX_FLAGS] & UX_LISTEN) && listen(s, (int)v[UX_BACKLOG]) < 0)
			r = ferr(err, -errno, "listen: %m");
		if (r == 0 && v[UX_LEN] && !(v[UX_FLAGS] & UX_LISTEN))
			r = ux_fill_alone(s, v, &sa, sl, ctx, err);
		if (r == 0 && (v[UX_FLAGS] & UX_REMOTE)) {
			struct sockaddr_un ra = {0};
			socklen_t rl = (socklen_t)MIN(v[UX_RALEN], sizeof(ra));
			memcpy(&ra, &v[UX_RADDR], rl);
			if (connect(s, (struct sockaddr *)&ra, rl) < 0)
				r = ferr(err, -errno, "connect to %s: %m", ra.sun_path);
		}
		if (r == 0 && (v[UX_FLAGS] & UX_PENDING))
			r = park_pending(e, s, ctx, err);
		if (r == 0 && ux_set_bufs(s, v[UX_SNDBUF], v[UX_RCVBUF]) < 0)
			r = ferr(err, -errno, "socket buffers: %m");
		if (r == 0 && fcntl(s, F_SETFL, (int)(e->flags & O_NONBLOCK)) < 0)
			r = ferr(err, -errno, "socket: F_SETFL: %m");
		if (r < 0) {
			safe_close(s);
			return r;
		}
	}
	int one = 1;
	if ((v[UX_FLAGS] & UX_PASSCRED) &&
	    setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0) {
		safe_close(s);
		return ferr(err, -errno, "SO_PASSCRED: %m");
	}
	int how = ((v[UX_FLAGS] & UX_SHUT_RD) ? 1 : 0) | ((v[UX_FLAGS] & UX_SHUT_WR) ? 2 : 0);
	if (how && shutdown(s, how - 1) < 0 && errno != ENOTCONN) {
		safe_close(s);
		return ferr(err, -errno, "shutdown: %m");
	}
	return s;
}

static const char *type_name(uint64_t t)
{
	return t == SOCK_STREAM ? "stream" : t == SOCK_DGRAM ? "datagram" : "seqpacket";
}

static void addr_str(const uint64_t *a, uint64_t alen, char *buf, size_t len)
{
	struct sockaddr_un sa = {0};
	size_t l = MIN(alen, sizeof(sa));
	memcpy(&sa, a, l);
	if (l <= sizeof(sa_family_t))
		snprintf(buf, len, "unnamed");
	else if (sa.sun_path[0])
		snprintf(buf, len, "%s", sa.sun_path);
	else
		snprintf(buf, len, "@%.*s", (int)(l - sizeof(sa_family_t) - 1), sa.sun_path + 1);
}

static void unix_describe(const struct fd_entry *e, char *buf, size_t len)
{
	const uint64_t *v = e->extra;
	char me[128], other[128];

	if (e->nextra != UX_N) {
		snprintf(buf, len, "unix socket");
		return;
	}
	addr_str(&v[UX_ADDR], v[UX_ALEN], me, sizeof(me));
	if (v[UX_FLAGS] & UX_LISTEN)
		snprintf(buf, len,
		         "unix %s socket:[%" PRIu64 "] %s, listening (backlog %" PRIu64
		         "), %" PRIu64 " connection%s waiting to be accepted",
		         type_name(v[UX_TYPE]), v[UX_INO], me, v[UX_BACKLOG], v[UX_QBYTES],
		         v[UX_QBYTES] == 1 ? "" : "s");
	else if (v[UX_FLAGS] & UX_PAIR)
		snprintf(buf, len,
		         "unix %s socket:[%" PRIu64 "] %s, connected to socket:[%" PRIu64
		         "] (pid %u fd %u)",
		         type_name(v[UX_TYPE]), v[UX_INO], me, v[UX_PEER],
		         (unsigned)(v[UX_WHERE] >> 32), (unsigned)(v[UX_WHERE] & 0xffffffffu));
	else if (v[UX_FLAGS] & UX_REMOTE) {
		addr_str(&v[UX_RADDR], v[UX_RALEN], other, sizeof(other));
		snprintf(buf, len, "unix %s socket:[%" PRIu64 "] %s, connected to %s (outside)",
		         type_name(v[UX_TYPE]), v[UX_INO], me, other);
	} else if (v[UX_FLAGS] & UX_PENDING) {
		addr_str(&v[UX_RADDR], v[UX_RALEN], other, sizeof(other));
		snprintf(buf, len,
		         "unix %s socket:[%" PRIu64 "] %s, connecting to %s (socket:[%" PRIu64
		         "]), waiting to be accepted (place %" PRIu64 ")",
		         type_name(v[UX_TYPE]), v[UX_INO], me, other, v[UX_PEER], v[UX_WHERE] + 1);
	} else {
		snprintf(buf, len, "unix %s socket:[%" PRIu64 "] %s, not connected",
		         type_name(v[UX_TYPE]), v[UX_INO], me);
	}
	size_t n = strlen(buf);
	if ((v[UX_FLAGS] & UX_FIRST) && n < len)
		snprintf(buf + n, len - n,
		         ", %" PRIu64 " bytes queued in it, %" PRIu64 " in its peer", v[UX_QBYTES],
		         v[UX_PQBYTES]);
	else if (!(v[UX_FLAGS] & (UX_PAIR | UX_LISTEN)) && v[UX_QBYTES] && n < len)
		snprintf(buf + n, len - n, ", %" PRIu64 " bytes queued", v[UX_QBYTES]);
	n = strlen(buf);
	if ((v[UX_FLAGS] & UX_RIGHTS) && n < len)
		snprintf(buf + n, len - n, ", with files in flight");
}

/* A file in flight, seen in fdinfo (scm_fds) and received by a peek; a connection waiting to
 * be accepted, named by its listener's sock_diag icons. 0 or -errno. */
static int probe_rights_and_icons(int sv0, int sv1)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cm = {0};
	char x = 'x', path[64];
	struct iovec io = {&x, 1};
	struct msghdr mh = {
	        .msg_iov = &io, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	_cleanup_free_ char *info = NULL;
	uint64_t n = 0;
	int zero = 0;

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &sv0, sizeof(int));
	if (sendmsg(sv0, &mh, 0) != 1)
		return -errno;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", sv1);
	if (read_file(path, &info, NULL) < 0 || fds_fdinfo_u64(info, "scm_fds", 10, &n) < 0 ||
	    n != 1)
		return -ENOTSUP;
	mh.msg_controllen = sizeof(cm);
	if (setsockopt(sv1, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) < 0 ||
	    recvmsg(sv1, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != 1 ||
	    !CMSG_FIRSTHDR(&mh) || CMSG_FIRSTHDR(&mh)->cmsg_type != SCM_RIGHTS)
		return -ENOTSUP;
	int got;
	memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
	safe_close(got);

	_cleanup_close_ int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	_cleanup_close_ int cl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t sl = sizeof(sa);
	struct stat lb, cb;
	struct ux_diag d;
	/* autobind: an abstract name of the kernel's choosing */
	if (l < 0 || cl < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa_family_t)) < 0 ||
	    listen(l, 1) < 0 || getsockname(l, (struct sockaddr *)&sa, &sl) < 0 ||
	    connect(cl, (struct sockaddr *)&sa, sl) < 0 || fstat(l, &lb) < 0 || fstat(cl, &cb) < 0)
		return -errno;
	int r = unix_diag((uint32_t)lb.st_ino, &d);
	if (r < 0)
		return r;
	return d.nicons == 1 && d.icons[0] == cb.st_ino ? 0 : -ENOTSUP;
}

static int unix_kernel_probe(char *detail, size_t len)
{
	int sv[2], r = -1;
	struct ux_diag d = {0};
	struct stat sb;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
		struct stat pb;
		r = fstat(sv[0], &sb) == 0 && fstat(sv[1], &pb) == 0
		            ? unix_diag((uint32_t)sb.st_ino, &d)
		            : -errno;
		if (r == 0 && d.peer != pb.st_ino)
			r = -EPROTO;
		if (r == 0) {
			r = probe_rights_and_icons(sv[0], sv[1]);
			if (r < 0) {
				snprintf(
				        detail, len,
				        "sock_diag names a unix socket's peer, but files in flight "
				        "(fdinfo scm_fds, a peek) or connections waiting to be "
				        "accepted (sock_diag icons) are not seen: %s",
				        strerror(-r));
				safe_close(sv[0]);
				safe_close(sv[1]);
				return 0;
			}
		}
		safe_close(sv[0]);
		safe_close(sv[1]);
	}
	snprintf(detail, len, "%s",
	         r == 0 ? "sock_diag names a unix socket's peer and the connections waiting to be "
	                  "accepted; files in flight show in fdinfo and come with a peek"
	                : strerror(r < 0 ? -r : EIO));
	return r == 0;
}

const struct fd_ops fd_unix_ops = {
        .name = "unix",
        .kind = FD_UNIX,
        .probe = unix_probe,
        .capture = unix_capture,
        .restore = unix_restore,
        .describe = unix_describe,
        .early = unix_early,
        .kernel_probe = unix_kernel_probe,
};
