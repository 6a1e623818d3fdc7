/*
 * Unix sockets: socketpairs of the three types with messages queued in both directions
 * (boundaries kept), a pair between the root and a forked child, a named and an abstract
 * listener with a connection accepted from each (their ends keep the listener's name), a bound
 * datagram socket, a nonblocking end. After go each is used.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "feature.h"

static const char *dir;

static void expect_recv(int s, const char *want, const char *what)
{
	char buf[256] = "";
	ssize_t n = recv(s, buf, sizeof(buf) - 1, MSG_DONTWAIT);
	if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0)
		feature_fail("%s: received %zd bytes \"%.*s\", expected \"%s\"", what, n,
		             n > 0 ? (int)n : 0, buf, want);
}

static socklen_t addr_of(struct sockaddr_un *sa, const char *path, bool abstract)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (abstract) {
		snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "%s", path);
		return (socklen_t)(sizeof(sa_family_t) + 1 + strlen(path));
	}
	snprintf(sa->sun_path, sizeof(sa->sun_path), "%s", path);
	return (socklen_t)sizeof(*sa);
}

/* The name a socket has (getsockname, or getpeername with peer) equals sa's. */
static void expect_name(int s, bool peer, const struct sockaddr_un *sa, socklen_t sl,
                        const char *what)
{
	struct sockaddr_un got;
	socklen_t gl = sizeof(got);
	memset(&got, 0, sizeof(got));
	int r = peer ? getpeername(s, (struct sockaddr *)&got, &gl)
	             : getsockname(s, (struct sockaddr *)&got, &gl);
	/* a path's length may or may not count the NUL */
	size_t want = strnlen(sa->sun_path[0] ? sa->sun_path : sa->sun_path + 1,
	                      sizeof(sa->sun_path) - 1);
	size_t have = strnlen(got.sun_path[0] ? got.sun_path : got.sun_path + 1,
	                      sizeof(got.sun_path) - 1);
	if (r < 0 || want != have || (sa->sun_path[0] == 0) != (got.sun_path[0] == 0) ||
	    memcmp(sa->sun_path, got.sun_path, want + (sa->sun_path[0] ? 0 : 1)) != 0)
		feature_fail("%s: %s is \"%s%s\" (%d), not \"%s%s\"", what,
		             peer ? "getpeername" : "getsockname", got.sun_path[0] ? "" : "@",
		             got.sun_path[0] ? got.sun_path : got.sun_path + 1, (int)gl,
		             sa->sun_path[0] ? "" : "@",
		             sa->sun_path[0] ? sa->sun_path : sa->sun_path + 1);
	(void)sl;
}

/* connect to the listener at sa, accept, and carry a byte each way */
static void check_listener(int l, const struct sockaddr_un *sa, socklen_t sl, const char *what)
{
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	char b = 0;
	if (c < 0 || connect(c, (const struct sockaddr *)sa, sl) < 0) {
		feature_fail("%s: connect: %s", what, strerror(errno));
		return;
	}
	int a = accept(l, NULL, NULL);
	if (a < 0 || write(c, "x", 1) != 1 || read(a, &b, 1) != 1 || b != 'x')
		feature_fail("%s: accept and a byte across: %s", what, strerror(errno));
	close(a);
	close(c);
}

