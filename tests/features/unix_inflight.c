/* Feature: a checkpoint refuses a Unix socket with a file in flight (SCM_RIGHTS not received
 * yet) of a kind it cannot carry alone (an epoll instance no process holds), naming the fd, and
 * leaves the program running with the file still in flight. */
#include <sys/epoll.h>
#include <sys/socket.h>

#include "feature.h"

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	int sv[2], pass[2], ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 77};

	if (ep < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 || pipe(pass) < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, pass[0], &ev) < 0) {
		feature_fail("setup: %s", strerror(errno));
		return feature_finish();
	}
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cm = {0};
	char f = 'f';
	struct iovec io = {&f, 1};
	struct msghdr mh = {
	        .msg_iov = &io, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &ep, sizeof(int));
	if (sendmsg(sv[0], &mh, 0) != 1) {
		feature_fail("sendmsg: %s", strerror(errno));
		return feature_finish();
	}
	close(ep);
	printf("FD %d\n", sv[0]); /* the end captured first, which carries both queues */
	feature_ready();
	feature_wait_go(dir);
	/* the epoll instance is still in flight: received, it sees the pipe readable */
	char b;
	mh.msg_controllen = sizeof(cm);
	if (recvmsg(sv[1], &mh, 0) != 1 || !CMSG_FIRSTHDR(&mh))
		feature_fail("recvmsg: %s", strerror(errno));
	else {
		int got;
		memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
		ev.data.u64 = 0;
		if (write(pass[1], "z", 1) != 1 || epoll_wait(got, &ev, 1, 1000) != 1 ||
		    ev.data.u64 != 77 || read(pass[0], &b, 1) != 1 || b != 'z')
			feature_fail("the fd received is not the epoll instance");
	}
	return feature_finish();
}
