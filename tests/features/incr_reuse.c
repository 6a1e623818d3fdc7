/*
 * Incremental checkpoints where a range changes owner: a mapping is unmapped and its neighbour
 * grows in place (mremap without MREMAP_MAYMOVE) over the range it left, without writing it.
 * The parent image holds the old owner's pages there; after a restore from the incremental
 * image the grown part must read as zeros, not as the old owner's data. A second range is
 * taken over by a new mapping (mmap MAP_FIXED) that writes half of its pages.
 */
#include <stdint.h>
#include <sys/mman.h>

#include "feature.h"

#define MIB  (1024UL * 1024UL)
#define PAGE 4096UL

static int step_file(const char *dir, int k)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/step-%d", dir, k);
	return access(path, F_OK) == 0;
}

static void fill(unsigned char *p, size_t len, unsigned char v)
{
	for (size_t i = 0; i < len; i += PAGE)
		memset(p + i, v, PAGE);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	/* [ v: 4 MiB ][ x: 4 MiB ][ y: 4 MiB ], carved from one reservation */
	unsigned char *base = mmap(NULL, 12 * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) {
		printf("FAIL: mmap: %s\n", strerror(errno));
		return 1;
	}
	unsigned char *v = mmap(base, 4 * MIB, PROT_READ | PROT_WRITE,
	                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	unsigned char *x = mmap(base + 4 * MIB, 4 * MIB, PROT_READ | PROT_WRITE,
	                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	unsigned char *y = mmap(base + 8 * MIB, 4 * MIB, PROT_READ | PROT_WRITE,
	                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (v == MAP_FAILED || x == MAP_FAILED || y == MAP_FAILED) {
		printf("FAIL: mmap: %s\n", strerror(errno));
		return 1;
	}
	/* MADV_NOHUGEPAGE: neighbours with different flags stay apart */
	(void)madvise(v, 4 * MIB, MADV_NOHUGEPAGE);
	fill(v, 4 * MIB, 0x11);
	fill(x, 4 * MIB, 0x22);
	fill(y, 4 * MIB, 0x33);
	feature_ready();
	while (!step_file(dir, 1))
		feature_sleep_ms(2);
	/* x goes; v grows over where x was, and nothing writes the grown part */
	if (munmap(x, 4 * MIB) < 0 || mremap(v, 4 * MIB, 8 * MIB, 0) != v) {
		printf("FAIL: munmap/mremap: %s\n", strerror(errno));
		return 1;
	}
	/* y is replaced by a new mapping of which half the pages are written */
	y = mmap(base + 8 * MIB, 4 * MIB, PROT_READ | PROT_WRITE,
	         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (y == MAP_FAILED) {
		printf("FAIL: mmap: %s\n", strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < 4 * MIB; i += 2 * PAGE)
		memset(y + i, 0x44, PAGE);
	v[0] = 0x55;
	printf("WROTE 1\n");
	fflush(stdout);
	feature_wait_go(dir);
	for (size_t i = 0; i < 8 * MIB; i++) {
		unsigned char want = i == 0 ? 0x55 : i < 4 * MIB ? 0x11 : 0;
		if (v[i] != want) {
			feature_fail("v+0x%zx: 0x%02x, expected 0x%02x%s", i, v[i], want,
			             i >= 4 * MIB ? " (the grown part shows the old mapping's data)"
			                          : "");
			break;
		}
	}
	for (size_t i = 0; i < 4 * MIB; i++) {
		unsigned char want = (i / PAGE) % 2 == 0 ? 0x44 : 0;
		if (y[i] != want) {
			feature_fail("y+0x%zx: 0x%02x, expected 0x%02x", i, y[i], want);
			break;
		}
	}
	return feature_finish();
}
