/* TCP listening sockets and unconnected UDP sockets (IPv4, IPv6): rebound to their address. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "fds.h"
#include "util.h"

/* e->extra: domain, type, protocol, flags, backlog, address length, address (4 x u64) */
enum { IN_DOMAIN, IN_TYPE, IN_PROTO, IN_FLAGS, IN_BACKLOG, IN_ALEN, IN_ADDR, IN_N = IN_ADDR + 4 };
#define IN_LISTEN    (1u << 0)
#define IN_REUSEADDR (1u << 1)
#define IN_REUSEPORT (1u << 2)
#define IN_V6ONLY    (1u << 3)

static bool inet_probe(const struct fd_info *fi, const struct fd_capture_ctx *ctx)
{
	if (fi->sock_domain != AF_INET && fi->sock_domain != AF_INET6)
		return false;
	if (fi->sock_type == SOCK_STREAM && fi->sock_proto == IPPROTO_TCP)
		return fi->sock_listening;
	return fi->sock_type == SOCK_DGRAM && fi->sock_proto == IPPROTO_UDP && !fi->sock_connected;
}

/* rx_queue of the socket's line in /proc/PID/net/{tcp,udp}[6]: pending connections for a
 * listener, queued bytes for UDP. */
static long queued(pid_t pid, const char *table, ino_t ino)
{
	char path[64];
	_cleanup_free_ char *text = NULL;
	snprintf(path, sizeof(path), "/proc/%d/net/%s", pid, table);
	if (read_file(path, &text, NULL) < 0)
		return -1;
	for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n")) {
		unsigned long tx, rx, inode;
		if (sscanf(l, " %*d: %*s %*s %*x %lx:%lx %*x:%*x %*x %*u %*d %lu", &tx, &rx,
		           &inode) == 3 &&
		    inode == ino)
			return (long)rx;
	}
	return -1;
}

static int inet_capture(struct fd_capture_ctx *ctx, const struct fd_info *fi, struct fd_entry *e,
                        struct ferry_error *err)
{
	_cleanup_close_ int s = pidfd_getfd_of(ctx->p->host_pid, fi->fd);
	uint64_t v[IN_N] = {0};
	struct sockaddr_storage sa;
	socklen_t sl = sizeof(sa);

	if (s < 0)
		return ferr(err, s, "%s: pidfd_getfd: %s", fi->link, strerror(-s));
	v[IN_DOMAIN] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_DOMAIN);
	v[IN_TYPE] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_TYPE);
	v[IN_PROTO] = (uint64_t)fds_sockopt(s, SOL_SOCKET, SO_PROTOCOL);
	bool listening = fds_sockopt(s, SOL_SOCKET, SO_ACCEPTCONN) == 1,
	     v6 = v[IN_DOMAIN] == AF_INET6;
	v[IN_FLAGS] = (listening ? IN_LISTEN : 0) |
	              (fds_sockopt(s, SOL_SOCKET, SO_REUSEADDR) > 0 ? IN_REUSEADDR : 0) |
	              (fds_sockopt(s, SOL_SOCKET, SO_REUSEPORT) > 0 ? IN_REUSEPORT : 0) |
	              (v6 && fds_sockopt(s, IPPROTO_IPV6, IPV6_V6ONLY) > 0 ? IN_V6ONLY : 0);
	if (getsockname(s, (struct sockaddr *)&sa, &sl) < 0 || sl > 4 * sizeof(uint64_t))
		return ferr(err, -errno, "%s: getsockname: %m", fi->link);
	v[IN_ALEN] = sl;
	memcpy(&v[IN_ADDR], &sa, sl);
	const char *table = listening ? (v6 ? "tcp6" : "tcp") : (v6 ? "udp6" : "udp");
	long q = queued(ctx->p->host_pid, table, fi->st.st_ino);
	if (q > 0)
		return ferr(err, -ENOTSUP,
		            listening ? "%s: %ld connections wait to be accepted (unsupported yet)"
		                      : "%s: %ld bytes of datagrams are queued (unsupported yet)",
		            fi->link, q);
	if (listening) {
		/* the backlog is not readable back; somaxconn bounds it and is what most use */
		_cleanup_free_ char *max = NULL;
		v[IN_BACKLOG] = read_file("/proc/sys/net/core/somaxconn", &max, NULL) == 0
		                        ? strtoull(max, NULL, 10)
		                        : 128;
	}
	return fds_set_extra(e, v, IN_N, err);
}

static int inet_restore(const struct fd_entry *e, struct fd_restore_ctx *ctx,
                        struct ferry_error *err)
{
	const uint64_t *v = e->extra;
	char where[80];
	int one = 1;

	if (e->nextra != IN_N)
		return ferr(err, -EPROTO, "socket record without its values");
	fds_sockaddr_str(&v[IN_ADDR], v[IN_ALEN], where, sizeof(where));
	int s = socket((int)v[IN_DOMAIN],
	               (int)v[IN_TYPE] | SOCK_CLOEXEC | (e->flags & O_NONBLOCK ? SOCK_NONBLOCK : 0),
	               (int)v[IN_PROTO]);
	if (s < 0)
		return ferr(err, -errno, "socket for %s: %m", where);
	if (((v[IN_FLAGS] & IN_REUSEADDR) &&
	     setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) ||
	    ((v[IN_FLAGS] & IN_REUSEPORT) &&
	     setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
	    ((v[IN_FLAGS] & IN_V6ONLY) &&
	     setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(s, (const struct sockaddr *)&v[IN_ADDR], (socklen_t)v[IN_ALEN]) < 0 ||
	    ((v[IN_FLAGS] & IN_LISTEN) && listen(s, (int)v[IN_BACKLOG]) < 0)) {
		int r = -errno;
		safe_close(s);
		return ferr(err, r, "binding %s again: %s%s", where, strerror(-r),
		            r == -EADDRINUSE ? " (is the original still running?)" : "");
	}
	return s;
}

static void inet_describe(const struct fd_entry *e, char *buf, size_t len)
{
	char where[80];
	if (e->nextra != IN_N) {
		snprintf(buf, len, "socket");
		return;
	}
	fds_sockaddr_str(&e->extra[IN_ADDR], e->extra[IN_ALEN], where, sizeof(where));
	if (e->extra[IN_FLAGS] & IN_LISTEN)
		snprintf(buf, len, "TCP listening on %s", where);
	else
		snprintf(buf, len, "UDP bound to %s", where);
}

static int inet_kernel_probe(char *detail, size_t len)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	_cleanup_close_ int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct stat sb;
	bool ok = s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(s, 4) == 0 &&
	          fstat(s, &sb) == 0;
	if (ok) {
		_cleanup_close_ int copy = pidfd_getfd_of(getpid(), s);
		ok = copy >= 0 && fds_sockopt(copy, SOL_SOCKET, SO_ACCEPTCONN) == 1 &&
		     queued(getpid(), "tcp", sb.st_ino) == 0;
	}
	snprintf(detail, len, "%s",
	         ok ? "socket options through pidfd_getfd, accept queue in /proc/net/tcp"
	            : "cannot read a listening socket's state");
	return ok;
}

const struct fd_ops fd_inet_ops = {
        .kernel_probe = inet_kernel_probe,
        .name = "inet",
        .kind = FD_INET,
        .probe = inet_probe,
        .capture = inet_capture,
        .restore = inet_restore,
        .describe = inet_describe,
};
