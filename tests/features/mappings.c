/* Memory kinds: shared anonymous, memfd mapped twice and open, modified private file, PROT_NONE. */
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#include "feature.h"

#define PG 4096

static unsigned char pattern(size_t i, unsigned seed)
{
	return (unsigned char)((i * 2654435761u + seed) >> 7);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pattern(i, seed);
}

static void check(const unsigned char *p, size_t n, unsigned seed, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pattern(i, seed)) {
			feature_fail("%s: byte %zu is 0x%02x, expected 0x%02x", what, i, p[i],
			             pattern(i, seed));
			return;
		}
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX];
	unsigned char buf[8 * PG];

	/* shared anonymous */
	unsigned char *sh =
	        mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	/* memfd: data written with write(), mapped twice, fd open at an offset */
	int mfd = memfd_create("ferry-test", 0);
	fill(buf, sizeof(buf), 7);
	if (sh == MAP_FAILED || mfd < 0 || write(mfd, buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	fill(sh, 16 * PG, 3);
	unsigned char *m1 = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	unsigned char *m2 = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 4 * PG);
	lseek(mfd, 1234, SEEK_SET);
	/* a private file mapping with one page changed */
	snprintf(path, sizeof(path), "%s/mapped.dat", dir);
	int ffd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	memset(buf, 'A', sizeof(buf));
	if (ffd < 0 || write(ffd, buf, 4 * PG) != 4 * PG) {
		printf("FAIL: setup file: %s\n", strerror(errno));
		return 1;
	}
	close(ffd);
	ffd = open(path, O_RDONLY);
	unsigned char *pf = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, ffd, 0);
	close(ffd);
	if (m1 == MAP_FAILED || m2 == MAP_FAILED || pf == MAP_FAILED) {
		printf("FAIL: setup mappings: %s\n", strerror(errno));
		return 1;
	}
	memset(pf + PG, 'B', PG);
	/* data behind PROT_NONE and read-only protections */
	unsigned char *ro =
	        mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *no =
	        mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(ro, 4 * PG, 11);
	fill(no, 4 * PG, 13);
	mprotect(ro, 4 * PG, PROT_READ);
	mprotect(no, 4 * PG, PROT_NONE);

	feature_ready();
	feature_wait_go(dir);

	check(sh, 16 * PG, 3, "shared anonymous");
	check(m1, 8 * PG, 7, "memfd mapping 1");
	if (memcmp(m2, m1 + 4 * PG, 4 * PG) != 0)
		feature_fail("memfd mappings differ where they overlap");
	m1[4 * PG + 5] ^= 0xff; /* still one object: a write through one shows in the other */
	if (m2[5] != m1[4 * PG + 5])
		feature_fail("memfd mappings no longer share pages");
	unsigned char b;
	if (pread(mfd, &b, 1, 4 * PG + 5) != 1 || b != m1[4 * PG + 5])
		feature_fail("memfd fd and mapping differ");
	if (lseek(mfd, 0, SEEK_CUR) != 1234)
		feature_fail("memfd offset %ld, expected 1234", (long)lseek(mfd, 0, SEEK_CUR));
	for (int pg = 0; pg < 4; pg++)
		for (int i = 0; i < PG; i++)
			if (pf[pg * PG + i] != (pg == 1 ? 'B' : 'A')) {
				feature_fail("private file page %d byte %d is 0x%02x", pg, i,
				             pf[pg * PG + i]);
				pg = 4;
				break;
			}
	check(ro, 4 * PG, 11, "read-only anonymous");
	mprotect(no, 4 * PG, PROT_READ);
	check(no, 4 * PG, 13, "PROT_NONE anonymous");
	return feature_finish();
}
