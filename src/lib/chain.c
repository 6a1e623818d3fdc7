/* Incremental image chains: the parent's pages, inherited or folded into the new image. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "chain.h"
#include "util.h"

/* Blocks are at most this long (the capture's chunk). */
#define BLOCK_MAX (1024UL * 1024)

static int cmp_run(const void *a, const void *b)
{
	const struct page_run *x = a, *y = b;
	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

void runs_sort(struct page_run *runs, size_t n)
{
	if (n > 1) /* qsort's base must not be NULL, even for no elements */
		qsort(runs, n, sizeof(*runs), cmp_run);
}

int runs_subtract(struct page_run **runs, size_t *n, const uint64_t *ranges, size_t nranges)
{
	struct page_run *out = NULL;
	size_t nout = 0, k = 0;

	for (size_t i = 0; i < *n; i++) {
		const struct page_run *u = &(*runs)[i];
		uint64_t cur = u->addr, end = u->addr + u->npages * MODEL_PAGE;
		while (k < nranges && ranges[2 * k + 1] <= cur)
			k++;
		for (size_t j = k; cur < end; j++) {
			/* the next cut, or none */
			uint64_t cs = j < nranges ? MAX(ranges[2 * j], cur) : end;
			uint64_t ce = j < nranges ? MIN(ranges[2 * j + 1], end) : end;
			if (cs >= end) {
				cs = ce = end;
			}
			if (cs > cur) {
				if (GROW(out, nout) < 0) {
					free(out);
					return -ENOMEM;
				}
				struct page_run *p = &out[nout++];
				*p = *u;
				p->addr = cur;
				p->npages = (cs - cur) / MODEL_PAGE;
				p->off = u->off + (cur - u->addr);
			}
			cur = MAX(cur, ce);
			if (j >= nranges)
				break;
		}
	}
	free(*runs);
	*runs = out;
	*n = nout;
	return 0;
}

static bool private_kind(uint32_t kind)
{
	return kind == VMA_ANON || kind == VMA_FILE_PRIVATE;
}

struct chain *chain_free(struct chain *ch)
{
	if (!ch)
		return NULL;
	model_free(ch->pc);
	image_reader_free(ch->rd);
	free(ch->idx);
	free(ch->through);
	free(ch);
	return NULL;
}

static void chain_freep(struct chain **ch)
{
	*ch = chain_free(*ch);
}

int chain_open(const char *dir, struct chain **ret, struct ferry_error *err)
{
	_cleanup_(chain_freep) struct chain *ch = calloc(1, sizeof(*ch));
	int r;

	if (!ch)
		return ferr(err, -ENOMEM, "out of memory");
	if (!realpath(dir, ch->dir))
		return ferr(err, -errno, "parent image %s: %m", dir);
	r = image_reader_open(dir, &ch->rd, err);
	if (r == 0)
		r = model_load(ch->rd, &ch->pc, err);
	if (r < 0)
		return ferr_prefix(err, "parent image %s", dir);
	/* the init's: dirty tracking, and so incremental capture, follow the init only (the other
	 * processes of a tree are captured whole, and share its addresses) */
	for (size_t i = 0; i < 1; i++)
		for (size_t j = 0; j < ch->pc->procs[i].nvmas; j++) {
			const struct vma *v = &ch->pc->procs[i].vmas[j];
			if (!private_kind(v->kind))
				continue;
			for (size_t k = 0; k < v->nruns; k++) {
				if (GROW(ch->idx, ch->nidx) < 0)
					return ferr(err, -ENOMEM, "out of memory");
				ch->idx[ch->nidx++] = v->runs[k];
			}
		}
	runs_sort(ch->idx, ch->nidx);
	for (size_t i = 1; i < ch->nidx; i++)
		if (ch->idx[i - 1].addr + ch->idx[i - 1].npages * MODEL_PAGE > ch->idx[i].addr)
			return ferr(err, -EPROTO,
			            "parent image %s: page runs overlap at 0x%" PRIx64, dir,
			            ch->idx[i].addr);
	*ret = TAKE_PTR(ch);
	return 0;
}

/*
 * A range ch has no run for: without a chain under it, a gap; with one, taken from it where
 * ch lets through (pages that held data), and empty elsewhere.
 */
static int gap(const struct chain *ch, uint64_t s, uint64_t e, struct page_run **runs, size_t *n,
               uint64_t **gaps, size_t *ngaps)
{
	if (!ch->under)
		return gaps ? ranges_push(gaps, ngaps, s, e) : 0;
	/* the first range that ends after s: through can hold many thousands */
	size_t lo = 0, hi = ch->nthrough;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (ch->through[2 * mid + 1] <= s)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t k = lo; k < ch->nthrough && ch->through[2 * k] < e; k++) {
		uint64_t ts = MAX(ch->through[2 * k], s), te = MIN(ch->through[2 * k + 1], e);
		if (ts >= te)
			continue;
		int r = chain_resolve(ch->under, ts, te, runs, n, gaps, ngaps);
		if (r < 0)
			return r;
	}
	return 0;
}

