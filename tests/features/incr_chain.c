/*
 * Incremental checkpoints: an address space that changes between the links of a chain.
 *
 * Protocol (argv[1] = scratch dir): READY once the initial regions exist. For K = 1, 2, ...:
 * once <dir>/step-K exists, apply step K of a fixed script, store a checksum of every live
 * region in the program's own memory and print WROTE K. Once <dir>/go exists, recompute every
 * checksum, check that every page dropped with MADV_DONTNEED reads as zero: PASS or FAIL.
 *
 * The script cycles through eight kinds of step (K-1) % 8:
 *   0 mmap a new anonymous region and fill it
 *   1 grow a region in place with mremap (no MREMAP_MAYMOVE) and fill the new part
 *   2 move a region with mremap(MREMAP_MAYMOVE | MREMAP_FIXED) to another address, unwritten
 *   3 munmap a whole region (odd cycles: only its first or last quarter)
 *   4 mprotect the second quarter of a region read-only (the region is frozen from then on)
 *   5 MADV_DONTNEED two ranges of pages of a region, one read at once (so the zero page is
 *     mapped there), one left alone: both must read back as zero (checksums skip them)
 *   6 rewrite about one page in 16 of every writable region
 *   7 grow the heap with sbrk and fill the new part
 * and every step also fills its own page of a journal in .bss, so each link of a chain owns
 * at least one page that no later step rewrites. A step that cannot be done (no free slot, no
 * room, no suitable region) rewrites pages as kind 6 does. All choices come from a PRNG with a
 * fixed seed: a run of N steps is reproducible (addresses differ only by ASLR).
 *
 * Anonymous regions live in 16 MiB slots of a PROT_NONE reservation, so grows and moves never
 * meet another mapping. The place a region moved from and a cut quarter are reserved again with
 * PROT_NONE at once; a whole region unmapped leaves a hole, and its slot is not used again.
 */
#include <stdint.h>
#include <sys/mman.h>

#include "feature.h"

#define PG            4096UL
#define SLOT          (16UL << 20)
#define NSLOTS        16
#define GUARD         (1UL << 20) /* kept free at the end of a slot */
#define MAXREG        48
#define MAXZERO       8
#define JOURNAL_PAGES 64

enum kind { R_FREE, R_ANON, R_HEAP, R_JOURNAL };

static const char *const kind_names[] = {"free", "anon", "heap", "journal"};

struct region {
	enum kind kind;
	int id;           /* stable, seeds the region's fill patterns */
	int slot;         /* arena slot of an anonymous region, else -1 */
	int frozen;       /* part of it is read-only: no more writes, grows or moves */
	unsigned changed; /* last step that changed it */
	unsigned char *addr;
	size_t len;
	uint64_t sum;
	int nzero; /* page-aligned ranges dropped with MADV_DONTNEED, relative to addr */
	size_t zoff[MAXZERO], zlen[MAXZERO];
};

static struct region regs[MAXREG];
static int next_id;
static unsigned char *arena;
static int slot_used[NSLOTS]; /* 0 free, 1 used, 2 retired (holds a hole) */
static unsigned char journal[JOURNAL_PAGES][PG] __attribute__((aligned(4096)));
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static unsigned steps_done;

static uint64_t rnd(void) /* xorshift64* */
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

static size_t rnd_below(size_t n)
{
	return n ? (size_t)(rnd() % n) : 0;
}

static uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* fill - len bytes (a multiple of 8, 8-aligned) with a pattern of seed; never a zero page. */
static void fill(unsigned char *p, size_t len, uint64_t seed)
{
	uint64_t *w = (uint64_t *)p;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = mix(seed * 0x100000001b3ull + i + 1) | 1;
}

static uint64_t seed_of(unsigned step, int id, size_t page)
{
	return (uint64_t)step << 40 ^ (uint64_t)id << 24 ^ page;
}

static unsigned char *slot_base(int s)
{
	return arena + (size_t)s * SLOT;
}

/* reserve - put PROT_NONE back over [p, p + len) after an unmap or a move. */
static void reserve(unsigned char *p, size_t len)
{
	if (mmap(p, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
	         0) == MAP_FAILED)
		feature_fail("step %u: reserving %p again: %s", steps_done + 1, (void *)p,
		             strerror(errno));
}

