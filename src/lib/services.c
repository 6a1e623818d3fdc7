/*
 * Node services: what a ferryd declares (--service NAME=KIND:TARGET, --config FILE), published
 * in its state directory (.services, one service a line: NAME KIND TARGET) for the CLI's
 * `ferry services` and for the monitors of its components.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/ferry.h"
#include "model.h"
#include "services.h"
#include "util.h"

static const char *const kind_names[] = {
        [FERRY_SERVICE_UNIX] = "unix",
        [FERRY_SERVICE_TCP] = "tcp",
        [FERRY_SERVICE_ROM] = "rom",
};

const char *ferry_service_kind_name(enum ferry_service_kind k)
{
	return k >= FERRY_SERVICE_UNIX && k <= FERRY_SERVICE_ROM ? kind_names[k] : "?";
}

/* HOST:PORT (or [V6]:PORT) with a port number; 0 or -EINVAL. */
static int host_port(const char *t)
{
	char host[256], port[16];

	if (addr_split(t, host, sizeof(host), port, sizeof(port)) < 0 || !host[0] ||
	    strspn(port, "0123456789") != strlen(port))
		return -EINVAL;
	return atoi(port) > 0 && atoi(port) < 65536 ? 0 : -EINVAL;
}

/* name, kind and target, checked. */
static int service_set(struct ferry_service *s, const char *name, const char *kind,
                       const char *target, bool resume, struct ferry_error *err)
{
	memset(s, 0, sizeof(*s));
	if (!ferry_name_valid(name))
		return ferr(err, -EINVAL, "service name '%s': use letters, digits, . _ -", name);
	snprintf(s->name, sizeof(s->name), "%s", name);
	for (int k = FERRY_SERVICE_UNIX; k <= FERRY_SERVICE_ROM; k++)
		if (strcmp(kind, kind_names[k]) == 0)
			s->kind = (enum ferry_service_kind)k;
	if (!s->kind)
		return ferr(err, -EINVAL, "service %s: kind '%s' is not unix, tcp or rom", name,
		            kind);
	if (!target[0] || strlen(target) >= sizeof(s->target))
		return ferr(err, -EINVAL, "service %s: no %s target", name, kind);
	snprintf(s->target, sizeof(s->target), "%s", target);
	s->resume = resume;
	if (resume && s->kind == FERRY_SERVICE_ROM)
		return ferr(err, -EINVAL, "service %s: a ROM cannot take 'resume'", name);
	if (s->kind == FERRY_SERVICE_UNIX) {
		if (target[0] != '/' ||
		    strlen(target) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			return ferr(err, -EINVAL,
			            "service %s: a unix socket's path must be absolute and shorter "
			            "than 108 bytes: '%s'",
			            name, target);
	} else if (s->kind == FERRY_SERVICE_TCP) {
		if (host_port(target) < 0)
			return ferr(err, -EINVAL, "service %s: '%s' is not HOST:PORT", name,
			            target);
	} else {
		struct stat sb;
		if (target[0] != '/')
			return ferr(err, -EINVAL, "service %s: a ROM's path must be absolute: '%s'",
			            name, target);
		if (stat(target, &sb) < 0)
			return ferr(err, -errno, "service %s: ROM %s: %m", name, target);
		if (!S_ISREG(sb.st_mode))
			return ferr(err, -EINVAL, "service %s: ROM %s is not a regular file", name,
			            target);
		if (access(target, R_OK) < 0)
			return ferr(err, -errno, "service %s: ROM %s: %m", name, target);
	}
	return 0;
}

int ferry_service_parse(const char *spec, struct ferry_service *s, struct ferry_error *err)
{
	char name[FERRY_NAME_MAX + 1], kind[8];
	const char *eq = strchr(spec, '='), *colon = eq ? strchr(eq + 1, ':') : NULL;

	if (!eq || !colon || (size_t)(eq - spec) >= sizeof(name) ||
	    (size_t)(colon - eq - 1) >= sizeof(kind))
		return ferr(err, -EINVAL, "service '%s': expected NAME=KIND:TARGET", spec);
	snprintf(name, sizeof(name), "%.*s", (int)(eq - spec), spec);
	snprintf(kind, sizeof(kind), "%.*s", (int)(colon - eq - 1), eq + 1);
	char target[4200];
	snprintf(target, sizeof(target), "%s", colon + 1);
	size_t tl = strlen(target);
	bool resume = tl > 7 && strcmp(target + tl - 7, ",resume") == 0;
	if (resume)
		target[tl - 7] = '\0';
	return service_set(s, name, kind, target, resume, err);
}

int ferry_services_config(const char *path, struct ferry_service **list, size_t *n,
                          struct ferry_error *err)
{
	_cleanup_free_ char *text = NULL;
	int r = read_file(path, &text, NULL);
	unsigned line = 0;

	if (r < 0)
		return ferr(err, r, "configuration %s: %s", path, strerror(-r));
	for (char *l = text, *next; l && *l; l = next) {
		char word[16], name[FERRY_NAME_MAX + 1], spec[4200], opt[16] = "";
		int end = 0;
		next = strchr(l, '\n');
		if (next)
			*next++ = '\0';
		line++;
		char *hash = strchr(l, '#');
		if (hash)
			*hash = '\0';
		if (l[strspn(l, " \t")] == '\0')
			continue;
		int got =
		        sscanf(l, "%15s %64s %4199s %n%15s %n", word, name, spec, &end, opt, &end);
		if (got < 3 || strcmp(word, "service") != 0 || l[end] != '\0' ||
		    (got == 4 && strcmp(opt, "resume") != 0))
			return ferr(err, -EINVAL,
			            "configuration %s, line %u: expected 'service NAME KIND:TARGET "
			            "[resume]'",
			            path, line);
		char *colon = strchr(spec, ':');
		if (!colon)
			return ferr(err, -EINVAL,
			            "configuration %s, line %u: '%s' is not KIND:TARGET", path,
			            line, spec);
		*colon = '\0';
		if (GROW(*list, *n) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		r = service_set(&(*list)[*n], name, spec, colon + 1, got == 4, err);
		if (r < 0)
			return ferr_prefix(err, "configuration %s, line %u", path, line);
		(*n)++;
	}
	return 0;
}

int ferry_services_publish(const struct ferry_runtime *rt, const struct ferry_service *list,
                           size_t n, struct ferry_error *err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	_cleanup_close_ int fd = -EBADF;

	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < i; j++)
			if (strcmp(list[i].name, list[j].name) == 0)
				return ferr(err, -EEXIST, "service %s is declared twice",
				            list[i].name);
	snprintf(path, sizeof(path), "%s/.services", rt->state_dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return ferr(err, -errno, "%s: %m", tmp);
	for (size_t i = 0; i < n; i++) {
		char buf[4300];
		int len = snprintf(buf, sizeof(buf), "%s %s%s %s\n", list[i].name,
		                   kind_names[list[i].kind], list[i].resume ? "+resume" : "",
		                   list[i].target);
		int r = write_full(fd, buf, (size_t)len);
		if (r < 0)
			return ferr(err, r, "%s: %s", tmp, strerror(-r));
	}
	if (rename(tmp, path) < 0)
		return ferr(err, -errno, "%s: %m", path);
	return 0;
}

int ferry_services_list(const struct ferry_runtime *rt, struct ferry_service **ret, size_t *ret_n,
                        struct ferry_error *err)
{
	char path[PATH_MAX];
	_cleanup_free_ char *text = NULL;
	struct ferry_service *list = NULL;
	size_t n = 0;

	*ret = NULL;
	*ret_n = 0;
	snprintf(path, sizeof(path), "%s/.services", rt->state_dir);
	int r = read_file(path, &text, NULL);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l;
	     l = strtok_r(NULL, "\n", &save)) {
		char *sp1 = strchr(l, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
		if (!sp2)
			continue;
		*sp1 = *sp2 = '\0';
		if (GROW(list, n) < 0) {
			free(list);
			return ferr(err, -ENOMEM, "out of memory");
		}
		struct ferry_service *s = &list[n];
		memset(s, 0, sizeof(*s));
		snprintf(s->name, sizeof(s->name), "%s", l);
		char *plus = strchr(sp1 + 1, '+');
		if (plus) {
			s->resume = strcmp(plus, "+resume") == 0;
			*plus = '\0';
		}
		for (int k = FERRY_SERVICE_UNIX; k <= FERRY_SERVICE_ROM; k++)
			if (strcmp(sp1 + 1, kind_names[k]) == 0)
				s->kind = (enum ferry_service_kind)k;
		snprintf(s->target, sizeof(s->target), "%s", sp2 + 1);
		if (s->kind && ferry_name_valid(s->name))
			n++;
	}
	*ret = list;
	*ret_n = n;
	return 0;
}

/* A TCP connection to HOST:PORT within 200 ms: 0, or -errno. */
static int tcp_reachable(const char *target)
{
	struct ferry_error e = {0};
	struct addrinfo *ai = NULL;
	int r = addr_resolve(target, false, &ai, &e);

	if (r < 0)
		return r;
	_cleanup_close_ int s =
	        socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	r = s < 0 ? -errno : 0;
	if (r == 0 && connect(s, ai->ai_addr, ai->ai_addrlen) < 0) {
		r = -errno;
		if (r == -EINPROGRESS) {
			struct pollfd p = {.fd = s, .events = POLLOUT};
			int so = 0;
			socklen_t sl = sizeof(so);
			r = poll(&p, 1, 200) == 1 &&
			                    getsockopt(s, SOL_SOCKET, SO_ERROR, &so, &sl) == 0
			            ? -so
			            : -ETIMEDOUT;
		}
	}
	freeaddrinfo(ai);
	return r;
}

int ferry_service_status(const struct ferry_service *s, char *detail, size_t len)
{
	struct stat sb;
	int r;

	switch (s->kind) {
	case FERRY_SERVICE_ROM:
		if (stat(s->target, &sb) < 0 || !S_ISREG(sb.st_mode)) {
			snprintf(detail, len, "missing: %s", strerror(errno ? errno : EINVAL));
			return 0;
		}
		snprintf(detail, len, "%lld bytes", (long long)sb.st_size);
		return 1;
	case FERRY_SERVICE_UNIX: {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		_cleanup_close_ int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", s->target);
		r = c < 0                                                ? -errno
		    : connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno
		                                                         : 0;
		snprintf(detail, len, "%s", r == 0 ? "accepting" : strerror(-r));
		return r == 0;
	}
	case FERRY_SERVICE_TCP:
		r = tcp_reachable(s->target);
		snprintf(detail, len, "%s", r == 0 ? "accepting" : strerror(-r));
		return r == 0;
	}
	snprintf(detail, len, "unknown kind");
	return 0;
}

/* An empty file at path, to bind a ROM onto. */
static int mount_point(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);

	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

bool services_reserved(const char *name)
{
	return strcmp(name, "services") == 0 || strcmp(name, "rom") == 0 ||
	       strcmp(name, "resume") == 0;
}

/* A small tmpfs at SERVICES_DIR/sub (made on the host if need be). */
static int mount_dir(const char *sub, struct ferry_error *err)
{
	char path[64];

	snprintf(path, sizeof(path), SERVICES_DIR "/%s", sub);
	int r = mkdir_p(path, 0755);
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	if (mount("ferry-services", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
	          "mode=0755,size=64k") < 0)
		return ferr(err, -errno, "mounting a tmpfs on %s: %m", path);
	return 0;
}

static int seal_dir(const char *sub, struct ferry_error *err)
{
	char path[64];

	snprintf(path, sizeof(path), SERVICES_DIR "/%s", sub);
	if (mount(NULL, path, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
	          NULL) < 0)
		return ferr(err, -errno, "%s: read-only: %m", path);
	return 0;
}

int services_mount(const struct ferry_runtime *rt, struct ferry_error *err)
{
	_cleanup_free_ struct ferry_service *list = NULL;
	size_t n = 0;
	char path[PATH_MAX];
	int r = ferry_services_list(rt, &list, &n, err);

	if (r < 0)
		return r;
	/* three directories of their own, not a tmpfs over SERVICES_DIR: that may be the
	 * node's state directory (the default), which the restore helper reads */
	static const char *const dirs[] = {"services", "rom", "resume"};
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
		if ((r = mount_dir(dirs[i], err)) < 0)
			return n == 0 ? 0 : r; /* a node without services needs none */
	for (size_t i = 0; i < n; i++) {
		const struct ferry_service *s = &list[i];
		switch (s->kind) {
		case FERRY_SERVICE_UNIX:
			/* a link, not a bind: the service may start after the component */
			snprintf(path, sizeof(path), SERVICES_DIR "/services/%s", s->name);
			if (symlink(s->target, path) < 0)
				return ferr(err, -errno, "service %s: %s: %m", s->name, path);
			snprintf(path, sizeof(path), SERVICES_DIR "/resume/%s", s->name);
			if (s->resume && (r = mount_point(path)) < 0)
				return ferr(err, r, "service %s: %s: %s", s->name, path,
				            strerror(-r));
			break;
		case FERRY_SERVICE_ROM:
			/* the node's file itself, read-only, under the same name everywhere */
			snprintf(path, sizeof(path), SERVICES_DIR "/rom/%s", s->name);
			if ((r = mount_point(path)) < 0)
				return ferr(err, r, "ROM %s: %s: %s", s->name, path, strerror(-r));
			if (mount(s->target, path, NULL, MS_BIND, NULL) < 0 ||
			    mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
				return ferr(err, -errno, "ROM %s: binding %s on %s: %m", s->name,
				            s->target, path);
			break;
		case FERRY_SERVICE_TCP: {
			/* reached at its own HOST:PORT: a link that names it, for a program
			 * that looks the service up by name */
			char to[sizeof(s->target) + 8];
			snprintf(to, sizeof(to), "tcp:%s", s->target);
			snprintf(path, sizeof(path), SERVICES_DIR "/services/%s", s->name);
			if (symlink(to, path) < 0)
				return ferr(err, -errno, "service %s: %s: %m", s->name, path);
			snprintf(path, sizeof(path), SERVICES_DIR "/resume/%s", s->name);
			if (s->resume && (r = mount_point(path)) < 0)
				return ferr(err, r, "service %s: %s: %s", s->name, path,
				            strerror(-r));
			break;
		}
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
		if ((r = seal_dir(dirs[i], err)) < 0)
			return r;
	return 0;
}

int services_tcp_addrs(const struct ferry_service *sv, size_t n, struct svc_addr **ret,
                       size_t *nret)
{
	struct svc_addr *out = NULL;
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		struct addrinfo *ai = NULL;
		struct ferry_error e = {0};
		if (sv[i].kind != FERRY_SERVICE_TCP ||
		    addr_resolve(sv[i].target, false, &ai, &e) < 0)
			continue;
		for (struct addrinfo *p = ai; p; p = p->ai_next) {
			if (p->ai_addrlen > sizeof(struct sockaddr_storage))
				continue;
			struct svc_addr *na = realloc(out, (k + 1) * sizeof(*na));
			if (!na) {
				freeaddrinfo(ai);
				free(out);
				return -ENOMEM;
			}
			out = na;
			memset(&out[k], 0, sizeof(out[k]));
			memcpy(&out[k].sa, p->ai_addr, p->ai_addrlen);
			out[k].len = p->ai_addrlen;
			out[k].svc = (uint32_t)i;
			k++;
		}
		freeaddrinfo(ai);
	}
	*ret = out;
	*nret = k;
	return 0;
}

/* An address as IPv4 if it is an IPv4 address mapped into IPv6. */
static void unmap(struct sockaddr_storage *ss)
{
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
	if (ss->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
		return;
	struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = s6->sin6_port};
	memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, &s4, sizeof(s4));
}

int services_tcp_peer(const struct svc_addr *a, size_t na, const struct sockaddr *peer,
                      socklen_t len)
{
	struct sockaddr_storage p = {0};

	if (len > sizeof(p))
		return -1;
	memcpy(&p, peer, len);
	unmap(&p);
	for (size_t i = 0; i < na; i++) {
		struct sockaddr_storage t = a[i].sa;
		unmap(&t);
		if (t.ss_family != p.ss_family)
			continue;
		if (p.ss_family == AF_INET) {
			const struct sockaddr_in *x = (const void *)&p, *y = (const void *)&t;
			if (x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr)
				return (int)a[i].svc;
		} else if (p.ss_family == AF_INET6) {
			const struct sockaddr_in6 *x = (const void *)&p, *y = (const void *)&t;
			if (x->sin6_port == y->sin6_port &&
			    memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0)
				return (int)a[i].svc;
		}
	}
	return -1;
}
