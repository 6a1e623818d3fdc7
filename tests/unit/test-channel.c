/* Unit tests of channels: round trips, authentication, tampering, closing, timeouts, key files. */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "channel.h"
#include "tap.h"
#include "util.h"

#define T_BYE        0xee  /* ends the echo peer */
#define TIMEOUT      10000 /* ms: no test step should ever wait this long */
#define BENCH_MB     256
#define BENCH_WARMUP 8 /* messages before the clock starts */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* Two cluster keys; a test key need not be random. */
static const struct channel_key key_a = {.k = {0xa1, 0xa2, 0xa3, 0xa4}};
static const struct channel_key key_b = {.k = {0xb1, 0xb2, 0xb3, 0xb4}};

/* write_full for sockets whose reader may be gone: -EPIPE rather than SIGPIPE. */
static int send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * The far end of a test connection, run in a thread: channel_open, then one of a few
 * behaviours. Its results are read after pthread_join.
 */
enum peer_mode {
	PEER_ECHO,    /* send every message back until T_BYE */
	PEER_SINK,    /* receive until T_BYE, answer T_BYE */
	PEER_CLOSE,   /* close right after the handshake */
	PEER_WAIT,    /* wait for a byte on ctl, then send one message, then wait for T_BYE */
	PEER_RECV1,   /* receive one message and keep its result */
	PEER_BADMAGIC /* not a ferry node: send 40 bytes of something else, read, close */
};

struct peer {
	int fd;
	const struct channel_key *key;
	bool initiator;
	enum peer_mode mode;
	bool compress;
	int ctl; /* PEER_WAIT */
	int open_r, r;
	char peer_name[CHANNEL_NAME_MAX];
	struct ferry_error err;
};

static void *peer_main(void *arg)
{
	struct peer *p = arg;
	struct channel *ch = NULL;
	const void *buf;
	uint8_t type;
	size_t len;
	char c;

	if (p->mode == PEER_BADMAGIC) {
		char junk[40] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
		char in[40];
		p->open_r = send_all(p->fd, junk, sizeof(junk));
		(void)read_full(p->fd, in, sizeof(in));
		safe_close(p->fd);
		return NULL;
	}
	p->open_r = channel_open(p->fd, p->key, p->initiator, "beta", TIMEOUT, &ch, &p->err);
	if (p->open_r < 0) {
		safe_close(p->fd);
		return NULL;
	}
	snprintf(p->peer_name, sizeof(p->peer_name), "%s", channel_peer_name(ch));
	channel_set_compress(ch, p->compress);
	switch (p->mode) {
	case PEER_ECHO:
		while ((p->r = channel_recv(ch, &type, &buf, &len, &p->err)) == 0 && type != T_BYE)
			if ((p->r = channel_send(ch, type, buf, len, &p->err)) < 0)
				break;
		break;
	case PEER_SINK:
		while ((p->r = channel_recv(ch, &type, &buf, &len, &p->err)) == 0 && type != T_BYE)
			;
		if (p->r == 0)
			p->r = channel_send(ch, T_BYE, NULL, 0, &p->err);
		break;
	case PEER_WAIT:
		(void)read_full(p->ctl, &c, 1);
		p->r = channel_send(ch, 7, "late", 4, &p->err);
		if (p->r == 0)
			p->r = channel_recv(ch, &type, &buf, &len, &p->err);
		break;
	case PEER_RECV1:
		p->r = channel_recv(ch, &type, &buf, &len, &p->err);
		break;
	case PEER_CLOSE:
	case PEER_BADMAGIC:
		break;
	}
	channel_free(ch);
	safe_close(p->fd);
	return NULL;
}

/* A socketpair with a peer thread on one end; *ret_fd is ours. */
static int start_peer(struct peer *p, pthread_t *th, int *ret_fd, char *why)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return fail(why, "socketpair: %m");
	p->fd = sv[1];
	if (pthread_create(th, NULL, peer_main, p) != 0) {
		safe_close(sv[0]);
		safe_close(sv[1]);
		return fail(why, "pthread_create failed");
	}
	*ret_fd = sv[0];
	return 1;
}

static void fill_pattern(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t j = 0; j < n; j++)
		p[j] = (uint8_t)(seed + (j % 251) * 3 + (j >> 12));
}

