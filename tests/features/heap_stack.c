/* Feature: heap (malloc and brk), a large stack array and data/bss globals keep their contents. */
#include "feature.h"

#include <stdint.h>

#define HEAP_SMALL  4096       /* below the mmap threshold: lives in the brk heap */
#define HEAP_BIG    (8u << 20) /* above it: its own anonymous mapping */
#define STACK_BYTES (512u << 10)
#define DATA_WORDS  2048

static uint64_t data_words[DATA_WORDS] = {0x0123456789abcdefULL, 1, 2, 3}; /* .data */
static uint64_t bss_words[DATA_WORDS];                                     /* .bss */

static uint64_t pattern(uint64_t seed, uint64_t i)
{
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ULL ^ seed;

	x ^= x >> 31;
	return x * 0xbf58476d1ce4e5b9ULL;
}

static uint64_t data_init(size_t i)
{
	return i == 0 ? 0x0123456789abcdefULL : i < 4 ? i : 0;
}

static void fill(void *p, size_t n, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < n / 8; i++)
		w[i] = pattern(seed, i);
}

static void check(const char *what, const void *p, size_t n, uint64_t seed)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < n / 8; i++)
		if (w[i] != pattern(seed, i)) {
			feature_fail("%s word %zu at %p: %#llx, expected %#llx", what, i,
			             (void *)&w[i], (unsigned long long)w[i],
			             (unsigned long long)pattern(seed, i));
			return;
		}
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	volatile uint64_t stack[STACK_BYTES / 8];
	uint8_t *small = malloc(HEAP_SMALL), *big = malloc(HEAP_BIG);

	if (!small || !big) {
		feature_fail("malloc failed");
		return feature_finish();
	}
	fill(small, HEAP_SMALL, 1);
	fill(big, HEAP_BIG, 2);
	fill((void *)stack, sizeof(stack), 3);
	for (size_t i = 0; i < DATA_WORDS; i++) {
		data_words[i] ^= pattern(4, i);
		bss_words[i] = pattern(5, i);
	}
	feature_ready(); /* the first printf allocates stdout's buffer: read brk after it */
	void *brk_before = sbrk(0);

	feature_wait_go(dir);

	check("heap (brk) block", small, HEAP_SMALL, 1);
	check("heap (mmap) block", big, HEAP_BIG, 2);
	check("stack array", (const void *)stack, sizeof(stack), 3);
	check("bss array", bss_words, sizeof(bss_words), 5);
	for (size_t i = 0; i < DATA_WORDS; i++)
		if (data_words[i] != (data_init(i) ^ pattern(4, i))) {
			feature_fail("data word %zu: %#llx", i, (unsigned long long)data_words[i]);
			break;
		}
	if (sbrk(0) != brk_before)
		feature_fail("program break moved from %p to %p", brk_before, sbrk(0));

	/* The restored heap must still work: grow the brk heap and a new mapping. */
	uint8_t *more = malloc(256 << 10), *huge = malloc(16 << 20);
	if (!more || !huge) {
		feature_fail("malloc after restore failed");
	} else {
		fill(more, 256 << 10, 6);
		fill(huge, 16 << 20, 7);
		check("new heap block", more, 256 << 10, 6);
		check("new mmap block", huge, 16 << 20, 7);
	}
	free(more);
	free(huge);
	free(big);
	free(small);
	return feature_finish();
}
