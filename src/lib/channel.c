/* Channels between nodes: authenticated, encrypted and optionally compressed messages on a socket.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <zstd.h>

#include "channel.h"
#include "util.h"

/*
 * On the wire, after the handshake, a message is a frame: 4 bytes little-endian length of the
 * ciphertext, then the ciphertext (one secretstream message, tag MESSAGE, no additional data).
 * Its plaintext: 1 byte flags, 1 byte type, 4 bytes little-endian raw payload length, payload.
 */
#define MAGIC_LEN   8
#define NONCE_LEN   32
#define HDR_LEN     crypto_secretstream_xchacha20poly1305_HEADERBYTES
#define ABYTES      crypto_secretstream_xchacha20poly1305_ABYTES
#define PLAIN_HDR   6                                      /* flags, type, raw length */
#define FRAME_MAX   (ABYTES + PLAIN_HDR + CHANNEL_MSG_MAX) /* compressed only if smaller */
#define FLAG_ZSTD   (1 << 0)                               /* payload is one zstd frame */
#define HELLO_TYPE  0     /* the first message each way: peer's nonce, then sender's name */
#define ZSTD_MIN    64    /* smaller payloads are never worth a compression attempt */
#define READAHEAD   65536 /* bytes asked of read() past a frame header, for small frames */
#define BUF_ROUND   65536 /* buffers grow in multiples of this */
#define KEY_HEX_LEN (2 * CHANNEL_KEY_BYTES)
#define WHO_MAX     (CHANNEL_NAME_MAX + 32)

/* "FERRYCH1", without the NUL */
static const uint8_t magic[MAGIC_LEN] = {'F', 'E', 'R', 'R', 'Y', 'C', 'H', '1'};

struct channel {
	int fd;
	bool is_socket; /* send() with MSG_NOSIGNAL; otherwise write() */
	bool compress;
	int timeout_ms;
	int failed; /* an error that left the stream unusable (-errno), 0 while usable */
	char peer[CHANNEL_NAME_MAX];
	char who[WHO_MAX]; /* "node NAME", or the fd while the name is unknown; for messages */

	crypto_secretstream_xchacha20poly1305_state tx, rx;
	ZSTD_CCtx *cctx; /* created on the first compressed send */
	ZSTD_DCtx *dctx; /* created on the first compressed receive */

	uint8_t *splain; /* plaintext of the message being sent */
	size_t splain_cap;
	uint8_t *swire; /* its frame */
	size_t swire_cap;
	uint8_t *sjoin; /* a two-part payload made contiguous for the compressor */
	size_t sjoin_cap;

	uint8_t *rwire; /* received bytes; [rpos, rend) not consumed yet */
	size_t rwire_cap, rpos, rend;
	uint8_t *rplain; /* plaintext of the last received message */
	size_t rplain_cap;
	uint8_t *rraw; /* its payload when it came compressed */
	size_t rraw_cap;

	struct channel_counters cnt;
};

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Make *buf hold at least need bytes; its contents are kept, or dropped (no copy when it
 * grows). 0 or -ENOMEM. */
static int buf_reserve(uint8_t **buf, size_t *cap, size_t need, bool keep)
{
	uint8_t *p;
	size_t n;

	if (*cap >= need)
		return 0;
	n = (need + BUF_ROUND - 1) / BUF_ROUND * BUF_ROUND;
	p = keep ? realloc(*buf, n) : malloc(n);
	if (!p)
		return -ENOMEM;
	if (!keep)
		free(*buf);
	*buf = p;
	*cap = n;
	return 0;
}

