/* The network lock: a TCP connection's segments dropped while no socket holds it. */
#pragma once

#include <sys/socket.h>

#include "ferry/ferry.h"

/* One TCP connection: its two ends. */
struct netlock_conn {
	struct sockaddr_storage local, peer;
};

/* netlock_lock - drop every incoming segment of the n connections c (one nftables
 * transaction for all). */
int netlock_lock(const struct netlock_conn *c, size_t n, struct ferry_error *err);

/* netlock_unlock - let connection c's segments in again (nothing if it was not locked). */
void netlock_unlock(const struct netlock_conn *c);

/* netlock_probe - `ferry check`: nftables can be used. */
int netlock_probe(char *detail, size_t len);
