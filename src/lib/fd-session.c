/*
 * Sessions to the node's services (docs/sessions.md). A component reaches a service by name at
 * the same path on every node (services.c puts them under /run/ferry in its mount namespace):
 * - a Unix socket service: a stream or seqpacket socket connected to the node's socket of that
 *   service (its peer's name is the declared path). Re-created by connecting to the service of
 *   the same name on the node where the component is restored, at the same fd. The bytes the
 *   service had sent and the component had not read are peeked at capture and delivered first:
 *   the fd is then a socket pair whose other end the monitor holds (relay.c), until the
 *   component has read them and the monitor puts the service's connection itself at the fd.
 *   What the component wrote is in the service's own queue: its node's service reads it once.
 * - a TCP service: a TCP connection whose peer is the declared HOST:PORT of a service of the
 *   node. Re-created by connecting to the HOST:PORT the node of the restore declares for that
 *   name, at the same fd, the unread bytes delivered first in the same way. Before it is
 *   captured, what the component wrote must have been acknowledged by the service (it is
 *   frozen: nothing more comes; waited for, briefly), so that nothing it wrote is in flight.
 *   When the session ends at the source, a socket filter stops it from taking (acknowledging)
 *   anything more, and what it took is delivered: the service's kernel counts exactly what
 *   reached the component (tcpi_bytes_acked), and the connection is reset.
 * - a ROM: a read-only file at /run/ferry/rom/NAME, the node's own file, reopened there at the
 *   same offset.
 * Each session has an identity and a sequence (how many times it was re-created), kept in the
 * image and, for a running component, in STATE/NAME/sessions (socket inode, id, sequence); a
 * service that speaks the resume protocol is told both when its session is re-created.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <xxhash.h>

#include "fd-unix.h"
#include "runtime.h"
#include "services.h"
#include "session.h"
#include "util.h"

#define ROM_PREFIX SERVICES_DIR "/rom/"

/* The node's service whose unix socket is at path (NULL: none). */
static const struct ferry_service *service_at(const struct component *c, const char *path)
{
	for (size_t i = 0; i < c->nservices; i++)
		if (c->services[i].kind == FERRY_SERVICE_UNIX &&
		    strcmp(c->services[i].target, path) == 0)
			return &c->services[i];
	return NULL;
}

/* The service a connected socket s (ours) is a session to, by its peer's name. */
static const struct ferry_service *service_of(const struct component *c, int s)
{
	struct sockaddr_un sa;
	socklen_t sl = sizeof(sa);

	memset(&sa, 0, sizeof(sa));
	if (getpeername(s, (struct sockaddr *)&sa, &sl) < 0 || sl <= sizeof(sa_family_t) ||
	    sa.sun_path[0] == '\0')
		return NULL;
	sa.sun_path[MIN((size_t)sl - sizeof(sa_family_t), sizeof(sa.sun_path) - 1)] = '\0';
	return service_at(c, sa.sun_path);
}

/* The TCP service a connected TCP socket s (ours) is a session to, by its peer's address. */
static const struct ferry_service *tcp_service_of(const struct component *c, int s)
{
	struct sockaddr_storage sa;
	socklen_t sl = sizeof(sa);

	if (!c->nsvaddrs || getpeername(s, (struct sockaddr *)&sa, &sl) < 0)
		return NULL;
	int i = services_tcp_peer(c->svaddrs, c->nsvaddrs, (struct sockaddr *)&sa, sl);
	return i >= 0 && (size_t)i < c->nservices ? &c->services[i] : NULL;
}

static bool is_tcp(const struct fd_info *fi)
{
	return (fi->sock_domain == AF_INET || fi->sock_domain == AF_INET6) &&
	       fi->sock_type == SOCK_STREAM && fi->sock_proto == IPPROTO_TCP &&
	       fi->sock_connected && !fi->sock_listening;
}

static bool session_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	if (ctx->inflight)
		return false;
	if (S_ISREG(fi->st.st_mode))
		return strncmp(fi->link, ROM_PREFIX, strlen(ROM_PREFIX)) == 0;
	if (is_tcp(fi)) {
		if (!ctx->c->nsvaddrs)
			return false;
		_cleanup_close_ int s = pidfd_getfd_of(ctx->p->host_pid, fi->fd);
		return s >= 0 && tcp_service_of(ctx->c, s) != NULL;
	}
	if (fi->sock_domain != AF_UNIX || !fi->sock_connected || fi->sock_type == SOCK_DGRAM ||
	    !ctx->c->nservices)
		return false;
	_cleanup_close_ int s = pidfd_getfd_of(ctx->p->host_pid, fi->fd);
	return s >= 0 && service_of(ctx->c, s) != NULL;
}

