/*
 * Established TCP connections (IPv4, IPv6), by TCP_REPAIR: their addresses, sequence numbers,
 * windows, negotiated options and the bytes in both queues, so that a restore continues the
 * connection and the peer sees no reset and no byte lost or repeated.
 *
 * While the component is frozen each connection is put in repair mode (it sends nothing) behind
 * a socket filter that drops every segment that comes in (not acknowledged: the peer sends it
 * again later, to whichever copy then holds the connection). A checkpoint that lets the
 * component run on takes both away again (fds_held_release, resume); one that ends it closes
 * the connection in repair mode, which sends neither FIN nor RST, so that a restore can take it
 * over. The image of a component that ran on after it holds connections the peer has moved past.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/filter.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "fds.h"
#include "image.h"
#include "netlock.h"
#include "util.h"

/* e->extra */
enum {
	TC_DOMAIN,
	TC_FLAGS,
	TC_LALEN,
	TC_LADDR,
	TC_PALEN = TC_LADDR + 4,
	TC_PADDR,
	TC_SND_SEQ = TC_PADDR + 4, /* write_seq: the end of the send queue */
	TC_RCV_SEQ,                /* rcv_nxt: the end of the receive queue */
	TC_OUT_LEN,                /* bytes in the send queue (unacknowledged and not sent) */
	TC_OUT_NOTSENT,            /* of which not sent yet */
	TC_IN_LEN,                 /* bytes received and not read */
	TC_DATA_OFF,               /* in the pages file: the receive queue, then the send queue */
	TC_CSUM,
	TC_MSS,
	TC_OPTS,   /* tcpi_options */
	TC_WSCALE, /* snd | rcv << 16 */
	TC_TSVAL,
	TC_WIN,                   /* snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup */
	TC_KEEPIDLE = TC_WIN + 5, /* TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT (s, s, probes) */
	TC_KEEPINTVL,
	TC_KEEPCNT,
	TC_USER_TIMEOUT, /* TCP_USER_TIMEOUT (ms) */
	TC_N,
};
#define TC_NODELAY   (1u << 0)
#define TC_KEEPALIVE (1u << 1)

static bool tcp_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	return (fi->sock_domain == AF_INET || fi->sock_domain == AF_INET6) &&
	       fi->sock_type == SOCK_STREAM && fi->sock_proto == IPPROTO_TCP &&
	       !fi->sock_listening && fi->sock_connected;
}

void fd_tcp_release(int fd, bool resume)
{
	if (resume) {
		int off = TCP_REPAIR_OFF;
		(void)setsockopt(fd, SOL_TCP, TCP_REPAIR, &off, sizeof(off));
		int any = 0; /* an int, though unused: shorter options are refused */
		(void)setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &any, sizeof(any));
	}
	safe_close(fd);
}

int fd_tcp_ends(int fd, struct netlock_conn *c, struct ferry_error *err)
{
	socklen_t ll = sizeof(c->local), pl = sizeof(c->peer);

	if (getsockname(fd, (struct sockaddr *)&c->local, &ll) < 0 ||
	    getpeername(fd, (struct sockaddr *)&c->peer, &pl) < 0)
		return ferr(err, -errno, "network lock: the connection's addresses: %m");
	return 0;
}

/* One queue's sequence number and bytes (peeked: in repair mode MSG_PEEK reads either). */
static int peek_queue(int s, int q, uint64_t len, uint8_t *buf, uint64_t *ret_seq)
{
	uint32_t seq = 0;
	socklen_t sl = sizeof(seq);
	if (setsockopt(s, SOL_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q)) < 0 ||
	    getsockopt(s, SOL_TCP, TCP_QUEUE_SEQ, &seq, &sl) < 0)
		return -errno;
	*ret_seq = seq;
	if (!len)
		return 0;
	ssize_t n = recv(s, buf, len, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0)
		return -errno;
	return (uint64_t)n == len ? 0 : -EIO;
}

