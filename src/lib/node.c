/*
 * Nodes: the sockets of a node (TCP for peers, Unix for the local CLI) and what is served on
 * each connection. ferryd (src/daemon/ferryd.c) accepts and forks; everything else is here.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "channel.h"
#include "migrate.h"
#include "util.h"

int ferry_node_init(struct ferry_node *n, const char *name, const char *listen,
                    const char *state_dir, const char *key_path, struct ferry_error *err)
{
	struct channel_key key;
	int r;

	memset(n, 0, sizeof(*n));
	if (!name || !ferry_name_valid(name))
		return ferr(err, -EINVAL, "invalid node name '%s' (use letters, digits, . _ -)",
		            name ? name : "");
	snprintf(n->name, sizeof(n->name), "%s", name);
	snprintf(n->listen, sizeof(n->listen), "%s", listen ? listen : "");
	r = ferry_runtime_init(&n->rt, state_dir, err);
	if (r < 0)
		return r;
	r = channel_key_load(key_path, &key, err);
	if (r < 0)
		return r;
	memcpy(n->key, key.k, sizeof(n->key));
	return 0;
}

int ferry_key_generate(const char *path, struct ferry_error *err)
{
	return channel_key_generate(path, err);
}

int addr_split(const char *addr, char *host, size_t hlen, char *port, size_t plen)
{
	const char *colon;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (!rb || rb[1] != ':')
			return -EINVAL;
		snprintf(host, hlen, "%.*s", (int)(rb - addr - 1), addr + 1);
		colon = rb + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon)
			return -EINVAL;
		snprintf(host, hlen, "%.*s", (int)(colon - addr), addr);
	}
	snprintf(port, plen, "%s", colon + 1);
	return port[0] ? 0 : -EINVAL;
}

int addr_resolve(const char *addr, bool passive, struct addrinfo **ret, struct ferry_error *err)
{
	char host[256], port[32];
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
	                         .ai_socktype = SOCK_STREAM,
	                         .ai_flags = passive ? AI_PASSIVE : 0};
	if (addr_split(addr, host, sizeof(host), port, sizeof(port)) < 0)
		return ferr(err, -EINVAL, "address '%s': expected HOST:PORT", addr);
	int e = getaddrinfo(host[0] ? host : NULL, port, &hints, ret);
	if (e != 0)
		return ferr(err, -EHOSTUNREACH, "address '%s': %s", addr, gai_strerror(e));
	return 0;
}

int ferry_node_listen(const struct ferry_node *n, int *ret_fd, struct ferry_error *err)
{
	struct addrinfo *ai = NULL;
	int r = addr_resolve(n->listen, true, &ai, err);
	if (r < 0)
		return r;
	_cleanup_close_ int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0) {
		r = ferr(err, -errno, "socket: %m");
	} else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	           bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0) {
		r = ferr(err, -errno, "listening on %s: %m", n->listen);
	}
	freeaddrinfo(ai);
	if (r < 0)
		return r;
	*ret_fd = TAKE_FD(fd);
	return 0;
}

static int control_path(const struct ferry_runtime *rt, struct sockaddr_un *sa,
                        struct ferry_error *err)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if ((size_t)snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/ferryd.sock", rt->state_dir) >=
	    sizeof(sa->sun_path))
		return ferr(err, -ENAMETOOLONG, "state directory %s: too long for a socket path",
		            rt->state_dir);
	return 0;
}

int ferry_node_control_listen(const struct ferry_node *n, int *ret_fd, struct ferry_error *err)
{
	struct sockaddr_un sa;
	int r = control_path(&n->rt, &sa, err);
	if (r < 0)
		return r;
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ferr(err, -errno, "socket: %m");
	(void)unlink(sa.sun_path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(sa.sun_path, 0600) < 0 ||
	    listen(fd, 16) < 0)
		return ferr(err, -errno, "control socket %s: %m", sa.sun_path);
	*ret_fd = TAKE_FD(fd);
	return 0;
}

int node_connect(const char *addr, int timeout_ms, struct ferry_error *err)
{
	struct addrinfo *ai = NULL;
	int r = addr_resolve(addr, false, &ai, err);
	if (r < 0)
		return r;
	_cleanup_close_ int fd =
	        socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		freeaddrinfo(ai);
		return ferr(err, -errno, "socket: %m");
	}
	r = connect(fd, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	if (r < 0 && errno == EINPROGRESS) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		r = poll(&p, 1, timeout_ms);
		if (r == 0)
			return ferr(err, -ETIMEDOUT, "connecting to %s: no answer within %d ms",
			            addr, timeout_ms);
		if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
			return ferr(err, -errno, "connecting to %s: %m", addr);
		if (soerr)
			return ferr(err, -soerr, "connecting to %s: %s", addr, strerror(soerr));
	} else if (r < 0) {
		return ferr(err, -errno, "connecting to %s: %m", addr);
	}
	int fl = fcntl(fd, F_GETFL);
	int one = 1;
	(void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return TAKE_FD(fd);
}

int ferry_node_serve_peer(const struct ferry_node *n, int fd, struct ferry_error *err)
{
	struct channel_key key;
	struct channel *ch = NULL;
	uint8_t t;
	const void *b;
	size_t l;
	int one = 1, r;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	memcpy(key.k, n->key, sizeof(key.k));
	r = channel_open(fd, &key, false, n->name, 10000, &ch, err);
	if (r < 0)
		return r;
	r = channel_recv(ch, &t, &b, &l, err);
	if (r == 0) {
		if (t == MSG_OFFER) {
			/* the offer is in the channel's buffer: keep a copy */
			_cleanup_free_ char *offer = strndup(b, l);
			r = offer ? migrate_accept(n, ch, fd, offer, l, err)
			          : ferr(err, -ENOMEM, "out of memory");
		} else if (t == MSG_OUTCOME) {
			r = migrate_answer(n, ch, b, l, err);
		} else {
			r = ferr(err, -EPROTO, "unexpected first message %u", t);
		}
	}
	channel_free(ch);
	return r;
}

