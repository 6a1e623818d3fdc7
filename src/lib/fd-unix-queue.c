/*
 * The queues of Unix sockets: the messages each end holds, peeked without consuming them
 * (SO_PEEK_OFF, boundaries kept), with the files in flight that come with them (SCM_RIGHTS),
 * saved in the pages file and sent again at restore by the other end of the pair.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fd-unix.h"
#include "util.h"

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
		/* a seqpacket socket that receives nothing more (its peer closed, or its read side
		 * shut) peeks 0 for ever at the end of its queue: the end, not empty messages */
		struct stat sb;
		int shut = 0;
		if (n == 0 && type == SOCK_SEQPACKET && !q->rights[at] && fstat(s, &sb) == 0 &&
		    (shut = fd_unix_shutdown((uint32_t)sb.st_ino)) > 0 && (shut & 1)) {
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
int ux_save_queues(struct fd_capture_ctx *ctx, uint64_t *v, int fd, int s, int peer, int type,
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

int ux_set_bufs(int s, uint64_t snd, uint64_t rcv)
{
	/* the kernel doubles what it is given and reports the doubled value */
	int a = (int)(snd / 2), b = (int)(rcv / 2);
	if ((snd && setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &a, sizeof(a)) < 0) ||
	    (rcv && setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &b, sizeof(b)) < 0))
		return -errno;
	return 0;
}

void ux_big_bufs(int s)
{
	int big = 8 << 20;
	(void)setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	(void)setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
}

/* The queues of the pair s0 (the first end) and s1, then their own buffer sizes. */
int ux_fill_pair(const uint64_t *v, int s0, int s1, struct fd_restore_ctx *ctx,
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
	if (ux_set_bufs(s0, v[UX_SNDBUF], v[UX_RCVBUF]) < 0 ||
	    ux_set_bufs(s1, v[UX_PSNDBUF], v[UX_PRCVBUF]) < 0)
		return ferr(err, -errno, "socket:[%" PRIu64 "]: buffer sizes: %m", v[UX_INO]);
	return 0;
}

/* The messages queued in a datagram socket alone (bound at sa), sent to it again from a
 * socket of ours (their senders' addresses are not kept). */
int ux_fill_alone(int s, const uint64_t *v, const struct sockaddr_un *sa, socklen_t sl,
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
	ux_big_bufs(tx);
	ux_big_bufs(s);
	const uint8_t *data = q.data;
	r = fill_queue(tx, q.lens, q.n[0], &data, SOCK_DGRAM, sa, sl, &q, &ri, ctx, err);
	return r < 0 ? ferr_prefix(err, "its queue") : 0;
}
