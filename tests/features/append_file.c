/* Feature: an O_APPEND writer and a reader fd on the same file keep flags, offsets and contents. */
#include "feature.h"

#include <fcntl.h>
#include <sys/stat.h>

static int wfd = -1, rfd = -1, stop;
static long written; /* last number written */

/* Append line n, then read it back through rfd, whose offset must follow the writes. */
static void *writer(void *arg)
{
	char line[32], back[32];

	while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
		long n = written + 1;
		int len = snprintf(line, sizeof(line), "%ld\n", n);

		if (write(wfd, line, (size_t)len) != len) {
			feature_fail("write of line %ld: %s", n, strerror(errno));
			break;
		}
		if (read(rfd, back, (size_t)len) != len || memcmp(line, back, (size_t)len) != 0) {
			feature_fail("reading back line %ld: got \"%.*s\"", n, len - 1, back);
			break;
		}
		__atomic_store_n(&written, n, __ATOMIC_RELEASE);
		feature_sleep_ms(2);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX];
	struct stat st, pst;
	pthread_t th;

	snprintf(path, sizeof(path), "%s/append.txt", dir);
	wfd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	rfd = open(path, O_RDONLY | O_CLOEXEC);
	if (wfd < 0 || rfd < 0 || pthread_create(&th, NULL, writer, NULL) != 0) {
		feature_fail("setup: %s", strerror(errno));
		return feature_finish();
	}
	while (__atomic_load_n(&written, __ATOMIC_ACQUIRE) < 20)
		feature_sleep_ms(5);
	feature_ready();
	feature_wait_go(dir);

	long at_go = __atomic_load_n(&written, __ATOMIC_ACQUIRE);
	feature_sleep_ms(100); /* the writer keeps going after go */
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	if (feature_join(th, NULL, "writer", 5) != 0)
		return feature_finish();
	if (written <= at_go)
		feature_fail("writer stopped at line %ld", at_go);

	/* The file holds 1..written, each once, in order. */
	FILE *f = fopen(path, "r");
	long expect = 1, n;
	while (f && fscanf(f, "%ld", &n) == 1) {
		if (n != expect) {
			feature_fail("line %ld of %s is %ld", expect, path, n);
			break;
		}
		expect++;
	}
	if (!f)
		feature_fail("reopen %s: %s", path, strerror(errno));
	else
		fclose(f);
	if (expect - 1 != written)
		feature_fail("%s has %ld lines, the writer wrote %ld", path, expect - 1, written);

	/* Both fds still name that file, with their flags and offsets at its end. */
	int wfl = fcntl(wfd, F_GETFL), rfl = fcntl(rfd, F_GETFL);
	if (stat(path, &pst) < 0 || fstat(wfd, &st) < 0 || st.st_ino != pst.st_ino)
		feature_fail("the append fd no longer refers to %s", path);
	if (wfl < 0 || (wfl & (O_ACCMODE | O_APPEND)) != (O_WRONLY | O_APPEND))
		feature_fail("append fd flags %#x", wfl);
	if (rfl < 0 || (rfl & O_ACCMODE) != O_RDONLY)
		feature_fail("read fd flags %#x", rfl);
	if (fcntl(wfd, F_GETFD) != FD_CLOEXEC || fcntl(rfd, F_GETFD) != FD_CLOEXEC)
		feature_fail("FD_CLOEXEC lost");
	if (lseek(wfd, 0, SEEK_CUR) != pst.st_size)
		feature_fail("append fd offset %lld, file size %lld",
		             (long long)lseek(wfd, 0, SEEK_CUR), (long long)pst.st_size);
	if (lseek(rfd, 0, SEEK_CUR) != pst.st_size)
		feature_fail("read fd offset %lld, file size %lld",
		             (long long)lseek(rfd, 0, SEEK_CUR), (long long)pst.st_size);
	return feature_finish();
}