static struct region *new_entry(enum kind kind)
{
	for (int i = 0; i < MAXREG; i++)
		if (regs[i].kind == R_FREE) {
			regs[i] = (struct region){.kind = kind, .id = ++next_id, .slot = -1};
			return &regs[i];
		}
	return NULL;
}

static int free_slot(void)
{
	int start = (int)rnd_below(NSLOTS);

	for (int i = 0; i < NSLOTS; i++)
		if (!slot_used[(start + i) % NSLOTS])
			return (start + i) % NSLOTS;
	return -1;
}

static int count(int (*pred)(const struct region *))
{
	int n = 0;

	for (int i = 0; i < MAXREG; i++)
		n += pred(&regs[i]);
	return n;
}

/* pick - a random region satisfying pred, or NULL. */
static struct region *pick(int (*pred)(const struct region *))
{
	int n = count(pred), k;

	if (!n)
		return NULL;
	k = (int)rnd_below((size_t)n);
	for (int i = 0; i < MAXREG; i++)
		if (pred(&regs[i]) && k-- == 0)
			return &regs[i];
	return NULL;
}

static int is_anon(const struct region *r)
{
	return r->kind == R_ANON;
}

static int is_movable(const struct region *r)
{
	return r->kind == R_ANON && !r->frozen;
}

static int is_frozen(const struct region *r)
{
	return r->kind == R_ANON && r->frozen;
}

static int is_writable(const struct region *r)
{
	return (r->kind == R_ANON && !r->frozen) || r->kind == R_HEAP;
}

static int in_zero(const struct region *r, size_t off)
{
	for (int z = 0; z < r->nzero; z++)
		if (off >= r->zoff[z] && off < r->zoff[z] + r->zlen[z])
			return 1;
	return 0;
}

/* checksum - of every page of r but those dropped with MADV_DONTNEED, which verify() checks. */
static uint64_t checksum(const struct region *r)
{
	uint64_t h = 0xcbf29ce484222325ull ^ r->len;

	for (size_t off = 0; off < r->len; off += PG) {
		const uint64_t *w = (const uint64_t *)(r->addr + off);

		if (in_zero(r, off))
			continue;
		for (size_t i = 0; i < PG / 8; i++)
			h = ((h << 5 | h >> 59) ^ w[i]) * 0x100000001b3ull;
	}
	return mix(h);
}

/* ---- the steps; each returns 0 when done, -1 when it could not be done here ---- */

static int step_mmap(unsigned k)
{
	int s = free_slot();
	struct region *r;
	unsigned char *p;
	size_t len;

	if (s < 0 || !(r = new_entry(R_ANON)))
		return -1;
	len = (64 + rnd_below(449)) * PG; /* 256 KiB .. 2 MiB */
	p = slot_base(s) + rnd_below(64) * PG;
	if (mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
	    p) {
		feature_fail("step %u: mmap: %s", k, strerror(errno));
		r->kind = R_FREE;
		return 0;
	}
	fill(p, len, seed_of(k, r->id, 0));
	r->slot = s;
	r->addr = p;
	r->len = len;
	r->changed = k;
	slot_used[s] = 1;
	return 0;
}

static int step_grow(unsigned k)
{
	struct region *r = pick(is_movable);
	size_t add = (16 + rnd_below(241)) * PG;
	void *q;

	if (!r || r->addr + r->len + add + GUARD > slot_base(r->slot) + SLOT)
		return -1;
	/* the PROT_NONE reservation after the region makes way, then the region grows into it */
	if (munmap(r->addr + r->len, add) < 0) {
		feature_fail("step %u: munmap before the grow: %s", k, strerror(errno));
		return 0;
	}
	q = mremap(r->addr, r->len, r->len + add, 0);
	if (q != r->addr) {
		feature_fail("step %u: mremap grow in place of region %d: %s", k, r->id,
		             q == MAP_FAILED ? strerror(errno) : "moved");
		return 0;
	}
	fill(r->addr + r->len, add, seed_of(k, r->id, 1));
	r->len += add;
	r->changed = k;
	return 0;
}

