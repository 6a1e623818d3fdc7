/* Readers of /proc/PID: mappings with their flags, stat fields, status lines. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

/* One line of /proc/PID/smaps with its VmFlags. */
struct proc_map {
	uint64_t start, end, pgoff;
	uint32_t dev_major, dev_minor;
	uint64_t ino;
	char perms[5];
	char vmflags[128];
	char path[4096]; /* "" for anonymous; "[heap]", "[vdso]" etc. for specials */
};

/* procfs_maps - all mappings of pid from smaps; *ret malloc'd. 0 or -errno. */
int procfs_maps(pid_t pid, struct proc_map **ret, size_t *ret_n);
/* procfs_maps_noflags - the same from /proc/PID/maps, without VmFlags: several times cheaper
 * (smaps walks the page tables of every mapping). */
int procfs_maps_noflags(pid_t pid, struct proc_map **ret, size_t *ret_n);

/*
 * procfs_maps_refresh - the mappings of pid now, from /proc/PID/maps (cheap: smaps walks every
 * page table to count pages, tens of milliseconds for a GiB), with the VmFlags of old (an
 * earlier procfs_maps). If any mapping differs from old, smaps is read again instead.
 */
int procfs_maps_refresh(pid_t pid, const struct proc_map *old, size_t nold, struct proc_map **ret,
                        size_t *ret_n);

/* procfs_stat - fields of /proc/PID/stat, 1-based as in proc(5); fields[0] unused. */
#define PROCFS_STAT_FIELDS 53
int procfs_stat(pid_t pid, uint64_t fields[PROCFS_STAT_FIELDS]);

/*
 * procfs_maps_refresh - the mappings of pid now, from /proc/PID/maps (cheap: smaps walks every
 * page table to count pages, tens of milliseconds for a GiB), with the VmFlags of old (an
 * earlier procfs_maps). If any mapping differs from old, smaps is read again instead.
 */
int procfs_maps_refresh(pid_t pid, const struct proc_map *old, size_t nold, struct proc_map **ret,
                        size_t *ret_n);

/* procfs_status_u64 - the number after "Key:" in /proc/PID/status (base 10, or 16 with hex). */
int procfs_status_u64(pid_t pid, const char *key, int base, uint64_t *ret);

/* procfs_tids - thread ids of pid (host view); *ret malloc'd. */
int procfs_tids(pid_t pid, pid_t **ret, size_t *ret_n);

/* procfs_ns_pid - the pid of host pid as seen in its innermost pid namespace (NSpid). */
int procfs_ns_tid(pid_t pid, pid_t tid, pid_t *ret);

/*
 * procfs_ns_ids - pid, process group and session of host pid as seen in its innermost pid
 * namespace (0: outside it), and its state letter (R, S, Z, ...).
 */
int procfs_ns_ids(pid_t pid, pid_t *ret_pid, pid_t *ret_pgid, pid_t *ret_sid, char *ret_state);

/* procfs_children - the child processes of pid (every thread's), host pids; *ret malloc'd. */
int procfs_children(pid_t pid, pid_t **ret, size_t *ret_n);

/* procfs_vmflag - 1 if the two-letter VmFlags code is present. */
int procfs_vmflag(const struct proc_map *m, const char *code);
