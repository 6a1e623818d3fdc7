/*
 * Feature: an O_DIRECT fd (aligned reads and writes that bypass the page cache) keeps its
 * flag and offset; a second fd on the same file without it keeps its own.
 */
#include "feature.h"

#include <fcntl.h>
#include <stdlib.h>

#define BLK 4096

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX];
	void *buf = NULL;

	snprintf(path, sizeof(path), "%s/direct", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
	int plain = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || plain < 0 || posix_memalign(&buf, BLK, BLK) != 0) {
		printf("FAIL: open %s with O_DIRECT: %s\n", path, strerror(errno));
		return 1;
	}
	memset(buf, 'a', BLK);
	if (write(fd, buf, BLK) != BLK || write(fd, buf, BLK) != BLK) {
		printf("FAIL: O_DIRECT write: %s\n", strerror(errno));
		return 1;
	}
	if (lseek(plain, 100, SEEK_SET) != 100) {
		printf("FAIL: lseek: %s\n", strerror(errno));
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);

	int fl = fcntl(fd, F_GETFL), pfl = fcntl(plain, F_GETFL);
	if (fl < 0 || !(fl & O_DIRECT) || (fl & O_ACCMODE) != O_RDWR)
		feature_fail("O_DIRECT fd: flags 0%o, expected O_RDWR|O_DIRECT", fl);
	if (pfl < 0 || (pfl & O_DIRECT))
		feature_fail("plain fd: flags 0%o, expected no O_DIRECT", pfl);
	if (lseek(fd, 0, SEEK_CUR) != 2 * BLK || lseek(plain, 0, SEEK_CUR) != 100)
		feature_fail("offsets %ld and %ld, expected %d and 100",
		             (long)lseek(fd, 0, SEEK_CUR), (long)lseek(plain, 0, SEEK_CUR),
		             2 * BLK);
	memset(buf, 'b', BLK);
	if (write(fd, buf, BLK) != BLK)
		feature_fail("aligned O_DIRECT write after restore: %s", strerror(errno));
	/* an unaligned transfer is refused only with O_DIRECT */
	if (pwrite(fd, (char *)buf + 1, 100, 1) >= 0 || errno != EINVAL)
		feature_fail("an unaligned write went through: O_DIRECT is not in effect");
	if (pread(fd, buf, BLK, 2 * BLK) != BLK || ((char *)buf)[0] != 'b')
		feature_fail("aligned O_DIRECT read after restore: %s", strerror(errno));
	free(buf);
	return feature_finish();
}
