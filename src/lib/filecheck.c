/*
 * The files a migrating component uses (its executable, mapped files, open regular files and
 * directories), listed with size and XXH3 by the source and compared by content at the
 * destination.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <xxhash.h>
#include "image.h"
#include "model.h"
#include "migrate.h"
#include "procfs.h"
#include "services.h"
#include "session.h"
#include "util.h"

/* ---- files the component uses: compared by content at the destination ---- */

static int file_digest(const char *path, uint64_t *size, uint64_t *hash)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	_cleanup_free_ char *buf = NULL;
	XXH3_state_t *st;
	struct stat sb;
	ssize_t n;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) < 0)
		return -errno;
	if (!S_ISREG(sb.st_mode)) {
		*size = 0;
		*hash = S_ISDIR(sb.st_mode) ? 1 : 2;
		return 0;
	}
	buf = malloc(MIG_CHUNK);
	st = XXH3_createState();
	if (!buf || !st) {
		XXH3_freeState(st);
		return -ENOMEM;
	}
	XXH3_64bits_reset(st);
	*size = 0;
	while ((n = read(fd, buf, MIG_CHUNK)) > 0) {
		XXH3_64bits_update(st, buf, (size_t)n);
		*size += (uint64_t)n;
	}
	*hash = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return n < 0 ? -errno : 0;
}

int add_path(char ***v, size_t *n, const char *p)
{
	if (!p || p[0] != '/' || strchr(p, '\n') || strchr(p, '\t') || strlen(p) >= 4000)
		return 0;
	for (size_t i = 0; i < *n; i++)
		if (strcmp((*v)[i], p) == 0)
			return 0;
	char **nv = realloc(*v, (*n + 1) * sizeof(char *));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	if (!(nv[*n] = strdup(p)))
		return -ENOMEM;
	(*n)++;
	return 0;
}

void free_paths(char **paths, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
}

/* The model of image dir. */
int image_model(const char *dir, struct component **ret, struct ferry_error *err)
{
	struct image_reader *rd = NULL;
	int r = image_reader_open(dir, &rd, err);

	if (r == 0)
		r = model_load(rd, ret, err);
	image_reader_free(rd);
	return r;
}

/* A session in the list: SERVICES_DIR/services/NAME (unix), /tcp/NAME or /rom/NAME (not
 * paths the component opens: names the destination must declare, of that kind). */
static int add_session(char ***paths, size_t *np, const char *name, uint64_t kind)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), SERVICES_DIR "/%s/%s",
	         kind == FERRY_SERVICE_ROM   ? "rom"
	         : kind == FERRY_SERVICE_TCP ? "tcp"
	                                     : "services",
	         name);
	return add_path(paths, np, path);
}

/* The files a component uses: its executable, mapped files, regular files and directories
 * open. */
int model_paths(const struct component *c, char ***paths, size_t *np, struct ferry_error *err)
{
	int r = 0;

	for (size_t k = 0; r == 0 && k < c->nprocs; k++) {
		const struct process *p = &c->procs[k];
		if (p->zombie)
			continue;
		r = add_path(paths, np, p->exe);
		for (size_t i = 0; r == 0 && i < p->nvmas; i++)
			if (p->vmas[i].kind == VMA_FILE_PRIVATE ||
			    p->vmas[i].kind == VMA_FILE_SHARED)
				r = add_path(paths, np, p->vmas[i].path);
		for (size_t i = 0; r == 0 && i < p->nfds; i++) {
			const struct fd_entry *e = &p->fds[i];
			if (e->kind == FD_FILE && e->path)
				r = add_path(paths, np, e->path);
			else if (e->kind == FD_SESSION && e->path)
				r = add_session(paths, np, e->path,
				                e->nextra > SS_KIND ? e->extra[SS_KIND]
				                                    : FERRY_SERVICE_UNIX);
		}
	}
	return r < 0 ? ferr(err, r, "out of memory") : 0;
}

/*
 * The same, read from /proc while the component runs (a checkpoint checks again, frozen). The
 * log (its stdout and stderr) is left out: it moves along (send_log) and grows meanwhile.
 */
