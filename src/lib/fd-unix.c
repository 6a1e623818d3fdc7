/*
 * Unix sockets (stream, datagram, seqpacket): a connected pair whose two ends are in the
 * component is made again as a socketpair (a connection accepted from a listener: through a
 * listener of ours on the same name, so that its ends keep their names), with the messages queued
 * in each end and the files in flight with them (SCM_RIGHTS); listeners and bound sockets take
 * their address again, and a bound datagram socket's queue is sent to it again; a datagram socket
 * connected to a named socket outside the component is connected to that name again. Refused: a
 * connection to a stream socket outside the component (its other end has state ferry cannot
 * rebuild), connections waiting to be accepted, and files in flight to a socket whose sender is
 * outside.
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
#define UX_RIGHTS   (1u << 7) /* its queues hold files in flight (SCM_RIGHTS) */
/* a client whose connection to a listener of the component waits to be accepted: UX_PEER is
 * the listener, UX_WHERE its place in the listener's queue, UX_RADDR the listener's address */
#define UX_PENDING (1u << 8)
#define MAX_QUEUE  (16u << 20)

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

/* What one end's queue holds: the bytes, each message's length, and for each message its
 * count of files in flight followed by their indexes in component.inflight. */
struct ux_queue {
	uint8_t *data;
	size_t len;
	uint32_t *lens;
	size_t n;
	uint32_t *rights;
	size_t nrights;
	bool any_rights;
};

static void ux_queue_free(struct ux_queue *q)
{
	free(q->data);
	free(q->lens);
	free(q->rights);
}

/* The files of one SCM_RIGHTS message, received by peeking (ours now): kept as files in flight
 * of the component, their indexes appended to q->rights. */
static int take_rights(struct fd_capture_ctx *ctx, int fd, const int *f, size_t k,
                       struct ux_queue *q, const char *what, struct ferry_error *err)
{
	struct component *c = ctx->c;
	size_t i = 0;
	int r = 0;

	if (ctx->inflight)
		r = ferr(err, -ENOTSUP,
		         "%s: a socket in flight with files in flight in its own queue "
		         "(unsupported)",
		         what);
	for (; r == 0 && i < k; i++) {
		uint32_t *nr = realloc(q->rights, (q->nrights + 1) * sizeof(*nr));
		if (nr)
			q->rights = nr;
		if (!nr || GROW(c->inflight, c->ninflight) < 0 ||
		    GROW(c->inflight_local, c->ninflight) < 0 ||
		    GROW(c->inflight_from, c->ninflight) < 0) {
			r = ferr(err, -ENOMEM, "out of memory");
			break;
		}
		struct fd_entry *e = &c->inflight[c->ninflight];
		memset(e, 0, sizeof(*e));
		e->fd = (int32_t)c->ninflight;
		e->shmem = e->dup_of = e->share = -1;
		c->inflight_local[c->ninflight] = f[i];
		c->inflight_from[c->ninflight] =
		        (uint64_t)(uint32_t)ctx->p->pid << 32 | (uint32_t)fd;
		q->rights[q->nrights++] = (uint32_t)c->ninflight++;
	}
	for (; i < k; i++)
		safe_close(f[i]);
	return r;
}

/*
 * The messages queued in socket s (ours, a copy of the component's), peeked without consuming
 * them, into q; files in flight with them (SCM_RIGHTS) become the component's files in flight.
 * A stream's peek runs on from bytes sent without files into the next message with files and
 * returns them together (it does so whatever its length: measured), so where that message began
 * is not known: the restore sends them as one, and a read of the bytes before it gets its files
 * too (a read that takes them all sees no difference).
 */
