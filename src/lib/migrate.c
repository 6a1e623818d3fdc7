/*
 * Live migration: the source side (ferry_migrate), the protocol's helpers both sides use, and
 * the settling of a hand-over left in doubt (migrate_answer, migrate_recover); the destination
 * is accept.c, the file check filecheck.c.
 *
 * The memory moves as a chain of images: a first image taken while the component runs
 * (--live), then incremental links of what it wrote meanwhile, each sent as it is taken
 * (pre-copy rounds), until the rest fits the downtime target; the last link is taken with the
 * component frozen. Every link is a complete image, so the destination always holds one it
 * could restore. Files a link shares with an earlier one (hard links) are linked again at the
 * destination, not sent.
 *
 * Exactly one copy. The component is frozen by ptrace while the last link is taken and sent:
 * if this process dies, the kernel lets it run on here. The destination restores the last link
 * into a process it holds stopped and answers READY. Only then does the source freeze the
 * component's cgroup (a freeze that outlasts this process), write the durable record
 * "handed over" (the decision), end the component and send GO. A destination that loses the
 * source after READY asks the source node how the migration ended: "handed-over" if the record
 * exists, else "aborted" (the source node, restarted, thaws a component it finds frozen
 * without a record) or "pending" while the source's worker still runs (it holds a lock).
 */
#include <dirent.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "cgroup.h"
#include "lazy.h"
#include "mem.h"
#include "migrate.h"
#include "runtime.h"
#include "services.h"
#include "session.h"
#include "util.h"

int kv_get(const char *buf, size_t len, const char *key, char *out, size_t outlen)
{
	size_t kl = strlen(key);
	const char *p = buf, *end = buf + len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		if ((size_t)(le - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=') {
			size_t vl = (size_t)(le - p) - kl - 1;
			if (vl >= outlen)
				vl = outlen - 1;
			memcpy(out, p + kl + 1, vl);
			out[vl] = '\0';
			return 0;
		}
		p = le + 1;
	}
	return -ENOENT;
}

uint64_t kv_u64(const char *buf, size_t len, const char *key)
{
	char v[32];
	return kv_get(buf, len, key, v, sizeof(v)) == 0 ? strtoull(v, NULL, 0) : 0;
}

/*
 * Test hooks, named points of the protocol: FERRY_TEST_MIGRATE_KILL=POINT makes the worker at
 * POINT kill its ferryd with SIGKILL (the worker follows by PR_SET_PDEATHSIG), as if the node
 * died there; FERRY_TEST_MIGRATE_CUT=POINT breaks the connection there.
 */
void test_point(struct channel *ch, const char *point)
{
	const char *kill_at = getenv("FERRY_TEST_MIGRATE_KILL");
	const char *cut_at = getenv("FERRY_TEST_MIGRATE_CUT");

	if (cut_at && strcmp(cut_at, point) == 0 && ch)
		(void)shutdown(channel_fd(ch), SHUT_RDWR);
	if (kill_at && strcmp(kill_at, point) == 0) {
		pid_t daemon = getppid();
		if (daemon > 1)
			(void)safe_kill(daemon, SIGKILL);
		for (;;)
			pause(); /* PR_SET_PDEATHSIG ends us */
	}
}

/* A file name inside an image directory: no path, no dot files. */
bool plain_name(const char *s)
{
	return s[0] && s[0] != '.' && !strchr(s, '/') && strlen(s) < 64;
}

int recv_expect(struct channel *ch, uint8_t want, const void **buf, size_t *len,
                struct ferry_error *err)
{
	uint8_t t;
	int r = channel_recv(ch, &t, buf, len, err);
	if (r < 0)
		return r;
	if (t == want)
		return 0;
	if (t == MSG_REFUSE || t == MSG_FAIL || t == MSG_FILES_DIFF)
		return ferr(err, t == MSG_FILES_DIFF ? -ESTALE : -ECONNREFUSED, "%.*s",
		            (int)MIN(*len, (size_t)900), (const char *)*buf);
	return ferr(err, -EPROTO, "unexpected message %u (expected %u)", t, want);
}

/* rm -r of a directory of plain files and one level of such directories. */
void remove_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	if (!d) {
		(void)unlink(path);
		return;
	}
	while ((de = readdir(d))) {
		char p[PATH_MAX];
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
		if (de->d_type == DT_DIR)
			remove_tree(p);
		else
			(void)unlink(p);
	}
	closedir(d);
	(void)rmdir(path);
}

void mig_dir(const struct ferry_node *n, char *buf, size_t len)
{
	snprintf(buf, len, "%s/migrations", n->rt.state_dir);
}

/* ---- the source ---- */

struct sent_file {
	dev_t dev;
	ino_t ino;
	unsigned link;
	char name[64];
};

/* Post-copy: a run of deferred pages, at addr in the component, off in the pages file. */
struct post_run {
	uint64_t addr, off, len;
};

struct src {
	const struct ferry_node *n;
	const char *name;
	const char *to;
	const struct ferry_migrate_opts *o;
	struct ferry_migrate_stats *st;
	struct channel *ch;
	char id[33];
	char work[PATH_MAX];   /* link directories */
	char intent[PATH_MAX]; /* the migration's record here, locked while we run */
	char decided[PATH_MAX];
	char cg[PATH_MAX];
	struct sent_file *sent;
	size_t nsent;
	unsigned links;
	uint64_t log_sent;
	uint64_t t0;
	char **checked; /* files the destination has, the same */
	size_t nchecked;
	bool handed_over;
	char *buf;
	pid_t pid;             /* the component, here */
	struct post_run *post; /* post-copy: the pages the last link defers, by offset */
	size_t npost;
	int memfd;   /* /proc/PID/mem, for pages process_vm_readv cannot read */
	int pagemap; /* /proc/PID/pagemap: which deferred pages hold data */
	int marker;  /* for mem_scan_anon */
};

