/* Control groups (v2) of components being migrated: freezing that outlasts ferry. */
#include <fcntl.h>
#include <mntent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgroup.h"
#include "util.h"

int cgroup_root(char *buf, size_t len)
{
	FILE *f = setmntent("/proc/self/mounts", "re");
	struct mntent *m;
	int r = -ENOENT;

	if (!f)
		return -errno;
	while ((m = getmntent(f))) {
		if (strcmp(m->mnt_type, "cgroup2") != 0)
			continue;
		snprintf(buf, len, "%s", m->mnt_dir);
		r = 0;
		break;
	}
	endmntent(f);
	return r;
}

static int write_str(const char *dir, const char *file, const char *val)
{
	char path[PATH_MAX];
	_cleanup_close_ int fd = -EBADF;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	return write_full(fd, val, strlen(val));
}

int cgroup_adopt(const char *name, pid_t pid, char *ret_path, size_t len, struct ferry_error *err)
{
	char root[PATH_MAX], pidbuf[32];
	int r = cgroup_root(root, sizeof(root));

	if (r < 0)
		return ferr(err, r,
		            "no cgroup v2 hierarchy mounted (needed to freeze a component "
		            "across the hand-over of a migration)");
	snprintf(ret_path, len, "%s/%s", root, name);
	if (mkdir(ret_path, 0755) < 0 && errno != EEXIST)
		return ferr(err, -errno, "cgroup %s: %m", ret_path);
	char probe[PATH_MAX];
	snprintf(probe, sizeof(probe), "%s/cgroup.freeze", ret_path);
	if (access(probe, W_OK) < 0)
		return ferr(err, -errno, "cgroup %s: no cgroup.freeze (kernel < 5.2?): %m",
		            ret_path);
	snprintf(pidbuf, sizeof(pidbuf), "%d\n", pid);
	r = write_str(ret_path, "cgroup.procs", pidbuf);
	if (r < 0)
		return ferr(err, r, "moving pid %d into cgroup %s: %s", pid, ret_path,
		            strerror(-r));
	return 0;
}

int cgroup_freeze(const char *path, bool frozen, struct ferry_error *err)
{
	int r = write_str(path, "cgroup.freeze", frozen ? "1\n" : "0\n");
	if (r < 0)
		return ferr(err, r, "cgroup %s: %s: %s", path, frozen ? "freezing" : "thawing",
		            strerror(-r));
	return 0;
}

int cgroup_populated(const char *path)
{
	char p[PATH_MAX];
	_cleanup_free_ char *buf = NULL;

	snprintf(p, sizeof(p), "%s/cgroup.events", path);
	int r = read_file(p, &buf, NULL);
	if (r < 0)
		return r;
	const char *s = strstr(buf, "populated ");
	return s && s[10] == '1';
}

int cgroup_kill(const char *path, struct ferry_error *err)
{
	int r = write_str(path, "cgroup.kill", "1\n");
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return ferr(err, r, "cgroup %s: kill: %s", path, strerror(-r));
	/* the processes die asynchronously; their parent (the monitor) reaps them */
	for (int i = 0; i < 1000 && cgroup_populated(path) == 1; i++)
		usleep(2000);
	if (cgroup_populated(path) == 1)
		return ferr(err, -EBUSY, "cgroup %s: processes left after kill", path);
	return 0;
}

int cgroup_remove(const char *path)
{
	if (rmdir(path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int cgroup_release(const char *path)
{
	char root[PATH_MAX], p[PATH_MAX + 16];
	_cleanup_free_ char *procs = NULL;
	int r = cgroup_root(root, sizeof(root));

	if (r < 0)
		return r;
	snprintf(p, sizeof(p), "%s/cgroup.procs", path);
	if (read_file(p, &procs, NULL) == 0) {
		for (char *line = strtok(procs, "\n"); line; line = strtok(NULL, "\n")) {
			char pid[32];
			snprintf(pid, sizeof(pid), "%s\n", line);
			(void)write_str(root, "cgroup.procs", pid);
		}
	}
	return cgroup_remove(path);
}

int cgroup_probe(char *detail, size_t len)
{
	char root[PATH_MAX], path[PATH_MAX + 32];
	int r = cgroup_root(root, sizeof(root));

	if (r < 0) {
		snprintf(detail, len, "no cgroup v2 hierarchy mounted: migration cannot hand over");
		return 0;
	}
	snprintf(path, sizeof(path), "%s/ferry-probe-%d", root, (int)getpid());
	if (mkdir(path, 0755) < 0) {
		snprintf(detail, len, "cgroup v2 at %s: cannot create a group: %s", root,
		         strerror(errno));
		return 0;
	}
	struct ferry_error e = {0};
	r = cgroup_freeze(path, true, &e);
	if (r == 0)
		r = cgroup_freeze(path, false, &e);
	(void)rmdir(path);
	if (r < 0) {
		snprintf(detail, len, "%s", e.msg);
		return 0;
	}
	snprintf(detail, len, "cgroup v2 at %s: groups freeze (cgroup.freeze)", root);
	return 1;
}