/* The id and sequence of the session on socket ino: as the registry has them (it was
 * re-created), or a new session's: derived from the component's log identity and the socket,
 * so that every checkpoint of the same session names it alike. */
static void session_identity(const struct component *c, uint64_t ino, uint64_t *id, uint64_t *seq)
{
	for (size_t i = 0; i < c->nsessreg; i++)
		if (c->sessreg[i].ino == ino) {
			*id = c->sessreg[i].id;
			*seq = c->sessreg[i].seq;
			return;
		}
	uint64_t key[2] = {c->log_id, ino};
	*id = XXH3_64bits(key, sizeof(key)) | 1;
	*seq = 0;
}

/* Our copy of the session socket at fi and its service (by its peer), whose name goes in
 * e->path: 0, or -errno with err set. */
static int session_socket(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                          bool tcp, int *ret_s, const struct ferry_service **ret_sv,
                          struct ferry_error *err)
{
	_cleanup_close_ int s = pidfd_getfd_of(ctx->p->host_pid, fi->fd);
	if (s < 0)
		return ferr(err, s, "%s: pidfd_getfd: %s", fi->link, strerror(-s));
	const struct ferry_service *sv = tcp ? tcp_service_of(ctx->c, s) : service_of(ctx->c, s);
	if (!sv)
		return ferr(err, -EAGAIN, "%s: no longer connected to a service", fi->link);
	e->path = strdup(sv->name);
	if (!e->path)
		return ferr(err, -ENOMEM, "out of memory");
	*ret_s = TAKE_FD(s);
	*ret_sv = sv;
	return 0;
}

/* A socket filter that takes nothing: the segments that come are dropped, not acknowledged. */
static int drop_all(int s)
{
	struct sock_filter code[] = {BPF_STMT(BPF_RET | BPF_K, 0)};
	struct sock_fprog prog = {.len = 1, .filter = code};
	return setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0 ? -errno : 0;
}

/*
 * A TCP session's end, its filter on (it takes nothing more) and its bytes read already: they
 * are taken out of the queue and acknowledged at once (TCP_QUICKACK: an ACK held back would
 * leave the service thinking they did not arrive), then the connection is reset (connect to
 * AF_UNSPEC: tcp_disconnect) so that the service learns at once that it ended.
 */
static void tcp_end(const int *s)
{
	struct sockaddr sa = {.sa_family = AF_UNSPEC};
	char scratch[4096];
	int one = 1;

	if (*s < 0)
		return;
	while (recv(*s, scratch, sizeof(scratch), MSG_DONTWAIT) > 0)
		;
	(void)setsockopt(*s, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	(void)connect(*s, &sa, sizeof(sa));
}

/* How long a capture waits for the service to acknowledge what the component wrote. */
#define TCP_DRAIN_US (200 * 1000)

static int tcp_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                       uint64_t *v, struct ferry_error *err)
{
	_cleanup_close_ int s = -EBADF;
	const struct ferry_service *sv = NULL;
	int r = session_socket(ctx, fi, e, true, &s, &sv, err);
	if (r < 0)
		return r;
	v[UX_INO] = fi->st.st_ino;
	v[UX_TYPE] = SOCK_STREAM;
	v[SS_KIND] = FERRY_SERVICE_TCP;
	session_identity(ctx->c, fi->st.st_ino, &v[SS_ID], &v[SS_SEQ]);
	if (fds_sockopt(s, IPPROTO_TCP, TCP_NODELAY) > 0)
		v[SS_TCPOPT] |= SS_NODELAY;
	if (fds_sockopt(s, SOL_SOCKET, SO_KEEPALIVE) > 0)
		v[SS_TCPOPT] |= SS_KEEPALIVE;
	/* what the component wrote, acknowledged by the service: then nothing of it is in
	 * flight (it is frozen, it writes no more), and the service has it once */
	int outq = 0;
	for (int waited = 0;; waited += 100) {
		if (ioctl(s, SIOCOUTQ, &outq) < 0)
			return ferr(err, -errno, "%s: SIOCOUTQ: %m", fi->link);
		if (outq == 0)
			break;
		if (waited >= TCP_DRAIN_US)
			return ferr(
			        err, -EBUSY,
			        "%s (session %s): the service has not acknowledged %d bytes the "
			        "component wrote within %d ms (it does not read?); try again",
			        fi->link, sv->name, outq, TCP_DRAIN_US / 1000);
		usleep(100);
	}
	/* it ends after this capture: the service's later bytes are not taken (not
	 * acknowledged: its kernel knows they did not arrive) */
	if (ctx->c->ending && (r = drop_all(s)) < 0)
		return ferr(err, r, "%s: a socket filter: %s", fi->link, strerror(-r));
	char what[128];
	snprintf(what, sizeof(what), "%s (session %s)", fi->link, sv->name);
	return ux_save_queues(ctx, v, fi->fd, s, -1, SOCK_STREAM, what, err);
}