int chain_resolve(const struct chain *ch, uint64_t s, uint64_t e, struct page_run **runs, size_t *n,
                  uint64_t **gaps, size_t *ngaps)
{
	size_t lo = 0, hi = ch->nidx;
	uint64_t cur = s;

	/* the first run that ends after s */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const struct page_run *m = &ch->idx[mid];
		if (m->addr + m->npages * MODEL_PAGE <= s)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < ch->nidx && ch->idx[i].addr < e; i++) {
		const struct page_run *pr = &ch->idx[i];
		uint64_t ps = MAX(s, pr->addr), pe = MIN(e, pr->addr + pr->npages * MODEL_PAGE);
		if (ps > cur && gap(ch, cur, ps, runs, n, gaps, ngaps) < 0)
			return -ENOMEM;
		if (GROW(*runs, *n) < 0)
			return -ENOMEM;
		(*runs)[(*n)++] = (struct page_run){
		        .addr = ps,
		        .npages = (pe - ps) / MODEL_PAGE,
		        .file = ch->own ? pr->file : (CHAIN_PARENT | pr->file),
		        .off = pr->off + (ps - pr->addr),
		        .blk_off = pr->blk_off,
		        .blk_pages = pr->blk_pages,
		        .csum = pr->csum,
		};
		cur = pe;
	}
	if (cur < e && gap(ch, cur, e, runs, n, gaps, ngaps) < 0)
		return -ENOMEM;
	return 0;
}

/* Call fn for every private page run of c. */
#define FOR_EACH_RUN(c, run)                                                                       \
	for (size_t _p = 0; _p < (c)->nprocs; _p++)                                                \
		for (size_t _v = 0; _v < (c)->procs[_p].nvmas; _v++)                               \
			for (struct page_run *run = (c)->procs[_p].vmas[_v].runs;                  \
			     run < (c)->procs[_p].vmas[_v].runs + (c)->procs[_p].vmas[_v].nruns;   \
			     run++)

/* Copy the pages of every run taken from parent file j into w's own file. */
static int fold(struct chain *ch, struct component *c, uint32_t j, struct image_writer *w,
                uint8_t *buf, uint64_t *ret_pages, struct ferry_error *err)
{
	int fd = image_reader_pages_fd_at(ch->rd, j);
	uint64_t have_off = UINT64_MAX;
	int r;

	FOR_EACH_RUN(c, run)
	{
		if (run->file != (CHAIN_PARENT | j))
			continue;
		uint64_t blen = run->blk_pages * MODEL_PAGE, len = run->npages * MODEL_PAGE;
		if (blen > BLOCK_MAX)
			return ferr(err, -EPROTO, "parent %s: block at %" PRIu64 " too long",
			            ch->dir, run->blk_off);
		if (run->blk_off != have_off) {
			r = pread_full(fd, buf, blen, (off_t)run->blk_off);
			if (r < 0)
				return ferr(err, r, "parent %s: %s offset %" PRIu64 ": %s", ch->dir,
				            image_reader_pages_name(ch->rd, j), run->blk_off,
				            strerror(-r));
			if (image_checksum(buf, blen) != run->csum)
				return ferr(err, -EBADMSG,
				            "parent %s: %s offset %" PRIu64
				            ": checksum mismatch, image corrupted",
				            ch->dir, image_reader_pages_name(ch->rd, j),
				            run->blk_off);
			have_off = run->blk_off;
		}
		const uint8_t *data = buf + (run->off - run->blk_off);
		uint64_t off = image_pages_alloc(w, len);
		r = pwrite_full(image_pages_fd(w), data, len, (off_t)off);
		if (r < 0)
			return ferr(err, r, "writing folded page data: %s", strerror(-r));
		*run = (struct page_run){.addr = run->addr,
		                         .npages = run->npages,
		                         .file = 0,
		                         .off = off,
		                         .blk_off = off,
		                         .blk_pages = run->npages,
		                         .csum = image_checksum(data, len)};
		*ret_pages += run->npages;
	}
	return 0;
}

