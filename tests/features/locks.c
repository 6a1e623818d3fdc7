/* File locks: a POSIX record lock, a flock lock and an open file description lock are held
 * again after restore. */
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>

#include "feature.h"

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char p1[PATH_MAX], p2[PATH_MAX], p3[PATH_MAX];

	snprintf(p1, sizeof(p1), "%s/posix.lck", dir);
	snprintf(p2, sizeof(p2), "%s/flock.lck", dir);
	snprintf(p3, sizeof(p3), "%s/ofd.lck", dir);
	int f1 = open(p1, O_RDWR | O_CREAT, 0600), f2 = open(p2, O_RDWR | O_CREAT, 0600);
	int f3 = open(p3, O_RDWR | O_CREAT, 0600);
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 90};
	struct flock ofd = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 50};
	if (f1 < 0 || f2 < 0 || f3 < 0 || fcntl(f1, F_SETLK, &fl) < 0 ||
	    flock(f2, LOCK_EX | LOCK_NB) < 0 || fcntl(f3, F_OFD_SETLK, &ofd) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);

	/* another process must see both locks held */
	pid_t child = fork();
	if (child == 0) {
		int g1 = open(p1, O_RDWR), g2 = open(p2, O_RDWR), g3 = open(p3, O_RDWR);
		struct flock q = {
		        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
		if (fcntl(g1, F_GETLK, &q) < 0 || q.l_type != F_WRLCK || q.l_start != 10 ||
		    q.l_len != 90)
			_exit(1);
		if (flock(g2, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
			_exit(2);
		struct flock o = {
		        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
		if (fcntl(g3, F_OFD_GETLK, &o) < 0 || o.l_type != F_RDLCK || o.l_start != 0 ||
		    o.l_len != 50)
			_exit(3);
		_exit(0);
	}
	int st = 0;
	if (child < 0 || waitpid(child, &st, 0) != child)
		feature_fail("fork: %s", strerror(errno));
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		feature_fail("%s", WEXITSTATUS(st) == 1 ? "the POSIX lock on bytes 10-99 is gone"
		                   : WEXITSTATUS(st) == 2
		                           ? "the flock lock is gone"
		                           : "the OFD read lock on bytes 0-49 is gone");
	return feature_finish();
}