/* Send one message (in two parts when split) and compare the echo. */
static int echo_one(struct channel *ch, uint8_t *msg, size_t len, bool split, char *why)
{
	struct ferry_error err = {0};
	const void *buf;
	uint8_t type;
	size_t got;
	int r;

	if (split)
		r = channel_sendv(ch, 3, msg, len / 3, msg + len / 3, len - len / 3, &err);
	else
		r = channel_send(ch, 3, msg, len, &err);
	if (r < 0)
		return fail(why, "send of %zu bytes: %d %s", len, r, err.msg);
	r = channel_recv(ch, &type, &buf, &got, &err);
	if (r < 0)
		return fail(why, "recv of %zu bytes: %d %s", len, r, err.msg);
	if (type != 3 || got != len || memcmp(buf, msg, len) != 0)
		return fail(why, "echo of %zu bytes came back as type %u, %zu bytes%s", len, type,
		            got, got == len ? ", different" : "");
	return 1;
}

static int test_roundtrip(bool compress, bool random, char *why)
{
	static const size_t sizes[] = {0, 1, 63, 64, 4096, 1 << 20, CHANNEL_MSG_MAX};
	struct peer p = {.key = &key_a, .mode = PEER_ECHO, .compress = compress};
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	struct channel_counters c;
	uint64_t payload = 0;
	uint8_t *msg = NULL;
	pthread_t th;
	int fd = -EBADF, ok = 0, r;

	if (!start_peer(&p, &th, &fd, why))
		return 0;
	msg = malloc(CHANNEL_MSG_MAX);
	r = channel_open(fd, &key_a, true, "alpha", TIMEOUT, &ch, &err);
	if (r < 0 || !msg) {
		fail(why, "channel_open: %d %s", r, err.msg);
		goto out;
	}
	if (strcmp(channel_peer_name(ch), "beta") != 0 || channel_fd(ch) != fd) {
		fail(why, "peer name '%s', fd %d", channel_peer_name(ch), channel_fd(ch));
		goto out;
	}
	channel_set_compress(ch, compress);
	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		if (random)
			randombytes_buf(msg, sizes[i]);
		else
			fill_pattern(msg, sizes[i], (unsigned)i);
		for (int split = 0; split < 2; split++) {
			if (!echo_one(ch, msg, sizes[i], split, why))
				goto out;
			payload += sizes[i];
		}
	}
	channel_counters(ch, &c);
	if (c.payload_sent != payload || c.payload_received != payload) {
		fail(why, "payload counters %lu/%lu, expected %lu", (unsigned long)c.payload_sent,
		     (unsigned long)c.payload_received, (unsigned long)payload);
		goto out;
	}
	if (compress && !random ? c.wire_sent * 4 > payload : c.wire_sent <= payload) {
		fail(why, "%lu wire bytes for %lu payload bytes", (unsigned long)c.wire_sent,
		     (unsigned long)payload);
		goto out;
	}
	if (channel_send(ch, T_BYE, NULL, 0, &err) < 0) {
		fail(why, "send bye: %s", err.msg);
		goto out;
	}
	ok = 1;
out:
	channel_free(ch);
	safe_close(fd);
	pthread_join(th, NULL);
	free(msg);
	if (ok && (p.open_r < 0 || strcmp(p.peer_name, "alpha") != 0 || p.r < 0))
		ok = fail(why, "peer: open %d, name '%s', %d %s", p.open_r, p.peer_name, p.r,
		          p.err.msg);
	return ok;
}

static int test_too_big(char *why)
{
	struct peer p = {.key = &key_a, .mode = PEER_ECHO};
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	pthread_t th;
	int fd = -EBADF, ok = 0, r;
	static uint8_t one[1];

	if (!start_peer(&p, &th, &fd, why))
		return 0;
	r = channel_open(fd, &key_a, true, "alpha", TIMEOUT, &ch, &err);
	if (r < 0) {
		fail(why, "channel_open: %d %s", r, err.msg);
		goto out;
	}
	/* The size check comes before the data is touched. */
	r = channel_sendv(ch, 1, one, CHANNEL_MSG_MAX, one, 1, &err);
	if (r != -EMSGSIZE) {
		fail(why, "oversized message: %d %s", r, err.msg);
		goto out;
	}
	if (!echo_one(ch, one, 1, false, why))
		goto out;
	ok = channel_send(ch, T_BYE, NULL, 0, &err) == 0 || fail(why, "bye: %s", err.msg);
out:
	channel_free(ch);
	safe_close(fd);
	pthread_join(th, NULL);
	return ok;
}

