/* A TCP listener (IPv4 and IPv6) and a bound UDP socket listen on the same ports after restore. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "feature.h"

static int bound(int domain, int type, const char *addr, struct sockaddr_storage *sa)
{
	socklen_t l = sizeof(*sa);
	int s = socket(domain, type, 0), one = 1;
	memset(sa, 0, sizeof(*sa));
	if (domain == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)sa;
		a->sin_family = AF_INET;
		inet_pton(AF_INET, addr, &a->sin_addr);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
		a->sin6_family = AF_INET6;
		inet_pton(AF_INET6, addr, &a->sin6_addr);
	}
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (s < 0 ||
	    bind(s, (struct sockaddr *)sa,
	         domain == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) <
	            0 ||
	    getsockname(s, (struct sockaddr *)sa, &l) < 0 ||
	    (type == SOCK_STREAM && listen(s, 8) < 0))
		return -1;
	return s;
}

static void check_tcp(int ls, const struct sockaddr_storage *sa, const char *what)
{
	struct sockaddr_storage now;
	socklen_t l = sizeof(now);
	if (getsockname(ls, (struct sockaddr *)&now, &l) < 0 || memcmp(&now, sa, l) != 0) {
		feature_fail("%s: bound elsewhere after restore", what);
		return;
	}
	int c = socket(sa->ss_family, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (const struct sockaddr *)sa, l) < 0) {
		feature_fail("%s: connect: %s", what, strerror(errno));
		return;
	}
	int a = accept(ls, NULL, NULL);
	if (a < 0 || write(c, "ok", 2) != 2) {
		feature_fail("%s: accept: %s", what, strerror(errno));
		return;
	}
	char buf[2];
	if (read(a, buf, 2) != 2 || memcmp(buf, "ok", 2) != 0)
		feature_fail("%s: no data over the accepted connection", what);
	close(a);
	close(c);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct sockaddr_storage t4, t6, u4;
	int lt4 = bound(AF_INET, SOCK_STREAM, "127.0.0.1", &t4);
	int lt6 = bound(AF_INET6, SOCK_STREAM, "::1", &t6);
	int lu4 = bound(AF_INET, SOCK_DGRAM, "127.0.0.1", &u4);

	if (lt4 < 0 || lt6 < 0 || lu4 < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);

	check_tcp(lt4, &t4, "TCP over IPv4");
	check_tcp(lt6, &t6, "TCP over IPv6");
	char buf[8];
	if (sendto(lu4, "udp", 3, 0, (struct sockaddr *)&u4, sizeof(struct sockaddr_in)) != 3 ||
	    recv(lu4, buf, sizeof(buf), 0) != 3 || memcmp(buf, "udp", 3) != 0)
		feature_fail("UDP socket no longer bound to its port");
	return feature_finish();
}