static int session_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                           struct ferry_error *err)
{
	uint64_t v[SS_N] = {0};

	if (S_ISREG(fi->st.st_mode)) {
		const char *name = fi->link + strlen(ROM_PREFIX);
		if (!ferry_name_valid(name))
			return ferr(err, -EINVAL, "%s: not a ROM name", fi->link);
		e->path = strdup(name);
		if (!e->path)
			return ferr(err, -ENOMEM, "out of memory");
		v[SS_KIND] = FERRY_SERVICE_ROM;
		return fds_set_extra(e, v, SS_N, err);
	}
	if (is_tcp(fi)) {
		int r = tcp_capture(ctx, fi, e, v, err);
		return r < 0 ? r : fds_set_extra(e, v, SS_N, err);
	}
	_cleanup_close_ int s = -EBADF;
	const struct ferry_service *sv = NULL;
	int r = session_socket(ctx, fi, e, false, &s, &sv, err);
	if (r < 0)
		return r;
	v[UX_INO] = fi->st.st_ino;
	v[UX_TYPE] = (uint64_t)fi->sock_type;
	v[UX_SNDBUF] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_SNDBUF);
	v[UX_RCVBUF] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_RCVBUF);
	v[SS_KIND] = FERRY_SERVICE_UNIX;
	session_identity(ctx->c, fi->st.st_ino, &v[SS_ID], &v[SS_SEQ]);
	/* written by the component, not read by the service yet, in the service's end (for
	 * describe: the service of this node reads them, once) */
	uint32_t peer = 0, outq = 0;
	if (fd_unix_peer((uint32_t)fi->st.st_ino, &peer) == 0 && fd_unix_queued(peer, &outq) == 0)
		v[SS_OUTQ] = outq;
	/* it ends after this capture: nothing more may come (the service's later sends fail;
	 * they were not delivered) */
	if (ctx->c->ending && shutdown(s, SHUT_RD) < 0)
		return ferr(err, -errno, "%s: shutdown: %m", fi->link);
	/* what the service sent and the component has not read: delivered first at restore */
	char what[128];
	snprintf(what, sizeof(what), "%s (session %s)", fi->link, sv->name);
	r = ux_save_queues(ctx, v, fi->fd, s, -1, fi->sock_type, what, err);
	if (r < 0)
		return r;
	if (v[UX_FLAGS] & UX_RIGHTS)
		return ferr(err, -ENOTSUP, "%s: files in flight from service %s (unsupported)",
		            fi->link, sv->name);
	return fds_set_extra(e, v, SS_N, err);
}

/* Tell a service that speaks the resume protocol which session this connection continues. */
static int say_resume(int s, const struct fd_entry *e, struct ferry_error *err)
{
	char path[PATH_MAX], line[160];

	snprintf(path, sizeof(path), SERVICES_DIR "/resume/%s", e->path);
	if (access(path, F_OK) < 0)
		return 0;
	int len = snprintf(line, sizeof(line),
	                   "FERRY-RESUME %s %016" PRIx64 " %" PRIu64 " %" PRIu64 "\n", e->path,
	                   e->extra[SS_ID], e->extra[SS_SEQ] + 1, e->extra[UX_QBYTES]);
	if (send(s, line, (size_t)len, MSG_NOSIGNAL) != len)
		return ferr(err, -errno, "session %s: sending FERRY-RESUME: %m", e->path);
	return 0;
}

