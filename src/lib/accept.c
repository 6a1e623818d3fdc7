/*
 * Live migration, the destination's side (migrate_accept): the links of the image received
 * into STATE/migrations/in-ID, the file check answered, the last link restored and held
 * stopped until the source decides (GO or ABORT), or, the source lost, its node asked how the
 * migration ended. In post-copy the restoring monitor receives the deferred pages for the
 * lazy restore (post_dst). The protocol and its guarantees: migrate.c and docs/migration.md.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include "lazy.h"
#include "migrate.h"
#include "restore.h"
#include "runtime.h"
#include "session.h"
#include "util.h"

/* ---- the destination ---- */

struct post_dst;

struct dst {
	const struct ferry_node *n;
	struct channel *ch;
	int fd;
	char id[33];
	char name[FERRY_NAME_MAX];
	char source_addr[FERRY_ADDR_MAX];
	char dir[PATH_MAX];
	unsigned links; /* complete links received */
	bool held;      /* the hold was reached */
	pid_t pid;
	char pages_name[64];              /* the pages file the current link brought */
	char postcopy_img[PATH_MAX];      /* post-copy: the image whose holes come later */
	struct lazy_source post_src_slot; /* filled in the monitor by post_begin */
	struct post_dst *post;            /* post-copy, in the monitor */
};

/*
 * Post-copy, the destination (in the restoring monitor): one thread receives every message
 * from the source from the restore on; the pages go into the image's pages file (holes until
 * then) and a bitmap; the lazy restore's reads wait for their pages there, asking the source
 * first when a thread of the component waits. GO or ABORT are handed to the hold.
 */
struct post_dst {
	struct dst *d;
	int fd; /* the pages file, read-write */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	pthread_mutex_t send_mu; /* sends come from the hold, the fault handler and the receiver */
	uint64_t *have;          /* a bit per page of the pages file */
	uint64_t *empty;         /* a bit per page the source found empty (MSG_ZERO) */
	uint64_t npages, missing;
	bool end;   /* the source sent everything */
	int ctl;    /* GO or ABORT received, 0 until then */
	void *late; /* GO's payload: the sessions' late bytes (session_late), malloc'd */
	size_t nlate;
	int failed; /* the connection failed: -errno */
	struct lazy_source src;
};

static bool all_set(const uint64_t *bits, uint64_t npages, uint64_t off, uint64_t len)
{
	for (uint64_t pg = off / 4096; pg < (off + len + 4095) / 4096 && pg < npages; pg++)
		if (!(bits[pg / 64] & (1ull << (pg % 64))))
			return false;
	return true;
}

static bool have_all(struct post_dst *pd, uint64_t off, uint64_t len)
{
	return all_set(pd->have, pd->npages, off, len);
}

static void have_set(struct post_dst *pd, uint64_t off, uint64_t len)
{
	for (uint64_t pg = off / 4096; pg < (off + len) / 4096 && pg < pd->npages; pg++)
		if (!(pd->have[pg / 64] & (1ull << (pg % 64)))) {
			pd->have[pg / 64] |= 1ull << (pg % 64);
			pd->missing--;
		}
}

static int post_dst_send(struct post_dst *pd, uint8_t type, const void *b, size_t l)
{
	struct ferry_error e;
	pthread_mutex_lock(&pd->send_mu);
	int r = channel_send(pd->d->ch, type, b, l, &e);
	pthread_mutex_unlock(&pd->send_mu);
	return r;
}

/* lazy_source read: the pages, once here. */
static int post_read(void *arg, const struct lazy_piece *p, void *buf)
{
	struct post_dst *pd = arg;
	bool asked = false;

	pthread_mutex_lock(&pd->mu);
	while (!have_all(pd, p->off, p->len) && !pd->failed) {
		if (p->urgent && !asked) {
			uint8_t q[16];
			put_le64(q, p->off);
			put_le64(q + 8, p->len);
			pthread_mutex_unlock(&pd->mu);
			(void)post_dst_send(pd, MSG_REQ, q, sizeof(q));
			pthread_mutex_lock(&pd->mu);
			asked = true;
			continue;
		}
		pthread_cond_wait(&pd->cond, &pd->mu);
	}
	int failed = pd->failed;
	bool empty = all_set(pd->empty, pd->npages, p->off, p->len);
	pthread_mutex_unlock(&pd->mu);
	if (failed && !have_all(pd, p->off, p->len))
		return -EIO; /* the source is gone: these pages are lost */
	if (empty)
		return LAZY_EMPTY;
	return pread_full(pd->fd, buf, p->len, (off_t)p->off);
}

