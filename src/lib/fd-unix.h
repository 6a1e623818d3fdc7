/* The Unix socket kind's record (fd-unix.c) and its queues (fd-unix-queue.c), shared by the
 * two. */
#pragma once

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "fds.h"

/*
 * e->extra: identity, peer's identity (0: none), type, state, flags, listen backlog, send and
 * receive buffers of this end and of its peer, where the queued messages of both ends are in
 * the pages file (with the first end of a pair only), the peer as pid << 32 | fd (for
 * describe), this end's address, and the address a datagram socket is connected to outside.
 */
enum {
	UX_INO,
	UX_PEER,
	UX_TYPE,
	UX_STATE,
	UX_FLAGS,
	UX_BACKLOG,
	UX_SNDBUF,
	UX_RCVBUF,
	UX_PSNDBUF,
	UX_PRCVBUF,
	UX_OFF,
	UX_LEN,
	UX_CSUM,
	UX_QBYTES, /* bytes queued in this end, in its peer */
	UX_PQBYTES,
	UX_WHERE,
	UX_ALEN,
	UX_ADDR,
	UX_RALEN = UX_ADDR + 14,
	UX_RADDR,
	UX_N = UX_RADDR + 14
};
#define UX_LISTEN   (1u << 0)
#define UX_PAIR     (1u << 1) /* both ends in the component */
#define UX_FIRST    (1u << 2) /* the end that carries the pair's queues */
#define UX_REMOTE   (1u << 3) /* datagram, connected to a named socket outside */
#define UX_PASSCRED (1u << 4)
#define UX_SHUT_RD  (1u << 5)
#define UX_SHUT_WR  (1u << 6)
#define UX_RIGHTS   (1u << 7) /* its queues hold files in flight (SCM_RIGHTS) */
/* a client whose connection to a listener of the component waits to be accepted: UX_PEER is
 * the listener, UX_WHERE its place in the listener's queue, UX_RADDR the listener's address */
#define UX_PENDING (1u << 8)
#define MAX_QUEUE  (16u << 20)

/*
 * ux_save_queues - the messages queued in s (and in its peer, when peer >= 0: a pair), peeked
 * without consuming them, into the pages file (v: UX_OFF, UX_LEN, UX_CSUM, UX_QBYTES,
 * UX_PQBYTES; UX_RIGHTS when files in flight come with them: they become the component's
 * files in flight). fd is the component's number of s, what names it.
 */
int ux_save_queues(struct fd_capture_ctx *ctx, uint64_t *v, int fd, int s, int peer, int type,
                   const char *what, struct ferry_error *err);

/* ux_fill_pair - the queues of the pair s0 (its first end) and s1 put back, each sent by the
 * other end, with their files in flight; then both ends' buffer sizes. */
int ux_fill_pair(const uint64_t *v, int s0, int s1, struct fd_restore_ctx *ctx,
                 struct ferry_error *err);

/* ux_fill_alone - the messages queued in a datagram socket alone (bound at sa), sent to it
 * again from a socket of ours (their senders' addresses are not kept). */
int ux_fill_alone(int s, const uint64_t *v, const struct sockaddr_un *sa, socklen_t sl,
                  struct fd_restore_ctx *ctx, struct ferry_error *err);

/* fd_unix_queued - the bytes queued in the Unix socket with inode ino, not read yet. */
int fd_unix_queued(uint32_t ino, uint32_t *bytes);

/* fd_unix_shutdown - the shutdown bits of the Unix socket with inode ino (1: no more to
 * receive, 2: no more to send), or -errno. */
int fd_unix_shutdown(uint32_t ino);

/* fd_unix_peer - the inode of the peer of the Unix socket with inode ino (sock_diag). */
int fd_unix_peer(uint32_t ino, uint32_t *peer);

/* ux_set_bufs - SO_SNDBUF and SO_RCVBUF as they were reported (0: left); 0 or -errno. */
int ux_set_bufs(int s, uint64_t snd, uint64_t rcv);

/* ux_big_bufs - room for the queues while they are filled. */
void ux_big_bufs(int s);
