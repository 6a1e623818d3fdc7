/*
 * Unix sockets (stream, datagram, seqpacket): a connected pair whose two ends are in the
 * component (socketpair, or a connection accepted from a listener of the component) is made
 * again as a socketpair, with the messages queued in each end; listeners and bound sockets take
 * their address again; a datagram socket connected to a named socket outside the component is
 * connected to that name again. Refused: a connection to a stream socket outside the component
 * (its other end has state ferry cannot rebuild), connections waiting to be accepted, and fds
 * in flight (SCM_RIGHTS).
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

#include "fds.h"
#include "util.h"

/*
 * e->extra: identity, peer's identity (0: none), type, state, flags, listen backlog, send and
 * receive buffers of this end and of its peer, where the queued messages of both ends are in
 * the pages file (with the first end of a pair only), the peer as pid << 32 | fd (for
 * describe), this end's address, and the address a datagram socket is connected to outside.
 */
enum {
	UX_INO,
	UX_PEER,
	UX_TYPE,
	UX_STATE,
	UX_FLAGS,
	UX_BACKLOG,
	UX_SNDBUF,
	UX_RCVBUF,
	UX_PSNDBUF,
	UX_PRCVBUF,
	UX_OFF,
	UX_LEN,
	UX_CSUM,
	UX_QBYTES, /* bytes queued in this end, in its peer */
	UX_PQBYTES,
	UX_WHERE,
	UX_ALEN,
	UX_ADDR,
	UX_RALEN = UX_ADDR + 14,
	UX_RADDR,
	UX_N = UX_RADDR + 14
};
#define UX_LISTEN   (1u << 0)
#define UX_PAIR     (1u << 1) /* both ends in the component */
#define UX_FIRST    (1u << 2) /* the end that carries the pair's queues */
#define UX_REMOTE   (1u << 3) /* datagram, connected to a named socket outside */
#define UX_PASSCRED (1u << 4)
#define UX_SHUT_RD  (1u << 5)
#define UX_SHUT_WR  (1u << 6)
#define MAX_QUEUE   (16u << 20)

struct ux_diag {
	uint8_t state;
	uint8_t shutdown;
	uint32_t peer;
	uint32_t rq, wq;
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
	              .udiag_show = UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN,
	              .udiag_cookie = {INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE}},
	};
	uint64_t buf[1024];

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
		}
	}
	return 0;
}

static bool unix_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	if (!S_ISSOCK(fi->st.st_mode))
		return false;
	_cleanup_close_ int s = pidfd_getfd_of(ctx->p->host_pid, fi->fd);
	return s >= 0 && fds_sockopt(s, SOL_SOCKET, SO_DOMAIN) == AF_UNIX;
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
 * The messages queued in socket s (ours, a copy of the component's), peeked without consuming
 * them: appended to *data, each one's length to *lens. Refuses fds in flight.
 */
static int peek_queue(int s, int type, uint8_t **data, size_t *len, uint32_t **lens, size_t *nlens,
                      const char *what, struct ferry_error *err)
{
	int old = fds_sockopt(s, SOL_SOCKET, SO_PEEK_OFF), zero = 0, r = 0;
	_cleanup_free_ uint8_t *buf = malloc(MAX_QUEUE);

	if (!buf)
		return ferr(err, -ENOMEM, "out of memory");
	if (setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) < 0)
		return ferr(err, -errno, "%s: SO_PEEK_OFF: %m", what);
	for (;;) {
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int) * 253)];
		} cm;
		struct iovec io = {buf, MAX_QUEUE};
		struct msghdr mh = {.msg_iov = &io,
		                    .msg_iovlen = 1,
		                    .msg_control = &cm,
		                    .msg_controllen = sizeof(cm)};
		ssize_t n = recvmsg(s, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0) {
			if (errno != EAGAIN)
				r = ferr(err, -errno, "%s: peeking its queue: %m", what);
			break;
		}
		bool fds = false;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				const int *f = (const int *)CMSG_DATA(c);
				size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				for (size_t i = 0; i < k; i++)
					safe_close(f[i]);
				fds = true;
			}
		if (fds) {
			r = ferr(err, -ENOTSUP,
			         "%s: file descriptors in flight (SCM_RIGHTS) are not supported",
			         what);
			break;
		}
		if (n == 0 && type == SOCK_STREAM)
			break;
		if (*len + (size_t)n > MAX_QUEUE) {
			r = ferr(err, -ENOTSUP, "%s: more than %u MiB queued", what,
			         MAX_QUEUE >> 20);
			break;
		}
		uint8_t *nd = realloc(*data, *len + (size_t)n + 1);
		uint32_t *nl = realloc(*lens, (*nlens + 1) * sizeof(*nl));
		if (nd)
			*data = nd;
		if (nl)
			*lens = nl;
		if (!nd || !nl) {
			r = ferr(err, -ENOMEM, "out of memory");
			break;
		}
		memcpy(*data + *len, buf, (size_t)n);
		*len += (size_t)n;
		(*lens)[(*nlens)++] = (uint32_t)n;
		/* an empty datagram: the next peek skips it (the kernel marks it peeked); a queue
		 * cannot hold more than this many */
		if (*nlens > (1u << 20)) {
			r = ferr(err, -EPROTO, "%s: its queue does not end", what);
			break;
		}
	}
	(void)setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof(old));
	return r;
}

