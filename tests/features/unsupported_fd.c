/* Feature: a checkpoint refuses a netlink socket, naming its fd, and leaves the program running. */
#include "feature.h"

#include <linux/netlink.h>
#include <stdint.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct sockaddr_nl addr = {.nl_family = AF_NETLINK};
	socklen_t len = sizeof(addr);
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	long ticks = 0;

	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
		feature_fail("netlink socket: %s", strerror(errno));
		return feature_finish();
	}
	uint32_t port = addr.nl_pid;

	printf("FD %d\n", fd); /* the harness expects the refusal to name this fd */
	feature_ready();
	while (!feature_go(dir)) { /* keep doing work: the refused checkpoint must not stop it */
		feature_sleep_ms(10);
		ticks++;
	}

	len = sizeof(addr);
	if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0 || addr.nl_family != AF_NETLINK ||
	    addr.nl_pid != port)
		feature_fail("netlink socket fd %d changed (port %u, was %u)", fd,
		             (unsigned)addr.nl_pid, (unsigned)port);
	if (ticks == 0)
		feature_fail("no progress before go");
	return feature_finish();
}