static void progress(struct src *s, const char *phase, uint32_t round, uint64_t down_ns)
{
	if (!s->o->progress)
		return;
	struct channel_counters cc;
	channel_counters(s->ch, &cc);
	struct ferry_migrate_progress p = {.phase = phase,
	                                   .round = round,
	                                   .bytes = cc.wire_sent,
	                                   .rate = s->st->rate,
	                                   .dirty_rate = s->st->dirty_rate,
	                                   .expected_down_ns = down_ns};
	s->o->progress(s->o->progress_arg, &p);
}

uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void link_path(const struct src *s, unsigned k, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%u", s->work, k);
}

/*
 * A file from offset from to size, its data only (MSG_DATA: offset, then bytes; MSG_END): holes
 * stay holes (post-copy's deferred pages are holes of the pages file).
 */
static int send_extents(struct channel *ch, int fd, char *buf, uint64_t from, uint64_t size,
                        struct ferry_error *err)
{
	for (uint64_t off = from; off < size;) {
		off_t d = lseek(fd, (off_t)off, SEEK_DATA);
		if (d < 0 && errno == ENXIO)
			break;
		off_t hole = d < 0 ? -1 : lseek(fd, d, SEEK_HOLE);
		if (d < 0 || hole < 0)
			return ferr(err, -errno, "seeking data at %" PRIu64 ": %m", off);
		for (off = (uint64_t)d; off < MIN((uint64_t)hole, size);) {
			size_t n =
			        (size_t)MIN((uint64_t)MIG_CHUNK, MIN((uint64_t)hole, size) - off);
			uint8_t pos[8];
			int r = pread_full(fd, buf, n, (off_t)off);
			if (r < 0)
				return ferr(err, r, "reading at %" PRIu64 ": %s", off,
				            strerror(-r));
			put_le64(pos, off);
			r = channel_sendv(ch, MSG_DATA, pos, sizeof(pos), buf, n, err);
			if (r < 0)
				return r;
			off += n;
		}
	}
	return channel_send(ch, MSG_END, NULL, 0, err);
}

/*
 * Send image link k (a directory); files already sent (same inode) are linked there. With
 * await_ack, wait for the destination to confirm it; otherwise its LINK_ACK comes later.
 */
static int send_link(struct src *s, unsigned k, bool await_ack, struct ferry_error *err)
{
	char dir[PATH_MAX], hdr[512];
	struct dirent **ents = NULL;
	int n, r = 0;

	link_path(s, k, dir, sizeof(dir));
	n = scandir(dir, &ents, NULL, alphasort);
	if (n < 0)
		return ferr(err, -errno, "image %s: %m", dir);
	/* MANIFEST last: the destination's copy of a link is complete only with it */
	for (int pass = 0; pass < 2 && r == 0; pass++) {
		for (int i = 0; i < n && r == 0; i++) {
			const char *f = ents[i]->d_name;
			bool manifest = strcmp(f, "MANIFEST") == 0;
			char path[PATH_MAX];
			struct stat sb;
			if (!plain_name(f) || manifest != (pass == 1))
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, f);
			_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || fstat(fd, &sb) < 0) {
				r = ferr(err, -errno, "image file %s: %m", path);
				break;
			}
			if (!S_ISREG(sb.st_mode))
				continue;
			const struct sent_file *old = NULL;
			for (size_t j = 0; j < s->nsent; j++)
				if (s->sent[j].dev == sb.st_dev && s->sent[j].ino == sb.st_ino)
					old = &s->sent[j];
			if (old) {
				snprintf(hdr, sizeof(hdr),
				         "link=%u\nname=%s\nfrom=%u\nfromname=%s\n", k, f,
				         old->link, old->name);
				r = channel_send(s->ch, MSG_IMG_LINK, hdr, strlen(hdr), err);
				continue;
			}
			snprintf(hdr, sizeof(hdr), "link=%u\nname=%s\nsize=%" PRIu64 "\n", k, f,
			         (uint64_t)sb.st_size);
			r = channel_send(s->ch, MSG_IMG_BEGIN, hdr, strlen(hdr), err);
			if (r == 0)
				r = send_extents(s->ch, fd, s->buf, 0, (uint64_t)sb.st_size, err);
			if (r < 0) {
				ferr_prefix(err, "sending %s", path);
				break;
			}
			struct sent_file *ns = realloc(s->sent, (s->nsent + 1) * sizeof(*ns));
			if (!ns) {
				r = ferr(err, -ENOMEM, "out of memory");
				break;
			}
			s->sent = ns;
			ns[s->nsent] =
			        (struct sent_file){.dev = sb.st_dev, .ino = sb.st_ino, .link = k};
			snprintf(ns[s->nsent].name, sizeof(ns[s->nsent].name), "%s", f);
			s->nsent++;
		}
	}
	for (int i = 0; i < n; i++)
		free(ents[i]);
	free(ents);
	if (r < 0)
		return r;
	snprintf(hdr, sizeof(hdr), "link=%u\n", k);
	r = channel_send(s->ch, MSG_LINK_DONE, hdr, strlen(hdr), err);
	if (r == 0 && await_ack) {
		const void *b;
		size_t l;
		r = recv_expect(s->ch, MSG_LINK_ACK, &b, &l, err);
	}
	return r;
}

