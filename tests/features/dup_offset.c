/* Dup'ed fds share one open file description (offset) after restore; a second open does not. */
#include <fcntl.h>

#include "feature.h"

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX], buf[100];

	snprintf(path, sizeof(path), "%s/shared.dat", dir);
	for (int i = 0; i < 100; i++)
		buf[i] = (char)('a' + i % 26);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	lseek(fd, 10, SEEK_SET);
	int twin = dup(fd);
	int other = open(path, O_RDONLY);
	lseek(other, 50, SEEK_SET);
	feature_ready();
	feature_wait_go(dir);

	char c[5];
	if (lseek(twin, 0, SEEK_CUR) != 10)
		feature_fail("dup'ed fd at offset %ld, expected 10",
		             (long)lseek(twin, 0, SEEK_CUR));
	if (read(fd, c, 5) != 5 || memcmp(c, buf + 10, 5) != 0)
		feature_fail("reading at offset 10 through the first fd");
	if (lseek(twin, 0, SEEK_CUR) != 15)
		feature_fail("the dup'ed fd no longer shares the offset (%ld, expected 15)",
		             (long)lseek(twin, 0, SEEK_CUR));
	if (lseek(other, 0, SEEK_CUR) != 50)
		feature_fail("the separately opened fd moved to %ld (expected 50)",
		             (long)lseek(other, 0, SEEK_CUR));
	return feature_finish();
}