int main(int argc, char **argv)
{
	int st[2], dg[2], sp[2], kid[2];
	struct sockaddr_un named, abst, dga;
	char path[PATH_MAX], apath[64], dpath[PATH_MAX];

	dir = feature_dir(argc, argv);
	snprintf(path, sizeof(path), "%s/srv.sock", dir);
	snprintf(dpath, sizeof(dpath), "%s/dg.sock", dir);
	snprintf(apath, sizeof(apath), "ferry-unix-%d-%ld", getpid(), (long)time(NULL));
	socklen_t nl = addr_of(&named, path, false), al = addr_of(&abst, apath, true),
	          dl = addr_of(&dga, dpath, false);
	int ln = socket(AF_UNIX, SOCK_STREAM, 0), la = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	int bd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) < 0 ||
	    socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) < 0 ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, kid) < 0 || ln < 0 || la < 0 || bd < 0 ||
	    bind(ln, (struct sockaddr *)&named, nl) < 0 || listen(ln, 7) < 0 ||
	    bind(la, (struct sockaddr *)&abst, al) < 0 || listen(la, 3) < 0 ||
	    bind(bd, (struct sockaddr *)&dga, dl) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	pid_t child = fork();
	if (child == 0) {
		char b[64] = "";
		close(kid[0]);
		if (write(kid[1], "from child", 10) != 10)
			_exit(2);
		feature_wait_go(dir);
		ssize_t n = read(kid[1], b, sizeof(b));
		if (n != 4 || memcmp(b, "ping", 4) != 0)
			_exit(3);
		_exit(write(kid[1], "pong", 4) == 4 ? 0 : 4);
	}
	close(kid[1]);
	/* queued in both directions, and datagram and seqpacket boundaries */
	if (write(st[0], "to one", 6) != 6 || write(st[1], "to zero", 7) != 7 ||
	    write(st[1], " and more", 9) != 9 || send(dg[0], "d1", 2, 0) != 2 ||
	    send(dg[0], "dgram-2", 7, 0) != 7 || send(dg[0], "", 0, 0) != 0 ||
	    send(dg[0], "d4", 2, 0) != 2 || send(sp[1], "sp-a", 4, 0) != 4 ||
	    send(sp[1], "sp-bb", 5, 0) != 5 || fcntl(dg[1], F_SETFL, O_NONBLOCK) < 0) {
		printf("FAIL: queueing: %s\n", strerror(errno));
		return 1;
	}
	/* queued in the bound datagram socket by a socket that is not its peer (closed since) */
	int tx = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (tx < 0 || sendto(tx, "queued-1", 8, 0, (struct sockaddr *)&dga, dl) != 8 ||
	    sendto(tx, "queued-2", 8, 0, (struct sockaddr *)&dga, dl) != 8) {
		printf("FAIL: queueing in the bound socket: %s\n", strerror(errno));
		return 1;
	}
	close(tx);
	/* connections accepted from the named and the abstract listener, bytes queued in both */
	int nc = socket(AF_UNIX, SOCK_STREAM, 0), ac = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	if (nc < 0 || ac < 0 || connect(nc, (struct sockaddr *)&named, nl) < 0 ||
	    connect(ac, (struct sockaddr *)&abst, al) < 0) {
		printf("FAIL: connecting to the listeners: %s\n", strerror(errno));
		return 1;
	}
	int na = accept(ln, NULL, NULL), aa = accept(la, NULL, NULL);
	if (na < 0 || aa < 0 || write(nc, "to-acc", 6) != 6 || write(na, "to-cli", 6) != 6 ||
	    send(aa, "seq-cli", 7, 0) != 7) {
		printf("FAIL: accepting: %s\n", strerror(errno));
		return 1;
	}
	/* the child's bytes are in our end before the checkpoint */
	char b[64];
	if (recv(kid[0], b, 1, MSG_PEEK) != 1) {
		printf("FAIL: the child did not write\n");
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);

	expect_recv(st[1], "to one", "stream end 1");
	char buf[64] = "";
	ssize_t n = recv(st[0], buf, sizeof(buf), MSG_WAITALL | MSG_DONTWAIT);
	if (n != 16 || memcmp(buf, "to zero and more", 16) != 0)
		feature_fail("stream end 0: %zd bytes \"%.*s\"", n, n > 0 ? (int)n : 0, buf);
	expect_recv(dg[1], "d1", "datagram 1");
	expect_recv(dg[1], "dgram-2", "datagram 2");
	expect_recv(dg[1], "", "datagram 3 (empty)");
	expect_recv(dg[1], "d4", "datagram 4");
	if (recv(dg[1], buf, sizeof(buf), 0) != -1 || errno != EAGAIN)
		feature_fail("datagram end: not empty, or not nonblocking any more");
	expect_recv(sp[0], "sp-a", "seqpacket 1");
	expect_recv(sp[0], "sp-bb", "seqpacket 2");
	if (send(sp[0], "back", 4, 0) != 4)
		feature_fail("seqpacket: send back: %s", strerror(errno));
	expect_recv(sp[1], "back", "seqpacket back");
	expect_recv(kid[0], "from child", "from the child");
	if (write(kid[0], "ping", 4) != 4)
		feature_fail("to the child: %s", strerror(errno));
	int ws = 0;
	if (waitpid(child, &ws, 0) != child || ws != 0)
		feature_fail("the child ended with status %#x", ws);
	else
		expect_recv(kid[0], "pong", "the child's answer");
	expect_name(na, false, &named, nl, "accepted from the named listener");
	expect_name(nc, true, &named, nl, "client of the named listener");
	expect_name(aa, false, &abst, al, "accepted from the abstract listener");
	expect_name(ac, true, &abst, al, "client of the abstract listener");
	expect_recv(na, "to-acc", "accepted from the named listener");
	expect_recv(nc, "to-cli", "client of the named listener");
	expect_recv(ac, "seq-cli", "client of the abstract listener");
	check_listener(ln, &named, nl, "named listener");
	int c = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&abst, al) < 0)
		feature_fail("abstract listener: connect: %s", strerror(errno));
	else
		close(accept(la, NULL, NULL));
	expect_recv(bd, "queued-1", "bound datagram socket, queued 1");
	expect_recv(bd, "queued-2", "bound datagram socket, queued 2");
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (s < 0 || sendto(s, "hi", 2, 0, (struct sockaddr *)&dga, dl) != 2)
		feature_fail("bound datagram socket: sendto: %s", strerror(errno));
	else
		expect_recv(bd, "hi", "bound datagram socket");
	return feature_finish();
}
