/*
 * Feature: a checkpoint refuses an inotify fd holding events the program has not read (they
 * could not be put back), naming its fd, and leaves the program running with the event still
 * there to read.
 */
#include "feature.h"

#include <fcntl.h>
#include <sys/inotify.h>

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char path[PATH_MAX];
	long ticks = 0;
	union {
		struct inotify_event ev;
		char buf[4096];
	} u;
	int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	int wd = fd < 0 ? -1 : inotify_add_watch(fd, dir, IN_CREATE);

	snprintf(path, sizeof(path), "%s/queued-event", dir);
	if (wd < 0 || close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) < 0) {
		feature_fail("inotify: %s", strerror(errno));
		return feature_finish();
	}
	printf("FD %d\n", fd); /* the harness expects the refusal to name this fd */
	feature_ready();
	while (!feature_go(dir)) { /* keep doing work: the refused checkpoint must not stop it */
		feature_sleep_ms(10);
		ticks++;
	}
	ssize_t n = read(fd, &u, sizeof(u));
	if (n < (ssize_t)sizeof(u.ev) || u.ev.wd != wd || !(u.ev.mask & IN_CREATE) ||
	    strcmp(u.ev.name, "queued-event") != 0)
		feature_fail("the queued event is gone or changed (read %zd)", n);
	if (ticks == 0)
		feature_fail("no progress before go");
	return feature_finish();
}