static int set_origin(struct pagefile *f, const char *origin, uint64_t gen, int64_t created)
{
	f->origin = strdup(origin);
	f->gen = gen;
	f->created = created;
	return f->origin ? 0 : -ENOMEM;
}

int chain_finish(struct chain *ch, struct component *c, struct image_writer *w, unsigned keep,
                 const char *dir, struct chain_stats *st, struct ferry_error *err)
{
	uint32_t nparent = ch ? image_reader_npages_files(ch->rd) : 0;
	_cleanup_free_ uint64_t *count = calloc(nparent + 1, sizeof(uint64_t));
	_cleanup_free_ uint32_t *map = calloc(nparent + 1, sizeof(uint32_t));
	char absdir[PATH_MAX];
	uint32_t used = 0;
	int r;

	if (!count || !map)
		return ferr(err, -ENOMEM, "out of memory");
	FOR_EACH_RUN(c, run)
	{
		if (!CHAIN_IS_PARENT(run->file))
			continue;
		uint32_t j = run->file & ~CHAIN_PARENT;
		if (j >= nparent)
			return ferr(err, -EPROTO, "page run at 0x%" PRIx64 ": parent file %u of %u",
			            run->addr, j, nparent);
		used += count[j] == 0;
		count[j] += run->npages;
	}
	/* fold the parent files holding the fewest pages until the bound holds */
	if (keep && 1 + used > keep) {
		uint8_t *buf = mmap(NULL, BLOCK_MAX, PROT_READ | PROT_WRITE,
		                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (buf == MAP_FAILED)
			return ferr(err, -errno, "folding buffer: %m");
		while (1 + used > keep) {
			uint32_t best = UINT32_MAX;
			for (uint32_t j = 0; j < nparent; j++)
				if (count[j] && (best == UINT32_MAX || count[j] < count[best]))
					best = j;
			r = fold(ch, c, best, w, buf, &st->pages_folded, err);
			if (r < 0) {
				munmap(buf, BLOCK_MAX);
				return r;
			}
			count[best] = 0;
			used--;
		}
		munmap(buf, BLOCK_MAX);
	}
	for (uint32_t j = 0; j < nparent; j++) {
		if (!count[j])
			continue;
		r = image_writer_inherit(w, ch->dir, image_reader_pages_name(ch->rd, j),
		                         image_reader_pages_size_at(ch->rd, j), &map[j], err);
		if (r < 0)
			return r;
	}
	FOR_EACH_RUN(c, run)
	if (CHAIN_IS_PARENT(run->file))
		run->file = map[run->file & ~CHAIN_PARENT];
	/* where each file came from, in manifest order */
	uint32_t nfiles = image_writer_npages_files(w);
	c->pagefiles = calloc(nfiles, sizeof(*c->pagefiles));
	if (!c->pagefiles)
		return ferr(err, -ENOMEM, "out of memory");
	c->npagefiles = nfiles;
	if (!realpath(dir, absdir))
		snprintf(absdir, sizeof(absdir), "%s", dir);
	r = set_origin(&c->pagefiles[0], absdir, image_writer_generation(w), (int64_t)time(NULL));
	for (uint32_t j = 0; j < nparent && r == 0; j++) {
		if (!count[j])
			continue;
		const struct pagefile *pf = j < ch->pc->npagefiles ? &ch->pc->pagefiles[j] : NULL;
		r = set_origin(&c->pagefiles[map[j]], pf ? pf->origin : ch->dir, pf ? pf->gen : 0,
		               pf ? pf->created : 0);
	}
	if (r < 0)
		return ferr(err, r, "out of memory");
	st->files = nfiles;
	return 0;
}