static int tcp_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                       struct ferry_error *err)
{
	uint64_t v[TC_N] = {0};
	struct sockaddr_storage sa;
	socklen_t sl = sizeof(sa);
	struct tcp_info ti = {0};
	socklen_t til = sizeof(ti);
	int s = pidfd_getfd_of(ctx->p->host_pid, fi->fd), on = TCP_REPAIR_ON;
	char where[200], local[80], peer[80];

	if (s < 0)
		return ferr(err, s, "%s: pidfd_getfd: %s", fi->link, strerror(-s));
	v[TC_DOMAIN] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_DOMAIN);
	if (getsockname(s, (struct sockaddr *)&sa, &sl) < 0 || sl > 4 * sizeof(uint64_t)) {
		safe_close(s);
		return ferr(err, -errno, "%s: getsockname: %m", fi->link);
	}
	v[TC_LALEN] = sl;
	memcpy(&v[TC_LADDR], &sa, sl);
	sl = sizeof(sa);
	if (getpeername(s, (struct sockaddr *)&sa, &sl) < 0 || sl > 4 * sizeof(uint64_t)) {
		safe_close(s);
		return ferr(err, -errno, "%s: getpeername: %m", fi->link);
	}
	v[TC_PALEN] = sl;
	memcpy(&v[TC_PADDR], &sa, sl);
	fds_sockaddr_str(&v[TC_LADDR], v[TC_LALEN], local, sizeof(local));
	fds_sockaddr_str(&v[TC_PADDR], v[TC_PALEN], peer, sizeof(peer));
	snprintf(where, sizeof(where), "TCP %s -> %s", local, peer);
	if (getsockopt(s, SOL_TCP, TCP_INFO, &ti, &til) < 0 || ti.tcpi_state != TCP_ESTABLISHED) {
		safe_close(s);
		return ferr(err, -ENOTSUP, "%s: in TCP state %u, not established (unsupported)",
		            where, ti.tcpi_state);
	}
	/* a filter of the component's own would be replaced by ours: refused */
	socklen_t fl = 0;
	if (getsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, NULL, &fl) == 0 && fl > 0) {
		safe_close(s);
		return ferr(err, -ENOTSUP, "%s: has a socket filter of its own (unsupported)",
		            where);
	}
	struct sock_filter drop = BPF_STMT(BPF_RET | BPF_K, 0);
	struct sock_fprog prog = {.len = 1, .filter = &drop};
	if (setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0) {
		int r = -errno;
		safe_close(s);
		return ferr(err, r, "%s: attaching the drop filter: %s", where, strerror(-r));
	}
	/* from here on it is held: a failure or the thaw takes repair and filter away */
	int r = fds_hold(ctx, s);
	if (r < 0) {
		fd_tcp_release(s, true);
		return ferr(err, r, "%s: holding it: %s", where, strerror(-r));
	}
	if (setsockopt(s, SOL_TCP, TCP_REPAIR, &on, sizeof(on)) < 0)
		return ferr(err, -errno, "%s: TCP_REPAIR (needs CAP_NET_ADMIN): %m", where);
	v[TC_FLAGS] = (fds_sockopt(s, SOL_TCP, TCP_NODELAY) > 0 ? TC_NODELAY : 0) |
	              (fds_sockopt(s, SOL_SOCKET, SO_KEEPALIVE) > 0 ? TC_KEEPALIVE : 0);
	v[TC_MSS] = (uint64_t)fds_sockopt(s, SOL_TCP, TCP_MAXSEG);
	v[TC_KEEPIDLE] = (uint64_t)fds_sockopt(s, SOL_TCP, TCP_KEEPIDLE);
	v[TC_KEEPINTVL] = (uint64_t)fds_sockopt(s, SOL_TCP, TCP_KEEPINTVL);
	v[TC_KEEPCNT] = (uint64_t)fds_sockopt(s, SOL_TCP, TCP_KEEPCNT);
	v[TC_USER_TIMEOUT] = (uint64_t)fds_sockopt(s, SOL_TCP, TCP_USER_TIMEOUT);
	v[TC_OPTS] = ti.tcpi_options;
	v[TC_WSCALE] = ti.tcpi_snd_wscale | (uint64_t)ti.tcpi_rcv_wscale << 16;
	uint32_t ts = 0;
	socklen_t tsl = sizeof(ts);
	if ((ti.tcpi_options & TCPI_OPT_TIMESTAMPS) &&
	    getsockopt(s, SOL_TCP, TCP_TIMESTAMP, &ts, &tsl) < 0)
		return ferr(err, -errno, "%s: TCP_TIMESTAMP: %m", where);
	v[TC_TSVAL] = ts;
	struct tcp_repair_window w = {0};
	socklen_t wl = sizeof(w);
	if (getsockopt(s, SOL_TCP, TCP_REPAIR_WINDOW, &w, &wl) < 0)
		return ferr(err, -errno, "%s: TCP_REPAIR_WINDOW: %m", where);
	v[TC_WIN] = w.snd_wl1;
	v[TC_WIN + 1] = w.snd_wnd;
	v[TC_WIN + 2] = w.max_window;
	v[TC_WIN + 3] = w.rcv_wnd;
	v[TC_WIN + 4] = w.rcv_wup;
	int in = 0, out = 0, notsent = 0;
	if (ioctl(s, SIOCINQ, &in) < 0 || ioctl(s, SIOCOUTQ, &out) < 0 ||
	    ioctl(s, SIOCOUTQNSD, &notsent) < 0)
		return ferr(err, -errno, "%s: queue lengths: %m", where);
	v[TC_IN_LEN] = (uint64_t)in;
	v[TC_OUT_LEN] = (uint64_t)out;
	v[TC_OUT_NOTSENT] = (uint64_t)notsent;
	_cleanup_free_ uint8_t *data = malloc((size_t)in + (size_t)out + 1);
	if (!data)
		return ferr(err, -ENOMEM, "out of memory");
	r = peek_queue(s, TCP_RECV_QUEUE, v[TC_IN_LEN], data, &v[TC_RCV_SEQ]);
	if (r == 0)
		r = peek_queue(s, TCP_SEND_QUEUE, v[TC_OUT_LEN], data + in, &v[TC_SND_SEQ]);
	if (r < 0)
		return ferr(err, r, "%s: reading its queues: %s", where, strerror(-r));
	if (in + out && ctx->w) {
		v[TC_DATA_OFF] = image_pages_alloc(ctx->w, (uint64_t)in + (uint64_t)out);
		v[TC_CSUM] = image_checksum(data, (size_t)in + (size_t)out);
		r = pwrite_full(image_pages_fd(ctx->w), data, (size_t)in + (size_t)out,
		                (off_t)v[TC_DATA_OFF]);
		if (r < 0)
			return ferr(err, r, "%s: writing its queues: %s", where, strerror(-r));
	}
	return fds_set_extra(e, v, TC_N, err);
}

