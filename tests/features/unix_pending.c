/*
 * Feature: connections to listeners of the component that were not accepted yet survive, in the
 * order they came: two clients of this process wait on a stream listener with an abstract name
 * (the second fd connected first),
 * a client of a child process on a seqpacket listener bound to a path. After the restore each
 * is accepted, in its order, and carries its client's bytes.
 */
#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "feature.h"

static socklen_t addr_of(struct sockaddr_un *sa, const char *name, int abstract)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path + (abstract ? 1 : 0), name, strlen(name));
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (abstract ? 1 : 0) +
	                   strlen(name) + (abstract ? 0 : 1));
}

/* Accept one connection of l and expect want from it. */
static void accept_expect(int l, const char *want, const char *what)
{
	char b[16] = {0};
	int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);

	if (c < 0) {
		feature_fail("%s: accept: %s", what, strerror(errno));
		return;
	}
	ssize_t n = recv(c, b, sizeof(b) - 1, 0);
	if (n != (ssize_t)strlen(want) || memcmp(b, want, strlen(want)) != 0)
		feature_fail("%s: got \"%s\" (%zd bytes), wanted \"%s\"", what, b, n, want);
	close(c);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct sockaddr_un a1, a2;
	char name[64], path[PATH_MAX];
	int ready[2];

	snprintf(name, sizeof(name), "ferry-pending-%d", getpid());
	snprintf(path, sizeof(path), "%s/pending.sock", dir);
	socklen_t l1 = addr_of(&a1, name, 1), l2 = addr_of(&a2, path, 0);
	int s1 = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int s2 = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int c1 = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int c2 = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s1 < 0 || s2 < 0 || c1 < 0 || c2 < 0 || pipe(ready) < 0 ||
	    bind(s1, (struct sockaddr *)&a1, l1) < 0 || listen(s1, 8) < 0 ||
	    bind(s2, (struct sockaddr *)&a2, l2) < 0 || listen(s2, 8) < 0 ||
	    connect(c2, (struct sockaddr *)&a1, l1) < 0 ||
	    connect(c1, (struct sockaddr *)&a1, l1) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	pid_t child = fork();
	if (child == 0) {
		int c3 = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (c3 < 0 || connect(c3, (struct sockaddr *)&a2, l2) < 0 ||
		    write(ready[1], "r", 1) != 1)
			_exit(2);
		feature_wait_go(dir);
		_exit(send(c3, "c3", 2, 0) == 2 ? 0 : 3);
	}
	char b;
	if (child < 0 || read(ready[0], &b, 1) != 1) {
		printf("FAIL: the child did not connect\n");
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);

	/* written now: a client that wrote before being accepted is refused */
	if (send(c2, "c2", 2, 0) != 2 || send(c1, "c1", 2, 0) != 2)
		feature_fail("the clients cannot write: %s", strerror(errno));
	if (!(fcntl(c2, F_GETFL) & O_NONBLOCK) || (fcntl(c1, F_GETFL) & O_NONBLOCK))
		feature_fail("a client's O_NONBLOCK changed");
	/* c2 came first though its fd is higher (fds are restored in their order) */
	accept_expect(s1, "c2", "first connection to the stream listener");
	accept_expect(s1, "c1", "second connection to the stream listener");
	int st;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		feature_fail("the child ended with status %#x", st);
	else
		accept_expect(s2, "c3", "the child's connection to the seqpacket listener");
	/* and the listeners still listen */
	int c4 = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c4 < 0 || connect(c4, (struct sockaddr *)&a1, l1) < 0 || send(c4, "c4", 2, 0) != 2)
		feature_fail("a new client: %s", strerror(errno));
	else
		accept_expect(s1, "c4", "a new connection");
	return feature_finish();
}
