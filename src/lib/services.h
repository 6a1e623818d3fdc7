/* The node's services as a component sees them (services.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "ferry/ferry.h"

/*
 * Where a component finds the services of the node it runs on, the same on every node:
 * SERVICES_DIR/services/NAME (a Unix socket service: a link to the node's socket),
 * SERVICES_DIR/rom/NAME (a ROM: the node's file, bound read-only), SERVICES_DIR/resume/NAME
 * (present when service NAME speaks the session-resume protocol). A TCP service is reached at
 * its own HOST:PORT; SERVICES_DIR/services/NAME is then a link that reads "tcp:HOST:PORT" (it
 * leads nowhere: a program that looks a service up by name reads it).
 */
#define SERVICES_DIR "/run/ferry"

/*
 * services_mount - in a component's new mount namespace (private mounts): a tmpfs on each of
 * SERVICES_DIR/services, /rom and /resume holding the node's services (rt's STATE/.services),
 * made read-only. SERVICES_DIR itself is left alone: it may be the node's state directory. A
 * node without services that cannot make them gets none.
 */
int services_mount(const struct ferry_runtime *rt, struct ferry_error *err);

/* services_reserved - "services", "rom", "resume": not a component's name (with the default
 * state directory, /run/ferry, its directory would be under a mount of services_mount). */
bool services_reserved(const char *name);

struct svc_addr;

/* services_tcp_addrs - every address the TCP services of sv[0..n) resolve to (*ret malloc'd;
 * a service that does not resolve has none). */
int services_tcp_addrs(const struct ferry_service *sv, size_t n, struct svc_addr **ret,
                       size_t *nret);

/* services_tcp_peer - the index in sv of the TCP service a connection's peer address is one of
 * (an IPv4 address mapped into IPv6 counts as the IPv4 one); -1: none. */
int services_tcp_peer(const struct svc_addr *a, size_t na, const struct sockaddr *peer,
                      socklen_t len);