/* Both queues of a pair into the pages file: [count a][count b][lengths a][lengths b][bytes]. */
static int save_queues(struct fd_capture_ctx *ctx, uint64_t *v, int s, int peer, int type,
                       const char *what, struct ferry_error *err)
{
	_cleanup_free_ uint8_t *d0 = NULL, *d1 = NULL;
	_cleanup_free_ uint32_t *l0 = NULL, *l1 = NULL;
	size_t len[2] = {0, 0}, nl[2] = {0, 0};
	int r = peek_queue(s, type, &d0, &len[0], &l0, &nl[0], what, err);

	if (r == 0 && peer >= 0)
		r = peek_queue(peer, type, &d1, &len[1], &l1, &nl[1], what, err);
	if (r < 0)
		return r;
	const uint8_t *d[2] = {d0, d1};
	const uint32_t *l[2] = {l0, l1};
	v[UX_QBYTES] = len[0];
	v[UX_PQBYTES] = len[1];
	if (!nl[0] && !nl[1])
		return 0;
	size_t total = 8 + 4 * (nl[0] + nl[1]) + len[0] + len[1];
	_cleanup_free_ uint8_t *out = malloc(total);
	if (!out)
		return ferr(err, -ENOMEM, "out of memory");
	uint32_t hdr[2] = {(uint32_t)nl[0], (uint32_t)nl[1]};
	size_t at = 0;
	memcpy(out, hdr, 8);
	at = 8;
	for (int k = 0; k < 2; k++) {
		memcpy(out + at, l[k], 4 * nl[k]);
		at += 4 * nl[k];
	}
	for (int k = 0; k < 2; k++) {
		if (len[k])
			memcpy(out + at, d[k], len[k]);
		at += len[k];
	}
	v[UX_LEN] = total;
	v[UX_CSUM] = image_checksum(out, total);
	if (ctx->w) {
		v[UX_OFF] = image_pages_alloc(ctx->w, total);
		r = pwrite_full(image_pages_fd(ctx->w), out, total, (off_t)v[UX_OFF]);
		if (r < 0)
			return ferr(err, r, "%s: writing its queue: %s", what, strerror(-r));
	}
	return 0;
}

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
		if (d.rq > 0)
			return ferr(err, -ENOTSUP,
			            "%s: %u connections wait to be accepted (unsupported yet)",
			            fi->link, d.rq);
		v[UX_FLAGS] |= UX_LISTEN;
		v[UX_BACKLOG] = d.wq;
		return fds_set_extra(e, v, UX_N, err);
	}
	_cleanup_close_ int peer_s = -EBADF;
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
	r = save_queues(ctx, v, s, peer_s, type, fi->link, err);
	if (r < 0)
		return r;
	return fds_set_extra(e, v, UX_N, err);
}

/* Send the messages of one queue (count n, lengths at lens, bytes at data) from s. */
static int fill_queue(int s, const uint32_t *lens, uint32_t n, const uint8_t **data, int type)
{
	for (uint32_t i = 0; i < n; i++) {
		size_t done = 0;
		do {
			ssize_t k =
			        send(s, *data + done, lens[i] - done, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (k < 0)
				return -errno;
			done += (size_t)k;
		} while (type == SOCK_STREAM && done < lens[i]);
		*data += lens[i];
	}
	return 0;
}

static int set_bufs(int s, uint64_t snd, uint64_t rcv)
{
	/* the kernel doubles what it is given and reports the doubled value */
	int a = (int)(snd / 2), b = (int)(rcv / 2);
	if ((snd && setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &a, sizeof(a)) < 0) ||
	    (rcv && setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &b, sizeof(b)) < 0))
		return -errno;
	return 0;
}

