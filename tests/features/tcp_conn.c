/*
 * Feature: an established TCP connection to a peer outside the component (the test harness, at
 * the port in <dir>/port) survives a checkpoint that ends the component and a restore: bytes
 * the peer sent and the program had not read, bytes the program wrote and the peer had not
 * read (the peer's receive buffer is small, so some wait in the program's send queue), and an
 * echo exchange afterwards; the peer checks that it saw no reset and no byte lost or repeated.
 */
#include "feature.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#define TO_PEER   (512 * 1024) /* bytes i % 253 */
#define FROM_PEER (64 * 1024)  /* bytes i % 251, sent before READY, read after go */

static int read_exact(int fd, char *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = read(fd, buf + done, len - done);
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

static int write_exact(int fd, const char *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, buf + done, len - done);
		if (n < 0 && errno == EAGAIN) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			poll(&p, 1, 1000);
			continue;
		}
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX], line[128];
	static char out[TO_PEER], in[FROM_PEER];
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int port = 0, one = 1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/port", dir);
	if (!(f = fopen(path, "r")) || fscanf(f, "%d", &port) != 1) {
		printf("FAIL: no port in %s\n", path);
		return 1;
	}
	fclose(f);
	a.sin_port = htons((uint16_t)port);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
		printf("FAIL: connect to port %d: %s\n", port, strerror(errno));
		return 1;
	}
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* options the connection keeps */
	const int ka[][2] = {{TCP_KEEPIDLE, 77},
	                     {TCP_KEEPINTVL, 11},
	                     {TCP_KEEPCNT, 5},
	                     {TCP_USER_TIMEOUT, 12345}};
	setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	for (size_t i = 0; i < sizeof(ka) / sizeof(ka[0]); i++)
		setsockopt(s, IPPROTO_TCP, ka[i][0], &ka[i][1], sizeof(ka[i][1]));
	for (size_t i = 0; i < TO_PEER; i++)
		out[i] = (char)(i % 253);
	/* as much as the buffers take now; the rest after go */
	fcntl(s, F_SETFL, O_NONBLOCK);
	size_t sent = 0;
	for (;;) {
		ssize_t n = write(s, out + sent, TO_PEER - sent);
		if (n <= 0)
			break;
		sent += (size_t)n;
	}
	/* the peer's bytes arrive (the peer sends them once it has the connection) */
	int avail = 0;
	for (int i = 0; i < 500 && avail < FROM_PEER; i++) {
		feature_sleep_ms(10);
		ioctl(s, FIONREAD, &avail);
	}
	printf("SENT %zu QUEUED %d\n", sent, avail);
	feature_ready();
	feature_wait_go(dir);

	int v = 0;
	socklen_t vl = sizeof(v);
	if (getsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &v, &vl) < 0 || v != 1)
		feature_fail("SO_KEEPALIVE is %d after the restore", v);
	if (getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &vl) < 0 || v != 1)
		feature_fail("TCP_NODELAY is %d after the restore", v);
	for (size_t i = 0; i < sizeof(ka) / sizeof(ka[0]); i++)
		if (getsockopt(s, IPPROTO_TCP, ka[i][0], &v, &vl) < 0 || v != ka[i][1])
			feature_fail("TCP option %d is %d after the restore, expected %d", ka[i][0],
			             v, ka[i][1]);
	if (read_exact(s, in, FROM_PEER) < 0)
		feature_fail("reading the peer's bytes: %s", strerror(errno));
	for (size_t i = 0; i < FROM_PEER; i++)
		if (in[i] != (char)(i % 251)) {
			feature_fail("peer's byte %zu is %d, expected %d", i, in[i],
			             (int)(i % 251));
			break;
		}
	if (write_exact(s, out + sent, TO_PEER - sent) < 0)
		feature_fail("writing the rest: %s", strerror(errno));
	/* echo lines until END */
	fcntl(s, F_SETFL, 0);
	FILE *r = fdopen(dup(s), "r");
	while (r && fgets(line, sizeof(line), r)) {
		if (strcmp(line, "END\n") == 0)
			break;
		if (write_exact(s, line, strlen(line)) < 0) {
			feature_fail("echo: %s", strerror(errno));
			break;
		}
	}
	if (r)
		fclose(r);
	close(s);
	return feature_finish();
}
