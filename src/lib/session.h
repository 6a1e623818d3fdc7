/* Sessions to node services (fd-session.c) and the monitor's relays of re-created ones
 * (relay.c). */
#pragma once

#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "fd-unix.h"
#include "model.h"

/* A session's e->extra: the Unix socket layout (UX_*: type, buffers, the component's unread
 * bytes in the pages file), then the session's own numbers. */
enum {
	SS_KIND = UX_N,     /* enum ferry_service_kind: unix, tcp or rom */
	SS_ID,              /* the session's identity, the same in every incarnation */
	SS_SEQ,             /* how many times it was re-created before this capture */
	SS_OUTQ,            /* bytes the component wrote that its service had not read */
	SS_MIN,             /* a record has at least the above (images before TCP sessions) */
	SS_TCPOPT = SS_MIN, /* a TCP session's options: SS_NODELAY, SS_KEEPALIVE */
	SS_N
};
#define SS_NODELAY   (1u << 0)
#define SS_KEEPALIVE (1u << 1)

/* What a running component's monitor knows of its re-created sessions (STATE/NAME/sessions):
 * the socket at the fd, and the session it continues. */
struct session_reg {
	uint64_t ino, id, seq;
};

/* session_load - the node's services and the session registry of component name, into c (for
 * capture). */
int session_load(struct component *c, const struct ferry_runtime *rt, const char *name,
                 struct ferry_error *err);

/* session_register - write the registry of component name: the lines it had except old_ino's
 * (old_ino 0: none kept), and g[0..n). */
int session_register(const struct ferry_runtime *rt, const char *name, uint64_t old_ino,
                     const struct session_reg *g, size_t n);

/* What a restore helper hands the monitor with the two fds of a relay (SCM_RIGHTS: the other
 * end of the component's pair, the connection to the service). */
struct relay_hello {
	int32_t fd;   /* the component's fd */
	int32_t type; /* SOCK_STREAM or SOCK_SEQPACKET */
	uint64_t id, seq;
	char service[64];
};

/* relay_address - the abstract address the monitor (pid) takes relays at; its length. */
socklen_t relay_address(pid_t monitor, struct sockaddr_un *sa);

/*
 * relay_start - in a monitor whose restore re-creates sessions with bytes to deliver: listen
 * at relay_address(getpid()) and serve each relay a helper hands over, in a thread of its own:
 * the component's writes go on to the service; once it has read what was delivered, the
 * service's connection is put at its fd (ptrace: all threads stopped, the one message with the
 * connection received by an injected recvmsg, dup3 over the pair's end, epoll interest
 * registered again) and the registry updated. *ret_seal: closing it says no more relays will come
 * (the listener goes); the thread ends when the last relay is done.
 */
int relay_start(const struct ferry_runtime *rt, const char *name, int *ret_seal,
                struct ferry_error *err);

/* relay_needed - does restoring c re-create a session with bytes to deliver (all: any unix
 * session, a migration's: bytes may come late)? */
bool relay_needed(const struct component *c, bool all);

/*
 * session_late - at a migration's source, once it is decided (the component never runs here
 * again): each unix session's receive side is shut (its service's later sends fail: they were
 * not delivered); each TCP session takes no more segments (a socket filter drops them: not
 * acknowledged, not delivered) and is reset once read; the bytes that came after the capture,
 * beyond what the image holds, are returned as records ([8] id, [4] length, bytes) in *buf
 * (malloc'd; *len 0: none).
 */
int session_late(const struct component *c, uint8_t **buf, size_t *len, struct ferry_error *err);

/* session_late_deliver - at the destination, the component still held: each record's bytes
 * queued behind what its session delivers first (its relay's end of the pair). */
int session_late_deliver(const struct ferry_runtime *rt, const char *name, const void *buf,
                         size_t len, struct ferry_error *err);