static int set_int(int s, int level, int name, int val)
{
	return setsockopt(s, level, name, &val, sizeof(val)) < 0 ? -errno : 0;
}

static int fill_queue(int s, int q, const uint8_t *data, uint64_t len)
{
	int r = set_int(s, SOL_TCP, TCP_REPAIR_QUEUE, q);
	for (uint64_t done = 0; r == 0 && done < len;) {
		ssize_t n = send(s, data + done, len - done, 0);
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += (uint64_t)n;
	}
	return r;
}

static int tcp_rebuild(int s, const struct fd_entry *e, const uint8_t *data, const char *where,
                       struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	uint64_t in = v[TC_IN_LEN], out = v[TC_OUT_LEN], notsent = MIN(v[TC_OUT_NOTSENT], out);
	uint32_t snd = (uint32_t)(v[TC_SND_SEQ] - out), rcv = (uint32_t)(v[TC_RCV_SEQ] - in);
	struct tcp_repair_opt opts[4];
	int n = 0, r;

	/* repair mode: the socket may take an address in use, and connect sends nothing */
	if ((r = set_int(s, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON)) < 0 ||
	    (r = set_int(s, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)) < 0 ||
	    (r = set_int(s, SOL_TCP, TCP_QUEUE_SEQ, (int)snd)) < 0 ||
	    (r = set_int(s, SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)) < 0 ||
	    (r = set_int(s, SOL_TCP, TCP_QUEUE_SEQ, (int)rcv)) < 0)
		return ferr(err, r, "%s: sequence numbers: %s", where, strerror(-r));
	if (bind(s, (const struct sockaddr *)&v[TC_LADDR], (socklen_t)v[TC_LALEN]) < 0 ||
	    connect(s, (const struct sockaddr *)&v[TC_PADDR], (socklen_t)v[TC_PALEN]) < 0)
		return ferr(err, -errno, "%s: taking the connection over: %m%s", where,
		            errno == EADDRINUSE || errno == EADDRNOTAVAIL
		                    ? " (does the original still hold it?)"
		                    : "");
	opts[n++] = (struct tcp_repair_opt){TCPOPT_MAXSEG, (uint32_t)v[TC_MSS]};
	if (v[TC_OPTS] & TCPI_OPT_WSCALE)
		opts[n++] = (struct tcp_repair_opt){TCPOPT_WINDOW, (uint32_t)v[TC_WSCALE]};
	if (v[TC_OPTS] & TCPI_OPT_SACK)
		opts[n++] = (struct tcp_repair_opt){TCPOPT_SACK_PERMITTED, 0};
	if (v[TC_OPTS] & TCPI_OPT_TIMESTAMPS)
		opts[n++] = (struct tcp_repair_opt){TCPOPT_TIMESTAMP, 0};
	if (setsockopt(s, SOL_TCP, TCP_REPAIR_OPTIONS, opts, (socklen_t)(n * sizeof(opts[0]))) < 0)
		return ferr(err, -errno, "%s: TCP_REPAIR_OPTIONS: %m", where);
	if ((v[TC_OPTS] & TCPI_OPT_TIMESTAMPS) &&
	    (r = set_int(s, SOL_TCP, TCP_TIMESTAMP, (int)(uint32_t)v[TC_TSVAL])) < 0)
		return ferr(err, r, "%s: TCP_TIMESTAMP: %s", where, strerror(-r));
	if ((r = fill_queue(s, TCP_RECV_QUEUE, data, in)) < 0 ||
	    (r = fill_queue(s, TCP_SEND_QUEUE, data + in, out - notsent)) < 0)
		return ferr(err, r, "%s: refilling its queues: %s", where, strerror(-r));
	struct tcp_repair_window w = {
	        .snd_wl1 = (uint32_t)v[TC_WIN],
	        .snd_wnd = (uint32_t)v[TC_WIN + 1],
	        .max_window = (uint32_t)v[TC_WIN + 2],
	        .rcv_wnd = (uint32_t)v[TC_WIN + 3],
	        .rcv_wup = (uint32_t)v[TC_WIN + 4],
	};
	if (setsockopt(s, SOL_TCP, TCP_REPAIR_WINDOW, &w, sizeof(w)) < 0)
		return ferr(err, -errno, "%s: TCP_REPAIR_WINDOW: %m", where);
	if ((r = set_int(s, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF)) < 0)
		return ferr(err, r, "%s: leaving repair mode: %s", where, strerror(-r));
	/* the connection is ours: the peer's segments (dropped since the checkpoint) come in */
	struct netlock_conn lc = {0};
	memcpy(&lc.local, &v[TC_LADDR], MIN(v[TC_LALEN], sizeof(uint64_t) * 4));
	memcpy(&lc.peer, &v[TC_PADDR], MIN(v[TC_PALEN], sizeof(uint64_t) * 4));
	netlock_unlock(&lc);
	/* what the original had not sent yet goes out as any send would: room for all of it in
	 * the send buffer first (the original's had grown to hold it), never blocking here */
	int sndbuf = fds_sockopt(s, SOL_SOCKET, SO_SNDBUF);
	if (notsent && sndbuf >= 0 && (uint64_t)sndbuf < 2 * out &&
	    (r = set_int(s, SOL_SOCKET, SO_SNDBUFFORCE, (int)MIN(2 * out, (uint64_t)INT32_MAX))) <
	            0)
		return ferr(err, r, "%s: SO_SNDBUFFORCE: %s", where, strerror(-r));
	for (uint64_t done = 0; done < notsent;) {
		ssize_t k = send(s, data + in + out - notsent + done, notsent - done,
		                 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k <= 0)
			return ferr(err, k < 0 ? -errno : -EIO,
			            "%s: queueing its %" PRIu64 " unsent bytes (%" PRIu64
			            " in): %m",
			            where, notsent, done);
		done += (uint64_t)k;
	}
	if ((v[TC_FLAGS] & TC_NODELAY) && (r = set_int(s, SOL_TCP, TCP_NODELAY, 1)) < 0)
		return ferr(err, r, "%s: TCP_NODELAY: %s", where, strerror(-r));
	if ((v[TC_FLAGS] & TC_KEEPALIVE) && (r = set_int(s, SOL_SOCKET, SO_KEEPALIVE, 1)) < 0)
		return ferr(err, r, "%s: SO_KEEPALIVE: %s", where, strerror(-r));
	static const struct {
		int idx, name;
		const char *what;
	} tcpopts[] = {{TC_KEEPIDLE, TCP_KEEPIDLE, "TCP_KEEPIDLE"},
	               {TC_KEEPINTVL, TCP_KEEPINTVL, "TCP_KEEPINTVL"},
	               {TC_KEEPCNT, TCP_KEEPCNT, "TCP_KEEPCNT"},
	               {TC_USER_TIMEOUT, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"}};
	for (size_t i = 0; i < ARRAY_SIZE(tcpopts); i++) {
		int64_t val = (int64_t)v[tcpopts[i].idx];
		if (val > 0 && val <= INT32_MAX &&
		    (r = set_int(s, SOL_TCP, tcpopts[i].name, (int)val)) < 0)
			return ferr(err, r, "%s: %s: %s", where, tcpopts[i].what, strerror(-r));
	}
	return 0;
}

static int tcp_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                       struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	char where[200], local[80], peer[80];

	if (e->nextra != TC_N || v[TC_IN_LEN] > (1u << 30) || v[TC_OUT_LEN] > (1u << 30))
		return ferr(err, -EPROTO, "TCP connection record without its values");
	fds_sockaddr_str(&v[TC_LADDR], v[TC_LALEN], local, sizeof(local));
	fds_sockaddr_str(&v[TC_PADDR], v[TC_PALEN], peer, sizeof(peer));
	snprintf(where, sizeof(where), "TCP %s -> %s", local, peer);
	uint64_t len = v[TC_IN_LEN] + v[TC_OUT_LEN];
	_cleanup_free_ uint8_t *data = malloc(len + 1);
	int r = data ? 0 : -ENOMEM;
	if (r == 0 && len)
		r = pread_full(ctx->pages_fd, data, len, (off_t)v[TC_DATA_OFF]);
	if (r == 0 && len && image_checksum(data, len) != v[TC_CSUM])
		r = -EBADMSG;
	if (r < 0)
		return ferr(err, r, "%s: its queued bytes: %s", where,
		            r == -EBADMSG ? "checksum mismatch" : strerror(-r));
	int s = socket((int)v[TC_DOMAIN], SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
	if (s < 0)
		return ferr(err, -errno, "socket for %s: %m", where);
	r = tcp_rebuild(s, e, data, where, err);
	if (r == 0 && (e->flags & O_NONBLOCK) && fcntl(s, F_SETFL, O_RDWR | O_NONBLOCK) < 0)
		r = ferr(err, -errno, "%s: O_NONBLOCK: %m", where);
	if (r < 0) {
		/* still in repair mode if it failed there: closing it sends nothing */
		safe_close(s);
		return r;
	}
	return s;
}

static void tcp_describe(const struct fd_entry *e, char *buf, size_t len)
{
	char local[80], peer[80];
	if (e->nextra != TC_N) {
		snprintf(buf, len, "TCP connection");
		return;
	}
	fds_sockaddr_str(&e->extra[TC_LADDR], e->extra[TC_LALEN], local, sizeof(local));
	fds_sockaddr_str(&e->extra[TC_PADDR], e->extra[TC_PALEN], peer, sizeof(peer));
	snprintf(buf, len,
	         "TCP %s -> %s established, %" PRIu64 " bytes to read, %" PRIu64
	         " to send (%" PRIu64 " not sent yet)",
	         local, peer, e->extra[TC_IN_LEN], e->extra[TC_OUT_LEN], e->extra[TC_OUT_NOTSENT]);
}

static int tcp_kernel_probe(char *detail, size_t len)
{
	_cleanup_close_ int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
	bool ok = s >= 0 && set_int(s, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON) == 0;
	snprintf(detail, len, "%s",
	         ok ? "TCP_REPAIR available (CAP_NET_ADMIN)"
	            : "TCP_REPAIR refused: established connections cannot be captured");
	return ok;
}

const struct fd_ops fd_tcp_ops = {
        .name = "tcp",
        .kind = FD_TCP,
        .probe = tcp_probe,
        .capture = tcp_capture,
        .restore = tcp_restore,
        .describe = tcp_describe,
        .kernel_probe = tcp_kernel_probe,
};