/* The component's log from what was sent before: it moves along. */
static int send_log(struct src *s, struct ferry_error *err)
{
	char path[PATH_MAX], hdr[128];
	struct stat sb;

	runtime_log_path(&s->n->rt, s->name, path, sizeof(path));
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) < 0)
		return ferr(err, -errno, "log %s: %m", path);
	uint64_t end = (uint64_t)sb.st_size, from = MIN(s->log_sent, end);
	snprintf(hdr, sizeof(hdr), "id=%016" PRIx64 "\noffset=%" PRIu64 "\n",
	         runtime_log_id(&s->n->rt, s->name), from);
	int r = channel_send(s->ch, MSG_LOG, hdr, strlen(hdr), err);
	if (r == 0)
		r = send_extents(s->ch, fd, s->buf, from, end, err);
	if (r < 0)
		return ferr_prefix(err, "log %s", path);
	s->log_sent = end;
	return r;
}

static int carry_file(struct src *s, const char *path, struct ferry_error *err)
{
	char hdr[4400];
	struct stat sb;
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 || fstat(fd, &sb) < 0)
		return ferr(err, -errno, "carrying %s: %m", path);
	snprintf(hdr, sizeof(hdr),
	         "path=%s\nmode=%o\nuid=%u\ngid=%u\nmtime=%lld\nmtime_ns=%ld\nsize=%lld\ndir=%d\n",
	         path, sb.st_mode & 07777, sb.st_uid, sb.st_gid, (long long)sb.st_mtim.tv_sec,
	         sb.st_mtim.tv_nsec, (long long)sb.st_size, S_ISDIR(sb.st_mode) ? 1 : 0);
	int r = channel_send(s->ch, MSG_CARRY, hdr, strlen(hdr), err);
	if (r < 0)
		return r;
	if (S_ISDIR(sb.st_mode))
		return channel_send(s->ch, MSG_END, NULL, 0, err);
	return send_extents(s->ch, fd, s->buf, 0, (uint64_t)sb.st_size, err);
}

/*
 * The destination must have the files the component uses, identical, or get them. paths not
 * checked before are checked now (the list is taken over).
 */
static int check_paths(struct src *s, char **paths, size_t np, struct ferry_error *err)
{
	_cleanup_free_ char *list = NULL, *diff = NULL;
	char **todo = NULL;
	size_t ntodo = 0, len;
	const void *b;
	size_t l;
	uint8_t t;
	int r = 0;

	for (size_t i = 0; r == 0 && i < np; i++) {
		bool seen = false;
		for (size_t j = 0; !seen && j < s->nchecked; j++)
			seen = strcmp(s->checked[j], paths[i]) == 0;
		if (!seen)
			r = add_path(&todo, &ntodo, paths[i]);
	}
	free_paths(paths, np);
	if (r < 0 || ntodo == 0) {
		free_paths(todo, ntodo);
		return r < 0 ? ferr(err, r, "out of memory") : 0;
	}
	r = files_list(todo, ntodo, &list, &len, err);
	if (r == 0)
		r = channel_send(s->ch, MSG_FILES, list, len, err);
	if (r == 0)
		r = channel_recv(s->ch, &t, &b, &l, err);
	if (r == 0 && t == MSG_FILES_DIFF) {
		diff = strndup(b, l);
		if (!diff)
			r = ferr(err, -ENOMEM, "out of memory");
		else if (strstr(diff, SERVICES_DIR "/"))
			r = ferr(err, -ENOENT,
			         "%s lacks services the component holds sessions to:\n%s", s->to,
			         diff);
		else if (!s->o->carry_files)
			r = ferr(err, -ESTALE,
			         "files differ at %s (use --carry-files to send them along):\n%s",
			         s->to, diff);
		for (char *line = r == 0 ? strtok(diff, "\n") : NULL; r == 0 && line;
		     line = strtok(NULL, "\n")) {
			char *colon = strstr(line, ": ");
			if (!colon)
				continue;
			*colon = '\0';
			r = carry_file(s, line, err);
			if (r == 0)
				s->st->files_carried++;
		}
		if (r == 0)
			r = channel_send(s->ch, MSG_FILES, list, len, err);
		if (r == 0)
			r = recv_expect(s->ch, MSG_FILES_OK, &b, &l, err);
		if (r < 0 && s->st->files_carried)
			ferr_prefix(err, "after carrying %u files", s->st->files_carried);
	} else if (r == 0 && t != MSG_FILES_OK) {
		r = ferr(err, -EPROTO, "unexpected message %u (expected the file check)", t);
	}
	for (size_t i = 0; r == 0 && i < ntodo; i++)
		r = add_path(&s->checked, &s->nchecked, todo[i]);
	free_paths(todo, ntodo);
	return r;
}

/* The files component c uses: those not checked yet. */
static int check_files(struct src *s, const struct component *c, struct ferry_error *err)
{
	char **paths = NULL;
	size_t np = 0;
	int r = model_paths(c, &paths, &np, err);

	if (r < 0) {
		free_paths(paths, np);
		return r;
	}
	return check_paths(s, paths, np, err);
}

static int write_decision(struct src *s, struct ferry_error *err)
{
	char tmp[PATH_MAX + 8], dir[PATH_MAX], buf[256];
	snprintf(tmp, sizeof(tmp), "%s.tmp", s->decided);
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return ferr(err, -errno, "%s: %m", tmp);
	snprintf(buf, sizeof(buf), "handed-over\nname=%s\nto=%s\nnode=%s\n", s->name, s->to,
	         s->st->dest_node);
	int r = write_full(fd, buf, strlen(buf));
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, s->decided) < 0)
		r = -errno;
	if (r < 0)
		return ferr(err, r, "recording the hand-over in %s: %s", s->decided, strerror(-r));
	mig_dir(s->n, dir, sizeof(dir));
	(void)fsync_dir(dir);
	return 0;
}

/* The sessions' late bytes, kept beside the decision until the destination has them: one that
 * lost the connection learns the outcome by asking (migrate_answer), and gets them then. */
