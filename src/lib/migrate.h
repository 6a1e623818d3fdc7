/* Live migration between nodes: the protocol's two sides and the settling of a hand-over. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "ferry/ferry.h"

/* Message types on a channel between nodes. */
enum mig_msg {
	MSG_OFFER = 1,      /* source: id, name, mode, source node and address */
	MSG_ACCEPT = 2,     /* destination: go on */
	MSG_REFUSE = 3,     /* destination: why not (text) */
	MSG_FILES = 4,      /* source: path, type, size and XXH3 of each file the component uses */
	MSG_FILES_OK = 5,   /* destination: all the same here */
	MSG_FILES_DIFF = 6, /* destination: the differences, a line each */
	MSG_CARRY = 7,      /* source: a file follows (path, mode, owner, mtime, size) */
	MSG_DATA = 8,       /* a piece of the file being sent: 8-byte offset, then data */
	MSG_END = 9,        /* end of that file */
	MSG_IMG_BEGIN = 10, /* source: a file of image link k follows */
	MSG_IMG_LINK = 11,  /* source: a file of link k is the same as one of an earlier link */
	MSG_LINK_DONE = 12, /* source: link k is complete */
	MSG_LINK_ACK = 13,  /* destination: link k stored */
	MSG_LOG = 14,       /* source: the component's log from an offset follows */
	MSG_PREPARE = 15,   /* source (component frozen): restore link k, hold it stopped */
	MSG_READY = 16,     /* destination: restored and verified, held stopped */
	MSG_FAIL = 17,      /* destination: the restore failed (text) */
	MSG_GO = 18,        /* source: the component is ended here; let it run */
	MSG_ABORT = 19,     /* source: the migration is off; end the held copy */
	MSG_DONE = 20,      /* destination: it runs */
	MSG_OUTCOME = 21,   /* destination, after losing the source: how did migration id end? */
	MSG_ANSWER = 22,    /* source: handed-over, aborted or pending */
	MSG_REQ = 24,       /* destination, post-copy: 8-byte offset and length wanted now */
	MSG_PAGES = 25,     /* source, post-copy: 8-byte offset in the pages file, then data */
	MSG_PAGES_END = 26, /* source: every deferred page was sent */
	MSG_PAGES_ACK = 27, /* destination: every deferred page is here */
};

/* migrate_accept - the destination's side of a migration whose offer (text) was received. */
int migrate_accept(const struct ferry_node *n, struct channel *ch, int fd, const char *offer,
                   size_t len, struct ferry_error *err);

/* migrate_answer - answer MSG_OUTCOME (text holds id=) from a destination in doubt. */
int migrate_answer(const struct ferry_node *n, struct channel *ch, const char *q, size_t len,
                   struct ferry_error *err);

/* migrate_recover - settle every migration of this node whose worker is gone. */
int migrate_recover(const struct ferry_node *n, struct ferry_error *err);

/* kv_get - value of `key` in "key=value\n" text, copied into out; 0 or -ENOENT. */
int kv_get(const char *buf, size_t len, const char *key, char *out, size_t outlen);

/* node_connect - TCP connection to HOST:PORT within timeout_ms. */
int node_connect(const char *addr, int timeout_ms, struct ferry_error *err);
