/* bench-memhog: a component holding N MiB of touched memory that can verify it after restore. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*
 * Usage: bench-memhog SIZE_MIB [GO_FILE]
 *
 * Fills SIZE_MIB of private anonymous memory with a pattern in which every 8-byte word differs
 * (no zero page, no two equal pages: nothing can be deduplicated or skipped), prints READY and
 * sleeps in 100 ms steps for ever. Once GO_FILE exists it checks every word once and prints
 * PASS or FAIL with the first wrong offset. Output goes through write(2), unbuffered, so the
 * component's log shows it at once.
 */

#define MIB (1024UL * 1024UL)

/* splitmix64 of the word index: distinct, never a run of zeroes, cheap to recompute. */
static uint64_t pattern(uint64_t i)
{
	uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!write(STDOUT_FILENO, buf,
		             (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* verify - index of the first word that differs from the pattern, or words if none does. */
static size_t verify(const uint64_t *w, size_t words)
{
	for (size_t i = 0; i < words; i++)
		if (w[i] != pattern(i))
			return i;
	return words;
}

int main(int argc, char **argv)
{
	const struct timespec step = {0, 100 * 1000 * 1000};
	const char *go = argc > 2 ? argv[2] : NULL;
	bool touch_only = go && strcmp(go, "--touch-only") == 0;
	unsigned long mib;
	size_t words, bad;
	uint64_t *w;
	char *end;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: bench-memhog SIZE_MIB [GO_FILE | --touch-only]\n");
		return 2;
	}
	errno = 0;
	mib = strtoul(argv[1], &end, 10);
	if (errno || *end || mib == 0 || mib > (1UL << 20)) {
		fprintf(stderr, "bench-memhog: bad size '%s' (MiB, 1..1048576)\n", argv[1]);
		return 2;
	}
	words = mib * MIB / sizeof(*w);
	w = mmap(NULL, mib * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w == MAP_FAILED) {
		fprintf(stderr, "bench-memhog: mmap %lu MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < words; i++)
		w[i] = pattern(i);
	if (touch_only) /* the bench's warm-up of the VM's memory */
		return 0;
	say("READY size_mib=%lu pid=%d addr=%p\n", mib, (int)getpid(), (void *)w);

	for (;;) {
		nanosleep(&step, NULL);
		if (!go || access(go, F_OK) < 0)
			continue;
		bad = verify(w, words);
		if (bad == words)
			say("PASS size_mib=%lu all %zu words intact\n", mib, words);
		else
			say("FAIL size_mib=%lu word %zu (offset 0x%zx) is 0x%016llx, want "
			    "0x%016llx\n",
			    mib, bad, bad * sizeof(*w), (unsigned long long)w[bad],
			    (unsigned long long)pattern(bad));
		go = NULL; /* once */
	}
}
