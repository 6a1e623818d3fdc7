/* Pipes inside one process: bytes left in them, a nonblocking empty one, a large buffer. */
#include <fcntl.h>

#include "feature.h"

#define BIG (100 * 1024)

static ssize_t read_all(int fd, unsigned char *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	int a[2], b[2], c[2];
	static unsigned char big[BIG], back[BIG];
	char buf[64];

	for (int i = 0; i < BIG; i++)
		big[i] = (unsigned char)(i * 7 + i / 251);
	if (pipe(a) < 0 || pipe2(b, O_NONBLOCK) < 0 || pipe(c) < 0 ||
	    fcntl(c[1], F_SETPIPE_SZ, 256 * 1024) < 0 || write(a[1], "hello pipe", 10) != 10 ||
	    write(c[1], big, BIG) != BIG) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	int a_dup = dup(a[0]);
	feature_ready();
	feature_wait_go(dir);

	ssize_t n = read(a_dup, buf, sizeof(buf));
	if (n != 10 || memcmp(buf, "hello pipe", 10) != 0)
		feature_fail("pipe a: read %zd bytes, expected \"hello pipe\"", n);
	if (read(b[0], buf, 1) != -1 || errno != EAGAIN)
		feature_fail("pipe b: not empty and nonblocking");
	if (write(b[1], "x", 1) != 1 || read(b[0], buf, 1) != 1 || buf[0] != 'x')
		feature_fail("pipe b: does not carry a byte from its write end to its read end");
	if (fcntl(c[0], F_GETPIPE_SZ) != 256 * 1024)
		feature_fail("pipe c: buffer %d, expected 262144", fcntl(c[0], F_GETPIPE_SZ));
	if (read_all(c[0], back, BIG) != BIG || memcmp(back, big, BIG) != 0)
		feature_fail("pipe c: its 100 KiB differ");
	return feature_finish();
}