static void *post_receiver(void *arg)
{
	struct post_dst *pd = arg;
	struct ferry_error e = {0};

	channel_set_timeout(pd->d->ch, 0);
	for (;;) {
		uint8_t t;
		const void *b;
		size_t l;
		int r = channel_recv(pd->d->ch, &t, &b, &l, &e);
		if (r == 0 && t == MSG_ZERO && l == 16) {
			/* empty at the source: the hole in the file reads as zeros */
			uint64_t off = get_le64(b), len = get_le64((const uint8_t *)b + 8);
			pthread_mutex_lock(&pd->mu);
			for (uint64_t pg = off / 4096; pg < (off + len) / 4096 && pg < pd->npages;
			     pg++)
				pd->empty[pg / 64] |= 1ull << (pg % 64);
			have_set(pd, off, len);
		} else if (r == 0 && t == MSG_PAGES && l >= 8) {
			uint64_t off = get_le64(b);
			r = pwrite_full(pd->fd, (const uint8_t *)b + 8, l - 8, (off_t)off);
			pthread_mutex_lock(&pd->mu);
			if (r == 0)
				have_set(pd, off, l - 8);
		} else {
			pthread_mutex_lock(&pd->mu);
			if (r == 0 && t == MSG_PAGES_END)
				pd->end = true;
			else if (r == 0 && (t == MSG_GO || t == MSG_ABORT)) {
				pd->ctl = t;
				if (t == MSG_GO && l && (pd->late = malloc(l))) {
					memcpy(pd->late, b, l);
					pd->nlate = l;
				}
			} else if (r == 0)
				r = -EPROTO;
		}
		if (r < 0)
			pd->failed = r;
		bool done = pd->end && pd->missing == 0;
		pthread_cond_broadcast(&pd->cond);
		pthread_mutex_unlock(&pd->mu);
		if (r < 0)
			return NULL;
		if (done) {
			(void)post_dst_send(pd, MSG_PAGES_ACK, NULL, 0);
			return NULL;
		}
	}
}

/* In the monitor, before the restore: the pages file, what it holds, the receiver. */
static int post_begin(struct dst *d, const char *img, struct ferry_error *err)
{
	struct post_dst *pd = calloc(1, sizeof(*pd));
	char path[PATH_MAX + 80];
	struct stat sb;
	pthread_t th;

	if (!pd)
		return ferr(err, -ENOMEM, "out of memory");
	pd->d = d;
	pthread_mutex_init(&pd->mu, NULL);
	pthread_mutex_init(&pd->send_mu, NULL);
	pthread_cond_init(&pd->cond, NULL);
	snprintf(path, sizeof(path), "%s/%s", img, d->pages_name);
	pd->fd = open(path, O_RDWR | O_CLOEXEC);
	if (pd->fd < 0 || fstat(pd->fd, &sb) < 0)
		return ferr(err, -errno, "post-copy: %s: %m", path);
	pd->npages = ((uint64_t)sb.st_size + 4095) / 4096;
	pd->have = calloc(pd->npages / 64 + 1, sizeof(uint64_t));
	pd->empty = calloc(pd->npages / 64 + 1, sizeof(uint64_t));
	if (!pd->have || !pd->empty)
		return ferr(err, -ENOMEM, "out of memory");
	pd->missing = pd->npages;
	/* what came with the image is here; the holes are the deferred pages */
	for (off_t at = 0; at < sb.st_size;) {
		off_t dt = lseek(pd->fd, at, SEEK_DATA);
		if (dt < 0)
			break;
		off_t hole = lseek(pd->fd, dt, SEEK_HOLE);
		if (hole < 0)
			hole = sb.st_size;
		have_set(pd, (uint64_t)dt, (uint64_t)(hole - dt));
		at = hole;
	}
	pd->src = (struct lazy_source){.read = post_read, .arg = pd};
	d->post_src_slot = pd->src;
	d->post = pd;
	if (pthread_create(&th, NULL, post_receiver, pd) != 0)
		return ferr(err, -EAGAIN, "post-copy: starting the receiver: %m");
	pthread_detach(th);
	return 0;
}

