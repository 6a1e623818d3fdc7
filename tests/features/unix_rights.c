/*
 * Feature: files in flight (SCM_RIGHTS sent, not received yet) over a stream and a datagram
 * socket pair survive, in order, with the messages that carry them:
 * - a memfd the receiver holds too: the same open file description (kcmp);
 * - a file the sender closed: its path and offset;
 * - the write end of a pipe with bytes in it, the sender's copy closed;
 * - a listening socket on an abstract name, the sender's copy closed: it accepts;
 * - an eventfd with its count, the sender's copy closed.
 * A child sends them and waits; the parent receives after the restore. Built a second time as
 * unix_rights1 (ONE_PROCESS): the one process sends them to itself.
 */
#include <fcntl.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/kcmp.h>

#include "feature.h"

#define LISTEN_NAME "ferry-rights-listener"

static int send_fds(int s, const char *msg, const int *fds, int n)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 4)];
	} cm;
	struct iovec io = {(void *)msg, strlen(msg)};
	struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1};

	memset(&cm, 0, sizeof(cm));
	if (n) {
		mh.msg_control = &cm;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
	}
	return sendmsg(s, &mh, 0) == (ssize_t)strlen(msg) ? 0 : -1;
}

/* Receive one message (a read of up to 64 bytes) that must be want with n files; 0 if so. A
 * stream's read runs from bytes sent without files on into the next message with files, and
 * ends after it: that is what the original gives and what the restored one must give. */
static int recv_fds(int s, const char *want, int *fds, int n, const char *what)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 8)];
	} cm;
	char buf[64] = {0};
	struct iovec io = {buf, sizeof(buf) - 1};
	struct msghdr mh = {
	        .msg_iov = &io, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm)};
	ssize_t k = recvmsg(s, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	int got = 0;

	if (k < 0) {
		feature_fail("%s: recvmsg: %s", what, strerror(errno));
		return -1;
	}
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int m = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			if (got + m <= 8)
				memcpy(fds + got, CMSG_DATA(c), sizeof(int) * (size_t)m);
			got += m;
		}
	if ((size_t)k != strlen(want) || memcmp(buf, want, (size_t)k) != 0 || got != n ||
	    (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
		feature_fail("%s: got %zd bytes \"%.*s\" with %d files (flags %#x), wanted \"%s\" "
		             "with %d",
		             what, k, (int)(k > 0 ? k : 0), buf, got, mh.msg_flags, want, n);
		return -1;
	}
	return 0;
}

static void check_memfd(int got, int mine, const char *what)
{
	char b[16] = {0};

	if (syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, got, mine) != 0)
		feature_fail("%s: not the memfd's open file description the process holds", what);
	else if (pread(got, b, 13, 0) != 13 || memcmp(b, "memfd-content", 13) != 0)
		feature_fail("%s: memfd holds \"%s\"", what, b);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	int sp[2], dp[2], pp[2], ready[2], done[2];
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/rights-file", dir);
	int mfd = memfd_create("rights", MFD_CLOEXEC);
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (mfd < 0 || f < 0 || write(mfd, "memfd-content", 13) != 13 ||
	    write(f, "0123456789", 10) != 10 || lseek(f, 5, SEEK_SET) != 5 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, sp) < 0 ||
	    socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) < 0 || pipe(pp) < 0 || pipe(ready) < 0 ||
	    pipe(done) < 0) {
		feature_fail("setup: %s", strerror(errno));
		return feature_finish();
	}
#ifdef ONE_PROCESS
	pid_t child = 0;
#else
	pid_t child = fork();
	if (child < 0) {
		feature_fail("fork: %s", strerror(errno));
		return feature_finish();
	}