/* Give the monitor the other end of the pair and the service's connection (relay.c). */
static int hand_to_monitor(const struct fd_entry *e, int mine, int service,
                           const struct fd_restore_ctx *ctx, struct ferry_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	_cleanup_close_ int h = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int one = 1;
	socklen_t sl = relay_address(ctx->monitor_pid, &sa);

	if (h < 0)
		return ferr(err, -errno, "session %s: socket: %m", e->path);
	if (setsockopt(h, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0)
		return ferr(err, -errno, "session %s: SO_PASSCRED: %m", e->path);
	/* a helper made in advance may get here before its monitor listens: 5 s at most */
	for (int i = 0; connect(h, (struct sockaddr *)&sa, sl) < 0; i++) {
		if ((errno != ECONNREFUSED && errno != ENOENT) || i == 5000)
			return ferr(err, -errno, "session %s: reaching the monitor's relay: %m",
			            e->path);
		usleep(1000);
	}
	struct relay_hello m = {.fd = e->fd,
	                        .type = (int32_t)e->extra[UX_TYPE],
	                        .id = e->extra[SS_ID],
	                        .seq = e->extra[SS_SEQ] + 1};
	snprintf(m.service, sizeof(m.service), "%s", e->path);
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(2 * sizeof(int))];
	} cm = {0};
	struct iovec io = {&m, sizeof(m)};
	struct msghdr mh = {
	        .msg_iov = &io, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm)};
	struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
	ch->cmsg_level = SOL_SOCKET;
	ch->cmsg_type = SCM_RIGHTS;
	ch->cmsg_len = CMSG_LEN(2 * sizeof(int));
	int fds[2] = {mine, service};
	memcpy(CMSG_DATA(ch), fds, sizeof(fds));
	if (sendmsg(h, &mh, MSG_NOSIGNAL) != (ssize_t)sizeof(m))
		return ferr(err, -errno, "session %s: handing the relay to the monitor: %m",
		            e->path);
	/* the monitor has them once it answers */
	char ok;
	if (recv(h, &ok, 1, 0) != 1)
		return ferr(err, -EPIPE, "session %s: the monitor did not take the relay", e->path);
	return 0;
}

/* A new connection to the TCP service this node declares under the session's name (the
 * link SERVICES_DIR/services/NAME reads tcp:HOST:PORT), with the session's options. */
static int tcp_connect(const struct fd_entry *e, int *ret, struct ferry_error *err)
{
	char path[PATH_MAX], to[320];

	snprintf(path, sizeof(path), SERVICES_DIR "/services/%s", e->path);
	ssize_t n = readlink(path, to, sizeof(to) - 1);
	if (n < 0 || (to[n] = '\0', strncmp(to, "tcp:", 4) != 0))
		return ferr(err, -ENOENT, "session %s: this node declares no TCP service %s",
		            e->path, e->path);
	struct addrinfo *ai = NULL;
	int r = addr_resolve(to + 4, false, &ai, err);
	if (r < 0)
		return ferr_prefix(err, "session %s", e->path);
	r = -ECONNREFUSED;
	for (struct addrinfo *p = ai; p && r < 0; p = p->ai_next) {
		_cleanup_close_ int s = socket(p->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct timeval tv = {.tv_sec = 10};
		if (s < 0) {
			r = -errno;
			continue;
		}
		(void)setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(s, p->ai_addr, p->ai_addrlen) < 0) {
			r = -errno;
			continue;
		}
		tv.tv_sec = 0;
		(void)setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		uint64_t o = e->nextra > SS_TCPOPT ? e->extra[SS_TCPOPT] : 0;
		int one = 1;
		if (((o & SS_NODELAY) &&
		     setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) ||
		    ((o & SS_KEEPALIVE) &&
		     setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0)) {
			r = -errno;
			continue;
		}
		*ret = TAKE_FD(s);
		r = 0;
	}
	freeaddrinfo(ai);
	if (r < 0)
		return ferr(err, r, "session %s: connecting to %s: %s", e->path, to + 4,
		            strerror(-r));
	return 0;
}