static int peek_queue(struct fd_capture_ctx *ctx, int fd, int s, int type, struct ux_queue *q,
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
		uint32_t *nr = realloc(q->rights, (q->nrights + 1) * sizeof(*nr));
		if (!nr) {
			r = ferr(err, -ENOMEM, "out of memory");
			break;
		}
		q->rights = nr;
		size_t at = q->nrights++;
		q->rights[at] = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				int f[253];
				memcpy(f, CMSG_DATA(c), k * sizeof(int));
				q->rights[at] += (uint32_t)k;
				q->any_rights = true;
				if (r == 0)
					r = take_rights(ctx, fd, f, k, q, what, err);
				else
					for (size_t i = 0; i < k; i++)
						safe_close(f[i]);
			}
		if (r == 0 && (mh.msg_flags & MSG_CTRUNC))
			r = ferr(err, -ENOTSUP, "%s: a message with more than 253 files in flight",
			         what);
		if (r < 0)
			break;
		if (n == 0 && type == SOCK_STREAM && !q->rights[at]) {
			q->nrights--;
			break;
		}
		if (q->len + (size_t)n > MAX_QUEUE) {
			r = ferr(err, -ENOTSUP, "%s: more than %u MiB queued", what,
			         MAX_QUEUE >> 20);
			break;
		}
		uint8_t *nd = realloc(q->data, q->len + (size_t)n + 1);
		uint32_t *nl = realloc(q->lens, (q->n + 1) * sizeof(*nl));
		if (nd)
			q->data = nd;
		if (nl)
			q->lens = nl;
		if (!nd || !nl) {
			r = ferr(err, -ENOMEM, "out of memory");
			break;
		}
		memcpy(q->data + q->len, buf, (size_t)n);
		q->len += (size_t)n;
		q->lens[q->n++] = (uint32_t)n;
		/* an empty datagram: the next peek skips it (the kernel marks it peeked); a queue
		 * cannot hold more than this many */
		if (q->n > (1u << 20)) {
			r = ferr(err, -EPROTO, "%s: its queue does not end", what);
			break;
		}
	}
	(void)setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof(old));
	return r;
}

/*
 * Both queues of a pair (or the one of a socket alone) into the pages file: [count a][count b]
 * [lengths a][lengths b][bytes a][bytes b], and with files in flight (UX_RIGHTS) for each
 * message of a then b its count of files and their indexes in component.inflight.
 */
static int save_queues(struct fd_capture_ctx *ctx, uint64_t *v, int fd, int s, int peer, int type,
                       const char *what, struct ferry_error *err)
{
	_cleanup_(ux_queue_free) struct ux_queue q0 = {0};
	_cleanup_(ux_queue_free) struct ux_queue q1 = {0};
	int r = peek_queue(ctx, fd, s, type, &q0, what, err);

	if (r == 0 && peer >= 0)
		r = peek_queue(ctx, fd, peer, type, &q1, what, err);
	if (r < 0)
		return r;
	const struct ux_queue *q[2] = {&q0, &q1};
	v[UX_QBYTES] = q0.len;
	v[UX_PQBYTES] = q1.len;
	if (!q0.n && !q1.n)
		return 0;
	bool rights = q0.any_rights || q1.any_rights;
	size_t total = 8 + 4 * (q0.n + q1.n) + q0.len + q1.len +
	               (rights ? 4 * (q0.nrights + q1.nrights) : 0);
	_cleanup_free_ uint8_t *out = malloc(total);
	if (!out)
		return ferr(err, -ENOMEM, "out of memory");
	uint32_t hdr[2] = {(uint32_t)q0.n, (uint32_t)q1.n};
	size_t at = 8;
	memcpy(out, hdr, 8);
	for (int k = 0; k < 2; k++) {
		memcpy(out + at, q[k]->lens, 4 * q[k]->n);
		at += 4 * q[k]->n;
	}
	for (int k = 0; k < 2; k++) {
		if (q[k]->len)
			memcpy(out + at, q[k]->data, q[k]->len);
		at += q[k]->len;
	}
	for (int k = 0; rights && k < 2; k++) {
		if (q[k]->nrights)
			memcpy(out + at, q[k]->rights, 4 * q[k]->nrights);
		at += 4 * q[k]->nrights;
	}
	if (rights)
		v[UX_FLAGS] |= UX_RIGHTS;
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

/*
 * A client whose connection waits to be accepted (connected, its peer not a socket yet): the
 * listener must be the component's, and nothing written on it yet (its bytes would be in the
 * connection the listener holds, where no peek reaches).
 */
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
	r = save_queues(ctx, v, fi->fd, s, peer_s, type, fi->link, err);
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

/* Every file in flight in the queue of s (ours), appended to c->inflight_pre. */
static int preview_one(struct component *c, int s)
{
	int old = fds_sockopt(s, SOL_SOCKET, SO_PEEK_OFF), zero = 0, r = 0;
	/* a stream's peek stops after a message with files, or when the buffer is full (a
	 * peek that fills it still gets the files of the next message: copies kept twice are
	 * harmless) */
	_cleanup_free_ char *b = malloc(1u << 20);

	if (!b)
		return -ENOMEM;
	if (setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) < 0)
		return -errno;
	for (size_t guard = 0; r == 0 && guard < (1u << 20); guard++) {
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int) * 253)];
		} cm;
		struct iovec io = {b, 1u << 20};
		struct msghdr mh = {.msg_iov = &io,
		                    .msg_iovlen = 1,
		                    .msg_control = &cm,
		                    .msg_controllen = sizeof(cm)};
		ssize_t n = recvmsg(s, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n <= 0)
			break;
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
			if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			int f[253];
			memcpy(f, CMSG_DATA(h), k * sizeof(int));
			for (size_t i = 0; i < k; i++) {
				if (r == 0 && GROW(c->inflight_pre, c->ninflight_pre) < 0)
					r = -ENOMEM;
				if (r == 0)
					c->inflight_pre[c->ninflight_pre++] = f[i];
				else
					safe_close(f[i]);
			}
		}
	}
	(void)setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof(old));
	return r;
}