/* channel_open against peer p (which must refuse) fails with want and a message holding what. */
static int open_refused(struct peer *p, bool initiator, int want, const char *what, char *why)
{
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	pthread_t th;
	int fd = -EBADF, r;

	if (!start_peer(p, &th, &fd, why))
		return 0;
	r = channel_open(fd, &key_a, initiator, "alpha", TIMEOUT, &ch, &err);
	channel_free(ch);
	safe_close(fd);
	pthread_join(th, NULL);
	if (r != want || !strstr(err.msg, what))
		return fail(why, "channel_open: %d %s", r, err.msg);
	return 1;
}

static int test_wrong_key(char *why)
{
	struct peer p = {.key = &key_b, .mode = PEER_ECHO};

	if (!open_refused(&p, true, -EACCES, "authentication", why))
		return 0;
	if (p.open_r != -EACCES && p.open_r != -EPIPE)
		return fail(why, "responder: %d %s", p.open_r, p.err.msg);
	return 1;
}

static int test_bad_magic(char *why)
{
	struct peer p = {.mode = PEER_BADMAGIC};

	return open_refused(&p, false, -EPROTO, "not a ferry node", why);
}

/*
 * A man in the middle: forwards bytes between a and b, flipping the one at offset flip_at of
 * the a -> b direction (or dropping nothing and duplicating nothing: only one flip).
 */
struct proxy {
	int a, b;
	uint64_t flip_at;
};

static void *proxy_main(void *arg)
{
	struct proxy *x = arg;
	struct pollfd pfd[2] = {{.fd = x->a, .events = POLLIN}, {.fd = x->b, .events = POLLIN}};
	uint64_t a2b = 0;
	uint8_t buf[65536];

	while (poll(pfd, 2, TIMEOUT) > 0) {
		for (int i = 0; i < 2; i++) {
			ssize_t n;
			if (!pfd[i].revents)
				continue;
			n = read(pfd[i].fd, buf, sizeof(buf));
			if (n <= 0)
				goto out;
			if (i == 0) {
				if (x->flip_at >= a2b && x->flip_at < a2b + (uint64_t)n)
					buf[x->flip_at - a2b] ^= 0x10;
				a2b += (uint64_t)n;
			}
			if (send_all(pfd[1 - i].fd, buf, (size_t)n) < 0)
				goto out;
		}
	}
out:
	safe_close(x->a);
	safe_close(x->b);
	return NULL;
}

/* Initiator "alpha" -> proxy -> responder "beta" (PEER_RECV1); one byte flipped at flip_at. */
static int tamper(uint64_t flip_at, int want_open, int want_peer_open, int want_recv, char *why)
{
	struct peer p = {.key = &key_a, .mode = PEER_RECV1};
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	struct channel_counters c;
	struct proxy x = {.flip_at = flip_at};
	pthread_t th, tp;
	int sv[2], fd = -EBADF, ok = 0, r;

	if (!start_peer(&p, &th, &x.b, why))
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		fail(why, "socketpair: %m");
		safe_close(x.b);
		pthread_join(th, NULL);
		return 0;
	}
	fd = sv[0];
	x.a = sv[1];
	if (pthread_create(&tp, NULL, proxy_main, &x) != 0)
		abort();
	r = channel_open(fd, &key_a, true, "alpha", TIMEOUT, &ch, &err);
	if (r != want_open) {
		fail(why, "initiator's channel_open: %d %s", r, err.msg);
		goto out;
	}
	if (r == 0) {
		channel_counters(ch, &c);
		/* magic + nonce, header, the hello's frame: the flip offsets below count on it */
		if (c.wire_sent != 40 + 24 + 4 + 17 + 6 + 32 + 5) {
			fail(why, "handshake of %lu bytes", (unsigned long)c.wire_sent);
			goto out;
		}
		r = channel_send(ch, 1, "hello there, beta", 17, &err);
		if (r < 0 && want_peer_open == 0) {
			fail(why, "send: %d %s", r, err.msg);
			goto out;
		}
	}
	ok = 1;
