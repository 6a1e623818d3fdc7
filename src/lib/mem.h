/* Memory: capture of every mapping and its pages, and their re-creation in a restored process. */
#pragma once

#include "model.h"
#include "procfs.h"
#include "restore.h"

struct mem_stats {
	uint64_t pages_scanned;
	uint64_t pages_written;
	uint64_t write_ns;
};

/*
 * mem_capture - classify every mapping of p (maps: its /proc smaps, read by the caller) (host pid
 * p->host_pid, frozen) into p->vmas and c->shmems, and write the page data that the files do not
 * hold into w. Refuses mappings it cannot restore (a device mapping, say) with the address range
 * and reason.
 */
int mem_capture(struct component *c, struct process *p, const struct proc_map *maps, size_t nmaps,
                struct image_writer *w, struct mem_stats *st, struct ferry_error *err);

/*
 * shmem_lookup - the index of the shmem object behind fd (a memfd or shared-anon file) in
 * c->shmems, adding it (with its data written to w) when new. Used by mappings and fds alike.
 */
int shmem_lookup(struct component *c, int fd, uint32_t kind, const char *name,
                 struct image_writer *w, struct mem_stats *st, struct ferry_error *err);

/*
 * mem_restore - in the stopped restore helper rs (cur: its current mappings): remove its own
 * mappings, move the vdso to where the image had it, map and fill every mapping of p, then apply
 * final protections.
 */
int mem_restore(struct restorer *rs, const struct component *c, const struct process *p,
                const struct proc_map *cur, size_t ncur, struct ferry_error *err);

/* mem_verify_pages - check every page run's checksum against the pages file (any thread). */
int mem_verify_pages(const struct component *c, int pages_fd, struct ferry_error *err);

/* Kernel probes for `ferry check`: 1 if the feature works; detail says what was seen. */
int mem_probe_pagemap_scan(char *detail, size_t len);
int mem_probe_vdso_mremap(char *detail, size_t len);
int mem_probe_vm_readv(char *detail, size_t len);
