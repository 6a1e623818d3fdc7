/* The network lock: a TCP connection's segments dropped while no socket holds it. */
#pragma once

#include <stdbool.h>
#include <sys/socket.h>

#include "ferry/ferry.h"

/*
 * netlock_set - lock (drop every incoming segment of) the TCP connection local <-> peer, or
 * unlock it (no error if it was not locked).
 */
int netlock_set(const struct sockaddr_storage *local, const struct sockaddr_storage *peer,
                bool lock, struct ferry_error *err);

/* netlock_probe - `ferry check`: nftables can be used. */
int netlock_probe(char *detail, size_t len);