int channel_reserve(struct channel *ch, size_t payload, struct ferry_error *err)
{
	size_t frame = 4 + ABYTES + PLAIN_HDR + payload;

	if (payload > CHANNEL_MSG_MAX)
		return ferr(err, -EMSGSIZE, "channel buffers for %zu bytes: more than %u", payload,
		            CHANNEL_MSG_MAX);
	if (buf_reserve(&ch->splain, &ch->splain_cap, PLAIN_HDR + payload, false) < 0 ||
	    buf_reserve(&ch->swire, &ch->swire_cap, frame, false) < 0 ||
	    buf_reserve(&ch->rwire, &ch->rwire_cap, frame + READAHEAD, true) < 0 ||
	    buf_reserve(&ch->rplain, &ch->rplain_cap, PLAIN_HDR + payload, true) < 0)
		return ferr(err, -ENOMEM, "channel buffers for %zu bytes", payload);
	populate(ch->splain, ch->splain_cap);
	populate(ch->swire, ch->swire_cap);
	populate(ch->rwire, ch->rwire_cap);
	populate(ch->rplain, ch->rplain_cap);
	return 0;
}

static int sodium_ready(struct ferry_error *err)
{
	/* Idempotent and thread-safe; libsodium's own state, not ours. */
	if (sodium_init() < 0)
		return ferr(err, -EIO, "libsodium initialisation failed");
	return 0;
}

int channel_key_load(const char *path, struct channel_key *ret, struct ferry_error *err)
{
	_cleanup_close_ int fd = -EBADF;
	uint8_t text[KEY_HEX_LEN + 2];
	struct channel_key key;
	struct stat st;
	size_t len;
	int r;

	r = sodium_ready(err);
	if (r < 0)
		return r;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return ferr(err, -errno, "key file %s: %m", path);
	if (fstat(fd, &st) < 0)
		return ferr(err, -errno, "key file %s: %m", path);
	if (!S_ISREG(st.st_mode))
		return ferr(err, -EINVAL, "key file %s: not a regular file", path);
	if (st.st_mode & 077)
		return ferr(err, -EPERM,
		            "key file %s: mode %04o lets group or others read the cluster key; "
		            "make it 0600 (chmod 600 %s)",
		            path, (unsigned)(st.st_mode & 07777), path);

	/* 64 hex digits, an optional newline, and nothing more: read one byte past that. */
	len = 0;
	while (len < sizeof(text)) {
		ssize_t n = read(fd, text + len, sizeof(text) - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = ferr(err, -errno, "key file %s: %m", path);
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len == KEY_HEX_LEN + 1 && text[KEY_HEX_LEN] == '\n')
		len--;
	if (len != KEY_HEX_LEN || sodium_hex2bin(key.k, sizeof(key.k), (const char *)text,
	                                         KEY_HEX_LEN, NULL, NULL, NULL) < 0) {
		r = ferr(err, -EINVAL, "key file %s: not a cluster key (expected %d hex digits)",
		         path, KEY_HEX_LEN);
		goto out;
	}
	*ret = key;
	r = 0;
out:
	sodium_memzero(text, sizeof(text));
	sodium_memzero(&key, sizeof(key));
	return r;
}

int channel_key_generate(const char *path, struct ferry_error *err)
{
	_cleanup_close_ int fd = -EBADF;
	uint8_t key[CHANNEL_KEY_BYTES];
	char text[KEY_HEX_LEN + 2];
	int r;

	r = sodium_ready(err);
	if (r < 0)
		return r;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return ferr(err, -errno, "key file %s: %m", path);
	randombytes_buf(key, sizeof(key));
	sodium_bin2hex(text, sizeof(text), key, sizeof(key));
	text[KEY_HEX_LEN] = '\n';
	r = write_full(fd, text, KEY_HEX_LEN + 1);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	sodium_memzero(key, sizeof(key));
	sodium_memzero(text, sizeof(text));
	if (r < 0) {
		(void)unlink(path); /* no half-written key left to be loaded later */
		return ferr(err, r, "key file %s: writing: %s", path, strerror(-r));
	}
	return 0;
}

/* Mark the stream unusable after error r (not after a timeout: those leave it intact). */
static int fail(struct channel *ch, int r)
{
	if (r < 0 && r != -ETIMEDOUT && !ch->failed)
		ch->failed = r;
	return r;
}

static int write_all(struct channel *ch, const uint8_t *p, size_t len, struct ferry_error *err)
{
	while (len > 0) {
		ssize_t n;

		/* MSG_NOSIGNAL: a peer that went away is -EPIPE here, not SIGPIPE for the process.
		 */
		if (ch->is_socket)
			n = send(ch->fd, p, len, MSG_NOSIGNAL);
		else
			n = write(ch->fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) { /* a non-blocking fd */
				struct pollfd pfd = {.fd = ch->fd, .events = POLLOUT};
				if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
					return ferr(err, -errno, "waiting to send to %s: %m",
					            ch->who);
				continue;
			}
			if (errno == EPIPE || errno == ECONNRESET)
				return ferr(err, -EPIPE, "connection closed by peer (%s)", ch->who);
			return ferr(err, -errno, "sending to %s: %m", ch->who);
		}
		p += n;
		len -= (size_t)n;
		ch->cnt.wire_sent += (uint64_t)n;
	}
	return 0;
}