/* The data of a file send_extents sends, written at its offsets into fd. */
static int recv_extents(struct dst *d, int fd, const char *what, struct ferry_error *err)
{
	for (;;) {
		uint8_t t;
		const void *b;
		size_t l;
		int r = channel_recv(d->ch, &t, &b, &l, err);
		if (r < 0)
			return r;
		if (t == MSG_END)
			return 0;
		if (t != MSG_DATA || l < 8 || fd < 0)
			return ferr(err, -EPROTO, "%s: unexpected message %u", what, t);
		r = pwrite_full(fd, (const uint8_t *)b + 8, l - 8, (off_t)get_le64(b));
		if (r < 0)
			return ferr(err, r, "%s: %s", what, strerror(-r));
	}
}

static int dst_image_file(struct dst *d, const void *b, size_t l, bool link_only,
                          struct ferry_error *err)
{
	char name[64], from_name[64], path[PATH_MAX], from[PATH_MAX], ldir[PATH_MAX];
	unsigned k = (unsigned)kv_u64(b, l, "link");

	if (kv_get(b, l, "name", name, sizeof(name)) < 0 || !plain_name(name) || k > d->links)
		return ferr(err, -EPROTO, "bad image file header");
	snprintf(ldir, sizeof(ldir), "%s/%u", d->dir, k);
	if (mkdir(ldir, 0700) < 0 && errno != EEXIST)
		return ferr(err, -errno, "%s: %m", ldir);
	snprintf(path, sizeof(path), "%s/%s", ldir, name);
	if (link_only) {
		unsigned j = (unsigned)kv_u64(b, l, "from");
		if (kv_get(b, l, "fromname", from_name, sizeof(from_name)) < 0 ||
		    !plain_name(from_name) || j >= k)
			return ferr(err, -EPROTO, "bad image link header");
		snprintf(from, sizeof(from), "%s/%u/%s", d->dir, j, from_name);
		if (link(from, path) < 0)
			return ferr(err, -errno, "linking %s to %s: %m", path, from);
		return 0;
	}
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)kv_u64(b, l, "size")) < 0)
		return ferr(err, -errno, "%s: %m", path);
	if (strncmp(name, "pages-", 6) == 0)
		snprintf(d->pages_name, sizeof(d->pages_name), "%s", name);
	return recv_extents(d, fd, path, err);
}

static int dst_log(struct dst *d, const void *b, size_t l, struct ferry_error *err)
{
	char dir[PATH_MAX], path[PATH_MAX], id[32];
	uint64_t off = kv_u64(b, l, "offset");
	int r;

	if (kv_get(b, l, "id", id, sizeof(id)) < 0)
		return ferr(err, -EPROTO, "bad log header");
	runtime_dir(&d->n->rt, d->name, dir, sizeof(dir));
	r = mkdir_p(dir, 0700);
	if (r < 0)
		return ferr(err, r, "%s: %s", dir, strerror(-r));
	snprintf(path, sizeof(path), "%s/log.id", dir);
	_cleanup_close_ int idfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (idfd < 0)
		return ferr(err, -errno, "%s: %m", path);
	char line[40];
	snprintf(line, sizeof(line), "%s\n", id);
	r = write_full(idfd, line, strlen(line));
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	runtime_log_path(&d->n->rt, d->name, path, sizeof(path));
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)off) < 0)
		return ferr(err, -errno, "log %s: %m", path);
	return recv_extents(d, fd, path, err);
}

static int dst_carry(struct dst *d, const void *b, size_t l, struct ferry_error *err)
{
	char path[4096], tmp[4200];
	uint64_t mode = 0, uid, gid;
	struct timespec ts[2];
	int r;

	if (kv_get(b, l, "path", path, sizeof(path)) < 0 || path[0] != '/' || strstr(path, "/../"))
		return ferr(err, -EPROTO, "bad carried file header");
	char m[16];
	if (kv_get(b, l, "mode", m, sizeof(m)) == 0)
		mode = strtoull(m, NULL, 8);
	uid = kv_u64(b, l, "uid");
	gid = kv_u64(b, l, "gid");
	ts[0].tv_sec = ts[1].tv_sec = (time_t)kv_u64(b, l, "mtime");
	ts[0].tv_nsec = ts[1].tv_nsec = (long)kv_u64(b, l, "mtime_ns");
	if (kv_u64(b, l, "dir")) {
		r = mkdir_p(path, (mode_t)mode);
		if (r < 0)
			return ferr(err, r, "carried directory %s: %s", path, strerror(-r));
		return recv_extents(d, -1, path, err);
	}
	char parent[4096];
	snprintf(parent, sizeof(parent), "%s", path);
	char *slash = strrchr(parent, '/');
	if (slash && slash != parent) {
		*slash = '\0';
		(void)mkdir_p(parent, 0755);
	}
	snprintf(tmp, sizeof(tmp), "%s.ferry-carry", path);
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)kv_u64(b, l, "size")) < 0)
		return ferr(err, -errno, "carried file %s: %m", tmp);
	r = recv_extents(d, fd, tmp, err);
	if (r == 0 && (fchmod(fd, (mode_t)mode) < 0 || fchown(fd, (uid_t)uid, (gid_t)gid) < 0 ||
	               futimens(fd, ts) < 0 || fsync(fd) < 0 || rename(tmp, path) < 0))
		r = ferr(err, -errno, "carried file %s: %m", path);
	if (r < 0)
		(void)unlink(tmp);
	return r;
}

