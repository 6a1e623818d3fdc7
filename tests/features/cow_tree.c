/*
 * Copy-on-write memory shared after fork: the root fills 16 MiB and forks three children,
 * each of which writes one page of its own. A checkpoint stores the pages they still share
 * once; after restore every process sees its own contents (the pattern, and its page).
 */
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "feature.h"

#define SIZE  (16u << 20)
#define KIDS  3
#define PAGES (SIZE / 4096)

static uint32_t *mem;
static const char *dir;
static int res[2];

static uint32_t pattern(size_t i)
{
	return (uint32_t)(i * 2654435761u) ^ 0x5a5a5a5au;
}

/* Everything as the pattern, but the first word of page `own` (if any) as `mark`. */
static int check(int own, uint32_t mark, char *why, size_t len)
{
	for (size_t i = 0; i < SIZE / 4; i++) {
		uint32_t want = (own >= 0 && i == (size_t)own * 1024) ? mark : pattern(i);
		if (mem[i] != want) {
			snprintf(why, len, "word %zu is %#x, expected %#x", i, mem[i], want);
			return -1;
		}
	}
	return 0;
}

static int child(int k)
{
	char why[200] = "ok";
	int page = (k + 1) * 997 % PAGES;

	mem[page * 1024] = 0xc0de0000u + (uint32_t)k;
	if (write(res[1], "r", 1) != 1)
		return 3;
	feature_wait_go(dir);
	(void)check(page, 0xc0de0000u + (uint32_t)k, why, sizeof(why));
	char line[256];
	int n = snprintf(line, sizeof(line), "%d %s\n", k, why);
	return write(res[1], line, (size_t)n) == n ? 0 : 3;
}

int main(int argc, char **argv)
{
	pid_t kids[KIDS];
	char buf[1024], why[200];

	dir = feature_dir(argc, argv);
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || pipe(res) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < SIZE / 4; i++)
		mem[i] = pattern(i);
	for (int k = 0; k < KIDS; k++) {
		kids[k] = fork();
		if (kids[k] == 0)
			_exit(child(k));
	}
	for (int k = 0; k < KIDS; k++)
		if (read(res[0], buf, 1) != 1) {
			printf("FAIL: a child did not get ready\n");
			return 1;
		}
	feature_ready();
	feature_wait_go(dir);
	if (check(-1, 0, why, sizeof(why)) < 0)
		feature_fail("root: %s", why);
	size_t have = 0;
	for (int lines = 0; lines < KIDS;) {
		ssize_t n = read(res[0], buf + have, sizeof(buf) - 1 - have);
		if (n <= 0) {
			feature_fail("results: %s", n ? strerror(errno) : "end of file");
			break;
		}
		have += (size_t)n;
		buf[have] = 0;
		for (char *nl; (nl = strchr(buf, '\n'));) {
			*nl = 0;
			if (strcmp(buf + 2, "ok") != 0)
				feature_fail("child %c: %s", buf[0], buf + 2);
			lines++;
			have -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, have + 1);
		}
	}
	for (int k = 0; k < KIDS; k++) {
		int st = 0;
		if (waitpid(kids[k], &st, 0) != kids[k] || st != 0)
			feature_fail("child %d ended with status %#x", k, st);
	}
	return feature_finish();
}