int fd_unix_preview(struct component *c, struct ferry_error *err)
{
	if (c->previewed)
		return 0;
	c->previewed = true;
	for (size_t i = 0; i < c->nprocs; i++) {
		const struct process *q = &c->procs[i];
		char path[64];
		struct dirent *de;
		int r = 0;
		if (q->zombie)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fd", q->host_pid);
		DIR *d = opendir(path);
		if (!d)
			return ferr(err, -errno, "%s: %m", path);
		while (r == 0 && (de = readdir(d))) {
			char p2[96];
			struct stat sb;
			snprintf(p2, sizeof(p2), "%s/%s", path, de->d_name);
			if (de->d_name[0] < '0' || de->d_name[0] > '9' || stat(p2, &sb) < 0 ||
			    !S_ISSOCK(sb.st_mode))
				continue;
			/* only a queue with files in it is peeked */
			_cleanup_free_ char *info = NULL;
			uint64_t nfds = 0;
			if (fds_fdinfo(q->host_pid, atoi(de->d_name), &info) < 0 ||
			    fds_fdinfo_u64(info, "scm_fds", 10, &nfds) < 0 || nfds == 0)
				continue;
			_cleanup_close_ int s = pidfd_getfd_of(q->host_pid, atoi(de->d_name));
			/* not a datagram socket: a peek marks an empty datagram seen, and the
			 * capture's peek would skip it (so a pipe end in flight there is refused)
			 */
			if (s < 0 || fds_sockopt(s, SOL_SOCKET, SO_DOMAIN) != AF_UNIX ||
			    fds_sockopt(s, SOL_SOCKET, SO_ACCEPTCONN) == 1 ||
			    fds_sockopt(s, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM)
				continue;
			r = preview_one(c, s);
		}
		closedir(d);
		if (r < 0)
			return ferr(err, r, "pid %d: files in flight: %s", q->pid, strerror(-r));
	}
	return 0;
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

/* A queue record read back and checked: the lengths and bytes of both ends' messages, and
 * with files in flight each message's count of files and their indexes. */
struct ux_saved {
	uint8_t *buf;
	uint32_t n[2];
	const uint32_t *lens;
	const uint8_t *data;
	uint32_t *rights; /* NULL: none (a copy: in the record they follow the bytes, unaligned) */
	size_t nrights;
};

static void ux_saved_free(struct ux_saved *q)
{
	free(q->buf);
	free(q->rights);
}

static int read_saved(const uint64_t *v, int pages_fd, struct ux_saved *q)
{
	uint64_t len = v[UX_LEN];
	int r;

	if (len < 8 || len > 4 * (uint64_t)MAX_QUEUE)
		return -EBADMSG;
	q->buf = malloc(len);
	if (!q->buf)
		return -ENOMEM;
	r = pread_full(pages_fd, q->buf, len, (off_t)v[UX_OFF]);
	if (r < 0)
		return r;
	if (image_checksum(q->buf, len) != v[UX_CSUM])
		return -EBADMSG;
	memcpy(q->n, q->buf, 8);
	uint64_t head = 8 + 4 * ((uint64_t)q->n[0] + q->n[1]);
	uint64_t bytes = v[UX_QBYTES] + v[UX_PQBYTES];
	if (head + bytes > len)
		return -EBADMSG;
	q->lens = (const uint32_t *)(q->buf + 8);
	uint64_t sum = 0;
	for (uint64_t i = 0; i < (uint64_t)q->n[0] + q->n[1]; i++)
		sum += q->lens[i];
	if (sum != bytes)
		return -EBADMSG;
	q->data = q->buf + head;
	if (v[UX_FLAGS] & UX_RIGHTS) {
		q->nrights = (len - head - bytes) / 4;
		q->rights = malloc(q->nrights ? q->nrights * 4 : 1);
		if (!q->rights)
			return -ENOMEM;
		memcpy(q->rights, q->buf + head + bytes, q->nrights * 4);
	} else if (head + bytes != len) {
		return -EBADMSG;
	}
	return 0;
}

/* The fd to send for file in flight idx: a shared one made by the root (a tree), an fd of the
 * process (one process), or made here (*own: the caller closes it once sent). */
static int inflight_fd(uint32_t idx, struct fd_restore_ctx *ctx, bool *own, struct ferry_error *err)
{
	*own = false;
	if (idx >= ctx->ninflight)
		return ferr(err, -EBADMSG, "file in flight %u: not in the image", idx);
	const struct fd_entry *f = &ctx->inflight[idx];
	if (f->share >= 0)
		return ctx->share_lo + f->share;
	if (f->dup_of >= 0)
		return f->dup_of;
	const struct fd_ops *ops = fds_ops_of(f->kind);
	if (!ops || ops->late)
		return ferr(err, -EPROTO, "file in flight %u: kind %u cannot be made", idx,
		            f->kind);
	int fd = ops->restore(f, ctx, err);
	if (fd < 0)
		return ferr_prefix(err, "file in flight %u (%s)", idx, ops->name);
	*own = true;
	return fd;
}

/*
 * Send n messages (lengths at lens, bytes at *data) from s, to addr when it is set; with files
 * in flight (q->rights, at *ri) each message carries its files again.
 */
static int fill_queue(int s, const uint32_t *lens, uint32_t n, const uint8_t **data, int type,
                      const struct sockaddr_un *addr, socklen_t alen, const struct ux_saved *q,
                      size_t *ri, struct fd_restore_ctx *ctx, struct ferry_error *err)
{
	for (uint32_t i = 0; i < n; i++) {
		int fds[253];
		bool own[253];
		uint32_t nf = 0, k = 0;
		int r = 0;

		if (q->rights) {
			if (*ri >= q->nrights || q->rights[*ri] > 253 ||
			    q->rights[*ri] > q->nrights - *ri - 1)
				return ferr(err, -EBADMSG,
				            "message %u: its files in flight: malformed", i);
			k = q->rights[(*ri)++];
		}
		for (; nf < k; nf++) {
			fds[nf] = inflight_fd(q->rights[(*ri)++], ctx, &own[nf], err);
			if (fds[nf] < 0) {
				r = fds[nf];
				break;
			}
		}
		size_t done = 0;
		while (r == 0) {
			union {
				struct cmsghdr h;
				char b[CMSG_SPACE(sizeof(int) * 253)];
			} cm;
			struct iovec io = {(void *)(*data + done), lens[i] - done};
			struct msghdr mh = {.msg_name = (void *)addr,
			                    .msg_namelen = addr ? alen : 0,
			                    .msg_iov = &io,
			                    .msg_iovlen = 1};
			if (nf && done == 0) {
				memset(&cm, 0, sizeof(cm));
				mh.msg_control = &cm;
				mh.msg_controllen = CMSG_SPACE(sizeof(int) * nf);
				struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
				c->cmsg_level = SOL_SOCKET;
				c->cmsg_type = SCM_RIGHTS;
				c->cmsg_len = CMSG_LEN(sizeof(int) * nf);
				memcpy(CMSG_DATA(c), fds, sizeof(int) * nf);
			}
			ssize_t sent = sendmsg(s, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (sent < 0)
				r = ferr(err, -errno, "message %u: sending it again: %m", i);
			else
				done += (size_t)sent;
			if (type != SOCK_STREAM || done >= lens[i])
				break;
		}
		for (uint32_t j = 0; j < nf; j++)
			if (own[j])
				safe_close(fds[j]);
		if (r < 0)
			return r;
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

static void big_bufs(int s)
{
	int big = 8 << 20;
	(void)setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	(void)setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
}

/* The queues of the pair s0 (the first end) and s1, then their own buffer sizes. */
static int fill_pair(const uint64_t *v, int s0, int s1, struct fd_restore_ctx *ctx,
                     struct ferry_error *err)
{
	_cleanup_(ux_saved_free) struct ux_saved q = {0};
	size_t ri = 0;
	int r = 0;

	if (v[UX_LEN]) {
		r = read_saved(v, ctx->pages_fd, &q);
		if (r < 0)
			return ferr(err, r, "socket:[%" PRIu64 "]: its queues: %s", v[UX_INO],
			            r == -EBADMSG ? "checksum mismatch or malformed"
			                          : strerror(-r));
		const uint8_t *data = q.data;
		/* this end's queue is sent by its peer, and the peer's by this end */
		r = fill_queue(s1, q.lens, q.n[0], &data, (int)v[UX_TYPE], NULL, 0, &q, &ri, ctx,
		               err);
		if (r == 0)
			r = fill_queue(s0, q.lens + q.n[0], q.n[1], &data, (int)v[UX_TYPE], NULL, 0,
			               &q, &ri, ctx, err);
		if (r < 0)
			return ferr_prefix(err, "socket:[%" PRIu64 "]: its queues", v[UX_INO]);
	}
	if (set_bufs(s0, v[UX_SNDBUF], v[UX_RCVBUF]) < 0 ||
	    set_bufs(s1, v[UX_PSNDBUF], v[UX_PRCVBUF]) < 0)
		return ferr(err, -errno, "socket:[%" PRIu64 "]: buffer sizes: %m", v[UX_INO]);
	return 0;
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
	big_bufs(sv[0]);
	big_bufs(sv[1]);
	if (!(v[UX_FLAGS] & UX_RIGHTS))
		r = fill_pair(v, sv[0], sv[1], ctx, err);
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
		int r = fill_pair(e->extra, s0, s1, ctx, err);
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

/* The messages queued in a datagram socket alone (bound at sa), sent to it again from a
 * socket of ours (their senders' addresses are not kept). */
static int fill_alone(int s, const uint64_t *v, const struct sockaddr_un *sa, socklen_t sl,
                      struct fd_restore_ctx *ctx, struct ferry_error *err)
{
	_cleanup_(ux_saved_free) struct ux_saved q = {0};
	_cleanup_close_ int tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	size_t ri = 0;
	int r;

	if (tx < 0)
		return ferr(err, -errno, "socket: %m");
	r = read_saved(v, ctx->pages_fd, &q);
	if (r < 0)
		return ferr(err, r, "its queue: %s",
		            r == -EBADMSG ? "checksum mismatch or malformed" : strerror(-r));
	big_bufs(tx);
	big_bufs(s);
	const uint8_t *data = q.data;
	r = fill_queue(tx, q.lens, q.n[0], &data, SOCK_DGRAM, sa, sl, &q, &ri, ctx, err);
	return r < 0 ? ferr_prefix(err, "its queue") : 0;
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
			r = fill_alone(s, v, &sa, sl, ctx, err);
		if (r == 0 && (v[UX_FLAGS] & UX_REMOTE)) {
			struct sockaddr_un ra = {0};
			socklen_t rl = (socklen_t)MIN(v[UX_RALEN], sizeof(ra));
			memcpy(&ra, &v[UX_RADDR], rl);
			if (connect(s, (struct sockaddr *)&ra, rl) < 0)
				r = ferr(err, -errno, "connect to %s: %m", ra.sun_path);
		}
		if (r == 0 && (v[UX_FLAGS] & UX_PENDING))
			r = park_pending(e, s, ctx, err);
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