/* In the monitor at the destination: ask the source how migration id ended, until it says. */
static int ask_source(struct dst *d, struct ferry_error *err)
{
	struct channel_key key;
	memcpy(key.k, d->n->key, sizeof(key.k));
	for (unsigned attempt = 0;; attempt++) {
		struct ferry_error e = {0};
		struct channel *ch = NULL;
		char q[64], out[32];
		const void *b;
		size_t l;
		int fd = node_connect(d->source_addr, 2000, &e);
		int r = fd < 0 ? fd : channel_open(fd, &key, true, d->n->name, 5000, &ch, &e);
		if (r == 0) {
			snprintf(q, sizeof(q), "id=%s\n", d->id);
			r = channel_send(ch, MSG_OUTCOME, q, strlen(q), &e);
		}
		if (r == 0)
			r = recv_expect(ch, MSG_ANSWER, &b, &l, &e);
		/* the outcome, then (after a NUL) the sessions' late bytes the GO would have had */
		size_t tl = r == 0 ? strnlen(b, l) : 0;
		if (r == 0 && kv_get(b, tl, "outcome", out, sizeof(out)) < 0)
			r = -EPROTO;
		if (r == 0 && strcmp(out, "handed-over") == 0) {
			if (tl + 1 < l)
				(void)session_late_deliver(&d->n->rt, d->name,
				                           (const char *)b + tl + 1, l - tl - 1,
				                           &e);
			channel_free(ch);
			safe_close(fd);
			return 0;
		}
		channel_free(ch);
		safe_close(fd);
		if (r == 0 && strcmp(out, "aborted") == 0)
			return ferr(err, -ECANCELED, "the source aborted the migration");
		/* pending, or the source node is down: it decides, we wait */
		usleep(attempt < 50 ? 100000 : 1000000);
	}
}

