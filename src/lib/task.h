/* Process-wide state: exe, cwd, umask, rlimits, mm fields, signal dispositions, pending signals. */
#pragma once

#include "model.h"
#include "restore.h"
#include "tracee.h"

/* task_capture - fill p (host_pid set, all threads seized; main is the seized main thread). */
int task_capture(struct tracee *main, struct process *p, struct ferry_error *err);

/* task_restore_early - in the helper itself, before it is seized: dispositions, umask, cwd. */
int task_restore_early(const struct process *p, struct ferry_error *err);

/* task_restore_mm - PR_SET_MM_MAP (code/data/brk/stack/args/env bounds, auxv, exe), queued in b
 * (a batch of the main thread); its arguments are in the first scratch page. */
struct rs_batch;
int task_restore_mm(struct restorer *rs, const struct process *p, struct rs_batch *b,
                    struct ferry_error *err);

/* task_restore_late - pending signals (injected) and rlimits (prlimit), just before resuming. */
int task_restore_late(struct restorer *rs, const struct process *p, struct ferry_error *err);

/* task_restore_creds - uids, gids, groups, capabilities, no_new_privs (injected), after
 * everything else that needs the helper's privileges and before its scratch pages go. */
int task_restore_creds(struct restorer *rs, const struct process *p, struct ferry_error *err);

/* task_file_identity - stat path into id; 0 or -errno. */
int task_file_identity(const char *path, struct file_id *id);

/* task_check_file - -ESTALE with a message if path no longer matches id. */
int task_check_file(const char *what, const char *path, const struct file_id *id,
                    struct ferry_error *err);

/* task_capture_thread_pending - signals pending for one thread (not the process queue). */
int task_capture_thread_pending(struct process *p, pid_t host_tid, int32_t tid,
                                struct ferry_error *err);

/* task_probe_ptimer_ids - `ferry check`: POSIX timers can be created with a given id
 * (PR_TIMER_CREATE_RESTORE_IDS); detail may be NULL. */
int task_probe_ptimer_ids(char *detail, size_t len);

/* task_probe_mm_map - `ferry check`: PR_SET_MM_MAP is there. */
int task_probe_mm_map(char *detail, size_t len);
