/* Incremental image chains: taking unwritten pages from the parent image, inheriting and folding
 * its pages files, and the list of pages files an image reads. */
#pragma once

#include <limits.h>

#include "image.h"
#include "model.h"

/* A page run's file while capture runs: index j of the parent's pages files. */
#define CHAIN_PARENT       0x80000000u
#define CHAIN_IS_PARENT(f) (((f)&CHAIN_PARENT) != 0)

/*
 * The parent of an incremental capture: a committed image and its model, or (own: rd and pc
 * NULL) pages already copied into the image being written, by the rounds of a live checkpoint.
 */
struct chain {
	char dir[PATH_MAX];
	struct image_reader *rd;
	struct component *pc;
	struct page_run *idx; /* its private-memory page runs, sorted by address, disjoint */
	size_t nidx;
	bool own;                  /* runs name the writer's own files: taken as they are */
	const struct chain *under; /* where the pages this one has no run for come from, or NULL */
	uint64_t *through; /* where under may be asked (pairs, in order): the pages that held data
	                      when this one was made; elsewhere a page with no run here is empty */
	size_t nthrough;
};

/* chain_open - open and verify the committed image in dir as a parent (*ret owned by caller). */
int chain_open(const char *dir, struct chain **ret, struct ferry_error *err);
struct chain *chain_free(struct chain *ch);

/*
 * runs_subtract - remove the pages of ranges (sorted pairs) from the sorted disjoint runs
 * (*runs, *n), splitting runs where needed (the parts keep their checksummed block). 0 or -ENOMEM.
 */
int runs_subtract(struct page_run **runs, size_t *n, const uint64_t *ranges, size_t nranges);

/* runs_sort - sort runs by address. */
void runs_sort(struct page_run *runs, size_t n);

/*
 * chain_resolve - append to (*runs, *n) the parent's page runs covering [s, e), their file
 * marked CHAIN_PARENT | index in the parent; the parts of [s, e) the parent holds no data for
 * are appended to gaps (range pairs; NULL: ignored) to be captured now. 0 or -ENOMEM. With ch->own
 * the runs keep their file.
 */
int chain_resolve(const struct chain *ch, uint64_t s, uint64_t e, struct page_run **runs, size_t *n,
                  uint64_t **gaps, size_t *ngaps);

/* Figures of chain_finish. */
struct chain_stats {
	uint32_t files;        /* pages files the image reads */
	uint64_t pages_folded; /* pages copied from folded parent files into the own file */
};

/*
 * chain_finish - after the thaw, before model_save: make c's page runs name pages files of the
 * image being written. Parent files still referenced are inherited (hard links, see
 * image_writer_inherit); when that would make more than keep files (keep 0: no bound), the
 * parent files holding the fewest referenced pages are folded: their referenced pages are
 * checked against their block checksums and copied into w's own file. Fills c->pagefiles
 * (origin of each file, manifest order). ch may be NULL (a full image). dir: the image's
 * directory, recorded as the origin of its own file.
 */
int chain_finish(struct chain *ch, struct component *c, struct image_writer *w, unsigned keep,
                 const char *dir, struct chain_stats *st, struct ferry_error *err);
