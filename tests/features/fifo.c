/* A FIFO (named pipe) with bytes in it: a read end and a write end in the root, a write end of
 * its own in a child; after go the bytes are read, and the child's end still reaches the root. */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "feature.h"

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX], buf[64] = "";

	snprintf(path, sizeof(path), "%s/ctl.fifo", dir);
	unlink(path);
	int rd = -1, wr = -1;
	if (mkfifo(path, 0600) < 0 || (rd = open(path, O_RDONLY | O_NONBLOCK)) < 0 ||
	    (wr = open(path, O_WRONLY)) < 0 || fcntl(rd, F_SETFL, 0) < 0 ||
	    write(wr, "fifo data", 9) != 9) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	int sync[2], go[2];
	if (pipe(sync) < 0 || pipe(go) < 0)
		return 1;
	pid_t kid = fork();
	if (kid == 0) {
		int w = open(path, O_WRONLY);
		if (w < 0 || write(sync[1], "r", 1) != 1)
			_exit(2);
		char c;
		if (read(go[0], &c, 1) != 1) /* the root passes go on */
			_exit(3);
		_exit(write(w, "child", 5) == 5 ? 0 : 4);
	}
	if (read(sync[0], buf, 1) != 1)
		return 1;
	feature_ready();
	feature_wait_go(dir);
	if (fcntl(rd, F_GETFL) & O_NONBLOCK)
		feature_fail("the read end is nonblocking after restore");
	if ((fcntl(wr, F_GETFL) & O_ACCMODE) != O_WRONLY)
		feature_fail("the write end's access mode changed");
	ssize_t n = read(rd, buf, sizeof(buf));
	if (n != 9 || memcmp(buf, "fifo data", 9) != 0)
		feature_fail("read %zd bytes \"%.*s\", expected \"fifo data\"", n,
		             n > 0 ? (int)n : 0, buf);
	if (write(go[1], "g", 1) != 1)
		feature_fail("go to the child: %s", strerror(errno));
	int st = 0;
	if (waitpid(kid, &st, 0) != kid || st != 0)
		feature_fail("the child ended with status %#x", st);
	n = read(rd, buf, sizeof(buf));
	if (n != 5 || memcmp(buf, "child", 5) != 0)
		feature_fail("from the child's end: %zd bytes", n);
	return feature_finish();
}