out:
	channel_free(ch);
	safe_close(fd);
	pthread_join(th, NULL);
	pthread_join(tp, NULL);
	if (ok && p.open_r != want_peer_open)
		ok = fail(why, "responder's channel_open: %d %s", p.open_r, p.err.msg);
	else if (ok && p.open_r == 0 && p.r != want_recv)
		ok = fail(why, "responder's channel_recv: %d %s", p.r, p.err.msg);
	return ok;
}

static int test_tamper(char *why)
{
	const uint64_t hs = 40 + 24 + 4 + 17 + 6 + 32 + 5; /* the initiator's handshake */

	if (!tamper(UINT64_MAX, 0, 0, 0, why)) /* the proxy itself is harmless */
		return 0;
	if (!tamper(hs + 4 + 10, 0, 0, -EACCES, why)) /* ciphertext of the first message */
		return 0;
	if (!tamper(hs + 3, 0, 0, -EPROTO, why)) /* its length: too large */
		return 0;
	if (!tamper(hs + 4 + 17 + 6 + 17 - 1, 0, 0, -EACCES, why)) /* its MAC */
		return 0;
	if (!tamper(40 + 5, 0, -EACCES, 0, why)) /* the stream header */
		return 0;
	if (!tamper(12, -EACCES, -EACCES, 0, why)) /* the nonce */
		return 0;
	return tamper(2, -EPIPE, -EPROTO, 0, why); /* the magic */
}

static int test_closed(char *why)
{
	struct peer p = {.key = &key_a, .mode = PEER_CLOSE};
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	const void *buf;
	uint8_t type;
	size_t len;
	pthread_t th;
	int fd = -EBADF, ok = 0, r;

	if (!start_peer(&p, &th, &fd, why))
		return 0;
	r = channel_open(fd, &key_a, true, "alpha", TIMEOUT, &ch, &err);
	pthread_join(th, NULL);
	if (r < 0) {
		fail(why, "channel_open: %d %s", r, err.msg);
		goto out;
	}
	r = channel_recv(ch, &type, &buf, &len, &err);
	if (r != -EPIPE || !strstr(err.msg, "connection closed by peer (node beta)")) {
		fail(why, "recv: %d %s", r, err.msg);
		goto out;
	}
	/* -EPIPE, not SIGPIPE (which would end this program) */
	r = channel_send(ch, 1, "x", 1, &err);
	if (r != -EPIPE) {
		fail(why, "send: %d %s", r, err.msg);
		goto out;
	}
	ok = 1;
out:
	channel_free(ch);
	safe_close(fd);
	return ok;
}

static int test_timeout(char *why)
{
	struct peer p = {.key = &key_a, .mode = PEER_WAIT};
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	const void *buf;
	uint64_t t0, ms;
	uint8_t type;
	size_t len;
	pthread_t th;
	int ctl[2], fd = -EBADF, ok = 0, r;

	if (pipe2(ctl, O_CLOEXEC) < 0)
		return fail(why, "pipe: %m");
	p.ctl = ctl[0];
	if (!start_peer(&p, &th, &fd, why)) {
		safe_close(ctl[0]);
		safe_close(ctl[1]);
		return 0;
	}
	r = channel_open(fd, &key_a, true, "alpha", 0, &ch, &err);
	if (r < 0) {
		fail(why, "channel_open: %d %s", r, err.msg);
		goto out;
	}
	channel_set_timeout(ch, 100);
	t0 = now_ns();
	r = channel_recv(ch, &type, &buf, &len, &err);
	ms = (now_ns() - t0) / 1000000;
	if (r != -ETIMEDOUT || !strstr(err.msg, "no message from beta within 100 ms") || ms < 100 ||
	    ms > 5000) {
		fail(why, "recv: %d %s after %lu ms", r, err.msg, (unsigned long)ms);
		goto out;
	}
	/* A timeout leaves the channel usable. */
	channel_set_timeout(ch, 0);
	if (write_full(ctl[1], "g", 1) < 0) {
		fail(why, "write: %m");
		goto out;
	}
	r = channel_recv(ch, &type, &buf, &len, &err);
	if (r < 0 || type != 7 || len != 4 || memcmp(buf, "late", 4) != 0) {
		fail(why, "recv after the timeout: %d %s", r, err.msg);
		goto out;
	}
	ok = channel_send(ch, T_BYE, NULL, 0, &err) == 0 || fail(why, "bye: %s", err.msg);
out:
	channel_free(ch);
	safe_close(fd);
	safe_close(ctl[1]); /* ends the peer's wait if we failed early */
	pthread_join(th, NULL);
	safe_close(ctl[0]);
	if (ok && (p.open_r < 0 || p.r < 0))
		ok = fail(why, "peer: %d %d %s", p.open_r, p.r, p.err.msg);
	return ok;
}