static int step_move(unsigned k)
{
	struct region *r = pick(is_movable);
	int s = free_slot();
	unsigned char *dst;
	void *q;

	if (!r || s < 0)
		return -1;
	dst = slot_base(s) + rnd_below(64) * PG;
	if (dst + r->len + GUARD > slot_base(s) + SLOT)
		return -1;
	q = mremap(r->addr, r->len, r->len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (q != dst) {
		feature_fail("step %u: mremap move of region %d: %s", k, r->id,
		             q == MAP_FAILED ? strerror(errno) : "elsewhere");
		return 0;
	}
	reserve(r->addr, r->len);
	slot_used[r->slot] = 0;
	slot_used[s] = 1;
	r->slot = s;
	r->addr = dst;
	r->changed = k;
	return 0;
}

/* keep_zero - the zero ranges of r once only [lo, hi) of it is left, relative to lo. */
static void keep_zero(struct region *r, size_t lo, size_t hi)
{
	int n = 0;

	for (int z = 0; z < r->nzero; z++) {
		size_t a = r->zoff[z] > lo ? r->zoff[z] : lo;
		size_t b = r->zoff[z] + r->zlen[z] < hi ? r->zoff[z] + r->zlen[z] : hi;

		if (a < b) {
			r->zoff[n] = a - lo;
			r->zlen[n] = b - a;
			n++;
		}
	}
	r->nzero = n;
}

static int step_munmap(unsigned k)
{
	/* frozen regions go first, so that writable ones remain */
	struct region *r = count(is_frozen) ? pick(is_frozen) : pick(is_anon);
	int whole = ((k - 1) / 8) % 2 == 0 && count(is_anon) > 3;
	size_t cut;

	if (!r)
		return -1;
	if (whole) {
		/* a real hole: the slot is retired rather than reserved and used again */
		if (munmap(r->addr, r->len) < 0)
			feature_fail("step %u: munmap region %d: %s", k, r->id, strerror(errno));
		slot_used[r->slot] = 2;
		r->kind = R_FREE;
		return 0;
	}
	cut = (r->len / PG / 4) * PG;
	if (cut == 0)
		return -1;
	if (rnd_below(2)) { /* the last quarter */
		if (munmap(r->addr + r->len - cut, cut) < 0)
			feature_fail("step %u: munmap the tail of region %d: %s", k, r->id,
			             strerror(errno));
		reserve(r->addr + r->len - cut, cut);
		keep_zero(r, 0, r->len - cut);
	} else { /* the first quarter */
		if (munmap(r->addr, cut) < 0)
			feature_fail("step %u: munmap the head of region %d: %s", k, r->id,
			             strerror(errno));
		reserve(r->addr, cut);
		keep_zero(r, cut, r->len);
		r->addr += cut;
	}
	r->len -= cut;
	r->changed = k;
	return 0;
}

static int step_mprotect(unsigned k)
{
	struct region *r;
	size_t off, len;

	if (count(is_movable) < 3 || !(r = pick(is_movable)))
		return -1;
	off = (r->len / PG / 4) * PG;
	len = (r->len / PG / 4) * PG;
	if (len == 0)
		return -1;
	if (mprotect(r->addr + off, len, PROT_READ) < 0)
		feature_fail("step %u: mprotect region %d: %s", k, r->id, strerror(errno));
	r->frozen = 1;
	r->changed = k;
	return 0;
}

static int step_dontneed(unsigned k)
{
	struct region *r = pick(is_movable);
	size_t pages;

	if (!r || r->nzero + 2 > MAXZERO || (pages = r->len / PG) < 16)
		return -1;
	/* a range in each half: the first is read at once (the zero page is mapped there), the
	 * second is left alone (nothing is mapped there) until go */
	for (int i = 0; i < 2; i++) {
		size_t lo = i ? pages / 2 : 1, room = (i ? pages - 1 : pages / 2) - lo;
		size_t off = lo + rnd_below(room / 2),
		       n = 1 + rnd_below(room / 2 < 8 ? room / 2 : 8);

		if (madvise(r->addr + off * PG, n * PG, MADV_DONTNEED) < 0) {
			feature_fail("step %u: madvise region %d: %s", k, r->id, strerror(errno));
			return 0;
		}
		r->zoff[r->nzero] = off * PG;
		r->zlen[r->nzero] = n * PG;
		r->nzero++;
		for (size_t pg = 0; i == 0 && pg < n; pg++)
			if (((volatile unsigned char *)r->addr)[(off + pg) * PG + 64])
				feature_fail(
				        "step %u: a page dropped with MADV_DONTNEED is not zero",
				        k);
	}
	r->changed = k;
	return 0;
}

static int step_write(unsigned k)
{
	for (int i = 0; i < MAXREG; i++) {
		struct region *r = &regs[i];

		if (!is_writable(r))
			continue;
		for (size_t off = 0; off < r->len; off += PG)
			if (rnd_below(16) == 0 && !in_zero(r, off)) {
				fill(r->addr + off, PG, seed_of(k, r->id, 2 + off / PG));
				r->changed = k;
			}
	}
	return 0;
}

static int step_heap(unsigned k)
{
	uintptr_t cur = (uintptr_t)sbrk(0);
	size_t pad = (PG - cur % PG) % PG, len = (16 + rnd_below(113)) * PG;
	struct region *r = new_entry(R_HEAP);
	unsigned char *p;

	if (!r)
		return -1;
	p = sbrk((intptr_t)(pad + len));
	if (p == (void *)-1) {
		feature_fail("step %u: sbrk %zu: %s", k, pad + len, strerror(errno));
		r->kind = R_FREE;
		return 0;
	}
	p += pad;
	fill(p, len, seed_of(k, r->id, 0));
	r->addr = p;
	r->len = len;
	r->changed = k;
	return 0;
}

static int (*const script[8])(unsigned k) = {
        step_mmap,     step_grow,     step_move,  step_munmap,
        step_mprotect, step_dontneed, step_write, step_heap,
};

static void record_sums(void)
{
	for (int i = 0; i < MAXREG; i++)
		if (regs[i].kind != R_FREE)
			regs[i].sum = checksum(&regs[i]);
}

static void apply(unsigned k)
{
	unsigned char *jp = journal[k % JOURNAL_PAGES];

	if (script[(k - 1) % 8](k) < 0)
		step_write(k);
	fill(jp, PG, seed_of(k, 0, 0));
	regs[0].changed = k; /* the journal */
	steps_done = k;
	record_sums();
}

static void verify(void)
{
	for (int i = 0; i < MAXREG; i++) {
		const struct region *r = &regs[i];
		uint64_t sum;

		if (r->kind == R_FREE)
			continue;
		sum = checksum(r);
		if (sum != r->sum) {
			feature_fail(
			        "%s region %d at %p (%zu pages, last changed by step %u of %u): "
			        "checksum %016llx, stored %016llx",
			        kind_names[r->kind], r->id, (void *)r->addr, r->len / PG,
			        r->changed, steps_done, (unsigned long long)sum,
			        (unsigned long long)r->sum);
			return;
		}
		for (int z = 0; z < r->nzero; z++)
			for (size_t off = r->zoff[z]; off < r->zoff[z] + r->zlen[z]; off++)
				if (r->addr[off]) {
					feature_fail(
					        "%s region %d: byte %zu (page %zu) dropped with "
					        "MADV_DONTNEED is 0x%02x",
					        kind_names[r->kind], r->id, off, off / PG,
					        r->addr[off]);
					return;
				}
	}
}

static int step_file(const char *dir, unsigned k)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/step-%u", dir, k);
	return access(path, F_OK) == 0;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct region *j;

	arena = mmap(NULL, NSLOTS * SLOT, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	             -1, 0);
	if (arena == MAP_FAILED) {
		printf("FAIL: reserving the arena: %s\n", strerror(errno));
		return 1;
	}
	j = new_entry(R_JOURNAL); /* regs[0] */
	j->addr = &journal[0][0];
	j->len = sizeof(journal);
	for (int i = 0; i < JOURNAL_PAGES; i++)
		fill(journal[i], PG, seed_of(0, 0, (size_t)i));
	for (int i = 0; i < 4; i++) /* step "0": four regions and a piece of heap */
		step_mmap(0);
	step_heap(0);
	record_sums();
	feature_ready();

	while (!feature_go(dir)) {
		if (!step_file(dir, steps_done + 1)) {
			feature_sleep_ms(2);
			continue;
		}
		apply(steps_done + 1);
		printf("WROTE %u\n", steps_done);
		fflush(stdout);
	}
	verify();
	return feature_finish();
}