int proc_paths(const struct ferry_runtime *rt, pid_t pid, const char *log_path, char ***paths,
               size_t *np)
{
	char path[64], buf[PATH_MAX];
	ssize_t n;
	int r;

	snprintf(path, sizeof(path), "/proc/%d/exe", pid);
	n = readlink(path, buf, sizeof(buf) - 1);
	if (n > 0) {
		buf[n] = '\0';
		if ((r = add_path(paths, np, buf)) < 0)
			return r;
	}
	struct proc_map *maps = NULL;
	size_t nmaps = 0;
	if (procfs_maps(pid, &maps, &nmaps) == 0) {
		for (size_t i = 0; i < nmaps; i++)
			if (maps[i].ino && maps[i].path[0] == '/' &&
			    !strstr(maps[i].path, " (deleted)") &&
			    (r = add_path(paths, np, maps[i].path)) < 0)
				break;
		free(maps);
	}
	struct stat log_sb;
	bool have_log = stat(log_path, &log_sb) == 0;
	/* sessions: sockets connected to a service of this node */
	_cleanup_free_ struct ferry_service *sv = NULL;
	size_t nsv = 0;
	(void)ferry_services_list(rt, &sv, &nsv, NULL);
	_cleanup_free_ struct svc_addr *addrs = NULL;
	size_t naddrs = 0;
	if (services_tcp_addrs(sv, nsv, &addrs, &naddrs) < 0)
		return -ENOMEM;
	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	DIR *d = opendir(path);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		char fdp[PATH_MAX];
		struct stat sb;
		snprintf(fdp, sizeof(fdp), "%s/%s", path, de->d_name);
		n = readlink(fdp, buf, sizeof(buf) - 1);
		if (n > 0 && nsv && stat(fdp, &sb) == 0 && S_ISSOCK(sb.st_mode)) {
			_cleanup_close_ int s = pidfd_getfd_of(pid, atoi(de->d_name));
			struct sockaddr_storage ss = {0};
			socklen_t sl = sizeof(ss) - 1;
			if (s < 0 || getpeername(s, (struct sockaddr *)&ss, &sl) < 0 ||
			    sl <= sizeof(sa_family_t))
				continue;
			if (ss.ss_family != AF_UNIX) {
				int i = services_tcp_peer(addrs, naddrs, (struct sockaddr *)&ss,
				                          sl);
				if (i >= 0 &&
				    add_session(paths, np, sv[i].name, FERRY_SERVICE_TCP) < 0)
					break;
				continue;
			}
			const struct sockaddr_un *sa = (const struct sockaddr_un *)&ss;
			for (size_t i = 0; i < nsv; i++)
				if (sv[i].kind == FERRY_SERVICE_UNIX &&
				    strcmp(sv[i].target, sa->sun_path) == 0 &&
				    add_session(paths, np, sv[i].name, FERRY_SERVICE_UNIX) < 0)
					break;
			continue;
		}
		if (n <= 0 || stat(fdp, &sb) < 0 || !(S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)))
			continue;
		buf[n] = '\0';
		if (strstr(buf, " (deleted)") ||
		    (have_log && sb.st_dev == log_sb.st_dev && sb.st_ino == log_sb.st_ino))
			continue;
		if (add_path(paths, np, buf) < 0)
			break;
	}
	if (d)
		closedir(d);
	return 0;
}

/* The list sent in MSG_FILES: "path\tsize\thash\n" per file. */
int files_list(char **paths, size_t np, char **ret, size_t *ret_len, struct ferry_error *err)
{
	size_t len = 0, cap = 0;
	char *out = NULL;
	int r = 0;

	for (size_t i = 0; r == 0 && i < np; i++) {
		uint64_t size = 0, hash = 0;
		/* a session's service: the destination's own, by name, whatever its content */
		bool service = strncmp(paths[i], SERVICES_DIR "/", strlen(SERVICES_DIR) + 1) == 0;
		int e = service ? 0 : file_digest(paths[i], &size, &hash);
		if (e < 0) {
			r = ferr(err, e, "file %s: %s", paths[i], strerror(-e));
			break;
		}
		if (len + MIG_FILE_LINE > cap) {
			cap = cap * 2 + 2 * MIG_FILE_LINE;
			char *no = realloc(out, cap);
			if (!no) {
				r = ferr(err, -ENOMEM, "out of memory");
				break;
			}
			out = no;
		}
		len += (size_t)snprintf(out + len, cap - len, "%s\t%" PRIu64 "\t%016" PRIx64 "\n",
		                        paths[i], size, hash);
	}
	if (r < 0) {
		free(out);
		return r;
	}
	*ret = out ? out : strdup("");
	*ret_len = len;
	return 0;
}

/* Destination: the lines of list that differ here ("path: why"); *ret NULL if none. */
int files_compare(const char *list, size_t len, const struct ferry_service *sv, size_t nsv,
                  char **ret, size_t *ret_len)
{
	char *out = NULL;
	size_t olen = 0, cap = 0;
	const char *p = list, *end = list + len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			break;
		char line[MIG_FILE_LINE], why[160] = "";
		size_t ll = MIN((size_t)(nl - p), sizeof(line) - 1);
		memcpy(line, p, ll);
		line[ll] = '\0';
		p = nl + 1;
		char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
		if (!t2)
			continue;
		*t1 = *t2 = '\0';
		uint64_t size = strtoull(t1 + 1, NULL, 10), hash = strtoull(t2 + 1, NULL, 16);
		uint64_t hs = 0, hh = 0;
		int e = 0;
		if (strncmp(line, SERVICES_DIR "/", strlen(SERVICES_DIR) + 1) == 0) {
			/* a session: this node must declare the service, of the same kind */
			const char *name = strrchr(line, '/') + 1;
			const char *sub = line + strlen(SERVICES_DIR) + 1;
			enum ferry_service_kind kind =
			        strncmp(sub, "rom/", 4) == 0   ? FERRY_SERVICE_ROM
			        : strncmp(sub, "tcp/", 4) == 0 ? FERRY_SERVICE_TCP
			                                       : FERRY_SERVICE_UNIX;
			bool have = false;
			for (size_t i = 0; i < nsv && !have; i++)
				have = strcmp(sv[i].name, name) == 0 && sv[i].kind == kind;
			if (!have)
				snprintf(why, sizeof(why), "this node declares no %s service %s",
				         ferry_service_kind_name(kind), name);
		} else if ((e = file_digest(line, &hs, &hh)) < 0)
			snprintf(why, sizeof(why), "%s", strerror(-e));
		else if (hh != hash && (hash <= 2 || hh <= 2))
			snprintf(why, sizeof(why), "not the same type of file");
		else if (hs != size)
			snprintf(why, sizeof(why),
			         "size %" PRIu64 " here, %" PRIu64 " at the source", hs, size);
		else if (hh != hash)
			snprintf(why, sizeof(why), "content differs");
		if (!why[0])
			continue;
		if (olen + strlen(line) + strlen(why) + 8 > cap) {
			cap = cap * 2 + 8192;
			char *no = realloc(out, cap);
			if (!no) {
				free(out);
				return -ENOMEM;
			}
			out = no;
		}
		olen += (size_t)snprintf(out + olen, cap - olen, "%s: %s\n", line, why);
	}
	*ret = out;
	*ret_len = olen;
	return 0;
}