/* Both ends of a pair, with both queues, parked in the stash. */
static int pair_create(const struct fd_entry *e, struct fd_restore_ctx *ctx, struct fd_stash *st,
                       struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	int sv[2], r = 0, big = 8 << 20;
	_cleanup_free_ uint8_t *q = NULL;

	if (socketpair(AF_UNIX, (int)v[UX_TYPE] | SOCK_CLOEXEC, 0, sv) < 0)
		return ferr(err, -errno, "socketpair: %m");
	/* room for the queues while they are filled; the real sizes after */
	for (int k = 0; k < 2; k++) {
		(void)setsockopt(sv[k], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
		(void)setsockopt(sv[k], SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
	}
	if (v[UX_LEN]) {
		q = malloc(v[UX_LEN]);
		r = q ? pread_full(ctx->pages_fd, q, v[UX_LEN], (off_t)v[UX_OFF]) : -ENOMEM;
		if (r == 0 && image_checksum(q, v[UX_LEN]) != v[UX_CSUM])
			r = -EBADMSG;
		uint32_t hdr[2] = {0, 0};
		if (r == 0) {
			memcpy(hdr, q, 8);
			if (8 + 4 * ((uint64_t)hdr[0] + hdr[1]) > v[UX_LEN])
				r = -EBADMSG;
		}
		if (r == 0) {
			const uint32_t *lens = (const uint32_t *)(q + 8);
			const uint8_t *data = q + 8 + 4 * ((size_t)hdr[0] + hdr[1]);
			/* this end's queue is sent by its peer, and the peer's by this end */
			r = fill_queue(sv[1], lens, hdr[0], &data, (int)v[UX_TYPE]);
			if (r == 0)
				r = fill_queue(sv[0], lens + hdr[0], hdr[1], &data,
				               (int)v[UX_TYPE]);
		}
	}
	if (r == 0)
		r = set_bufs(sv[0], v[UX_SNDBUF], v[UX_RCVBUF]);
	if (r == 0)
		r = set_bufs(sv[1], v[UX_PSNDBUF], v[UX_PRCVBUF]);
	for (int k = 0; k < 2; k++) {
		st->fd[k] = r == 0 ? fcntl(sv[k], F_DUPFD_CLOEXEC, ctx->stash_lo) : -EBADF;
		safe_close(sv[k]);
	}
	if (r < 0)
		return ferr(err, r, "socket:[%" PRIu64 "]: its queues: %s", v[UX_INO],
		            r == -EBADMSG ? "checksum mismatch" : strerror(-r));
	if (st->fd[0] < 0 || st->fd[1] < 0)
		return ferr(err, -EMFILE, "parking a socket pair: %m");
	st->id = v[UX_INO];
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
		if (r == 0 && (v[UX_FLAGS] & UX_REMOTE)) {
			struct sockaddr_un ra = {0};
			socklen_t rl = (socklen_t)MIN(v[UX_RALEN], sizeof(ra));
			memcpy(&ra, &v[UX_RADDR], rl);
			if (connect(s, (struct sockaddr *)&ra, rl) < 0)
				r = ferr(err, -errno, "connect to %s: %m", ra.sun_path);
		}
		if (r == 0 && set_bufs(s, v[UX_SNDBUF], v[UX_RCVBUF]) < 0)
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
		         "unix %s socket:[%" PRIu64 "] %s, listening (backlog %" PRIu64 ")",
		         type_name(v[UX_TYPE]), v[UX_INO], me, v[UX_BACKLOG]);
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
	} else {
		snprintf(buf, len, "unix %s socket:[%" PRIu64 "] %s, not connected",
		         type_name(v[UX_TYPE]), v[UX_INO], me);
	}
	size_t n = strlen(buf);
	if ((v[UX_FLAGS] & UX_FIRST) && n < len)
		snprintf(buf + n, len - n,
		         ", %" PRIu64 " bytes queued in it, %" PRIu64 " in its peer", v[UX_QBYTES],
		         v[UX_PQBYTES]);
	else if (!(v[UX_FLAGS] & UX_PAIR) && v[UX_QBYTES] && n < len)
		snprintf(buf + n, len - n, ", %" PRIu64 " bytes queued", v[UX_QBYTES]);
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
		safe_close(sv[0]);
		safe_close(sv[1]);
	}
	snprintf(detail, len, "%s",
	         r == 0 ? "sock_diag names a unix socket's peer" : strerror(r < 0 ? -r : EIO));
	return r == 0;
}

const struct fd_ops fd_unix_ops = {
        .name = "unix",
        .kind = FD_UNIX,
        .probe = unix_probe,
        .capture = unix_capture,
        .restore = unix_restore,
        .describe = unix_describe,
        .kernel_probe = unix_kernel_probe,
};
