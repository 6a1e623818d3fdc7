/* Live migration between nodes: the protocol's two sides and the settling of a hand-over. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

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
	MSG_ZERO = 28,      /* source, post-copy: 8-byte offset and length of pages found empty */
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

/* ---- shared by migrate.c (the source), accept.c (the destination) and filecheck.c ---- */

struct component;

#define MIG_CHUNK     (1u << 20) /* file data and pages per message */
#define MIG_FILE_LINE 4200       /* a line of the file check: path, size, hash */

/* kv_u64 - kv_get's value as a number (0 if missing). */
uint64_t kv_u64(const char *buf, size_t len, const char *key);
/* test_point - the test hooks FERRY_TEST_MIGRATE_KILL / _CUT at a named point of the protocol. */
void test_point(struct channel *ch, const char *point);
/* plain_name - a file name inside an image directory: no path, no dot files. */
bool plain_name(const char *s);
/* recv_expect - the next message, which must be of type want (a refusal becomes the error). */
int recv_expect(struct channel *ch, uint8_t want, const void **buf, size_t *len,
                struct ferry_error *err);
/* remove_tree - rm -r of plain files and one level of directories of them. */
void remove_tree(const char *path);
/* mig_dir - STATE/migrations of node n. */
void mig_dir(const struct ferry_node *n, char *buf, size_t len);
/* get_le64 / put_le64 - the protocol's 8-byte little-endian numbers. */
uint64_t get_le64(const uint8_t *p);
void put_le64(uint8_t *p, uint64_t v);

/* add_path / free_paths - a growing list of paths. */
int add_path(char ***v, size_t *n, const char *p);
void free_paths(char **paths, size_t n);
/* image_model - the model of image dir. */
int image_model(const char *dir, struct component **ret, struct ferry_error *err);
/* model_paths - the files component c uses: executable, mapped files, open files. */
int model_paths(const struct component *c, char ***paths, size_t *np, struct ferry_error *err);
/* proc_paths - the same read from /proc while it runs, its log (log_path) left out. */
int proc_paths(const struct ferry_runtime *rt, pid_t pid, const char *log_path, char ***paths,
               size_t *np);
/* files_list - the MSG_FILES text: "path\tsize\thash\n" per file. */
int files_list(char **paths, size_t np, char **ret, size_t *ret_len, struct ferry_error *err);
/* files_compare - the destination: the lines of list that differ here; *ret NULL if none. */
int files_compare(const char *list, size_t len, const struct ferry_service *sv, size_t nsv,
                  char **ret, size_t *ret_len);

/* node_connect - TCP connection to HOST:PORT within timeout_ms. */
int node_connect(const char *addr, int timeout_ms, struct ferry_error *err);