/* ---- the local CLI ---- */

struct ctl_progress {
	int fd;
};

static void ctl_progress(void *arg, const struct ferry_migrate_progress *p)
{
	struct ctl_progress *c = arg;
	char line[512];
	int n = snprintf(line, sizeof(line),
	                 "progress {\"phase\":\"%s\",\"round\":%u,\"bytes\":%" PRIu64
	                 ",\"rate\":%" PRIu64 ",\"dirty_rate\":%" PRIu64
	                 ",\"expected_downtime_ns\":%" PRIu64 "}\n",
	                 p->phase, p->round, p->bytes, p->rate, p->dirty_rate, p->expected_down_ns);
	(void)write_full(c->fd, line, (size_t)n);
}

static json_object *stats_json(const struct ferry_migrate_stats *s)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "id", json_object_new_string(s->id));
	json_object_object_add(o, "destination", json_object_new_string(s->dest_node));
	json_object_object_add(o, "destination_pid", json_object_new_int(s->dest_pid));
	json_object_object_add(o, "total_ns", json_object_new_int64((int64_t)s->total_ns));
	json_object_object_add(o, "setup_ns", json_object_new_int64((int64_t)s->setup_ns));
	json_object_object_add(o, "downtime_ns", json_object_new_int64((int64_t)s->downtime_ns));
	json_object_object_add(o, "restore_ns", json_object_new_int64((int64_t)s->restore_ns));
	json_object_object_add(o, "bytes_precopy",
	                       json_object_new_int64((int64_t)s->bytes_precopy));
	json_object_object_add(o, "bytes_downtime",
	                       json_object_new_int64((int64_t)s->bytes_downtime));
	json_object_object_add(o, "bytes_postcopy",
	                       json_object_new_int64((int64_t)s->bytes_postcopy));
	json_object_object_add(o, "bytes_total", json_object_new_int64((int64_t)s->bytes_total));
	json_object_object_add(o, "rounds", json_object_new_int((int)s->rounds));
	json_object_object_add(o, "dirty_rate", json_object_new_int64((int64_t)s->dirty_rate));
	json_object_object_add(o, "rate", json_object_new_int64((int64_t)s->rate));
	json_object_object_add(o, "files_carried", json_object_new_int((int)s->files_carried));
	json_object_object_add(o, "confirmed", json_object_new_boolean(s->confirmed));
	json_object_object_add(o, "post_error", json_object_new_string(s->post_error));
	return o;
}