/* Wait until fd is readable or the deadline (CLOCK_MONOTONIC ns, 0: none) passes. */
static int wait_readable(struct channel *ch, uint64_t deadline, struct ferry_error *err)
{
	for (;;) {
		struct pollfd pfd = {.fd = ch->fd, .events = POLLIN};
		uint64_t now = now_ns();
		int ms, r;

		if (now >= deadline)
			return -ETIMEDOUT;
		ms = (int)MIN((deadline - now + 999999) / 1000000, (uint64_t)INT_MAX);
		r = poll(&pfd, 1, ms);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return ferr(err, -errno, "waiting for %s: %m", ch->who);
	}
}

/*
 * Make [rpos, rend) of the receive buffer hold at least need bytes, reading up to readahead
 * bytes more when they are there. Bytes stay buffered across a timeout, so a receive that
 * timed out can be retried.
 */
static int fill(struct channel *ch, size_t need, size_t readahead, uint64_t deadline,
                struct ferry_error *err)
{
	size_t have = ch->rend - ch->rpos;

	if (have >= need)
		return 0;
	if (ch->rpos + need > ch->rwire_cap) {
		if (have) /* the start of the next frame: at most READAHEAD bytes */
			memmove(ch->rwire, ch->rwire + ch->rpos, have);
		ch->rpos = 0;
		ch->rend = have;
		if (buf_reserve(&ch->rwire, &ch->rwire_cap, need, true) < 0)
			return ferr(err, -ENOMEM, "receive buffer of %zu bytes", need);
	}
	while (ch->rend - ch->rpos < need) {
		size_t want = need - (ch->rend - ch->rpos);
		size_t room = ch->rwire_cap - ch->rend;
		ssize_t n;
		int r;

		if (deadline) {
			r = wait_readable(ch, deadline, err);
			if (r < 0)
				return r;
		}
		n = read(ch->fd, ch->rwire + ch->rend, MIN(room, MAX(want, readahead)));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) { /* a non-blocking fd */
				r = wait_readable(ch, deadline ? deadline : UINT64_MAX, err);
				if (r < 0)
					return r;
				continue;
			}
			if (errno == ECONNRESET)
				return ferr(err, -EPIPE, "connection closed by peer (%s)", ch->who);
			return ferr(err, -errno, "receiving from %s: %m", ch->who);
		}
		if (n == 0)
			return ferr(err, -EPIPE, "connection closed by peer (%s)", ch->who);
		ch->rend += (size_t)n;
		ch->cnt.wire_received += (uint64_t)n;
	}
	return 0;
}

static uint64_t deadline_of(int timeout_ms)
{
	return timeout_ms > 0 ? now_ns() + (uint64_t)timeout_ms * 1000000 : 0;
}

/*
 * Encrypt and send one message whose payload is hdr followed by data. The plaintext is
 * assembled (or compressed) in one buffer and encrypted into another: libsodium does not
 * document secretstream as safe to run in place.
 */
