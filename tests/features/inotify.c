/*
 * inotify: watches on a directory, a subdirectory and a file, with a gap in the watch
 * descriptors (a watch removed before the checkpoint). After the restore no event is queued
 * that was not there, and changes to each watched object come as events with the old watch
 * descriptors and the masks they had.
 */
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "feature.h"

/* The next event within 2 s; 0 and FAIL if none. */
static int next_event(int fd, struct inotify_event *ev, size_t len, const char *what)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	if (poll(&p, 1, 2000) != 1) {
		feature_fail("%s: no event within 2 s", what);
		return 0;
	}
	ssize_t n = read(fd, ev, len);
	if (n < (ssize_t)sizeof(*ev)) {
		feature_fail("%s: read %zd bytes of events: %s", what, n, strerror(errno));
		return 0;
	}
	return 1;
}

static void expect(int fd, int wd, uint32_t mask, const char *name, const char *what)
{
	union {
		struct inotify_event ev;
		char buf[4096];
	} u;
	if (!next_event(fd, &u.ev, sizeof(u), what))
		return;
	if (u.ev.wd != wd || !(u.ev.mask & mask))
		feature_fail("%s: event wd %d mask 0x%x, expected wd %d mask 0x%x", what, u.ev.wd,
		             u.ev.mask, wd, mask);
	if (name && (!u.ev.len || strcmp(u.ev.name, name) != 0))
		feature_fail("%s: event names '%s', expected '%s'", what, u.ev.len ? u.ev.name : "",
		             name);
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	char d[PATH_MAX], sub[PATH_MAX], f1[PATH_MAX], f2[PATH_MAX], p[PATH_MAX + 64];
	char name[64];
	union {
		struct inotify_event ev;
		char buf[4096];
	} u;
	int queued = -1;

	snprintf(d, sizeof(d), "%s/watched", dir);
	snprintf(sub, sizeof(sub), "%s/sub", d);
	snprintf(f1, sizeof(f1), "%s/one", d);
	snprintf(f2, sizeof(f2), "%s/two", d);
	mkdir(d, 0700);
	mkdir(sub, 0700);
	close(open(f1, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
	close(open(f2, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));

	int fd = inotify_init1(IN_CLOEXEC);
	int wd_dir = inotify_add_watch(fd, d, IN_CREATE | IN_DELETE);
	int wd_gone = inotify_add_watch(fd, f1, IN_MODIFY);
	int wd_sub = inotify_add_watch(fd, sub, IN_CREATE);
	int wd_file = inotify_add_watch(fd, f2, IN_CLOSE_WRITE);
	if (fd < 0 || wd_dir < 0 || wd_gone < 0 || wd_sub < 0 || wd_file < 0) {
		printf("FAIL: inotify setup: %s\n", strerror(errno));
		return 1;
	}
	inotify_rm_watch(fd, wd_gone); /* a gap; its IN_IGNORED is read now */
	expect(fd, wd_gone, IN_IGNORED, NULL, "removed watch");
	feature_ready();
	feature_wait_go(dir);

	if (ioctl(fd, FIONREAD, &queued) < 0 || queued != 0)
		feature_fail("%d bytes of events queued after the restore, expected none", queued);
	snprintf(name, sizeof(name), "new-%d-%ld", (int)getpid(),
	         (long)feature_now(CLOCK_REALTIME));
	snprintf(p, sizeof(p), "%s/%s", d, name);
	close(open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
	expect(fd, wd_dir, IN_CREATE, name, "file created in the watched directory");
	snprintf(p, sizeof(p), "%s/%s", sub, name);
	mkdir(p, 0700);
	expect(fd, wd_sub, IN_CREATE, name, "directory created in the watched subdirectory");
	int w = open(f2, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (write(w, "x", 1) != 1)
		feature_fail("writing %s: %s", f2, strerror(errno));
	close(w);
	expect(fd, wd_file, IN_CLOSE_WRITE, NULL, "watched file written and closed");
	/* the removed watch stays removed: a write to its file says nothing */
	w = open(f1, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (write(w, "x", 1) != 1)
		feature_fail("writing %s: %s", f1, strerror(errno));
	close(w);
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	if (poll(&pf, 1, 200) == 1 && read(fd, &u, sizeof(u)) > 0)
		feature_fail("an event (wd %d mask 0x%x) after writing an unwatched file", u.ev.wd,
		             u.ev.mask);
	return feature_finish();
}
