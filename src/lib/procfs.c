/* Readers of /proc/PID: mappings with their flags, stat fields, status lines. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "procfs.h"
#include "util.h"

/* Parse /proc/PID/smaps (VmFlags included) or /proc/PID/maps (which = "maps": no flags). */
static int parse_maps(pid_t pid, const char *which, struct proc_map **ret, size_t *ret_n)
{
	char path[64];
	_cleanup_free_ char *buf = NULL;
	struct proc_map *maps = NULL;
	size_t n = 0;
	int r;

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, which);
	r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		unsigned long s, e, off, ino;
		unsigned maj, min;
		char perms[5];
		int pos = 0;

		if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu %n", &s, &e, perms, &off, &maj, &min,
		           &ino, &pos) >= 7 &&
		    pos > 0) {
			if (GROW(maps, n) < 0) {
				free(maps);
				return -ENOMEM;
			}
			struct proc_map *m = &maps[n++];
			memset(m, 0, sizeof(*m));
			m->start = s;
			m->end = e;
			m->pgoff = off;
			m->dev_major = maj;
			m->dev_minor = min;
			m->ino = ino;
			memcpy(m->perms, perms, sizeof(perms));
			snprintf(m->path, sizeof(m->path), "%s", line + pos);
		} else if (n > 0 && strncmp(line, "VmFlags:", 8) == 0) {
			snprintf(maps[n - 1].vmflags, sizeof(maps[n - 1].vmflags), "%s", line + 8);
		}
	}
	*ret = maps;
	*ret_n = n;
	return 0;
}

int procfs_maps(pid_t pid, struct proc_map **ret, size_t *ret_n)
{
	return parse_maps(pid, "smaps", ret, ret_n);
}

int procfs_maps_noflags(pid_t pid, struct proc_map **ret, size_t *ret_n)
{
	return parse_maps(pid, "maps", ret, ret_n);
}

static bool same_vma(const struct proc_map *a, const struct proc_map *b)
{
	return a->start == b->start && a->end == b->end && a->pgoff == b->pgoff &&
	       a->ino == b->ino && a->dev_major == b->dev_major && a->dev_minor == b->dev_minor &&
	       strcmp(a->perms, b->perms) == 0 && strcmp(a->path, b->path) == 0;
}

int procfs_maps_refresh(pid_t pid, const struct proc_map *old, size_t nold, struct proc_map **ret,
                        size_t *ret_n)
{
	struct proc_map *maps = NULL;
	size_t n = 0;
	int r = parse_maps(pid, "maps", &maps, &n);

	if (r < 0)
		return r;
	/* both lists are in address order */
	for (size_t i = 0, j = 0; i < n; i++) {
		while (j < nold && old[j].start < maps[i].start)
			j++;
		if (j == nold || !same_vma(&old[j], &maps[i])) {
			free(maps);
			return procfs_maps(pid, ret, ret_n); /* changed meanwhile: read it all */
		}
		memcpy(maps[i].vmflags, old[j].vmflags, sizeof(maps[i].vmflags));
	}
	*ret = maps;
	*ret_n = n;
	return 0;
}

int procfs_vmflag(const struct proc_map *m, const char *code)
{
	for (const char *p = m->vmflags; *p; p++) {
		if (p[0] == code[0] && p[1] == code[1] && (p[2] == ' ' || p[2] == '\0') &&
		    (p == m->vmflags || p[-1] == ' '))
			return 1;
	}
	return 0;
}

int procfs_stat(pid_t pid, uint64_t fields[PROCFS_STAT_FIELDS])
{
	char path[64];
	_cleanup_free_ char *buf = NULL;
	int r, i = 3;
	char *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	memset(fields, 0, sizeof(uint64_t) * PROCFS_STAT_FIELDS);
	/* comm may hold spaces and parentheses: fields resume after the last ')'. */
	p = strrchr(buf, ')');
	if (!p)
		return -EPROTO;
	p += 2;
	fields[1] = (uint64_t)pid;
	/* field 3 is the state letter */
	fields[3] = (uint64_t)(unsigned char)*p;
	p = strchr(p, ' ');
	while (p && ++i < PROCFS_STAT_FIELDS) {
		fields[i] = strtoull(p + 1, &p, 10);
		if (*p != ' ')
			break;
	}
	return 0;
}

int procfs_status_u64(pid_t pid, const char *key, int base, uint64_t *ret)
{
	char path[64];
	_cleanup_free_ char *buf = NULL;
	size_t klen = strlen(key);
	int r;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	for (char *line = buf; line && *line;
	     line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
			*ret = strtoull(line + klen + 1, NULL, base);
			return 0;
		}
	}
	return -ENOENT;
}

int procfs_tids(pid_t pid, pid_t **ret, size_t *ret_n)
{
	char path[64];
	DIR *d;
	struct dirent *de;
	pid_t *tids = NULL;
	size_t n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	d = opendir(path);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		if (GROW(tids, n) < 0) {
			closedir(d);
			free(tids);
			return -ENOMEM;
		}
		tids[n++] = (pid_t)atoi(de->d_name);
	}
	closedir(d);
	*ret = tids;
	*ret_n = n;
	return 0;
}

/* The last number on the "\nKEY:" line of status text (the innermost namespace's view). */
static int ns_last(const char *buf, const char *key, pid_t *ret)
{
	char want[16];
	const char *p, *last;

	snprintf(want, sizeof(want), "\n%s:", key);
	p = strstr(buf, want);
	if (!p)
		return -ENOENT;
	p += strlen(want);
	last = p;
	while (*p && *p != '\n') {
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p >= '0' && *p <= '9')
			last = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n')
			p++;
	}
	*ret = (pid_t)atoi(last);
	return 0;
}

int procfs_ns_tid(pid_t pid, pid_t tid, pid_t *ret)
{
	char path[96];
	_cleanup_free_ char *buf = NULL;
	int r;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/status", pid, tid);
	r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	return ns_last(buf, "NSpid", ret);
}

int procfs_ns_ids(pid_t pid, pid_t *ret_pid, pid_t *ret_pgid, pid_t *ret_sid, char *ret_state)
{
	char path[64];
	_cleanup_free_ char *buf = NULL;
	int r;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	const char *st = strstr(buf, "\nState:");
	*ret_state = st ? st[strspn(st + 7, " \t") + 7] : '?';
	if ((r = ns_last(buf, "NSpid", ret_pid)) < 0 ||
	    (r = ns_last(buf, "NSpgid", ret_pgid)) < 0 || (r = ns_last(buf, "NSsid", ret_sid)) < 0)
		return r;
	return 0;
}

int procfs_children(pid_t pid, pid_t **ret, size_t *ret_n)
{
	_cleanup_free_ pid_t *tids = NULL;
	pid_t *kids = NULL;
	size_t ntids = 0, n = 0;
	int r = procfs_tids(pid, &tids, &ntids);

	if (r < 0)
		return r;
	for (size_t i = 0; i < ntids; i++) {
		char path[96];
		_cleanup_free_ char *text = NULL;
		snprintf(path, sizeof(path), "/proc/%d/task/%d/children", pid, tids[i]);
		if (read_file(path, &text, NULL) < 0)
			continue; /* the thread exited meanwhile */
		for (char *p = text, *end; *p;) {
			long k = strtol(p, &end, 10);
			if (end == p)
				break;
			p = end;
			if (k <= 0)
				continue;
			if (GROW(kids, n) < 0) {
				free(kids);
				return -ENOMEM;
			}
			kids[n++] = (pid_t)k;
		}
	}
	*ret = kids;
	*ret_n = n;
	return 0;
}
