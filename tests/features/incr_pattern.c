/*
 * Incremental checkpoints: a 64 MiB region of which each step rewrites a known set of pages.
 *
 * Protocol (argv[1] = scratch dir):
 *   REGION <start, hex without 0x> <npages>   then   READY
 *   for K = 1, 2, ...: once <dir>/step-K exists, rewrite exactly the pages i of the region with
 *     (i * 7919 + K * 31) % 97 == 0, each whole page with the pattern of (i, K); then
 *     WROTE K <number of pages written>
 *   once <dir>/go exists: every page must hold the pattern of the last step that wrote it (step
 *     0 for a page no step wrote): PASS, or FAIL naming the first wrong page.
 * Between steps the program touches nothing big: no allocation, only its stack, stdio's buffer
 * and a few globals, so an incremental checkpoint must hold the step's pages and little else.
 */
#include <stdint.h>
#include <sys/mman.h>

#include "feature.h"

#define PG           4096UL
#define REGION_PAGES 16384UL /* 64 MiB */
#define WORDS        (PG / sizeof(uint64_t))

static uint64_t *region;
static unsigned steps_done;

/* writes - 1 when step k (>= 1) rewrites page i; the test harness computes the same rule. */
static int writes(size_t i, unsigned k)
{
	return (i * 7919 + (size_t)k * 31) % 97 == 0;
}

/* pattern - word w of page i as step s writes it: splitmix64 of a key unique per (i, s, w). */
static uint64_t pattern(size_t i, unsigned s, size_t w)
{
	uint64_t z = ((uint64_t)i << 32 | (uint64_t)s << 9 | w) + 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void fill_page(size_t i, unsigned s)
{
	uint64_t *p = region + i * WORDS;

	for (size_t w = 0; w < WORDS; w++)
		p[w] = pattern(i, s, w);
}

/* last_writer - the step whose pattern page i must hold after steps_done steps. */
static unsigned last_writer(size_t i)
{
	for (unsigned k = steps_done; k > 0; k--)
		if (writes(i, k))
			return k;
	return 0;
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

	region = mmap(NULL, REGION_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
	              -1, 0);
	if (region == MAP_FAILED) {
		printf("FAIL: mmap: %s\n", strerror(errno));
		return 1;
	}
	/* base pages, not a transparent huge page the size of 512 of them: the test counts pages */
	madvise(region, REGION_PAGES * PG, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < REGION_PAGES; i++)
		fill_page(i, 0);
	printf("REGION %lx %lu\n", (unsigned long)(uintptr_t)region, REGION_PAGES);
	feature_ready();

	while (!feature_go(dir)) {
		unsigned k = steps_done + 1;
		unsigned long count = 0;

		if (!step_file(dir, k)) {
			feature_sleep_ms(2);
			continue;
		}
		for (size_t i = 0; i < REGION_PAGES; i++)
			if (writes(i, k)) {
				fill_page(i, k);
				count++;
			}
		steps_done = k;
		printf("WROTE %u %lu\n", k, count);
		fflush(stdout);
	}

	for (size_t i = 0; i < REGION_PAGES; i++) {
		unsigned s = last_writer(i);
		const uint64_t *p = region + i * WORDS;

		for (size_t w = 0; w < WORDS; w++)
			if (p[w] != pattern(i, s, w)) {
				feature_fail("page %zu (0x%lx) word %zu is 0x%016llx, expected "
				             "0x%016llx (step %u of %u)",
				             i, (unsigned long)(uintptr_t)p, w,
				             (unsigned long long)p[w],
				             (unsigned long long)pattern(i, s, w), s, steps_done);
				i = REGION_PAGES;
				break;
			}
	}
	return feature_finish();
}
