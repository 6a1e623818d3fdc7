/* The node's services as a component sees them (services.c). */
#pragma once

#include "ferry/ferry.h"

/*
 * Where a component finds the services of the node it runs on, the same on every node:
 * SERVICES_DIR/services/NAME (a Unix socket service: a link to the node's socket),
 * SERVICES_DIR/rom/NAME (a ROM: the node's file, bound read-only), SERVICES_DIR/resume/NAME
 * (present when service NAME speaks the session-resume protocol).
 */
#define SERVICES_DIR "/run/ferry"

/*
 * services_mount - in a component's new mount namespace (private mounts): a tmpfs on
 * SERVICES_DIR holding the node's services (rt's STATE/.services), made read-only. A node
 * without services and without /run/ferry gets none.
 */
int services_mount(const struct ferry_runtime *rt, struct ferry_error *err);
