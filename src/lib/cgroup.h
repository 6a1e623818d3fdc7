/*
 * Control groups (v2) of components: a component being migrated is moved into a group of its
 * own so that it can be frozen in a way that outlasts ferry. A component frozen by ptrace runs
 * on when its tracer dies; one frozen by its group's cgroup.freeze stays frozen until someone
 * thaws or kills the group. The hand-over of a migration relies on that.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "ferry/ferry.h"

/* cgroup_root - where cgroup v2 is mounted (with cgroup.freeze in child groups); -ENOENT if not. */
int cgroup_root(char *buf, size_t len);

/* cgroup_adopt - create group `name` under the v2 root and move process pid into it. */
int cgroup_adopt(const char *name, pid_t pid, char *ret_path, size_t len, struct ferry_error *err);

/* cgroup_freeze - write cgroup.freeze (1 or 0) of the group at path. */
int cgroup_freeze(const char *path, bool frozen, struct ferry_error *err);

/* cgroup_populated - whether any process is in the group (cgroup.events), -errno if gone. */
int cgroup_populated(const char *path);

/* cgroup_kill - SIGKILL every process of the group (cgroup.kill) and wait until it is empty. */
int cgroup_kill(const char *path, struct ferry_error *err);

/* cgroup_release - move every process of the group back to the root group, remove it. */
int cgroup_release(const char *path);

/* cgroup_remove - remove the (empty) group; 0 if it is already gone. */
int cgroup_remove(const char *path);

/* cgroup_probe - `ferry check`: a group can be made and frozen (migration needs it). */
int cgroup_probe(char *detail, size_t len);