static int test_handshake_timeout(char *why)
{
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	int sv[2], r;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return fail(why, "socketpair: %m");
	r = channel_open(sv[0], &key_a, true, "alpha", 50, &ch, &err); /* nobody on sv[1] */
	channel_free(ch);
	safe_close(sv[0]);
	safe_close(sv[1]);
	if (r != -ETIMEDOUT || !strstr(err.msg, "within 50 ms"))
		return fail(why, "%d %s", r, err.msg);
	return 1;
}

static int write_text(const char *path, const char *text, mode_t mode)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	if (fd < 0 || fchmod(fd, mode) < 0)
		return -errno;
	return write_full(fd, text, strlen(text));
}

static int test_keys(const char *dir, char *why)
{
	static const char *bad[] = {
	        "",
	        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeef\n", /* 63 */
	        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeffa\n",
	        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\n",
	        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeegg\n",
	        " 0112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
	};
	char path[PATH_MAX];
	struct ferry_error err = {0};
	struct channel_key k, k2;
	struct stat st;
	int r;

	snprintf(path, sizeof(path), "%s/cluster.key", dir);
	r = channel_key_generate(path, &err);
	if (r < 0)
		return fail(why, "generate: %d %s", r, err.msg);
	if (stat(path, &st) < 0 || (st.st_mode & 0777) != 0600 || st.st_size != 65)
		return fail(why, "generated file: mode %o, %ld bytes", st.st_mode & 0777,
		            (long)st.st_size);
	r = channel_key_generate(path, &err);
	if (r != -EEXIST)
		return fail(why, "generate over an existing key: %d %s", r, err.msg);
	r = channel_key_load(path, &k, &err);
	if (r < 0)
		return fail(why, "load: %d %s", r, err.msg);
	if (chmod(path, 0644) < 0)
		return fail(why, "chmod: %m");
	r = channel_key_load(path, &k2, &err);
	if (r != -EPERM || !strstr(err.msg, "0644") || !strstr(err.msg, path))
		return fail(why, "load of a 0644 key: %d %s", r, err.msg);
	if (chmod(path, 0640) < 0)
		return fail(why, "chmod: %m");
	if (channel_key_load(path, &k2, &err) != -EPERM)
		return fail(why, "load of a 0640 key: %s", err.msg);

	/* Without the newline, and upper case digits. */
	r = write_text(path, "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff",
	               0600);
	if (r < 0 || channel_key_load(path, &k, &err) < 0 || k.k[5] != 0x55 || k.k[10] != 0xaa ||
	    k.k[31] != 0xff)
		return fail(why, "load of a key without newline: %d %s", r, err.msg);
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		r = write_text(path, bad[i], 0600);
		if (r < 0)
			return fail(why, "write: %s", strerror(-r));
		r = channel_key_load(path, &k2, &err);
		if (r != -EINVAL || !strstr(err.msg, "64 hex digits"))
			return fail(why, "malformed key %zu: %d %s", i, r, err.msg);
	}
	unlink(path);
	r = channel_key_load(path, &k2, &err);
	if (r != -ENOENT || !strstr(err.msg, path))
		return fail(why, "missing key: %d %s", r, err.msg);
	return 1;
}

