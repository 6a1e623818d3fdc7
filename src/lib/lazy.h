/* Lazy restore: the pages of private anonymous mappings supplied through userfaultfd after the
 * component runs, on first touch and by a background filler, from the restoring monitor. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/ferry.h"
#include "model.h"
#include "tracee.h"

/*
 * Where page data comes from. A piece is a range of the image's addresses (addr, len) whose
 * bytes the image holds in pages file `file` at offset `off`. read fills buf with len bytes and
 * returns 0 or -errno. Today the pages files of the image (pread); post-copy migration will
 * fetch from the network behind the same call.
 */
struct lazy_piece {
	uint64_t addr; /* in the image's address space (before any mremap of the component) */
	uint64_t len;
	uint32_t file;
	uint64_t off;
	bool urgent; /* a thread of the component waits for it (not the background filler) */
};
struct lazy_source {
	int (*read)(void *arg, const struct lazy_piece *p, void *buf);
	void *arg;
};
/* What read may return instead of 0: the piece holds only zeros, which need not be installed
 * (the filler leaves it unfilled rather than allocate it; a fault there gets zeros). */
#define LAZY_EMPTY 1

struct lazy;

/*
 * lazy_uffd - in the stopped restore helper (main: its seized main thread, syscall_ip set),
 * create a userfaultfd belonging to its mm, copy it into *ret_fd and close it in the helper.
 * With wp, asynchronous write-protection (WP_ASYNC, WP_UNPOPULATED) is enabled too, so that the
 * same context tracks dirty pages (a mapping takes one userfaultfd context only). Returns 0 or
 * -errno with err filled (-ENOTSUP: the features are missing).
 */
int lazy_uffd(struct tracee *main, pid_t pid, bool wp, int *ret_fd, struct ferry_error *err);

/*
 * lazy_uffd_of - as lazy_uffd, but the userfaultfd is one the helper made of its own memory and
 * holds at fd slot: copied into *ret_fd and set up the same way. -errno if it holds none (the
 * slot stays for the helper's temporary fds to be closed with).
 */
int lazy_uffd_of(pid_t pid, int slot, bool wp, int *ret_fd);

/*
 * lazy_new - take uffd (from lazy_uffd) and start serving the page faults of process pid: data
 * from src (NULL: pread from fds, nfds pages files of the image, which are duplicated), zeros
 * where no range added holds data. Returns the object or NULL with err filled (uffd closed).
 */
struct lazy *lazy_new(int uffd, bool wp, pid_t pid, const struct lazy_source *src, const int *fds,
                      uint32_t nfds, struct ferry_error *err);

/*
 * lazy_add - register [start, end) (a private anonymous mapping just made, no page of it
 * touched) for missing-page faults (and write-protection with wp), its data being the page runs
 * runs[0..n). Returns 0 or -errno with err filled.
 */
int lazy_add(struct lazy *lz, uint64_t start, uint64_t end, const struct page_run *runs, size_t n,
             struct ferry_error *err);

/* lazy_fd - the userfaultfd, for dirty tracking on the same context (wp); owned by lz. */
int lazy_fd(const struct lazy *lz);
/* lazy_tracks - 1 if the userfaultfd write-protects the pages it installs (dirty tracking). */
bool lazy_tracks(const struct lazy *lz);

/*
 * lazy_fill - the component is rebuilt: start copying every run in the background, and record
 * in its state directory (rt, name) how a checkpoint waits for that to finish. From here the
 * threads own lz; they end when the component exits (the handler) or every run is in (the
 * filler). The userfaultfd stays open for as long as this process lives when it tracks (wp).
 */
int lazy_fill(struct lazy *lz, const struct ferry_runtime *rt, const char *name,
              struct ferry_error *err);

/* lazy_free - before lazy_fill (a restore that failed): stop serving, close. Returns NULL. */
struct lazy *lazy_free(struct lazy *lz);

/*
 * lazy_wait - if component NAME (host pid pid) was restored lazily and its pages are still
 * being filled, wait until they are all in: a checkpoint finds the pages that hold data in the
 * page tables, and a page not filled yet is not there. Returns at once otherwise.
 */
void lazy_wait(const struct ferry_runtime *rt, const char *name, pid_t pid);
