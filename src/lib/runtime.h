/* The runtime: component records in the state directory and the monitor that parents each one. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "ferry/ferry.h"

/*
 * A monitor start function runs inside the freshly forked monitor process and must create
 * the component as a child of the calling process, returning its host pid. extra (extra_len
 * bytes) travels back to the caller of monitor_launch with the result.
 */
typedef int (*monitor_start_fn)(void *arg, const char *log_path, pid_t *ret_pid, void *extra,
                                struct ferry_error *err);

#define MONITOR_EXTRA_MAX 256

/*
 * monitor_launch - fork a monitor (its own session) for component name; in it run start,
 * record the component as running and report back; then the monitor waits for the component
 * and records its exit. Returns once start has succeeded or failed. One fork, not two (each
 * costs a migration's downtime a few hundred microseconds): a monitor that started its
 * component stays the caller's child until the caller exits, as every caller (the CLI, a
 * ferryd worker) soon does, and is then adopted by init; one that failed is reaped here.
 */
int monitor_launch(const struct ferry_runtime *rt, const char *name, bool restored, uint64_t log_id,
                   bool keep_log, monitor_start_fn start, void *arg, pid_t *ret_pid,
                   void *ret_extra, size_t extra_len, struct ferry_error *err);

/*
 * monitor_here - as monitor_launch, but the calling process becomes the monitor (no fork: a
 * migration's receiver, whose downtime a fork would lengthen). It stops following its parent's
 * death (PR_SET_PDEATHSIG), must already lead its own session (before start creates the
 * component, which inherits it), and on success calls monitor_wait once done with its own work.
 */
int monitor_here(const struct ferry_runtime *rt, const char *name, bool restored, uint64_t log_id,
                 bool keep_log, monitor_start_fn start, void *arg, pid_t *ret_pid, void *ret_extra,
                 size_t extra_len, struct ferry_error *err);

/* monitor_wait - the rest of a monitor's life: wait for component pid, record its exit, exit. */
_Noreturn void monitor_wait(const struct ferry_runtime *rt, const char *name, pid_t pid);

/* runtime_paths - the component's directory, log and log-id files. */
void runtime_dir(const struct ferry_runtime *rt, const char *name, char *buf, size_t len);
void runtime_log_path(const struct ferry_runtime *rt, const char *name, char *buf, size_t len);

/* runtime_log_id - identity of the log history of name (0 if none). */
uint64_t runtime_log_id(const struct ferry_runtime *rt, const char *name);

/* runtime_is_live - the record says running and its processes exist. */
bool runtime_is_live(const struct ferry_component *c);

/* runtime_clone_ns - clone3 like fork, with namespace flags; 0 in the child, -1 on failure. */
pid_t runtime_clone_ns(uint64_t flags);

/* runtime_ns_setup - in a new pid+mount namespace: private mounts, a /proc of its own, the
 * node's services under /run/ferry (services.c). */
int runtime_ns_setup(const struct ferry_runtime *rt, struct ferry_error *err);

/* runtime_probe_set_tid - `ferry check`: chosen pids in a new pid namespace. */
int runtime_probe_set_tid(char *detail, size_t len);
