/* Dirty-page tracking of a running component: userfaultfd write-protection in asynchronous mode
 * and the PAGEMAP_SCAN ioctl (Linux 6.7), the way to incremental checkpoints without soft-dirty. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <linux/userfaultfd.h>

#include "ferry/ferry.h"
#include "tracee.h"

/* Linux 6.4 and 6.7 features; Debian 12's headers predate them. */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

/* PAGEMAP_SCAN (Linux 6.7); Debian 12's headers predate it. */
#ifndef PAGEMAP_SCAN
struct page_region {
	uint64_t start;
	uint64_t end;
	uint64_t categories;
};
struct pm_scan_arg {
	uint64_t size;
	uint64_t flags;
	uint64_t start;
	uint64_t end;
	uint64_t walk_end;
	uint64_t vec;
	uint64_t vec_len;
	uint64_t max_pages;
	uint64_t category_inverted;
	uint64_t category_mask;
	uint64_t category_anyof_mask;
	uint64_t return_mask;
};
#define PAGEMAP_SCAN          _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING   (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WPALLOWED     (1 << 0)
#define PAGE_IS_WRITTEN       (1 << 1)
#define PAGE_IS_FILE          (1 << 2)
#define PAGE_IS_PRESENT       (1 << 3)
#define PAGE_IS_SWAPPED       (1 << 4)
#define PAGE_IS_PFNZERO       (1 << 5)
#endif

/*
 * The tracking of one component. Its userfaultfd was created inside the component (the context
 * belongs to the component's mm) and copied out; the component keeps no fd of it. Between
 * checkpoints a small holder process ("ferry-track") keeps a copy open, because tracking ends
 * when the last fd of the context is closed; its pid and fd number are in the component's
 * state directory (file `track`), with the capture that last re-protected every page.
 */
struct track {
	int uffd;      /* our copy, -EBADF when not tracking */
	int pagemap;   /* /proc/PID/pagemap of the component */
	uint64_t id;   /* identity of this tracking: the userfaultfd's inode number */
	uint64_t last; /* capture_id of the last capture that re-protected everything (0: none) */
	pid_t holder;  /* host pid of the process keeping the userfaultfd, 0 if none yet */
	int holder_fd; /* its fd number there */
	bool fresh;    /* started by this checkpoint (every page counts as written) */
};

#define TRACK_INIT                                                                                 \
	{                                                                                          \
		.uffd = -EBADF, .pagemap = -EBADF                                                  \
	}

/*
 * track_attach - find the running tracking of component NAME (host pid pid) through its holder.
 * Returns 0 with tk->uffd open, or -errno with why (a sentence) filled in when there is none:
 * first checkpoint of this incarnation, holder gone, ...
 */
int track_attach(const struct ferry_runtime *rt, const char *name, pid_t pid, struct track *tk,
                 char *why, size_t whylen);

/*
 * track_start - in the frozen component (main: its seized main thread, syscall_ip set), create
 * a userfaultfd with write-protect in asynchronous mode (WP_ASYNC, WP_UNPOPULATED), copy it out
 * and close it in the component. Mappings are registered one by one with track_register.
 */
int track_start(struct tracee *main, pid_t pid, struct track *tk, struct ferry_error *err);

/*
 * track_inject_uffd - in the frozen component (main: its seized main thread, syscall_ip set),
 * create a userfaultfd (userfaultfd(2) flags besides O_CLOEXEC | O_NONBLOCK), copy it into
 * *ret_fd, close it there, and enable the API with features (all of them, or -ENOTSUP).
 * The fd belongs to the component's mm: only such a one can register its mappings.
 */
int track_inject_uffd(struct tracee *main, pid_t pid, long flags, uint64_t features, int *ret_fd,
                      struct ferry_error *err);

/* track_uffd_api - UFFDIO_API on fd with features: 0, -ENOTSUP (some missing) or -errno. */
int track_uffd_api(int fd, uint64_t features);

/* track_open_pagemap - open /proc/PID/pagemap into tk->pagemap (once). */
int track_open_pagemap(struct track *tk, pid_t pid, struct ferry_error *err);

/* track_register - register [start, end) for write-protection; 0 or -errno (not trackable). */
int track_register(const struct track *tk, uint64_t start, uint64_t end);

/*
 * track_collect - the pages of [start, end) (a registered mapping) written since they were last
 * protected, as page-aligned [start, end) pairs appended to *ranges (2 * *n entries), and
 * protect them again in the same atomic step (PM_SCAN_WP_MATCHING). ranges may be NULL to
 * only re-protect. Call only while the component is frozen.
 */
int track_collect(const struct track *tk, uint64_t start, uint64_t end, uint64_t **ranges,
                  size_t *n, struct ferry_error *err);

/*
 * track_estimate - bytes of private pages that hold data written since they were protected (or
 * never protected), over the whole address space, without protecting anything. Cheap (no freeze
 * needed); used to prepare buffers before the freeze. 0 when unknown.
 */
uint64_t track_estimate(const struct track *tk);

/*
 * track_keep - make the tracking outlive this process: start a holder for a fresh tracking,
 * then record holder, identity and tk->last in the component's `track` file (atomically).
 * last = 0 marks the tracking unusable as a parent (a capture in progress or failed).
 */
int track_keep(const struct ferry_runtime *rt, const char *name, pid_t pid, struct track *tk,
               struct ferry_error *err);

/*
 * track_restored - start tracking a component just restored from an image (its memory is the
 * image's, nothing of it has run yet): inject userfaultfd() through main (stopped, syscall_ip
 * set), register and protect every private mapping of p, and record the calling process as
 * the one keeping the tracking (the restored component's monitor, which lives as long as it),
 * with the image's capture as the last one: a checkpoint with --parent that image is then
 * incremental. Failure only means the first checkpoint will be full.
 */
struct process;
int track_restored(const struct ferry_runtime *rt, const char *name, struct tracee *main, pid_t pid,
                   const struct process *p, uint64_t capture_id, struct ferry_error *err);

/*
 * track_restored_uffd - track_restored through uffd, the userfaultfd of a lazy restore (lazy.h),
 * whose anonymous mappings are registered already (missing pages and write-protection: a
 * mapping takes one context only). uffd is not taken: it must stay open, at the same fd number,
 * for as long as this process lives.
 */
int track_restored_uffd(const struct ferry_runtime *rt, const char *name, pid_t pid,
                        const struct process *p, uint64_t capture_id, int uffd,
                        struct ferry_error *err);

/* track_release - close our fds (the holder keeps tracking alive). */
void track_release(struct track *tk);

/* track_probe - `ferry check`: write-protect tracking of another process works here. */
int track_probe(char *detail, size_t len);

/*
 * track_marker_type - the swap type /proc/PID/pagemap shows for the markers write-protection
 * leaves in page tables where no page is (PTE_MARKER_UFFD_WP), measured on a page of our own;
 * -1 if none appears. PAGEMAP_SCAN reports such markers as PAGE_IS_SWAPPED, like pages really
 * swapped out, so a capture tells them apart by this type.
 */
int track_marker_type(void);