static int session_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                           struct ferry_error *err)
{
	char path[PATH_MAX];

	if (e->nextra < SS_MIN || !e->path || !ferry_name_valid(e->path))
		return ferr(err, -EPROTO, "session record without its service");
	if (e->extra[SS_KIND] == FERRY_SERVICE_ROM) {
		snprintf(path, sizeof(path), ROM_PREFIX "%s", e->path);
		int fd = open(path, (int)(e->flags & (O_ACCMODE | O_NONBLOCK)) | O_CLOEXEC);
		if (fd < 0)
			return ferr(err, -errno, "ROM %s: %s", e->path,
			            errno == ENOENT ? "this node has no ROM of that name"
			                            : strerror(errno));
		if (lseek(fd, (off_t)e->pos, SEEK_SET) < 0) {
			int r = -errno;
			close(fd);
			return ferr(err, r, "ROM %s: seek to %" PRIu64 ": %s", e->path, e->pos,
			            strerror(-r));
		}
		return fd;
	}
	bool tcp = e->extra[SS_KIND] == FERRY_SERVICE_TCP;
	if (e->extra[SS_KIND] != FERRY_SERVICE_UNIX && !tcp)
		return ferr(err, -EPROTO, "session %s: unknown kind %" PRIu64, e->path,
		            e->extra[SS_KIND]);
	int type = (int)e->extra[UX_TYPE];
	if (type != SOCK_STREAM && (type != SOCK_SEQPACKET || tcp))
		return ferr(err, -EPROTO, "session %s: socket type %d", e->path, type);
	_cleanup_close_ int s = -EBADF;
	int r;
	if (tcp) {
		r = tcp_connect(e, &s, err);
		if (r < 0)
			return r;
	} else {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		snprintf(sa.sun_path, sizeof(sa.sun_path), SERVICES_DIR "/services/%s", e->path);
		s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
		if (s < 0)
			return ferr(err, -errno, "session %s: socket: %m", e->path);
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			return ferr(err, -errno, "session %s: %s", e->path,
			            errno == ENOENT ? "this node declares no such service"
			                            : strerror(errno));
	}
	r = say_resume(s, e, err);
	if (r < 0)
		return r;
	if (!tcp && ux_set_bufs(s, e->extra[UX_SNDBUF], e->extra[UX_RCVBUF]) < 0)
		return ferr(err, -errno, "session %s: buffer sizes: %m", e->path);
	if (!e->extra[UX_LEN] && !ctx->relay_all) {
		if (fcntl(s, F_SETFL, (int)(e->flags & O_NONBLOCK)) < 0)
			return ferr(err, -errno, "session %s: F_SETFL: %m", e->path);
		return TAKE_FD(s);
	}
	/* bytes to deliver first: through a pair the monitor relays until they are read */
	int sp[2];
	if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sp) < 0)
		return ferr(err, -errno, "session %s: socketpair: %m", e->path);
	_cleanup_close_ int mine = sp[1];
	_cleanup_close_ int comp = sp[0];
	uint64_t v[UX_N];
	memcpy(v, e->extra, sizeof(v));
	v[UX_PSNDBUF] = v[UX_PRCVBUF] = 0;
	if (tcp) /* a TCP queue may be larger than a pair's default buffers */
		ux_big_bufs(mine), ux_big_bufs(comp);
	r = ux_fill_pair(v, comp, mine, ctx, err);
	if (r < 0)
		return ferr_prefix(err, "session %s", e->path);
	r = hand_to_monitor(e, mine, s, ctx, err);
	if (r < 0)
		return r;
	if (fcntl(comp, F_SETFL, (int)(e->flags & O_NONBLOCK)) < 0)
		return ferr(err, -errno, "session %s: F_SETFL: %m", e->path);
	return TAKE_FD(comp);
}

static void session_describe(const struct fd_entry *e, char *buf, size_t len)
{
	if (e->nextra < SS_MIN || !e->path) {
		snprintf(buf, len, "session (malformed)");
		return;
	}
	if (e->extra[SS_KIND] == FERRY_SERVICE_ROM) {
		snprintf(buf, len, "session to ROM %s (%s" ROM_PREFIX "%s), offset %" PRIu64,
		         e->path, "", e->path, e->pos);
		return;
	}
	snprintf(buf, len,
	         "session to service %s (%s %s, " SERVICES_DIR "/services/%s), id %016" PRIx64
	         ", re-created %" PRIu64 " times; in flight: %" PRIu64
	         " bytes to the component, %" PRIu64 " to the service",
	         e->path, e->extra[SS_KIND] == FERRY_SERVICE_TCP ? "tcp" : "unix",
	         e->extra[UX_TYPE] == SOCK_SEQPACKET ? "seqpacket" : "stream", e->path,
	         e->extra[SS_ID], e->extra[SS_SEQ], e->extra[UX_QBYTES], e->extra[SS_OUTQ]);
}