static void keep_late(const struct src *s, const void *b, size_t n)
{
	char path[PATH_MAX + 8], tmp[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s.late", s->intent);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write_full(fd, b, n) < 0 || rename(tmp, path) < 0)
		(void)unlink(tmp);
}

/* ---- post-copy, the source: the frozen component's pages, streamed and on request ---- */

/* The pages the last link (c) deferred: the runs of its anonymous mappings it left empty. */
static int post_load(struct src *s, const struct component *c, struct ferry_error *err)
{
	for (size_t i = 0; i < c->procs[0].nvmas; i++) {
		const struct vma *v = &c->procs[0].vmas[i];
		if (v->kind != VMA_ANON)
			continue;
		for (size_t j = 0; j < v->nruns; j++) {
			if (v->runs[j].csum != 0)
				continue; /* copied with the link (hot_pages) */
			struct post_run *np = realloc(s->post, (s->npost + 1) * sizeof(*np));
			if (!np)
				return ferr(err, -ENOMEM, "out of memory");
			s->post = np;
			np[s->npost++] = (struct post_run){.addr = v->runs[j].addr,
			                                   .off = v->runs[j].off,
			                                   .len = v->runs[j].npages * 4096ull};
		}
	}
	return 0;
}

/* Send [off, off + len) of the pages file, read from the frozen component's memory. */
static int post_send(struct src *s, uint64_t off, uint64_t len, struct ferry_error *err)
{
	size_t lo = 0, hi = s->npost;
	while (lo < hi) { /* the first run ending after off */
		size_t mid = (lo + hi) / 2;
		if (s->post[mid].off + s->post[mid].len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; len > 0 && i < s->npost && s->post[i].off < off + len; i++) {
		const struct post_run *pr = &s->post[i];
		uint64_t a = MAX(off, pr->off), e = MIN(off + len, pr->off + pr->len);
		while (a < e) {
			size_t n = (size_t)MIN((uint64_t)MIG_CHUNK, e - a);
			uint64_t addr = pr->addr + (a - pr->off);
			struct iovec l = {s->buf, n}, rv = {(void *)addr, n};
			uint8_t pos[8];
			if (process_vm_readv(s->pid, &l, 1, &rv, 1, 0) != (ssize_t)n &&
			    pread_full(s->memfd, s->buf, n, (off_t)addr) < 0)
				return ferr(err, -EIO, "reading memory at 0x%" PRIx64 "+0x%zx: %m",
				            addr, n);
			put_le64(pos, a);
			int r = channel_sendv(s->ch, MSG_PAGES, pos, sizeof(pos), s->buf, n, err);
			if (r < 0)
				return r;
			a += n;
		}
	}
	return 0;
}

/* A request from the destination: pages its component waits for. */
static int post_serve(struct src *s, const void *b, size_t l, struct ferry_error *err)
{
	if (l != 16)
		return ferr(err, -EPROTO, "malformed page request");
	return post_send(s, get_le64(b), MIN(get_le64((const uint8_t *)b + 8), 64ull << 20), err);
}

/* Requests waiting on the connection, served first. */
static int post_requests(struct src *s, struct ferry_error *err)
{
	struct pollfd p = {.fd = channel_fd(s->ch), .events = POLLIN};
	while (poll(&p, 1, 0) == 1) {
		uint8_t t;
		const void *b;
		size_t l;
		int r = channel_recv(s->ch, &t, &b, &l, err);
		if (r < 0)
			return r;
		if (t != MSG_REQ)
			return ferr(err, -EPROTO, "unexpected message %u during post-copy", t);
		r = post_serve(s, b, l, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* After the hand-over: every deferred page in order, requests first; then wait until the
 * destination has them all. */
/*
 * [off, off + len) of a deferred run at addr in the frozen component, streamed: the ranges that
 * hold data as pages, the empty ones as MSG_ZERO (post-copy defers whole mappings unscanned).
 */
static int post_chunk(struct src *s, uint64_t addr, uint64_t off, uint64_t len,
                      struct ferry_error *err)
{
	_cleanup_free_ uint64_t *data = NULL;
	size_t ndata = 0;
	uint8_t z[16];
	int r = 0;

	if (s->pagemap < 0)
		return post_send(s, off, len, err);
	r = mem_scan_anon(s->pagemap, addr, addr + len, &s->marker, &data, &ndata, err);
	uint64_t at = 0;
	for (size_t k = 0; r == 0 && k <= ndata; k++) {
		uint64_t ds = k < ndata ? MIN(data[2 * k] - addr, len) : len;
		uint64_t de = k < ndata ? MIN(data[2 * k + 1] - addr, len) : len;
		if (ds > at) {
			put_le64(z, off + at);
			put_le64(z + 8, ds - at);
			r = channel_send(s->ch, MSG_ZERO, z, sizeof(z), err);
		}
		if (r == 0 && de > ds)
			r = post_send(s, off + ds, de - ds, err);
		at = MAX(at, de);
	}
	return r;
}

static int post_stream(struct src *s, struct ferry_error *err)
{
	uint8_t t;
	const void *b;
	size_t l;
	int r = 0;

	for (size_t i = 0; r == 0 && i < s->npost; i++)
		for (uint64_t a = 0; r == 0 && a < s->post[i].len; a += MIG_CHUNK) {
			r = post_requests(s, err);
			if (i == 0 && a == 0)
				test_point(s->ch, "src-postcopy");
			if (r == 0)
				r = post_chunk(s, s->post[i].addr + a, s->post[i].off + a,
				               MIN((uint64_t)MIG_CHUNK, s->post[i].len - a), err);
		}
	if (r == 0)
		r = channel_send(s->ch, MSG_PAGES_END, NULL, 0, err);
	while (r == 0) {
		r = channel_recv(s->ch, &t, &b, &l, err);
		if (r == 0 && t == MSG_PAGES_ACK)
			return 0;
		if (r == 0)
			r = t == MSG_REQ ? post_serve(s, b, l, err)
			                 : ferr(err, -EPROTO, "unexpected message %u", t);
	}
	return ferr_prefix(err, "post-copy");
}

struct handover_arg {
	struct src *s;
	unsigned link;
	uint64_t frozen_at;
	uint64_t bytes_at_freeze;
};

/*
 * Called by the checkpoint with the last link committed and the component frozen by ptrace:
 * send it, have the destination restore and hold it, then decide.
 */
static int handover(void *arg, uint64_t frozen_at, const struct component *c,
                    struct ferry_error *err)
{
	struct handover_arg *h = arg;
	struct src *s = h->s;
	struct channel_counters cc;
	const void *b;
	size_t l;
	char hdr[64];
	int r;

	h->frozen_at = frozen_at;
	channel_counters(s->ch, &cc);
	h->bytes_at_freeze = cc.wire_sent;
	progress(s, "stop", h->link, 0);
	test_point(s->ch, "src-frozen");
	r = send_link(s, h->link, false, err); /* its ACK comes before READY */
	/* the link's model: the files it uses (those opened since they were checked: few or
	 * none) and, in post-copy, the pages it defers */
	bool post = s->o->mode == FERRY_MIGRATE_POSTCOPY;
	if (r == 0)
		r = check_files(s, c, err);
	if (r == 0 && post)
		r = post_load(s, c, err);
	if (r == 0)
		r = send_log(s, err);
	if (r == 0) {
		snprintf(hdr, sizeof(hdr), "link=%u\npostcopy=%d\n", h->link, post);
		r = channel_send(s->ch, MSG_PREPARE, hdr, strlen(hdr), err);
	}
	if (r == 0) {
		test_point(s->ch, "src-prepared");
		channel_set_timeout(s->ch, 600000);
		uint8_t t = 0;
		/* a restore in post-copy may want pages already (the kernel writing to its memory)
		 */
		bool acked = false;
		while (r == 0 && (r = channel_recv(s->ch, &t, &b, &l, err)) == 0 &&
		       (t == MSG_REQ || (t == MSG_LINK_ACK && !acked))) {
			if (t == MSG_LINK_ACK)
				acked = kv_u64(b, l, "link") == h->link;
			else
				r = post ? post_serve(s, b, l, err)
				         : ferr(err, -EPROTO, "unexpected request");
		}
		if (r == 0 && t == MSG_READY && !acked)
			r = ferr(err, -EPROTO, "ready without the last link");
		if (r == 0 && t != MSG_READY)
			r = t == MSG_FAIL ? ferr(err, -ECONNREFUSED, "%.*s",
			                         (int)MIN(l, (size_t)900), (const char *)b)
			                  : ferr(err, -EPROTO, "unexpected message %u", t);
		if (r < 0)
			ferr_prefix(err, "restore at %s", s->to);
		else
			s->st->restore_ns = kv_u64(b, l, "restore_ns");
	}
	/* the decision: from here on the component must not run here again */
	if (r == 0) {
		test_point(s->ch, "src-ready");
		r = cgroup_freeze(s->cg, true, err);
	}
	if (r == 0) {
		r = write_decision(s, err);
		if (r < 0) {
			struct ferry_error e2;
			(void)cgroup_freeze(s->cg, false, &e2);
		}
	}
	if (r < 0) {
		struct ferry_error e2;
		(void)channel_send(s->ch, MSG_ABORT, NULL, 0, &e2);
		return r;
	}
	s->handed_over = true;
	test_point(s->ch, "src-decided");
	/* the component cannot run here again (its group is frozen, the decision is on disk):
	 * the destination may let it run while this one is ended */
	struct ferry_error e2;
	/* the sessions' bytes that came after the capture go with GO: nothing more comes now */
	_cleanup_free_ uint8_t *late = NULL;
	size_t nlate = 0;
	if (session_late(c, &late, &nlate, &e2) < 0)
		nlate = 0; /* lost, as the note in docs/sessions.md says */
	bool went = channel_send(s->ch, MSG_GO, late, nlate, &e2) == 0;
	if (went) {
		test_point(s->ch, "src-go");
		/* it runs there once DONE comes: the downtime ends (ending it here can wait). In
		 * post-copy its threads may want pages before DONE is sent: served meanwhile */
		channel_set_timeout(s->ch, 60000);
		uint8_t t = 0;
		while ((r = channel_recv(s->ch, &t, &b, &l, &e2)) == 0 && t == MSG_REQ && post &&
		       (r = post_serve(s, b, l, &e2)) == 0)
			;
		if (r == 0 && t == MSG_DONE) {
			s->st->confirmed = true;
			s->st->dest_pid = (pid_t)kv_u64(b, l, "pid");
		}
	}
	s->st->downtime_ns = now_ns() - frozen_at;
	/* not confirmed: the destination may ask for the outcome, and these come with it (our
	 * worker holds the migration's lock until it ends: it is asked only after this) */
	if (nlate && !s->st->confirmed)
		keep_late(s, late, nlate);
	if (post && went) {
		/* decided: whatever DONE said, the only copy there needs the pages (a broken
		 * connection fails here at once) */
		/* it runs there on what it has; the rest from here, while frozen here */
		struct channel_counters c0, c1;
		channel_counters(s->ch, &c0);
		channel_set_timeout(s->ch, 600000);
		if (post_stream(s, &e2) < 0)
			snprintf(s->st->post_error, sizeof(s->st->post_error), "%s", e2.msg);
		channel_counters(s->ch, &c1);
		s->st->bytes_postcopy = c1.wire_sent - c0.wire_sent;
	}
	return 1;
}

static int new_id(char *buf)
{
	uint8_t raw[16];
	if (getrandom(raw, sizeof(raw), 0) != sizeof(raw))
		return -errno;
	for (int i = 0; i < 16; i++)
		snprintf(buf + 2 * i, 3, "%02x", raw[i]);
	return 0;
}

/* a migration's downtime besides the capture and the pages: the destination's restore, the
 * hand-over messages and the decision (2-5 ms measured on a 2-CPU VM; docs/migration.md) */
#define HANDOVER_FIXED_NS (5 * 1000000ull)

/* Pre-copy: links while the component runs, until the rest fits the downtime target. */
static int precopy_rounds(struct src *s, struct ferry_error *err)
{
	struct ferry_ckpt_opts co = {.flags = FERRY_CKPT_LIVE};
	struct ferry_ckpt_stats cs;
	char dir[PATH_MAX], parent[PATH_MAX];
	uint64_t target = (uint64_t)(s->o->max_downtime_ms ? s->o->max_downtime_ms : 20) * 1000000;
	unsigned max_rounds = s->o->max_rounds ? s->o->max_rounds : 30;
	uint64_t last_bytes = UINT64_MAX, t_prev = 0;
	int r;

	for (unsigned k = 0;; k++) {
		link_path(s, k, dir, sizeof(dir));
		if (k > 0) {
			/* each link copies what was written since the one before while the
			 * component runs, then what it wrote meanwhile, frozen
			 * (FERRY_CKPT_NO_ROUNDS would send less for a component rewriting its
			 * working set: see docs/migration.md) */
			link_path(s, k - 1, parent, sizeof(parent));
			co.flags = 0;
			co.parent = parent;
		}
		uint64_t t_start = now_ns();
		r = ferry_checkpoint(&s->n->rt, s->name, dir, &co, &cs, err);
		if (r < 0)
			return ferr_prefix(err, "pre-copy round %u", k);
		if (k > 0 && !cs.incremental)
			return ferr(err, -ENOTSUP, "pre-copy round %u could not be incremental: %s",
			            k, cs.fallback);
		struct channel_counters c0, c1;
		channel_counters(s->ch, &c0);
		uint64_t ts = now_ns();
		if (k == 0) {
			/* before the first byte of memory goes */
			struct component *c = NULL;
			r = image_model(dir, &c, err);
			if (r == 0)
				r = check_files(s, c, err);
			model_free(c);
			if (r < 0)
				return r;
		}
		r = send_link(s, k, true, err);
		if (r == 0 && k == 0)
			r = send_log(s, err);
		if (r < 0)
			return r;
		test_point(s->ch, "src-precopy");
		channel_counters(s->ch, &c1);
		uint64_t dt = now_ns() - ts, sent = c1.wire_sent - c0.wire_sent;
		s->links = k + 1;
		s->st->rounds = k + 1;
		if (dt > 0 && sent > (1u << 20))
			s->st->rate = sent * 1000000000ull / dt;
		uint64_t own = cs.pages_written * 4096;
		if (k > 0 && t_start > t_prev)
			s->st->dirty_rate = own * 1000000000ull / (t_start - t_prev);
		t_prev = t_start;
		/* what the frozen link would hold: what is written in one more round. Each of
		 * its bytes is written at the source, sent and written at the destination before
		 * the component runs there (about twice its time on the wire); besides them the
		 * freeze costs the capture (this link's freeze) and the restore and hand-over */
		uint64_t round_ns = now_ns() - t_start;
		uint64_t rest = s->st->dirty_rate * round_ns / 1000000000ull; /* 0 after link 0 */
		uint64_t rate = s->st->rate ? s->st->rate : 100000000;
		uint64_t down = 2 * rest * 1000000000ull / rate + cs.freeze_ns + HANDOVER_FIXED_NS;
		progress(s, "precopy", k + 1, down);
		if (k > 0 && down <= target)
			break;
		if (k + 1 >= max_rounds)
			break;
		/* not converging (the component writes about as fast as the rounds carry it
		 * away): further rounds would not shrink the rest, only wait for a slow one */
		if (k > 0 && own >= last_bytes / 10 * 9)
			break;
		last_bytes = own;
	}
	return 0;
}

static void src_cleanup(struct src *s)
{
	free_paths(s->checked, s->nchecked);
	s->memfd = safe_close(s->memfd);
	s->pagemap = safe_close(s->pagemap);
	free(s->post);
	remove_tree(s->work);
	free(s->sent);
	free(s->buf);
	channel_free(s->ch);
}

int ferry_migrate(const struct ferry_node *n, const char *name, const char *to,
                  const struct ferry_migrate_opts *o, struct ferry_migrate_stats *ret,
                  struct ferry_error *err)
{
	struct ferry_migrate_opts none = {0};
	struct ferry_migrate_stats st = {0};
	struct src s = {.n = n, .name = name, .to = to, .st = &st, .t0 = now_ns()};
	struct ferry_component rec;
	char mdir[PATH_MAX], text[1024];
	_cleanup_close_ int lock = -EBADF, fd = -EBADF;
	const void *b;
	size_t l;
	int r;

	s.o = o ? o : &none;
	r = ferry_component_get(&n->rt, name, &rec, err);
	if (r < 0)
		return r;
	if (rec.state != FERRY_STATE_RUNNING)
		return ferr(err, -ESRCH, "component %s is not running", name);
	r = new_id(s.id);
	if (r < 0)
		return ferr(err, r, "getrandom: %s", strerror(-r));
	snprintf(st.id, sizeof(st.id), "%s", s.id);
	s.pid = rec.pid;
	s.memfd = s.pagemap = -EBADF;
	s.marker = -2;
	if (s.o->mode == FERRY_MIGRATE_POSTCOPY) {
		char mp[64];
		snprintf(mp, sizeof(mp), "/proc/%d/mem", rec.pid);
		s.memfd = open(mp, O_RDONLY | O_CLOEXEC);
		snprintf(mp, sizeof(mp), "/proc/%d/pagemap", rec.pid);
		s.pagemap = open(mp, O_RDONLY | O_CLOEXEC);
	}
	mig_dir(n, mdir, sizeof(mdir));
	r = mkdir_p(mdir, 0700);
	if (r < 0)
		return ferr(err, r, "%s: %s", mdir, strerror(-r));
	snprintf(s.intent, sizeof(s.intent), "%s/%s", mdir, s.id);
	snprintf(s.decided, sizeof(s.decided), "%s/%s.handed-over", mdir, s.id);
	snprintf(s.work, sizeof(s.work), "%s/%s.d", mdir, s.id);
	s.buf = malloc(MIG_CHUNK);
	if (!s.buf)
		return ferr(err, -ENOMEM, "out of memory");

	/* the record of this migration, locked for as long as we run */
	lock = open(s.intent, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (lock < 0 || flock(lock, LOCK_EX) < 0) {
		r = ferr(err, -errno, "%s: %m", s.intent);
		goto out;
	}
	char cgname[64];
	snprintf(cgname, sizeof(cgname), "ferry-%s", s.id);
	r = cgroup_adopt(cgname, rec.pid, s.cg, sizeof(s.cg), err);
	snprintf(text, sizeof(text), "name=%s\npid=%d\nto=%s\ncgroup=%s\n", name, rec.pid, to,
	         s.cg);
	if (r == 0)
		r = write_full(lock, text, strlen(text));
	if (r == 0 && fsync(lock) < 0)
		r = -errno;
	if (r < 0) {
		ferr_prefix(err, "preparing the migration of %s", name);
		goto out;
	}
	r = mkdir_p(s.work, 0700);
	if (r < 0) {
		r = ferr(err, r, "%s: %s", s.work, strerror(-r));
		goto out;
	}

	/* setup: connect, authenticate, offer */
	fd = node_connect(to, 5000, err);
	if (fd < 0) {
		r = fd;
		goto out;
	}
	struct channel_key key;
	memcpy(key.k, n->key, sizeof(key.k));
	r = channel_open(fd, &key, true, n->name, 10000, &s.ch, err);
	if (r < 0)
		goto out;
	snprintf(st.dest_node, sizeof(st.dest_node), "%s", channel_peer_name(s.ch));
	channel_set_compress(s.ch, s.o->compress);
	snprintf(text, sizeof(text), "id=%s\nname=%s\nmode=%d\nsource=%s\nsource_addr=%s\n", s.id,
	         name, (int)s.o->mode, n->name, n->listen);
	r = channel_send(s.ch, MSG_OFFER, text, strlen(text), err);
	if (r == 0)
		r = recv_expect(s.ch, MSG_ACCEPT, &b, &l, err);
	if (r < 0) {
		ferr_prefix(err, "node %s refused %s", st.dest_node[0] ? st.dest_node : to, name);
		goto out;
	}
	channel_set_timeout(s.ch, 120000);
	/* the buffers the frozen link goes through, faulted in now rather than in the
	 * downtime (a page fault each, 1-4 us apiece on a VM) */
	r = channel_reserve(s.ch, MIG_CHUNK + 4096, err);
	if (r < 0)
		goto out;
	populate(s.buf, MIG_CHUNK);
	test_point(s.ch, "src-offer");
	st.setup_ns = now_ns() - s.t0;
	progress(&s, "setup", 0, 0);

	if (s.o->mode == FERRY_MIGRATE_PRECOPY) {
		r = precopy_rounds(&s, err);
		if (r < 0)
			goto out;
	}
	if (s.o->mode != FERRY_MIGRATE_PRECOPY) {
		/* what can be done while it runs: the file check (frozen, only files opened
		 * since are checked) and the log so far */
		char **paths = NULL;
		size_t np = 0;
		char log_path[PATH_MAX];
		runtime_log_path(&s.n->rt, name, log_path, sizeof(log_path));
		r = proc_paths(&s.n->rt, rec.pid, log_path, &paths, &np);
		r = r < 0 ? ferr(err, r, "out of memory") : check_paths(&s, paths, np, err);
		if (r == 0)
			r = send_log(&s, err);
		if (r < 0) {
			ferr_prefix(err, "migrating %s to %s", name, to);
			goto out;
		}
	}
	struct channel_counters cc;
	channel_counters(s.ch, &cc);
	st.bytes_precopy = cc.wire_sent;

	/* the last link, frozen; the hand-over decides whether it ends here */
	char dir[PATH_MAX], parent[PATH_MAX];
	struct handover_arg ha = {.s = &s, .link = s.links};
	struct ferry_ckpt_opts co = {
	        .flags = FERRY_CKPT_STOP, .handover = handover, .handover_arg = &ha};
	if (s.o->mode == FERRY_MIGRATE_POSTCOPY)
		co.flags |= FERRY_CKPT_DEFER_ANON;
	link_path(&s, s.links, dir, sizeof(dir));
	if (s.links > 0) {
		link_path(&s, s.links - 1, parent, sizeof(parent));
		co.parent = parent;
	}
	struct ferry_ckpt_stats cs;
	r = ferry_checkpoint(&n->rt, name, dir, &co, &cs, err);
	if (r < 0 || !s.handed_over) {
		if (r == 0)
			r = ferr(err, -ECANCELED, "the hand-over did not happen");
		ferr_prefix(err, "migrating %s to %s", name, to);
		goto out;
	}
	channel_counters(s.ch, &cc);
	st.bytes_downtime = cc.wire_sent - ha.bytes_at_freeze - st.bytes_postcopy;
	st.bytes_precopy = ha.bytes_at_freeze;
	st.bytes_total = cc.wire_sent;
	st.rounds = s.links;
	/* it lives there now: nothing of it stays here */
	(void)cgroup_remove(s.cg);
	char cdir[PATH_MAX];
	runtime_dir(&n->rt, name, cdir, sizeof(cdir));
	remove_tree(cdir);
	progress(&s, "done", s.links, st.downtime_ns);
	r = 0;
out:
	if (r < 0 && !s.handed_over && s.cg[0])
		(void)cgroup_release(s.cg); /* the component stays here: out of our group again */
	if (r < 0 && s.ch && !s.handed_over) {
		struct ferry_error e3;
		(void)channel_send(s.ch, MSG_ABORT, NULL, 0, &e3);
	}
	if (!s.handed_over)
		(void)unlink(s.intent);
	st.total_ns = now_ns() - s.t0;
	src_cleanup(&s);
	if (ret)
		*ret = st;
	return r;
}

/* ---- settling ---- */

/* How migration id ended, settling the component if its worker is gone; "pending" while it
 * runs. */
static const char *settle(const struct ferry_node *n, const char *id, struct ferry_error *err)
{
	char mdir[PATH_MAX], intent[PATH_MAX], decided[PATH_MAX + 16], cg[PATH_MAX] = "";
	_cleanup_free_ char *text = NULL;
	bool handed;

	mig_dir(n, mdir, sizeof(mdir));
	snprintf(intent, sizeof(intent), "%s/%s", mdir, id);
	snprintf(decided, sizeof(decided), "%s.handed-over", intent);
	handed = access(decided, F_OK) == 0;
	_cleanup_close_ int fd = open(intent, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return handed ? "handed-over" : "aborted"; /* settled before, or never began */
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		return "pending";
	/* the worker is gone: decided or not, make the component agree */
	if (read_file(intent, &text, NULL) == 0)
		(void)kv_get(text, strlen(text), "cgroup", cg, sizeof(cg));
	if (cg[0] && handed) {
		if (cgroup_kill(cg, err) < 0)
			return "pending";
		(void)cgroup_remove(cg);
	} else if (cg[0] && cgroup_populated(cg) >= 0) {
		if (cgroup_freeze(cg, false, err) < 0)
			return "pending";
		(void)cgroup_release(cg);
	}
	(void)unlink(intent);
	return handed ? "handed-over" : "aborted";
}

int migrate_answer(const struct ferry_node *n, struct channel *ch, const char *q, size_t len,
                   struct ferry_error *err)
{
	char id[40], text[64];
	if (kv_get(q, len, "id", id, sizeof(id)) < 0 || strlen(id) != 32 || strchr(id, '/'))
		return ferr(err, -EPROTO, "malformed question");
	const char *o = settle(n, id, err);
	int tl = snprintf(text, sizeof(text), "outcome=%s\n", o);
	/* handed over: with the sessions' late bytes, after a NUL, if the GO did not arrive */
	char mdir[PATH_MAX], path[PATH_MAX + 48];
	_cleanup_free_ char *late = NULL;
	size_t nlate = 0;
	mig_dir(n, mdir, sizeof(mdir));
	snprintf(path, sizeof(path), "%s/%s.late", mdir, id);
	if (strcmp(o, "handed-over") != 0 || read_file(path, &late, &nlate) < 0 || !nlate)
		return channel_send(ch, MSG_ANSWER, text, (size_t)tl, err);
	_cleanup_free_ char *msg = malloc((size_t)tl + 1 + nlate);
	if (!msg)
		return ferr(err, -ENOMEM, "out of memory");
	memcpy(msg, text, (size_t)tl + 1);
	memcpy(msg + tl + 1, late, nlate);
	return channel_send(ch, MSG_ANSWER, msg, (size_t)tl + 1 + nlate, err);
}

int migrate_recover(const struct ferry_node *n, struct ferry_error *err)
{
	char mdir[PATH_MAX];
	DIR *d;
	struct dirent *de;

	mig_dir(n, mdir, sizeof(mdir));
	d = opendir(mdir);
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		char p[PATH_MAX];
		const char *f = de->d_name;
		snprintf(p, sizeof(p), "%s/%s", mdir, f);
		struct stat sb;
		if (strlen(f) == 32) {
			(void)settle(n, f, err);
		} else if ((strstr(f, ".handed-over") || strstr(f, ".late")) && stat(p, &sb) == 0 &&
		           time(NULL) - sb.st_mtime > 7 * 86400) {
			/* a destination in doubt asks within moments of losing us: a week is plenty
			 */
			(void)unlink(p);
		} else if (strlen(f) == 34 && strcmp(f + 32, ".d") == 0) {
			/* a source's links: kept while its worker runs */
			char intent[PATH_MAX];
			snprintf(intent, sizeof(intent), "%s/%.32s", mdir, f);
			_cleanup_close_ int fd = open(intent, O_RDWR | O_CLOEXEC);
			if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) == 0)
				remove_tree(p);
		} else if (strncmp(f, "in-", 3) == 0 && !strstr(f, ".lock")) {
			char lockp[PATH_MAX + 8];
			snprintf(lockp, sizeof(lockp), "%s.lock", p);
			_cleanup_close_ int fd = open(lockp, O_RDWR | O_CLOEXEC);
			if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) == 0) {
				remove_tree(p);
				(void)unlink(lockp);
			}
		}
	}
	closedir(d);
	return 0;
}