static int send_msg(struct channel *ch, uint8_t type, const void *hdr, size_t hlen,
                    const void *data, size_t dlen, struct ferry_error *err)
{
	size_t total = hlen + dlen, plen = 0, flen;
	uint8_t flags = 0;
	int r;

	if (ch->failed)
		return ferr(err, ch->failed, "channel to %s is unusable after an earlier error",
		            ch->who);
	if (hlen > CHANNEL_MSG_MAX || dlen > CHANNEL_MSG_MAX || total > CHANNEL_MSG_MAX)
		return ferr(err, -EMSGSIZE, "message of %zu bytes to %s: more than %u", total,
		            ch->who, CHANNEL_MSG_MAX);
	if (buf_reserve(&ch->splain, &ch->splain_cap, PLAIN_HDR + total, false) < 0 ||
	    buf_reserve(&ch->swire, &ch->swire_cap, 4 + ABYTES + PLAIN_HDR + total, false) < 0)
		return ferr(err, -ENOMEM, "send buffers for %zu bytes", total);

	if (ch->compress && total >= ZSTD_MIN) {
		const void *src = hlen ? hdr : data;
		size_t z;

		if (!ch->cctx) {
			ch->cctx = ZSTD_createCCtx();
			if (!ch->cctx)
				return ferr(err, -ENOMEM, "zstd compression context");
		}
		if (hlen && dlen) {
			if (buf_reserve(&ch->sjoin, &ch->sjoin_cap, total, false) < 0)
				return ferr(err, -ENOMEM, "compression buffer of %zu bytes", total);
			memcpy(ch->sjoin, hdr, hlen);
			memcpy(ch->sjoin + hlen, data, dlen);
			src = ch->sjoin;
		}
		/* One byte less than the payload: zstd fails when the result is not smaller. */
		z = ZSTD_compressCCtx(ch->cctx, ch->splain + PLAIN_HDR, total - 1, src, total, 1);
		if (!ZSTD_isError(z)) {
			flags |= FLAG_ZSTD;
			plen = PLAIN_HDR + z;
		}
	}
	if (!(flags & FLAG_ZSTD)) {
		if (hlen)
			memcpy(ch->splain + PLAIN_HDR, hdr, hlen);
		if (dlen)
			memcpy(ch->splain + PLAIN_HDR + hlen, data, dlen);
		plen = PLAIN_HDR + total;
	}
	ch->splain[0] = flags;
	ch->splain[1] = type;
	put_le32(ch->splain + 2, (uint32_t)total);

	crypto_secretstream_xchacha20poly1305_push(
	        &ch->tx, ch->swire + 4, NULL, ch->splain, plen, NULL, 0,
	        crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
	flen = plen + ABYTES;
	put_le32(ch->swire, (uint32_t)flen);
	r = write_all(ch, ch->swire, 4 + flen, err);
	if (r < 0)
		return fail(ch, r);
	return 0;
}

/* Receive, authenticate and unpack one message; *ret_buf is in the channel's buffers. */
static int recv_msg(struct channel *ch, uint64_t deadline, uint8_t *ret_type, const void **ret_buf,
                    size_t *ret_len, struct ferry_error *err)
{
	unsigned long long mlen;
	unsigned char tag;
	uint32_t flen, raw;
	const uint8_t *payload;
	uint8_t flags;
	int r;

	if (ch->failed)
		return ferr(err, ch->failed, "channel to %s is unusable after an earlier error",
		            ch->who);
	r = fill(ch, 4, READAHEAD, deadline, err);
	if (r < 0)
		return fail(ch, r);
	flen = get_le32(ch->rwire + ch->rpos);
	if (flen < ABYTES + PLAIN_HDR || flen > FRAME_MAX)
		return fail(ch, ferr(err, -EPROTO, "message from %s: bad frame length %u", ch->who,
		                     flen));
	r = fill(ch, 4 + (size_t)flen, 0, deadline, err);
	if (r < 0)
		return fail(ch, r);
	if (buf_reserve(&ch->rplain, &ch->rplain_cap, flen - ABYTES, false) < 0)
		return fail(ch, ferr(err, -ENOMEM, "receive buffer of %u bytes", flen));
	if (crypto_secretstream_xchacha20poly1305_pull(
	            &ch->rx, ch->rplain, &mlen, &tag, ch->rwire + ch->rpos + 4, flen, NULL, 0) != 0)
		return fail(ch, ferr(err, -EACCES,
		                     "message from %s: peer failed authentication (wrong cluster "
		                     "key or tampered stream)",
		                     ch->who));
	ch->rpos += 4 + (size_t)flen;
	if (ch->rpos == ch->rend)
		ch->rpos = ch->rend = 0;
	if (tag != crypto_secretstream_xchacha20poly1305_TAG_MESSAGE)
		return fail(ch, ferr(err, -EPROTO, "message from %s: unexpected stream tag %u",
		                     ch->who, tag));

	flags = ch->rplain[0];
	raw = get_le32(ch->rplain + 2);
	payload = ch->rplain + PLAIN_HDR;
	mlen -= PLAIN_HDR;
	if ((flags & ~FLAG_ZSTD) || raw > CHANNEL_MSG_MAX)
		return fail(ch,
		            ferr(err, -EPROTO, "message from %s: bad header (flags %#x, %u bytes)",
		                 ch->who, flags, raw));
	if (flags & FLAG_ZSTD) {
		size_t n;

		if (!ch->dctx) {
			ch->dctx = ZSTD_createDCtx();
			if (!ch->dctx)
				return fail(ch, ferr(err, -ENOMEM, "zstd decompression context"));
		}
		if (buf_reserve(&ch->rraw, &ch->rraw_cap, MAX(raw, 1), false) < 0)
			return fail(ch, ferr(err, -ENOMEM, "receive buffer of %u bytes", raw));
		n = ZSTD_decompressDCtx(ch->dctx, ch->rraw, raw, payload, mlen);
		if (ZSTD_isError(n) || n != raw)
			return fail(ch, ferr(err, -EPROTO,
			                     "message from %s: compressed payload does not "
			                     "decompress to its %u bytes",
			                     ch->who, raw));
		payload = ch->rraw;
	} else if (mlen != raw) {
		return fail(ch, ferr(err, -EPROTO,
		                     "message from %s: %llu payload bytes, header says %u", ch->who,
		                     mlen, raw));
	}
	*ret_type = ch->rplain[1];
	*ret_buf = payload;
	*ret_len = raw;
	return 0;
}

static int timeout_error(struct channel *ch, int timeout_ms, struct ferry_error *err)
{
	if (ch->peer[0])
		return ferr(err, -ETIMEDOUT, "no message from %s within %d ms", ch->peer,
		            timeout_ms);
	return ferr(err, -ETIMEDOUT, "no handshake from the peer on fd %d within %d ms", ch->fd,
	            timeout_ms);
}

/* Both directions' keys: keyed BLAKE2b of a label and the two nonces, initiator's first. */
static void derive(const struct channel_key *key, const char *label, const uint8_t *n_init,
                   const uint8_t *n_resp,
                   uint8_t out[crypto_secretstream_xchacha20poly1305_KEYBYTES])
{
	uint8_t in[9 + 2 * NONCE_LEN];

	memcpy(in, label, 9);
	memcpy(in + 9, n_init, NONCE_LEN);
	memcpy(in + 9 + NONCE_LEN, n_resp, NONCE_LEN);
	crypto_generichash(out, crypto_secretstream_xchacha20poly1305_KEYBYTES, in, sizeof(in),
	                   key->k, sizeof(key->k));
}

static bool name_ok(const uint8_t *p, size_t len)
{
	if (len == 0 || len >= CHANNEL_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (p[i] <= ' ' || p[i] >= 0x7f)
			return false;
	return true;
}

/*
 * The handshake. Each step sends before it waits, so two ends that run it at once never
 * both block on a read: magic and nonce, then the secretstream header of the sending
 * direction, then the hello (peer's nonce and own name) as the first encrypted message.
 */
static int handshake(struct channel *ch, const struct channel_key *key, bool initiator,
                     const char *my_name, uint64_t deadline, struct ferry_error *err)
{
	uint8_t mine[MAGIC_LEN + NONCE_LEN];
	uint8_t peer_nonce[NONCE_LEN], header[HDR_LEN];
	uint8_t k_tx[crypto_secretstream_xchacha20poly1305_KEYBYTES];
	uint8_t k_rx[crypto_secretstream_xchacha20poly1305_KEYBYTES];
	const uint8_t *my_nonce = mine + MAGIC_LEN;
	const void *buf;
	size_t len;
	uint8_t type;
	int r;

	memcpy(mine, magic, MAGIC_LEN);
	randombytes_buf(mine + MAGIC_LEN, NONCE_LEN);
	r = write_all(ch, mine, sizeof(mine), err);
	if (r < 0)
		return r;
	r = fill(ch, sizeof(mine), READAHEAD, deadline, err);
	if (r < 0)
		return r;
	if (memcmp(ch->rwire + ch->rpos, magic, MAGIC_LEN) != 0)
		return ferr(err, -EPROTO, "peer on fd %d is not a ferry node (bad handshake magic)",
		            ch->fd);
	memcpy(peer_nonce, ch->rwire + ch->rpos + MAGIC_LEN, NONCE_LEN);
	ch->rpos += sizeof(mine);
	/* Our own bytes echoed back would otherwise get as far as the hello. */
	if (sodium_memcmp(peer_nonce, my_nonce, NONCE_LEN) == 0)
		return ferr(err, -EACCES, "peer on fd %d echoed our handshake", ch->fd);

	if (initiator) {
		derive(key, "ferry i2r", my_nonce, peer_nonce, k_tx);
		derive(key, "ferry r2i", my_nonce, peer_nonce, k_rx);
	} else {
		derive(key, "ferry r2i", peer_nonce, my_nonce, k_tx);
		derive(key, "ferry i2r", peer_nonce, my_nonce, k_rx);
	}
	crypto_secretstream_xchacha20poly1305_init_push(&ch->tx, header, k_tx);
	r = write_all(ch, header, sizeof(header), err);
	if (r == 0)
		r = fill(ch, HDR_LEN, READAHEAD, deadline, err);
	if (r == 0) {
		/* Never fails: a wrong key shows at the first message. */
		crypto_secretstream_xchacha20poly1305_init_pull(&ch->rx, ch->rwire + ch->rpos,
		                                                k_rx);
		ch->rpos += HDR_LEN;
	}
	sodium_memzero(k_tx, sizeof(k_tx));
	sodium_memzero(k_rx, sizeof(k_rx));
	if (r < 0)
		return r;

	r = send_msg(ch, HELLO_TYPE, peer_nonce, NONCE_LEN, my_name, strlen(my_name), err);
	if (r < 0)
		return r;
	r = recv_msg(ch, deadline, &type, &buf, &len, err);
	if (r == -EACCES)
		return ferr(err, r,
		            "peer on fd %d failed authentication (wrong cluster key or tampered "
		            "stream)",
		            ch->fd);
	if (r < 0)
		return r;
	if (type != HELLO_TYPE || len <= NONCE_LEN ||
	    !name_ok((const uint8_t *)buf + NONCE_LEN, len - NONCE_LEN))
		return ferr(err, -EPROTO, "peer on fd %d sent a malformed hello", ch->fd);
	if (sodium_memcmp(buf, my_nonce, NONCE_LEN) != 0)
		return ferr(err, -EACCES,
		            "peer on fd %d failed authentication (hello of another connection: "
		            "replayed stream)",
		            ch->fd);
	memcpy(ch->peer, (const uint8_t *)buf + NONCE_LEN, len - NONCE_LEN);
	ch->peer[len - NONCE_LEN] = '\0';
	snprintf(ch->who, sizeof(ch->who), "node %s", ch->peer);
	return 0;
}

int channel_open(int fd, const struct channel_key *key, bool initiator, const char *my_name,
                 int timeout_ms, struct channel **ret, struct ferry_error *err)
{
	struct channel *ch;
	struct stat st;
	int r;

	if (fd < 0 || !key || !my_name || !ret)
		return ferr(err, -EINVAL, "channel_open: bad arguments");
	if (!name_ok((const uint8_t *)my_name, strlen(my_name)))
		return ferr(err, -EINVAL,
		            "node name '%s': 1 to %d printable characters without spaces", my_name,
		            CHANNEL_NAME_MAX - 1);
	r = sodium_ready(err);
	if (r < 0)
		return r;
	if (fstat(fd, &st) < 0)
		return ferr(err, -errno, "channel on fd %d: %m", fd);

	ch = calloc(1, sizeof(*ch));
	if (!ch)
		return ferr(err, -ENOMEM, "channel on fd %d", fd);
	ch->fd = fd;
	ch->is_socket = S_ISSOCK(st.st_mode);
	ch->timeout_ms = MAX(timeout_ms, 0);
	snprintf(ch->who, sizeof(ch->who), "fd %d, in the handshake", fd);

	r = handshake(ch, key, initiator, my_name, deadline_of(ch->timeout_ms), err);
	if (r < 0) {
		if (r == -ETIMEDOUT)
			timeout_error(ch, ch->timeout_ms, err);
		channel_free(ch);
		return r;
	}
	*ret = ch;
	return 0;
}

void channel_free(struct channel *ch)
{
	if (!ch)
		return;
	sodium_memzero(&ch->tx, sizeof(ch->tx));
	sodium_memzero(&ch->rx, sizeof(ch->rx));
	ZSTD_freeCCtx(ch->cctx);
	ZSTD_freeDCtx(ch->dctx);
	free(ch->splain);
	free(ch->swire);
	free(ch->sjoin);
	free(ch->rwire);
	free(ch->rplain);
	free(ch->rraw);
	free(ch);
}

const char *channel_peer_name(const struct channel *ch)
{
	return ch->peer;
}

int channel_fd(const struct channel *ch)
{
	return ch->fd;
}

void channel_set_timeout(struct channel *ch, int timeout_ms)
{
	ch->timeout_ms = MAX(timeout_ms, 0);
}

void channel_set_compress(struct channel *ch, bool on)
{
	ch->compress = on;
}

int channel_send(struct channel *ch, uint8_t type, const void *buf, size_t len,
                 struct ferry_error *err)
{
	return channel_sendv(ch, type, NULL, 0, buf, len, err);
}

int channel_sendv(struct channel *ch, uint8_t type, const void *hdr, size_t hlen, const void *data,
                  size_t dlen, struct ferry_error *err)
{
	int r = send_msg(ch, type, hdr, hlen, data, dlen, err);

	if (r == 0)
		ch->cnt.payload_sent += hlen + dlen;
	return r;
}

int channel_recv(struct channel *ch, uint8_t *ret_type, const void **ret_buf, size_t *ret_len,
                 struct ferry_error *err)
{
	int r = recv_msg(ch, deadline_of(ch->timeout_ms), ret_type, ret_buf, ret_len, err);

	if (r == -ETIMEDOUT)
		return timeout_error(ch, ch->timeout_ms, err);
	if (r == 0)
		ch->cnt.payload_received += *ret_len;
	return r;
}

void channel_counters(const struct channel *ch, struct channel_counters *ret)
{
	*ret = ch->cnt;
}