static int dst_hold(void *arg, enum restore_phase phase, pid_t pid,
                    const struct ferry_restore_stats *rst, struct ferry_error *err)
{
	struct dst *d = arg;
	char text[128];
	uint8_t t;
	const void *b;
	size_t l;
	int r;

	if (phase == RESTORE_BEGIN)
		return d->postcopy_img[0] ? post_begin(d, d->postcopy_img, err) : 0;
	if (phase == RESTORE_RUNNING && d->post) {
		/* the receiver goes on with the connection until every page is here */
		snprintf(text, sizeof(text), "restore_ns=%" PRIu64 "\npid=%d\n", rst->total_ns,
		         pid);
		(void)post_dst_send(d->post, MSG_DONE, text, strlen(text));
		return 0;
	}
	if (phase == RESTORE_HOLD && d->post) {
		struct post_dst *pd = d->post;
		d->held = true;
		snprintf(text, sizeof(text), "restore_ns=%" PRIu64 "\n", rst->total_ns);
		if (post_dst_send(pd, MSG_READY, text, strlen(text)) == 0) {
			pthread_mutex_lock(&pd->mu);
			while (!pd->ctl && !pd->failed)
				pthread_cond_wait(&pd->cond, &pd->mu);
			int ctl = pd->ctl;
			pthread_mutex_unlock(&pd->mu);
			if (ctl == MSG_GO) {
				struct ferry_error e = {0};
				(void)session_late_deliver(&d->n->rt, d->name, pd->late, pd->nlate,
				                           &e);
				free(pd->late);
				pd->late = NULL;
				return 0;
			}
			if (ctl == MSG_ABORT)
				return ferr(err, -ECANCELED, "the source aborted the migration");
		}
		return ask_source(d, err);
	}
	if (phase == RESTORE_RUNNING) {
		struct ferry_error e = {0};
		snprintf(text, sizeof(text), "restore_ns=%" PRIu64 "\npid=%d\n", rst->total_ns,
		         pid);
		(void)channel_send(d->ch, MSG_DONE, text, strlen(text), &e);
		/* this monitor parents the component from now on: the connection is done */
		channel_free(d->ch);
		d->ch = NULL;
		d->fd = safe_close(d->fd);
		return 0;
	}
	d->held = true;
	snprintf(text, sizeof(text), "restore_ns=%" PRIu64 "\n", rst->total_ns);
	r = channel_send(d->ch, MSG_READY, text, strlen(text), err);
	if (getenv("FERRY_TEST_MIGRATE_CUT") &&
	    strcmp(getenv("FERRY_TEST_MIGRATE_CUT"), "dst-ready") == 0)
		test_point(d->ch, "dst-ready"); /* the monitor: never the kill hook */
	if (r == 0) {
		/* the source decides in moments; a silent link is settled by asking it */
		channel_set_timeout(d->ch, 30000);
		r = channel_recv(d->ch, &t, &b, &l, err);
	}
	if (r == 0 && t == MSG_GO) {
		/* decided: it runs here whatever happens to the late bytes of its sessions */
		struct ferry_error e = {0};
		(void)session_late_deliver(&d->n->rt, d->name, b, l, &e);
		return 0;
	}
	if (r == 0 && t == MSG_ABORT)
		return ferr(err, -ECANCELED, "the source aborted the migration");
	if (r == 0)
		return ferr(err, -EPROTO, "unexpected message %u while held", t);
	return ask_source(d, err);
}