#endif
	if (child == 0) {
		/* the sender: what it sends only the messages hold once it has closed its copies */
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		memcpy(sa.sun_path + 1, LISTEN_NAME, strlen(LISTEN_NAME));
		socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
		                           strlen(LISTEN_NAME));
		int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int ev = eventfd(42, EFD_CLOEXEC);
		int bad = ls < 0 || ev < 0 || bind(ls, (struct sockaddr *)&sa, sl) < 0 ||
		          listen(ls, 4) < 0 || write(pp[1], "pre", 3) != 3;
		int a[2] = {mfd, f}, c3[3] = {pp[1], ls, ev};
		bad = bad || send_fds(sp[0], "hello", NULL, 0) < 0 ||
		      send_fds(sp[0], "msg-A", a, 2) < 0 || send_fds(sp[0], "msg-C", c3, 3) < 0 ||
		      send_fds(sp[0], "tail", NULL, 0) < 0 ||
		      send_fds(dp[0], "first", NULL, 0) < 0 ||
		      send_fds(dp[0], "dg-with-fd", &mfd, 1) < 0 ||
		      send_fds(dp[0], "plain", NULL, 0) < 0;
		if (bad)
			feature_fail("sending: %s", strerror(errno));
		close(f);
		close(ls);
		close(ev);
		close(pp[1]);
#ifndef ONE_PROCESS
		char b = bad ? 'x' : 'k';
		if (write(ready[1], &b, 1) != 1 || read(done[0], &b, 1) != 1)
			_exit(3);
		_exit(bad ? 1 : 0);
#endif
	}
#ifndef ONE_PROCESS
	char b;
	close(pp[1]);
	close(f);
	if (read(ready[0], &b, 1) != 1 || b != 'k')
		feature_fail("the child did not send what it had to");
#endif
	feature_ready();
	feature_wait_go(dir);

	int got[8], none[1];
	char buf[64] = {0};
	if (recv_fds(sp[1], "hellomsg-A", got, 2, "stream messages 1 and 2") == 0) {
		check_memfd(got[0], mfd, "stream message 2, file 1");
		char link[PATH_MAX] = {0}, proc[64];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", got[1]);
		if (readlink(proc, link, sizeof(link) - 1) < 0 || strcmp(link, path) != 0)
			feature_fail("stream message 2, file 2: is %s, not %s", link, path);
		else if (lseek(got[1], 0, SEEK_CUR) != 5 || read(got[1], buf, 5) != 5 ||
		         memcmp(buf, "56789", 5) != 0)
			feature_fail("stream message 2, file 2: offset or content wrong (\"%s\")",
			             buf);
	}
	if (recv_fds(sp[1], "msg-C", got, 3, "stream message 3") == 0) {
		memset(buf, 0, sizeof(buf));
		if (write(got[0], "z", 1) != 1 || read(pp[0], buf, 4) != 4 ||
		    memcmp(buf, "prez", 4) != 0)
			feature_fail("stream message 3, file 1: not the pipe's write end (\"%s\")",
			             buf);
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		memcpy(sa.sun_path + 1, LISTEN_NAME, strlen(LISTEN_NAME));
		socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
		                           strlen(LISTEN_NAME));
		int cl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (cl < 0 || connect(cl, (struct sockaddr *)&sa, sl) < 0)
			feature_fail("stream message 3, file 2: connect to @%s: %s", LISTEN_NAME,
			             strerror(errno));
		else if (accept4(got[1], NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK) < 0)
			feature_fail("stream message 3, file 2: accept: %s", strerror(errno));
		uint64_t n = 0;
		if (read(got[2], &n, 8) != 8 || n != 42)
			feature_fail("stream message 3, file 3: eventfd count %llu, not 42",
			             (unsigned long long)n);
	}
	recv_fds(sp[1], "tail", none, 0, "stream message 4");
	if (recv_fds(dp[1], "first", none, 0, "datagram 1") == 0 &&
	    recv_fds(dp[1], "dg-with-fd", got, 1, "datagram 2") == 0)
		check_memfd(got[0], mfd, "datagram 2, file 1");
	recv_fds(dp[1], "plain", none, 0, "datagram 3");
#ifndef ONE_PROCESS
	int st;
	if (write(done[1], "d", 1) != 1 || waitpid(child, &st, 0) != child || !WIFEXITED(st) ||
	    WEXITSTATUS(st) != 0)
		feature_fail("the child did not end well");
#endif
	return feature_finish();
}