/* Informational: BENCH_MB MiB in 1 MiB messages over a socketpair. */
static int bench(bool compress, bool random, char *why)
{
	struct peer p = {.key = &key_a, .mode = PEER_SINK};
	struct ferry_error err = {0};
	struct channel *ch = NULL;
	struct channel_counters c, c0;
	const void *buf;
	uint8_t *msg = malloc(1 << 20), type;
	uint64_t t0 = 0, ns;
	size_t len;
	pthread_t th;
	int fd = -EBADF, ok = 0, r;

	if (!msg || !start_peer(&p, &th, &fd, why)) {
		free(msg);
		return msg ? 0 : fail(why, "out of memory");
	}
	r = channel_open(fd, &key_a, true, "alpha", TIMEOUT, &ch, &err);
	if (r < 0) {
		fail(why, "channel_open: %d %s", r, err.msg);
		goto out;
	}
	channel_set_compress(ch, compress);
	randombytes_buf(msg, 1 << 20);
	if (!random) /* pages as a heap has them: here half of each is zeros */
		for (size_t i = 0; i < 1 << 20; i += 4096)
			memset(msg + i, 0, 2048);
	for (int i = -BENCH_WARMUP; i < BENCH_MB; i++) {
		if (i == 0) { /* buffers allocated and faulted in, on both sides */
			channel_counters(ch, &c0);
			t0 = now_ns();
		}
		msg[0] = (uint8_t)i;
		r = channel_send(ch, 1, msg, 1 << 20, &err);
		if (r < 0) {
			fail(why, "send: %d %s", r, err.msg);
			goto out;
		}
	}
	r = channel_send(ch, T_BYE, NULL, 0, &err);
	if (r == 0)
		r = channel_recv(ch, &type, &buf, &len, &err);
	if (r < 0) {
		fail(why, "bye: %d %s", r, err.msg);
		goto out;
	}
	ns = now_ns() - t0;
	channel_counters(ch, &c);
	printf("# %d MiB in 1 MiB messages, %s, %s data: %.0f MB/s of payload, %.0f MB/s on the "
	       "wire\n",
	       BENCH_MB, compress ? "zstd" : "no compression", random ? "random" : "half-zero",
	       (double)(c.payload_sent - c0.payload_sent) * 1e3 / (double)ns,
	       (double)(c.wire_sent - c0.wire_sent) * 1e3 / (double)ns);
	ok = 1;
out:
	channel_free(ch);
	safe_close(fd);
	pthread_join(th, NULL);
	free(msg);
	if (ok && p.r < 0)
		ok = fail(why, "peer: %d %s", p.r, p.err.msg);
	return ok;
}

int main(void)
{
	char base[] = "/tmp/ferry-test-channel-XXXXXX", why[WHY_MAX];
	struct tally t = {0};
	int fds = count_fds();

	if (sodium_init() < 0 || !mkdtemp(base)) {
		perror("setup");
		return 1;
	}
#define RUN(label, call) (why[0] = '\0', report(&t, label, (call), why))
	RUN("round trip, no compression, patterned data", test_roundtrip(false, false, why));
	RUN("round trip, no compression, random data", test_roundtrip(false, true, why));
	RUN("round trip, zstd, compressible data", test_roundtrip(true, false, why));
	RUN("round trip, zstd, random data", test_roundtrip(true, true, why));
	RUN("a message over CHANNEL_MSG_MAX is refused", test_too_big(why));
	RUN("a wrong key fails authentication on both sides", test_wrong_key(why));
	RUN("a peer that is not a ferry node", test_bad_magic(why));
	RUN("tampered bytes fail authentication", test_tamper(why));
	RUN("a closed peer gives EPIPE", test_closed(why));
	RUN("a silent peer gives ETIMEDOUT, then the channel works", test_timeout(why));
	RUN("a silent peer in the handshake gives ETIMEDOUT", test_handshake_timeout(why));
	RUN("key files: generate, load, refuse loose modes and bad text", test_keys(base, why));
	RUN("throughput (informational)", bench(false, true, why));
	RUN("throughput with zstd (informational)", bench(true, false, why));
	rmdir(base);
	snprintf(why, sizeof(why), "%d open fds at the start, %d at the end", fds, count_fds());
	report(&t, "no fd leaks", fds == count_fds(), why);
	printf("%d passed, %d failed\n", t.passed, t.failed);
	return t.failed ? 1 : 0;
}
