/*
 * Channels between nodes: a stream socket carrying authenticated, encrypted messages.
 *
 * Nodes of a cluster share a 32-byte key (a file of 64 hex digits). Both ends of a
 * connection prove they hold it before anything else is read: each sends a fresh random
 * nonce, both derive one key per direction from the cluster key and the two nonces (keyed
 * BLAKE2b), and each direction is a libsodium secretstream (XChaCha20-Poly1305). The first
 * message each way carries the sender's node name; a peer with another key, a replayed or a
 * tampered stream fails authentication (-EACCES) and nothing it sent is used. Messages may be
 * compressed with zstd (per message, only when that makes them smaller).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry.h"

#define CHANNEL_KEY_BYTES 32
#define CHANNEL_MSG_MAX   (4u << 20) /* largest payload of one message */
#define CHANNEL_NAME_MAX  64

struct channel_key {
	uint8_t k[CHANNEL_KEY_BYTES];
};

/* channel_key_load - read a key file (64 hex digits, optional trailing newline; mode must not
 * let group or others read it). */
int channel_key_load(const char *path, struct channel_key *ret, struct ferry_error *err);

/* channel_key_generate - write a new random key to path (created 0600, refused if it exists). */
int channel_key_generate(const char *path, struct ferry_error *err);

struct channel;

/*
 * channel_open - run the handshake on connected stream socket fd (the channel does not own
 * fd; the caller closes it after channel_free). initiator: the side that connected.
 * my_name is sent to the peer; channel_peer_name() returns the peer's. timeout_ms bounds the
 * handshake and, until changed, every later receive (0: no bound).
 * Sockets are written with MSG_NOSIGNAL (a closed peer is -EPIPE, never SIGPIPE); any other
 * kind of fd falls back to write().
 */
int channel_open(int fd, const struct channel_key *key, bool initiator, const char *my_name,
                 int timeout_ms, struct channel **ret, struct ferry_error *err);
void channel_free(struct channel *ch);

const char *channel_peer_name(const struct channel *ch);
int channel_fd(const struct channel *ch);

/* channel_set_timeout - bound on each channel_recv (ms, 0: none); -ETIMEDOUT when passed. */
void channel_set_timeout(struct channel *ch, int timeout_ms);

/*
 * channel_reserve - buffers for messages of up to payload bytes both ways, allocated and
 * faulted in now: a migration does this at its start so that its downtime, when the large
 * messages come, pays no page faults for them.
 */
int channel_reserve(struct channel *ch, size_t payload, struct ferry_error *err);

/* channel_set_compress - compress the payloads of later sends with zstd (level 1). */
void channel_set_compress(struct channel *ch, bool on);

/*
 * channel_send - one message: a type byte chosen by the caller and len <= CHANNEL_MSG_MAX bytes.
 * channel_sendv - the same with the payload in two parts (a header and data), sent as one.
 */
int channel_send(struct channel *ch, uint8_t type, const void *buf, size_t len,
                 struct ferry_error *err);
int channel_sendv(struct channel *ch, uint8_t type, const void *hdr, size_t hlen, const void *data,
                  size_t dlen, struct ferry_error *err);

/*
 * channel_recv - the next message. *ret_buf points into the channel's own buffer, valid until
 * the next channel_recv or channel_free. -EPIPE when the peer closed the connection cleanly
 * or not, -EACCES if a message fails authentication, -ETIMEDOUT.
 * After -ETIMEDOUT the channel stays usable (a partly received message is kept and completed
 * by the next call); after any other error of a send or receive, later calls fail.
 */
int channel_recv(struct channel *ch, uint8_t *ret_type, const void **ret_buf, size_t *ret_len,
                 struct ferry_error *err);

/* Bytes that went over the socket (after compression and encryption, handshake included) and
 * payload bytes of the caller's messages (before compression). */
struct channel_counters {
	uint64_t wire_sent, wire_received;
	uint64_t payload_sent, payload_received;
};
void channel_counters(const struct channel *ch, struct channel_counters *ret);
