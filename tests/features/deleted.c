/* Files deleted while open (unlinked, and O_TMPFILE) keep their content and offset. */
#include <fcntl.h>
#include <sys/stat.h>

#include "feature.h"

#define N 10000

static unsigned char pat(int i, int seed)
{
	return (unsigned char)(i * 31 + seed + i / 97);
}

static void check(int fd, int seed, off_t pos, const char *what)
{
	static unsigned char buf[N];
	struct stat sb;

	if (fstat(fd, &sb) < 0 || sb.st_nlink != 0 || sb.st_size != N)
		feature_fail("%s: links %ld, size %ld", what, (long)sb.st_nlink, (long)sb.st_size);
	if (lseek(fd, 0, SEEK_CUR) != pos)
		feature_fail("%s: offset %ld, expected %ld", what, (long)lseek(fd, 0, SEEK_CUR),
		             (long)pos);
	if (pread(fd, buf, N, 0) != N)
		feature_fail("%s: short read", what);
	for (int i = 0; i < N; i++)
		if (buf[i] != pat(i, seed)) {
			feature_fail("%s: byte %d differs", what, i);
			return;
		}
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX];
	unsigned char buf[N];

	snprintf(path, sizeof(path), "%s/gone.dat", dir);
	int a = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	int b = open(dir, O_TMPFILE | O_RDWR, 0600);
	for (int i = 0; i < N; i++)
		buf[i] = pat(i, 1);
	if (a < 0 || b < 0 || write(a, buf, N) != N) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < N; i++)
		buf[i] = pat(i, 2);
	if (write(b, buf, N) != N || unlink(path) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	lseek(a, 1234, SEEK_SET);
	feature_ready();
	feature_wait_go(dir);

	check(a, 1, 1234, "unlinked file");
	check(b, 2, N, "O_TMPFILE file");
	if (access(path, F_OK) == 0)
		feature_fail("the deleted file reappeared at %s", path);
	return feature_finish();
}