/* What recognising and re-creating a session needs: a connected socket's peer name, the size
 * of its queue, and its read side shut; a TCP session's end. */
static int session_kernel_probe(char *detail, size_t len)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX}, pa;
	socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
	                           (size_t)snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1,
	                                            "ferry-probe-%d", getpid()));
	socklen_t pl = sizeof(pa);
	_cleanup_close_ int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	_cleanup_close_ int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	_cleanup_close_ int a = -EBADF;
	int inq = 0;

	if (l < 0 || c < 0 || bind(l, (struct sockaddr *)&sa, sl) < 0 || listen(l, 1) < 0 ||
	    connect(c, (struct sockaddr *)&sa, sl) < 0 ||
	    (a = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0) {
		snprintf(detail, len, "a Unix connection: %s", strerror(errno));
		return 0;
	}
	if (getpeername(c, (struct sockaddr *)&pa, &pl) < 0 || pl != sl ||
	    memcmp(pa.sun_path, sa.sun_path, sl - offsetof(struct sockaddr_un, sun_path)) != 0) {
		snprintf(detail, len, "getpeername does not name the listener");
		return 0;
	}
	if (send(a, "abc", 3, 0) != 3 || ioctl(c, SIOCINQ, &inq) < 0 || inq != 3 ||
	    shutdown(c, SHUT_RD) < 0) {
		snprintf(detail, len, "queue size or shutdown: %s (SIOCINQ %d)", strerror(errno),
		         inq);
		return 0;
	}
	/* a TCP session's end: a filter that drops, a reset, the service's count after it */
	struct sockaddr_in ta = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t tl = sizeof(ta);
	_cleanup_close_ int tlis = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	_cleanup_close_ int tc = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	_cleanup_close_ int ts = -EBADF;
	uint8_t ti[256]; /* struct tcp_info: the C library's lacks tcpi_bytes_acked (at 120) */
	socklen_t til = sizeof(ti);
	int r = 0;
	if (tlis < 0 || tc < 0 || bind(tlis, (struct sockaddr *)&ta, sizeof(ta)) < 0 ||
	    getsockname(tlis, (struct sockaddr *)&ta, &tl) < 0 || listen(tlis, 1) < 0 ||
	    connect(tc, (struct sockaddr *)&ta, sizeof(ta)) < 0 ||
	    (ts = accept4(tlis, NULL, NULL, SOCK_CLOEXEC)) < 0) {
		snprintf(detail, len, "a TCP connection on loopback: %s", strerror(errno));
		return 0;
	}
	if ((r = drop_all(tc)) < 0) {
		snprintf(detail, len, "a socket filter on a TCP connection: %s", strerror(-r));
		return 0;
	}
	tcp_end(&tc);
	if (getsockopt(ts, IPPROTO_TCP, TCP_INFO, ti, &til) < 0 || til < 128) {
		snprintf(detail, len, "TCP_INFO without tcpi_bytes_acked");
		return 0;
	}
	snprintf(detail, len,
	         "peer name, queue size and shutdown of a Unix connection; a socket filter and a "
	         "reset on a TCP connection");
	return 1;
}

const struct fd_ops fd_session_ops = {
        .name = "session",
        .kind = FD_SESSION,
        .probe = session_probe,
        .capture = session_capture,
        .restore = session_restore,
        .describe = session_describe,
        .kernel_probe = session_kernel_probe,
};

int session_load(struct component *c, const struct ferry_runtime *rt, const char *name,
                 struct ferry_error *err)
{
	char path[PATH_MAX];
	_cleanup_free_ char *text = NULL;
	int r = ferry_services_list(rt, &c->services, &c->nservices, err);

	if (r < 0)
		return r;
	/* resolved now, not in the freeze */
	if (services_tcp_addrs(c->services, c->nservices, &c->svaddrs, &c->nsvaddrs) < 0)
		return ferr(err, -ENOMEM, "out of memory");
	c->log_id = runtime_log_id(rt, name);
	snprintf(path, sizeof(path), "%s/%s/sessions", rt->state_dir, name);
	r = read_file(path, &text, NULL);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l;
	     l = strtok_r(NULL, "\n", &save)) {
		struct session_reg g;
		if (sscanf(l, "%" SCNu64 " %" SCNx64 " %" SCNu64, &g.ino, &g.id, &g.seq) != 3)
			continue;
		if (GROW(c->sessreg, c->nsessreg) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		c->sessreg[c->nsessreg++] = g;
	}
	return 0;
}

