/* The node's services as a component sees them (services.c). */
#pragma once

#include <stdbool.h>

#include "ferry/ferry.h"

/*
 * Where a component finds the services of the node it runs on, the same on every node:
 * SERVICES_DIR/services/NAME (a Unix socket service: a link to the node's socket),
 * SERVICES_DIR/rom/NAME (a ROM: the node's file, bound read-only), SERVICES_DIR/resume/NAME
 * (present when service NAME speaks the session-resume protocol).
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
