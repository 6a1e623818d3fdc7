/*
 * The session benchmark's two ends (bench/sessions.py).
 *
 *   bench-sessecho serve PATH          a Unix stream service: echoes what it gets
 *   bench-sessecho serve tcp:HOST:PORT the same on TCP (TCP_NODELAY on every connection)
 *   bench-sessecho client PATH [GO]    connects to PATH, or tcp:HOST:PORT (once GO exists, if
 *                                      given: a file),
 *                                      then measures on that one session and prints JSON:
 *     - round trip: 64-byte messages sent and echoed one at a time (median and p99, us);
 *     - throughput: 64 KiB writes streamed while the echo is read back (MB/s each way);
 *     - messages: 64-byte messages streamed the same way (messages per second).
 * The client waits for GO after connecting, so that the session can be moved (checkpoint and
 * restore, migration) before it is measured.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int full(ssize_t (*io)(int, void *, size_t), int fd, void *buf, size_t len)
{
	for (size_t at = 0; at < len;) {
		ssize_t n = io(fd, (char *)buf + at, len - at);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		at += (size_t)n;
	}
	return 0;
}

static ssize_t rd(int fd, void *b, size_t l)
{
	return read(fd, b, l);
}

static ssize_t wr(int fd, void *b, size_t l)
{
	return write(fd, b, l);
}

/* A socket for PATH or tcp:HOST:PORT: listening (serve) or connected; -1 and errno. */
static int open_at(const char *spec, int serve)
{
	if (strncmp(spec, "tcp:", 4) != 0) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		int s = socket(AF_UNIX, SOCK_STREAM, 0);
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", spec);
		if (serve)
			unlink(spec);
		if (s < 0 ||
		    (serve ? bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 16) < 0
		           : connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0))
			return -1;
		return s;
	}
	char host[256];
	const char *colon = strrchr(spec + 4, ':');
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	int one = 1;
	if (!colon || (size_t)(colon - spec - 4) >= sizeof(host))
		return errno = EINVAL, -1;
	snprintf(host, sizeof(host), "%.*s", (int)(colon - spec - 4), spec + 4);
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		return errno = EHOSTUNREACH, -1;
	int s = socket(ai->ai_family, SOCK_STREAM, 0);
	if (s >= 0)
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (s < 0 ||
	    (serve ? bind(s, ai->ai_addr, ai->ai_addrlen) < 0 || listen(s, 16) < 0
	           : connect(s, ai->ai_addr, ai->ai_addrlen) < 0 ||
	                     setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)) {
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	return s;
}

static void *echo(void *arg)
{
	int c = (int)(intptr_t)arg;
	static __thread char buf[1 << 16];

	for (;;) {
		ssize_t n = read(c, buf, sizeof(buf));
		if (n <= 0 || full(wr, c, buf, (size_t)n) < 0)
			break;
	}
	close(c);
	return NULL;
}

static int serve(const char *path)
{
	int l = open_at(path, 1), one = 1;

	if (l < 0) {
		perror(path);
		return 1;
	}
	printf("READY\n");
	fflush(stdout);
	for (;;) {
		int c = accept(l, NULL, NULL);
		pthread_t th;
		if (c < 0)
			continue;
		if (strncmp(path, "tcp:", 4) == 0)
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (pthread_create(&th, NULL, echo, (void *)(intptr_t)c) == 0)
			pthread_detach(th);
		else
			close(c);
	}
}

struct drain {
	int fd;
	uint64_t bytes;
};

static void *drain(void *arg)
{
	struct drain *d = arg;
	static __thread char buf[1 << 16];
	for (uint64_t got = 0; got < d->bytes;) {
		ssize_t n = read(d->fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		got += (uint64_t)n;
	}
	return NULL;
}

/* bytes in writes of len, echoed back and read by a second thread; ns taken */
static uint64_t stream(int s, size_t len, uint64_t bytes)
{
	static char buf[1 << 16];
	struct drain d = {s, bytes};
	pthread_t th;
	uint64_t t0 = now_ns();

	pthread_create(&th, NULL, drain, &d);
	for (uint64_t sent = 0; sent < bytes; sent += len)
		if (full(wr, s, buf, len) < 0)
			break;
	pthread_join(th, NULL);
	return now_ns() - t0;
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int client(const char *path, const char *go)
{
	int s = open_at(path, 0);
	enum { RTT = 20000 };
	static uint64_t rtt[RTT];
	char msg[64] = {0};

	if (s < 0) {
		perror(path);
		return 1;
	}
	printf("CONNECTED\n");
	fflush(stdout);
	while (go && access(go, F_OK) < 0)
		usleep(10000);
	for (int i = 0; i < 2000; i++) /* warm-up */
		if (full(wr, s, msg, sizeof(msg)) < 0 || full(rd, s, msg, sizeof(msg)) < 0)
			return 1;
	for (int i = 0; i < RTT; i++) {
		uint64_t t0 = now_ns();
		if (full(wr, s, msg, sizeof(msg)) < 0 || full(rd, s, msg, sizeof(msg)) < 0)
			return 1;
		rtt[i] = now_ns() - t0;
	}
	qsort(rtt, RTT, sizeof(rtt[0]), cmp);
	uint64_t big = 256ull << 20, small = 16ull << 20;
	uint64_t tb = stream(s, 1 << 16, big), tm = stream(s, 64, small);
	size_t mid = RTT / 2, p99 = RTT * 99 / 100;
	uint64_t nmsg = small / 64;
	printf("{\"rtt_median_us\": %.2f, \"rtt_p99_us\": %.2f, \"throughput_mbs\": %.1f, "
	       "\"messages_per_s\": %.0f}\n",
	       (double)rtt[mid] / 1e3, (double)rtt[p99] / 1e3,
	       (double)big / 1e6 / ((double)tb / 1e9), (double)nmsg / ((double)tm / 1e9));
	fflush(stdout);
	close(s);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "serve") == 0)
		return serve(argv[2]);
	if (argc >= 3 && strcmp(argv[1], "client") == 0)
		return client(argv[2], argc > 3 ? argv[3] : NULL);
	fprintf(stderr, "usage: bench-sessecho serve PATH | client PATH [GO_FILE]\n");
	return 2;
}