int session_register(const struct ferry_runtime *rt, const char *name, uint64_t old_ino,
                     const struct session_reg *g, size_t n)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8], line[96];
	_cleanup_free_ char *text = NULL;
	_cleanup_close_ int fd = -EBADF;
	int r;

	snprintf(path, sizeof(path), "%s/%s/sessions", rt->state_dir, name);
	snprintf(tmp, sizeof(tmp), "%s.%d", path, gettid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	/* the lines kept: all but the one of old_ino (0: a new registry) */
	if (old_ino && read_file(path, &text, NULL) == 0)
		for (char *save = NULL, *l = strtok_r(text, "\n", &save); l;
		     l = strtok_r(NULL, "\n", &save)) {
			uint64_t ino = 0;
			if (sscanf(l, "%" SCNu64, &ino) != 1 || ino == old_ino)
				continue;
			int len = snprintf(line, sizeof(line), "%s\n", l);
			if ((r = write_full(fd, line, (size_t)len)) < 0)
				goto fail;
		}
	for (size_t i = 0; i < n; i++) {
		int len = snprintf(line, sizeof(line), "%" PRIu64 " %016" PRIx64 " %" PRIu64 "\n",
		                   g[i].ino, g[i].id, g[i].seq);
		if ((r = write_full(fd, line, (size_t)len)) < 0)
			goto fail;
	}
	if (rename(tmp, path) < 0) {
		r = -errno;
		goto fail;
	}
	return 0;
fail:
	(void)unlink(tmp);
	return r;
}

/* One late record: [8] id, [4] length, the bytes (a seqpacket session's: one message). */
static int late_record(uint64_t id, const uint8_t *b, uint32_t n, uint8_t **buf, size_t *len)
{
	uint8_t *nb = realloc(*buf, *len + 12 + n);
	if (!nb)
		return -ENOMEM;
	*buf = nb;
	memcpy(nb + *len, &id, 8);
	memcpy(nb + *len + 8, &n, 4);
	if (n)
		memcpy(nb + *len + 12, b, n);
	*len += 12 + n;
	return 0;
}

/* A seqpacket session's messages beyond the captured bytes, one record each (its receive side
 * is shut: the queue ends where inq bytes end; an empty message at its very end is not seen). */
static int late_messages(int s, const struct fd_entry *e, uint64_t inq, uint8_t **buf, size_t *len,
                         struct ferry_error *err)
{
	_cleanup_free_ uint8_t *msg = malloc((size_t)inq);
	int zero = 0;
	uint64_t seen = 0;

	if (!msg)
		return ferr(err, -ENOMEM, "out of memory");
	if (setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) < 0)
		return ferr(err, -errno, "session %s: SO_PEEK_OFF: %m", e->path);
	for (unsigned i = 0; seen < inq; i++) {
		ssize_t n = recv(s, msg, (size_t)inq, MSG_PEEK | MSG_DONTWAIT);
		if (n < 0 || i > (1u << 20))
			return ferr(err, n < 0 ? -errno : -EPROTO,
			            "session %s: peeking its messages: %s", e->path,
			            n < 0 ? strerror(errno) : "they do not end");
		if (seen >= e->extra[UX_QBYTES] &&
		    late_record(e->extra[SS_ID], msg, (uint32_t)n, buf, len) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		seen += (uint64_t)n;
	}
	return 0;
}

