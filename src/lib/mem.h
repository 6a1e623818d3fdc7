/* Memory: capture of every mapping and its pages, and their re-creation in a restored process. */
#pragma once

#include "model.h"
#include "procfs.h"
#include "restore.h"

struct mem_stats {
	uint64_t pages_scanned;
	uint64_t pages_written;
	uint64_t pages_shared;     /* pages of a forked process stored once, with its parent's */
	uint64_t pages_shared_own; /* of them, those in the image's own pages file */
	uint64_t write_ns;
};

struct track;
struct chain;

/* Page data copied into memory while the component is frozen, written after the thaw. */
struct mem_stage {
	uint8_t *buf;
	uint64_t cap;
	uint64_t used;
	struct page_run **runs; /* the run of each staged piece, in buffer order */
	size_t nruns;
	uint64_t *zero; /* pages found zero by the last flush (range pairs, in address order) */
	size_t nzero;
};

/* mem_stage_prepare - have a faulted-in buffer of at least bytes (call before the freeze). */
int mem_stage_prepare(struct mem_stage *sg, uint64_t bytes, struct ferry_error *err);
/* mem_stage_flush - checksum the staged pages and write them into w's own pages file. */
int mem_stage_flush(struct mem_stage *sg, struct image_writer *w, struct mem_stats *st,
                    struct ferry_error *err);

/*
 * mem_finish_runs - after the flush, outside the freeze: complete the runs of mappings an
 * incremental capture marked from_parent with the parent's runs for every page not written
 * since it; drop the zero pages the flush found from anonymous mappings' runs (an incremental
 * capture copies written ranges without looking which hold pages; an empty page reads as zeros).
 */
int mem_finish_runs(struct mem_stage *sg, struct process *p, const struct chain *parent,
                    struct mem_stats *st, struct ferry_error *err);
void mem_stage_free(struct mem_stage *sg);

/* Dirty tracking, parent and staging for mem_capture; NULL members: not used. */
struct mem_track {
	struct track *tk;            /* register mappings, collect (and re-protect) written pages */
	struct chain *parent;        /* incremental: pages not written come from this image */
	struct mem_stage *stage;     /* copy page data into memory instead of writing it now */
	const struct proc_map *seen; /* the mappings as the last round before the freeze saw them */
	size_t nseen;
	char why[256];   /* out: why tracking could not start (tk then set to NULL) */
	bool defer_anon; /* room for the pages of anonymous mappings, but no copy (post-copy) */
};

/*
 * mem_capture - classify every mapping of p (maps: its /proc smaps, read by the caller) (host pid
 * p->host_pid, frozen) into p->vmas and c->shmems, and write the page data that the files do not
 * hold into w. Refuses mappings it cannot restore (a device mapping, say) with the address range
 * and reason. With mt->tk every private mapping is (or stays) registered for tracking and its
 * written pages are protected again; with mt->parent too, an incremental capture: page runs
 * of pages not written since the parent name the parent's files (CHAIN_PARENT, see chain.h).
 */
int mem_capture(struct component *c, struct process *p, const struct proc_map *maps, size_t nmaps,
                struct image_writer *w, struct mem_stats *st, struct mem_track *mt,
                struct ferry_error *err);

/*
 * mem_scan_anon - the pages of [start, end), part of a private anonymous mapping of the process
 * whose pagemap_fd is given, that hold data (present or swapped out), appended to *ranges as
 * pairs. *marker: -2 at first (the swap type of write-protection markers, measured on need).
 */
int mem_scan_anon(int pagemap_fd, uint64_t start, uint64_t end, int *marker, uint64_t **ranges,
                  size_t *n, struct ferry_error *err);

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

/* mem_free_range - the lowest address where len bytes are free in p's layout, or 0. */
uint64_t mem_free_range(const struct process *p, uint64_t len);

/*
 * mem_restore_lazy - mem_restore, but the private anonymous mappings are registered with lz
 * (lazy.h) instead of filled: their pages come on first touch and in the background once the
 * component runs. lz NULL: mem_restore.
 */
struct lazy;
int mem_restore_lazy(struct restorer *rs, const struct component *c, const struct process *p,
                     const struct proc_map *cur, size_t ncur, struct lazy *lz,
                     struct ferry_error *err);

/*
 * mem_precopy - one round of a live checkpoint, while the component (host pid pid) runs:
 * register new private mappings for tracking, collect the pages written since the last round
 * (first: every page that holds data) protecting them again, and copy them into w's own pages
 * file. *pre: the runs copied so far (sorted, disjoint; a newer copy replaces an older one).
 * *ret_bytes: bytes copied in this round. Pages this round misses are found by the final,
 * frozen capture: as written, or as data with no run in *pre. *io_maps (*io_nmaps): the
 * mappings with their VmFlags, read from smaps when NULL, else refreshed from /proc/PID/maps;
 * left as they are after this round's registrations (the caller owns and frees them).
 * *through (*nthrough pairs, in order within a round): the pages that hold data in mappings
 * tracked since the last capture, where a page this round did not copy is as that capture
 * has it; every other page with no run is empty (a mapping registered only now is copied
 * whole).
 */
/* What a round of mem_precopy does. */
enum mem_round {
	MEM_ROUND_ALL = 0,     /* copy every page that holds data (first round of a live one) */
	MEM_ROUND_WRITTEN = 1, /* copy the pages written since the last collect */
	MEM_ROUND_SCAN = 2,    /* copy nothing: only note where tracked mappings hold data */
};
int mem_precopy(pid_t pid, struct track *tk, struct image_writer *w, enum mem_round mode,
                struct proc_map **io_maps, size_t *io_nmaps, struct page_run **pre, size_t *npre,
                uint64_t **through, size_t *nthrough, uint64_t *ret_bytes, struct ferry_error *err);

/*
 * mem_verify_pages - check every checksummed block the page runs use against the image's pages
 * files (fds, nfds of them; each block once), from any thread.
 */
int mem_verify_pages(const struct component *c, const int *fds, uint32_t nfds,
                     struct ferry_error *err);

/* Kernel probes for `ferry check`: 1 if the feature works; detail says what was seen. */
int mem_probe_pagemap_scan(char *detail, size_t len);
int mem_probe_vdso_mremap(char *detail, size_t len);
int mem_probe_vm_readv(char *detail, size_t len);