static uint64_t jget_u64(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

static const char *jget_str(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : NULL;
}

static void stats_from_json(json_object *o, struct ferry_migrate_stats *s)
{
	const char *v;
	memset(s, 0, sizeof(*s));
	if ((v = jget_str(o, "id")))
		snprintf(s->id, sizeof(s->id), "%s", v);
	if ((v = jget_str(o, "destination")))
		snprintf(s->dest_node, sizeof(s->dest_node), "%s", v);
	s->dest_pid = (pid_t)jget_u64(o, "destination_pid");
	s->total_ns = jget_u64(o, "total_ns");
	s->setup_ns = jget_u64(o, "setup_ns");
	s->downtime_ns = jget_u64(o, "downtime_ns");
	s->restore_ns = jget_u64(o, "restore_ns");
	s->bytes_precopy = jget_u64(o, "bytes_precopy");
	s->bytes_downtime = jget_u64(o, "bytes_downtime");
	s->bytes_postcopy = jget_u64(o, "bytes_postcopy");
	s->bytes_total = jget_u64(o, "bytes_total");
	s->rounds = (uint32_t)jget_u64(o, "rounds");
	s->dirty_rate = jget_u64(o, "dirty_rate");
	s->rate = jget_u64(o, "rate");
	s->files_carried = (uint32_t)jget_u64(o, "files_carried");
	s->confirmed = jget_u64(o, "confirmed") != 0;
	if ((v = jget_str(o, "post_error")))
		snprintf(s->post_error, sizeof(s->post_error), "%s", v);
}

static int read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;
	while (n + 1 < len) {
		ssize_t k = read(fd, buf + n, 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return n ? (int)n : -EPIPE;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	return (int)n;
}

int ferry_node_serve_control(const struct ferry_node *n, int fd, struct ferry_error *err)
{
	char line[4096];
	int r = read_line(fd, line, sizeof(line));
	if (r < 0)
		return ferr(err, r, "control connection closed");
	json_object *req = json_tokener_parse(line);
	const char *op = req ? jget_str(req, "op") : NULL;
	if (!op || strcmp(op, "migrate") != 0) {
		json_object_put(req);
		(void)write_full(fd, "error unknown request\n", 22);
		return ferr(err, -EINVAL, "unknown control request");
	}
	const char *name = jget_str(req, "name"), *to = jget_str(req, "to");
	struct ctl_progress cp = {.fd = fd};
	struct ferry_migrate_opts o = {.mode = (enum ferry_migrate_mode)jget_u64(req, "mode"),
	                               .max_downtime_ms =
	                                       (unsigned)jget_u64(req, "max_downtime_ms"),
	                               .max_rounds = (unsigned)jget_u64(req, "max_rounds"),
	                               .carry_files = jget_u64(req, "carry_files") != 0,
	                               .compress = jget_u64(req, "compress") != 0,
	                               .progress = ctl_progress,
	                               .progress_arg = &cp};
	struct ferry_migrate_stats st;
	if (!name || !to) {
		r = ferr(err, -EINVAL, "migrate: name and destination needed");
	} else {
		r = ferry_migrate(n, name, to, &o, &st, err);
	}
	json_object_put(req);
	if (r < 0) {
		/* one line: newlines of the message travel escaped */
		json_object *e = json_object_new_string(err->msg);
		dprintf(fd, "error %s\n",
		        json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN));
		json_object_put(e);
		return r;
	}
	json_object *o2 = stats_json(&st);
	dprintf(fd, "result %s\n", json_object_to_json_string_ext(o2, JSON_C_TO_STRING_PLAIN));
	json_object_put(o2);
	return 0;
}

int ferry_migrate_request(const struct ferry_runtime *rt, const char *name, const char *to,
                          const struct ferry_migrate_opts *o, struct ferry_migrate_stats *ret,
                          struct ferry_error *err)
{
	struct sockaddr_un sa;
	char line[16384];
	int r = control_path(rt, &sa, err);
	if (r < 0)
		return r;
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ferr(err, -errno, "socket: %m");
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return ferr(err, -errno, "no ferryd for state directory %s (%s): %m", rt->state_dir,
		            sa.sun_path);
	json_object *req = json_object_new_object();
	json_object_object_add(req, "op", json_object_new_string("migrate"));
	json_object_object_add(req, "name", json_object_new_string(name));
	json_object_object_add(req, "to", json_object_new_string(to));
	json_object_object_add(req, "mode", json_object_new_int((int)o->mode));
	json_object_object_add(req, "max_downtime_ms",
	                       json_object_new_int((int)o->max_downtime_ms));
	json_object_object_add(req, "max_rounds", json_object_new_int((int)o->max_rounds));
	json_object_object_add(req, "carry_files", json_object_new_int(o->carry_files));
	json_object_object_add(req, "compress", json_object_new_int(o->compress));
	dprintf(fd, "%s\n", json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN));
	json_object_put(req);
	for (;;) {
		r = read_line(fd, line, sizeof(line));
		if (r < 0)
			return ferr(err, -EPIPE,
			            "ferryd closed the connection (killed?) before the "
			            "migration of %s ended; see `ferry ps` on both nodes",
			            name);
		if (strncmp(line, "progress ", 9) == 0) {
			json_object *p = json_tokener_parse(line + 9);
			if (p && o->progress) {
				struct ferry_migrate_progress pr = {
				        .phase = jget_str(p, "phase"),
				        .round = (uint32_t)jget_u64(p, "round"),
				        .bytes = jget_u64(p, "bytes"),
				        .rate = jget_u64(p, "rate"),
				        .dirty_rate = jget_u64(p, "dirty_rate"),
				        .expected_down_ns = jget_u64(p, "expected_downtime_ns")};
				o->progress(o->progress_arg, &pr);
			}
			json_object_put(p);
		} else if (strncmp(line, "result ", 7) == 0) {
			json_object *p = json_tokener_parse(line + 7);
			if (!p)
				return ferr(err, -EPROTO, "ferryd: malformed result");
			if (ret)
				stats_from_json(p, ret);
			json_object_put(p);
			return 0;
		} else if (strncmp(line, "error ", 6) == 0) {
			json_object *p = json_tokener_parse(line + 6);
			r = ferr(err, -EIO, "%s", p ? json_object_get_string(p) : line + 6);
			json_object_put(p);
			return r;
		}
	}
}

int ferry_node_recover(const struct ferry_node *n, struct ferry_error *err)
{
	return migrate_recover(n, err);
}