int session_late(const struct component *c, uint8_t **buf, size_t *len, struct ferry_error *err)
{
	*buf = NULL;
	*len = 0;
	for (size_t k = 0; k < c->nprocs; k++)
		for (size_t i = 0; i < c->procs[k].nfds; i++) {
			const struct fd_entry *e = &c->procs[k].fds[i];
			if (e->kind != FD_SESSION || e->nextra < SS_MIN ||
			    e->extra[SS_KIND] == FERRY_SERVICE_ROM || e->dup_of >= 0)
				continue;
			bool tcp = e->extra[SS_KIND] == FERRY_SERVICE_TCP;
			_cleanup_close_ int s = pidfd_getfd_of(c->procs[k].host_pid, e->fd);
			if (s < 0)
				return ferr(err, s, "session %s (pid %d fd %d): pidfd_getfd: %s",
				            e->path, c->procs[k].pid, e->fd, strerror(-s));
			/* nothing more can come: what came is all there will be (TCP: not
			 * acknowledged, so the service's kernel knows it did not arrive) */
			int r = tcp ? drop_all(s) : shutdown(s, SHUT_RD) < 0 ? -errno : 0;
			if (r < 0)
				return ferr(err, r, "session %s: %s: %s", e->path,
				            tcp ? "a socket filter" : "shutdown", strerror(-r));
			/* then acknowledged and reset, once read */
			_cleanup_(tcp_end) int ending = tcp ? s : -1;
			(void)ending; /* for its cleanup */
			int inq = 0;
			if (ioctl(s, SIOCINQ, &inq) < 0 || (uint64_t)inq <= e->extra[UX_QBYTES])
				continue;
			if (e->extra[UX_TYPE] == SOCK_SEQPACKET) {
				r = late_messages(s, e, (uint64_t)inq, buf, len, err);
				if (r < 0)
					return r;
				continue;
			}
			_cleanup_free_ uint8_t *all = malloc((size_t)inq);
			int zero = 0;
			if (!all)
				return ferr(err, -ENOMEM, "out of memory");
			(void)setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero));
			ssize_t n = recv(s, all, (size_t)inq, MSG_PEEK | MSG_DONTWAIT);
			if (n < (ssize_t)e->extra[UX_QBYTES])
				return ferr(err, -EIO, "session %s: peeking its queue: %m",
				            e->path);
			uint32_t more = (uint32_t)((uint64_t)n - e->extra[UX_QBYTES]);
			if (late_record(e->extra[SS_ID], all + e->extra[UX_QBYTES], more, buf,
			                len) < 0)
				return ferr(err, -ENOMEM, "out of memory");
		}
	return 0;
}

/* Our own fd of the socket whose inode is ino (-1: none). */
static int own_socket(uint64_t ino)
{
	char link[64], want[40];
	int found = -1;
	struct dirent *de;
	DIR *d = opendir("/proc/self/fd");

	snprintf(want, sizeof(want), "socket:[%" PRIu64 "]", ino);
	while (d && found < 0 && (de = readdir(d))) {
		char p[300];
		snprintf(p, sizeof(p), "/proc/self/fd/%s", de->d_name);
		ssize_t l = readlink(p, link, sizeof(link) - 1);
		if (l > 0 && (size_t)l == strlen(want) && memcmp(link, want, (size_t)l) == 0)
			found = atoi(de->d_name);
	}
	if (d)
		closedir(d);
	return found;
}

int session_late_deliver(const struct ferry_runtime *rt, const char *name, const void *buf,
                         size_t len, struct ferry_error *err)
{
	struct component *c = calloc(1, sizeof(*c));
	size_t at = 0;
	int r = 0;

	if (!c)
		return ferr(err, -ENOMEM, "out of memory");
	if (len)
		r = session_load(c, rt, name, err);
	while (r == 0 && at + 12 <= len) {
		uint64_t id;
		uint32_t more;
		memcpy(&id, (const uint8_t *)buf + at, 8);
		memcpy(&more, (const uint8_t *)buf + at + 8, 4);
		if (more > len - at - 12) {
			r = ferr(err, -EPROTO, "late session bytes: malformed");
			break;
		}
		const uint8_t *data = (const uint8_t *)buf + at + 12;
		at += 12 + more;
		/* the component's end of its pair, its peer: our relay's end */
		uint32_t peer = 0;
		int mon = -1;
		for (size_t i = 0; i < c->nsessreg && mon < 0; i++)
			if (c->sessreg[i].id == id &&
			    fd_unix_peer((uint32_t)c->sessreg[i].ino, &peer) == 0)
				mon = own_socket(peer);
		if (mon < 0)
			r = ferr(err, -ENOENT, "session %016" PRIx64 ": no relay for %u late bytes",
			         id, more);
		else if (send(mon, data, more, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)more)
			r = ferr(err, -errno,
			         "session %016" PRIx64 ": delivering %u late bytes: %m", id, more);
	}
	model_free(c);
	return r;
}