int migrate_accept(const struct ferry_node *n, struct channel *ch, int fd, const char *offer,
                   size_t len, struct ferry_error *err)
{
	struct dst d = {.n = n, .ch = ch, .fd = fd};
	struct ferry_component cur;
	char mdir[PATH_MAX], lockp[PATH_MAX + 8];
	_cleanup_close_ int lock = -EBADF;
	struct restore_helper pre = {.go_wr = -EBADF, .sync_wr = -EBADF, .rep_rd = -EBADF};
	bool monitor = false;
	int r;

	if (kv_get(offer, len, "id", d.id, sizeof(d.id)) < 0 || strlen(d.id) != 32 ||
	    kv_get(offer, len, "name", d.name, sizeof(d.name)) < 0 ||
	    kv_get(offer, len, "source_addr", d.source_addr, sizeof(d.source_addr)) < 0) {
		r = ferr(err, -EPROTO, "malformed offer");
		goto refuse;
	}
	for (const char *p = d.id; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) {
			r = ferr(err, -EPROTO, "malformed offer");
			goto refuse;
		}
	if (!ferry_name_valid(d.name)) {
		r = ferr(err, -EINVAL, "invalid component name '%s'", d.name);
		goto refuse;
	}
	if (ferry_component_get(&n->rt, d.name, &cur, NULL) == 0 &&
	    cur.state == FERRY_STATE_RUNNING) {
		r = ferr(err, -EEXIST, "node %s already runs a component named %s", n->name,
		         d.name);
		goto refuse;
	}
	mig_dir(n, mdir, sizeof(mdir));
	snprintf(d.dir, sizeof(d.dir), "%s/in-%s", mdir, d.id);
	snprintf(lockp, sizeof(lockp), "%s.lock", d.dir);
	r = mkdir_p(mdir, 0700);
	if (r == 0 && mkdir(d.dir, 0700) < 0)
		r = -errno;
	if (r < 0) {
		r = ferr(err, r, "%s: %s", d.dir, strerror(-r));
		goto refuse;
	}
	lock = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock < 0 || flock(lock, LOCK_EX) < 0) {
		r = ferr(err, -errno, "%s: %m", lockp);
		goto refuse;
	}
	/* this process becomes the component's monitor (restore_image, RESTORE_IN_PLACE), and
	 * the component inherits its session: its own, not the node's */
	(void)setsid();
	r = channel_send(ch, MSG_ACCEPT, NULL, 0, err);
	/* the component's process and namespaces made now, not in the downtime (without one,
	 * the restore makes it then) */
	if (r == 0) {
		struct ferry_error e = {0};
		(void)restore_helper_spawn(&n->rt, d.name, &pre, &e);
		/* and the buffers the last link comes through: no page faults for them then */
		r = channel_reserve(ch, MIG_CHUNK + 4096, err);
	}
	channel_set_timeout(ch, 300000);
	while (r == 0) {
		uint8_t t;
		const void *b;
		size_t l;
		r = channel_recv(ch, &t, &b, &l, err);
		if (r < 0)
			break;
		if (t == MSG_IMG_BEGIN || t == MSG_IMG_LINK) {
			r = dst_image_file(&d, b, l, t == MSG_IMG_LINK, err);
		} else if (t == MSG_LINK_DONE) {
			unsigned k = (unsigned)kv_u64(b, l, "link");
			if (k != d.links) {
				r = ferr(err, -EPROTO, "link %u out of order", k);
				break;
			}
			d.links++;
			r = channel_send(ch, MSG_LINK_ACK, b, l, err);
			test_point(ch, "dst-link");
		} else if (t == MSG_FILES) {
			_cleanup_free_ char *diff = NULL;
			size_t dl = 0;
			_cleanup_free_ struct ferry_service *sv = NULL;
			size_t nsv = 0;
			(void)ferry_services_list(&n->rt, &sv, &nsv, NULL);
			r = files_compare(b, l, sv, nsv, &diff, &dl);
			if (r < 0)
				r = ferr(err, r, "comparing files: out of memory");
			else if (diff)
				r = channel_send(ch, MSG_FILES_DIFF, diff, dl, err);
			else
				r = channel_send(ch, MSG_FILES_OK, NULL, 0, err);
		} else if (t == MSG_CARRY) {
			r = dst_carry(&d, b, l, err);
		} else if (t == MSG_LOG) {
			r = dst_log(&d, b, l, err);
		} else if (t == MSG_PREPARE) {
			unsigned k = (unsigned)kv_u64(b, l, "link");
			char img[PATH_MAX];
			if (k + 1 != d.links) {
				r = ferr(err, -EPROTO, "prepare of link %u, have %u", k, d.links);
				break;
			}
			snprintf(img, sizeof(img), "%s/%u", d.dir, k);
			test_point(ch, "dst-prepare");
			/* the stream is authenticated: the image is what the source wrote. Memory
			 * comes in after the component runs (lazily), so the downtime does not
			 * grow with it */
			struct restore_opts ro = {.flags = RESTORE_FILES_CHECKED | RESTORE_LAZY |
			                                   RESTORE_IN_PLACE | RESTORE_SESSION_RELAY,
			                          .pre = &pre,
			                          .hold = dst_hold,
			                          .hold_arg = &d};
			if (kv_u64(b, l, "postcopy")) {
				if (!d.pages_name[0]) {
					r = ferr(err, -EPROTO, "post-copy without a pages file");
					break;
				}
				/* the monitor makes the source its receiver gives; this points at
				 * it */
				snprintf(d.postcopy_img, sizeof(d.postcopy_img), "%s", img);
				ro.lazy_src = &d.post_src_slot;
			}
			struct ferry_restore_stats rst;
			r = restore_image(&n->rt, img, d.name, &ro, &d.pid, &rst, err);
			if (r < 0 && !d.held) {
				struct ferry_error e2;
				(void)channel_send(ch, MSG_FAIL, err->msg, strlen(err->msg), &e2);
			}
			monitor = r == 0;
			break; /* as the monitor, we spoke from the hold on */
		} else if (t == MSG_ABORT) {
			r = ferr(err, -ECANCELED, "the source aborted the migration");
		} else {
			r = ferr(err, -EPROTO, "unexpected message %u", t);
		}
	}
	restore_helper_drop(&pre);
	remove_tree(d.dir);
	(void)unlink(lockp);
	if (monitor) {
		/* this process parents the component from now on (a post-copy's receiver thread
		 * goes on with d) */
		lock = safe_close(lock);
		monitor_wait(&n->rt, d.name, d.pid);
	}
	if (r < 0)
		ferr_prefix(err, "migration %s of %s from %s", d.id, d.name, channel_peer_name(ch));
	return r;
refuse : {
	struct ferry_error e2;
	(void)channel_send(ch, MSG_REFUSE, err->msg, strlen(err->msg), &e2);
}
	return r;
}
