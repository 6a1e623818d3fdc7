/* The image container: a checksummed record file, page-data files and an atomic MANIFEST. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "image.h"
#include "util.h"

/* Byte layouts are described in docs/image-format.md; keep the two in step. */
#define MAGIC_LEN       8
#define STATE_MAGIC     "FERRYST" /* 7 characters and the NUL: 8 bytes */
#define MANIFEST_MAGIC  "FERRYMF"
#define STATE_HDR_LEN   20          /* magic, u32 format version, u64 gen */
#define FRAME_MAGIC     0x43455246u /* "FREC" in file byte order */
#define FRAME_LEN       20          /* u32 magic, u16 kind, u16 version, u32 length, u64 checksum */
#define MANIFEST_MAX    65536       /* 1024 pages files of at most 42 bytes each, and the rest */
#define STATE_MAX       (1ULL << 30)
#define FLUSH_AT        (1u << 20) /* write buffered records out in runs of about this size */
#define FNAME_MAX       64
#define PAGE_ALIGN      4096ULL
#define PAGES_FILES_MAX 1024 /* pages files one MANIFEST may name (own + inherited) */

uint64_t image_checksum(const void *data, size_t len)
{
	return XXH3_64bits(data, len);
}

/* ---- payload codec ---- */

static void put_le(uint8_t *p, uint64_t v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Reserve n bytes at the end of wb; NULL (with wb->err set, sticky) when that fails. */
static uint8_t *wb_grow(struct wbuf *wb, size_t n)
{
	uint8_t *at;

	if (wb->err)
		return NULL;
	if (n > SIZE_MAX / 2 - wb->len) {
		wb->err = -ENOMEM;
		return NULL;
	}
	if (wb->len + n > wb->cap) {
		size_t cap = wb->cap ? wb->cap : 256;
		while (cap < wb->len + n)
			cap *= 2;
		uint8_t *p = realloc(wb->p, cap);
		if (!p) {
			wb->err = -ENOMEM;
			return NULL;
		}
		wb->p = p;
		wb->cap = cap;
	}
	at = wb->p + wb->len;
	wb->len += n;
	return at;
}

static void wb_le(struct wbuf *wb, uint64_t v, size_t n)
{
	uint8_t *p = wb_grow(wb, n);
	if (p)
		put_le(p, v, n);
}

static void wb_raw(struct wbuf *wb, const void *src, size_t n)
{
	uint8_t *p = wb_grow(wb, n);
	if (p && n > 0)
		memcpy(p, src, n);
}

void wb_u8(struct wbuf *wb, uint8_t v)
{
	wb_le(wb, v, 1);
}

void wb_u16(struct wbuf *wb, uint16_t v)
{
	wb_le(wb, v, 2);
}

void wb_u32(struct wbuf *wb, uint32_t v)
{
	wb_le(wb, v, 4);
}

void wb_u64(struct wbuf *wb, uint64_t v)
{
	wb_le(wb, v, 8);
}

void wb_bytes(struct wbuf *wb, const void *p, size_t n)
{
	if (n > UINT32_MAX) {
		if (!wb->err)
			wb->err = -EOVERFLOW;
		return;
	}
	wb_u32(wb, (uint32_t)n);
	wb_raw(wb, p, n);
}

void wb_str(struct wbuf *wb, const char *s)
{
	wb_bytes(wb, s, s ? strlen(s) : 0);
}

/* The error stays: a buffer that once failed is not trusted again until wb_free. */
void wb_reset(struct wbuf *wb)
{
	wb->len = 0;
}

void wb_free(struct wbuf *wb)
{
	free(wb->p);
	*wb = (struct wbuf){0};
}

/* Consume n bytes; NULL and rb->err = -EPROTO when fewer are left (or an error is pending). */
static const uint8_t *rb_take(struct rbuf *rb, size_t n)
{
	if (rb->err || rb->off > rb->len || n > rb->len - rb->off) {
		if (!rb->err)
			rb->err = -EPROTO;
		return NULL;
	}
	if (n == 0 && !rb->p)
		return (const uint8_t *)""; /* an empty field of an empty buffer; NULL + 0 is UB */
	rb->off += n;
	return rb->p + rb->off - n;
}

static uint64_t rb_le(struct rbuf *rb, size_t n)
{
	const uint8_t *p = rb_take(rb, n);
	return p ? get_le(p, n) : 0;
}

uint8_t rb_u8(struct rbuf *rb)
{
	return (uint8_t)rb_le(rb, 1);
}

uint16_t rb_u16(struct rbuf *rb)
{
	return (uint16_t)rb_le(rb, 2);
}

uint32_t rb_u32(struct rbuf *rb)
{
	return (uint32_t)rb_le(rb, 4);
}

uint64_t rb_u64(struct rbuf *rb)
{
	return rb_le(rb, 8);
}

const void *rb_bytes_ptr(struct rbuf *rb, size_t *ret_n)
{
	uint32_t n = rb_u32(rb);
	const uint8_t *p = rb_take(rb, n);

	*ret_n = p ? n : 0;
	return p;
}

size_t rb_bytes(struct rbuf *rb, void *dst, size_t cap)
{
	size_t n;
	const void *p = rb_bytes_ptr(rb, &n);

	if (!p)
		return 0;
	if (n > cap) {
		rb->err = -EPROTO;
		return 0;
	}
	if (n > 0)
		memcpy(dst, p, n);
	return n;
}

void rb_str(struct rbuf *rb, char *dst, size_t cap)
{
	size_t n;
	const void *p = rb_bytes_ptr(rb, &n);

	if (cap == 0) {
		rb->err = -EPROTO;
		return;
	}
	dst[0] = '\0';
	if (!p)
		return;
	if (n >= cap) {
		rb->err = -EPROTO;
		return;
	}
	if (n > 0)
		memcpy(dst, p, n);
	dst[n] = '\0';
}

/* ---- names and the manifest ---- */

/* One pages file as the MANIFEST names it. */
struct pages_file {
	char name[FNAME_MAX];
	uint64_t size;
};

struct manifest {
	uint64_t gen;
	char state_name[FNAME_MAX];
	uint64_t state_size;
	uint64_t state_csum;
	uint32_t npages;          /* 1 .. PAGES_FILES_MAX */
	struct pages_file *pages; /* [0] this generation's own file, then inherited ones */
};

/* Frees what manifest_parse allocated (not a manifest the writer assembled). */
static void manifest_done(struct manifest *m)
{
	free(m->pages);
	m->pages = NULL;
	m->npages = 0;
}

static void gen_name(char *buf, const char *what, uint64_t gen, const char *suffix)
{
	snprintf(buf, FNAME_MAX, "%s-%" PRIu64 ".img%s", what, gen, suffix);
}

/* 1 if name is one of ours ("state-N.img", "pages-N.img", either with ".tmp"), with N. */
static int parse_gen_name(const char *name, uint64_t *ret_gen)
{
	char *end;
	uint64_t gen;

	if (strncmp(name, "state-", 6) != 0 && strncmp(name, "pages-", 6) != 0)
		return 0;
	if (name[6] < '0' || name[6] > '9')
		return 0;
	errno = 0;
	gen = strtoull(name + 6, &end, 10);
	if (errno != 0 || (strcmp(end, ".img") != 0 && strcmp(end, ".img.tmp") != 0))
		return 0;
	*ret_gen = gen;
	return 1;
}

/* A MANIFEST may only name a plain file inside the image directory. */
static int fname_valid(const char *s)
{
	return s[0] != '\0' && s[0] != '.' && !strchr(s, '/');
}

/* 1 if name is exactly what gen_name(what, N, "") writes (no .tmp, no leading zeros), with N. */
static int parse_final_name(const char *name, const char *what, uint64_t *ret_gen)
{
	char canon[FNAME_MAX];
	uint64_t gen;

	if (!fname_valid(name) || !parse_gen_name(name, &gen))
		return 0;
	gen_name(canon, what, gen, "");
	if (strcmp(canon, name) != 0)
		return 0;
	*ret_gen = gen;
	return 1;
}

static void manifest_encode(struct wbuf *wb, const struct manifest *m)
{
	wb_raw(wb, MANIFEST_MAGIC, MAGIC_LEN);
	wb_u32(wb, FERRY_IMAGE_VERSION);
	wb_u64(wb, m->gen);
	wb_str(wb, m->state_name);
	wb_u64(wb, m->state_size);
	wb_u64(wb, m->state_csum);
	wb_u32(wb, m->npages);
	for (uint32_t i = 0; i < m->npages; i++) {
		wb_str(wb, m->pages[i].name);
		wb_u64(wb, m->pages[i].size);
	}
	if (!wb->err)
		wb_u64(wb, image_checksum(wb->p, wb->len));
}

/* The names: ours, of the right kind, this generation's own files first, no name twice. */
static int manifest_check_names(const struct manifest *m, struct ferry_error *err)
{
	uint64_t gen;

	if (!parse_final_name(m->state_name, "state", &gen) || gen != m->gen)
		return ferr(err, -EPROTO,
		            "MANIFEST: names an invalid state file \"%s\" (generation %" PRIu64
		            " is state-%" PRIu64 ".img)",
		            m->state_name, m->gen, m->gen);
	for (uint32_t i = 0; i < m->npages; i++) {
		const char *name = m->pages[i].name;

		if (!parse_final_name(name, "pages", &gen))
			return ferr(err, -EPROTO,
			            "MANIFEST: pages file %" PRIu32 " \"%s\" is invalid", i, name);
		if (i == 0 && gen != m->gen)
			return ferr(err, -EPROTO,
			            "MANIFEST: pages file 0 is \"%s\", not this generation's "
			            "pages-%" PRIu64 ".img",
			            name, m->gen);
		for (uint32_t j = 0; j < i; j++)
			if (strcmp(m->pages[j].name, name) == 0)
				return ferr(err, -EPROTO,
				            "MANIFEST: names %s twice (pages files %" PRIu32
				            " and %" PRIu32 ")",
				            name, j, i);
	}
	return 0;
}

/* On success m->pages is allocated (manifest_done); on failure too, possibly. */
static int manifest_parse(const uint8_t *p, size_t n, struct manifest *m, struct ferry_error *err)
{
	struct rbuf rb = {.p = p, .off = MAGIC_LEN + 4};
	uint32_t version, npages;
	uint64_t stored, computed;

	if (n < MAGIC_LEN + 4 + 8)
		return ferr(err, -EPROTO, "MANIFEST: truncated (%zu bytes)", n);
	if (memcmp(p, MANIFEST_MAGIC, MAGIC_LEN) != 0)
		return ferr(err, -EPROTO, "MANIFEST: bad magic (not a ferry image manifest)");
	/* Before the checksum: another version may lay the rest out differently. */
	version = (uint32_t)get_le(p + MAGIC_LEN, 4);
	if (version != FERRY_IMAGE_VERSION)
		return ferr(err, -EPROTO, "format version %" PRIu32 ", this ferry reads version %d",
		            version, FERRY_IMAGE_VERSION);
	stored = get_le(p + n - 8, 8);
	computed = image_checksum(p, n - 8);
	if (stored != computed)
		return ferr(err, -EPROTO,
		            "MANIFEST: checksum mismatch (stored %016" PRIx64
		            ", computed %016" PRIx64 "): the manifest is corrupt",
		            stored, computed);
	rb.len = n - 8;
	m->gen = rb_u64(&rb);
	rb_str(&rb, m->state_name, sizeof(m->state_name));
	m->state_size = rb_u64(&rb);
	m->state_csum = rb_u64(&rb);
	npages = rb_u32(&rb);
	if (!rb.err && (npages == 0 || npages > PAGES_FILES_MAX))
		return ferr(err, -EPROTO,
		            "MANIFEST: names %" PRIu32 " pages files (1 to %d are allowed)", npages,
		            PAGES_FILES_MAX);
	if (!rb.err) {
		m->pages = calloc(npages, sizeof(*m->pages));
		if (!m->pages)
			return ferr(err, -ENOMEM, "MANIFEST: out of memory");
		m->npages = npages;
	}
	for (uint32_t i = 0; !rb.err && i < m->npages; i++) {
		rb_str(&rb, m->pages[i].name, sizeof(m->pages[i].name));
		m->pages[i].size = rb_u64(&rb);
	}
	if (rb.err || rb.off != rb.len)
		return ferr(err, -EPROTO, "MANIFEST: malformed (fields do not fill its %zu bytes)",
		            n);
	return manifest_check_names(m, err);
}

static int manifest_read(int dirfd, struct manifest *m, struct ferry_error *err)
{
	_cleanup_close_ int fd = openat(dirfd, "MANIFEST", O_RDONLY | O_CLOEXEC);
	_cleanup_free_ uint8_t *buf = NULL;
	struct stat st;
	int r;

	if (fd < 0 && errno == ENOENT)
		return ferr(err, -ENOENT, "no MANIFEST (not an image, or nothing was committed)");
	if (fd < 0 || fstat(fd, &st) < 0)
		return ferr(err, -errno, "MANIFEST: %m");
	if (st.st_size > MANIFEST_MAX)
		return ferr(err, -EPROTO, "MANIFEST: %lld bytes, too large for a manifest",
		            (long long)st.st_size);
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf)
		return ferr(err, -ENOMEM, "MANIFEST: out of memory");
	r = pread_full(fd, buf, (size_t)st.st_size, 0);
	if (r < 0)
		return ferr(err, r, "MANIFEST: reading: %s", strerror(-r));
	return manifest_parse(buf, (size_t)st.st_size, m, err);
}

/* ---- writer ---- */

/* A pages file of an earlier image that the one being written names too. */
struct inherited {
	char name[FNAME_MAX]; /* its name in the writer's directory (what the MANIFEST says) */
	uint64_t size;
	dev_t dev; /* the file: a second inherit of it, under any name, is the same entry */
	ino_t ino;
	dev_t dir_dev; /* the directory it was inherited from, and its name there */
	ino_t dir_ino;
	char src_name[FNAME_MAX];
	int linked; /* we hard-linked it in, so it is ours to remove if we never commit */
};

struct image_writer {
	char *dir;
	int dirfd;
	dev_t dir_dev;
	ino_t dir_ino;
	int lock_fd;
	int state_fd;
	int pages_fd;
	uint64_t gen;          /* set only once the lock is held; our own two files have it */
	uint64_t next_gen;     /* for the names of hard links we make: above gen and everything */
	struct wbuf buf;       /* state bytes not yet written */
	uint64_t state_size;   /* state bytes already written */
	XXH3_state_t *hash;    /* running checksum of the whole state file */
	uint64_t pages_size;   /* allocated so far */
	struct inherited *inh; /* pages files 1 .. ninh of the new MANIFEST */
	uint32_t ninh;
	uint32_t inh_cap;
	int finished;  /* commit was attempted: no more records */
	int committed; /* the MANIFEST naming this generation is in place */
};

static void image_writer_freep(struct image_writer **w)
{
	*w = image_writer_free(*w);
}

static int manifest_names(const struct manifest *m, const char *name)
{
	if (strcmp(m->state_name, name) == 0)
		return 1;
	for (uint32_t i = 0; i < m->npages; i++)
		if (strcmp(m->pages[i].name, name) == 0)
			return 1;
	return 0;
}

/*
 * Walk DIR for our file names. Returns the highest generation seen; with keep, unlinks every
 * one of them keep does not name (and MANIFEST.tmp). Only called with the lock held.
 */
static uint64_t scan_dir(struct image_writer *w, const struct manifest *keep)
{
	DIR *d = opendir(w->dir);
	struct dirent *de;
	uint64_t max = 0, gen;

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		if (parse_gen_name(de->d_name, &gen)) {
			max = MAX(max, gen);
			if (keep && !manifest_names(keep, de->d_name))
				(void)unlinkat(w->dirfd, de->d_name, 0);
		} else if (keep && strcmp(de->d_name, "MANIFEST.tmp") == 0) {
			(void)unlinkat(w->dirfd, de->d_name, 0);
		}
	}
	closedir(d);
	return max;
}

static int create_tmp(struct image_writer *w, const char *what, int *ret_fd,
                      struct ferry_error *err)
{
	char name[FNAME_MAX];
	int fd;

	gen_name(name, what, w->gen, ".tmp");
	fd = openat(w->dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return ferr(err, -errno, "creating %s: %m", name);
	*ret_fd = fd;
	return 0;
}

static int writer_open(const char *dir, struct image_writer *w, struct ferry_error *err)
{
	_cleanup_(manifest_done) struct manifest m = {0};
	struct stat st;
	uint64_t gen;
	int r;

	r = mkdir_p(dir, 0700);
	if (r < 0)
		return ferr(err, r, "creating the directory: %s", strerror(-r));
	w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (w->dirfd < 0 || fstat(w->dirfd, &st) < 0)
		return ferr(err, -errno, "%m");
	w->dir_dev = st.st_dev;
	w->dir_ino = st.st_ino;
	w->lock_fd = openat(w->dirfd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (w->lock_fd < 0)
		return ferr(err, -errno, ".lock: %m");
	/* flock, not fcntl: owned by the open file, so two writers in one process conflict. */
	if (flock(w->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			return ferr(
			        err, -EBUSY,
			        "busy: another checkpoint is writing this image (.lock is held)");
		return ferr(err, -errno, ".lock: %m");
	}
	/* Past every generation named or left behind: leftovers are never reused or clobbered. */
	w->gen = scan_dir(w, NULL);
	if (manifest_read(w->dirfd, &m, NULL) == 0) {
		w->gen = MAX(w->gen, m.gen);
		for (uint32_t i = 0; i < m.npages; i++)
			if (parse_gen_name(m.pages[i].name, &gen))
				w->gen = MAX(w->gen, gen);
	}
	w->gen++;
	w->next_gen = w->gen + 1;
	r = create_tmp(w, "state", &w->state_fd, err);
	if (r < 0)
		return r;
	r = create_tmp(w, "pages", &w->pages_fd, err);
	if (r < 0)
		return r;
	w->hash = XXH3_createState();
	if (!w->hash || XXH3_64bits_reset(w->hash) != XXH_OK)
		return ferr(err, -ENOMEM, "out of memory");
	wb_raw(&w->buf, STATE_MAGIC, MAGIC_LEN);
	wb_u32(&w->buf, FERRY_IMAGE_VERSION);
	wb_u64(&w->buf, w->gen);
	if (w->buf.err)
		return ferr(err, w->buf.err, "out of memory");
	return 0;
}

int image_writer_open(const char *dir, struct image_writer **ret, struct ferry_error *err)
{
	_cleanup_(image_writer_freep) struct image_writer *w = calloc(1, sizeof(*w));
	int r;

	if (!w)
		return ferr(err, -ENOMEM, "image %s: out of memory", dir);
	w->dirfd = w->lock_fd = w->state_fd = w->pages_fd = -EBADF;
	w->dir = strdup(dir);
	if (!w->dir)
		return ferr(err, -ENOMEM, "image %s: out of memory", dir);
	r = writer_open(dir, w, err);
	if (r < 0)
		return ferr_prefix(err, "image %s", dir);
	*ret = TAKE_PTR(w);
	return 0;
}

static int writer_flush(struct image_writer *w)
{
	int r;

	if (w->buf.err)
		return w->buf.err;
	r = write_full(w->state_fd, w->buf.p, w->buf.len);
	if (r < 0)
		return r;
	if (XXH3_64bits_update(w->hash, w->buf.p, w->buf.len) != XXH_OK)
		return -EIO;
	w->state_size += w->buf.len;
	wb_reset(&w->buf);
	return 0;
}

int image_put_record(struct image_writer *w, uint16_t kind, uint16_t version, const void *data,
                     uint32_t len, struct ferry_error *err)
{
	int r;

	if (w->finished)
		return ferr(err, -EINVAL, "image %s: record of kind %u after commit", w->dir, kind);
	if (kind == 0)
		return ferr(err, -EINVAL, "image %s: record kind 0 is invalid", w->dir);
	wb_u32(&w->buf, FRAME_MAGIC);
	wb_u16(&w->buf, kind);
	wb_u16(&w->buf, version);
	wb_u32(&w->buf, len);
	wb_u64(&w->buf, image_checksum(len ? data : "", len));
	wb_raw(&w->buf, data, len);
	if (w->buf.err)
		return ferr(err, w->buf.err,
		            "image %s: buffering a record of kind %u (%" PRIu32
		            " bytes): out of memory",
		            w->dir, kind, len);
	if (w->buf.len < FLUSH_AT)
		return 0;
	r = writer_flush(w);
	if (r < 0)
		return ferr(err, r, "image %s: writing %s-%" PRIu64 ".img.tmp: %s", w->dir, "state",
		            w->gen, strerror(-r));
	return 0;
}

int image_pages_fd(const struct image_writer *w)
{
	return w->pages_fd;
}

uint64_t image_pages_alloc(struct image_writer *w, uint64_t len)
{
	uint64_t off = w->pages_size;

	w->pages_size += (len + PAGE_ALIGN - 1) & ~(PAGE_ALIGN - 1);
	return off;
}

uint32_t image_writer_npages_files(const struct image_writer *w)
{
	return 1 + w->ninh;
}

uint64_t image_writer_generation(const struct image_writer *w)
{
	return w->gen;
}

/* The entry for this file if it was inherited before: same directory and name, or same file. */
static struct inherited *find_inherited(struct image_writer *w, const struct stat *dst,
                                        const char *name, const struct stat *fst)
{
	for (uint32_t i = 0; i < w->ninh; i++) {
		struct inherited *in = &w->inh[i];

		if (dst && in->dir_dev == dst->st_dev && in->dir_ino == dst->st_ino &&
		    strcmp(in->src_name, name) == 0)
			return in;
		if (fst && in->dev == fst->st_dev && in->ino == fst->st_ino)
			return in;
	}
	return NULL;
}

/* Hard-link src_dir's file name into our directory under a fresh generation's name. */
static int link_fresh(struct image_writer *w, int sfd, const char *src_dir, const char *name,
                      char *ret_name, struct ferry_error *err)
{
	/* Nothing else writes here while we hold the lock; a stray file is skipped, not hit. */
	for (int attempt = 0;; attempt++) {
		gen_name(ret_name, "pages", w->next_gen++, "");
		if (linkat(sfd, name, w->dirfd, ret_name, 0) == 0)
			return 0;
		if (errno == EEXIST && attempt < 16)
			continue;
		if (errno == EXDEV)
			return ferr(
			        err, -EXDEV,
			        "pages file %s of %s: on another file system, cannot be "
			        "hard-linked; put the image on the same file system as its parent",
			        name, src_dir);
		return ferr(err, -errno, "pages file %s of %s: linking it as %s: %m", name, src_dir,
		            ret_name);
	}
}

static int writer_inherit(struct image_writer *w, const char *src_dir, const char *name,
                          uint64_t size, uint32_t *ret_index, struct ferry_error *err)
{
	_cleanup_close_ int sfd = -EBADF;
	struct inherited *in;
	struct stat dst, fst, lst;
	uint64_t gen;
	int r;

	if (!parse_final_name(name, "pages", &gen))
		return ferr(err, -EINVAL, "pages file \"%s\" of %s: not a pages file name", name,
		            src_dir);
	sfd = open(src_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0 || fstat(sfd, &dst) < 0)
		return ferr(err, -errno, "pages file %s of %s: opening the directory: %m", name,
		            src_dir);
	/* Before looking at the file: once inherited, its removal from src_dir does not matter. */
	in = find_inherited(w, &dst, name, NULL);
	if (!in) {
		if (fstatat(sfd, name, &fst, AT_SYMLINK_NOFOLLOW) < 0)
			return ferr(err, -errno, "pages file %s of %s: %m", name, src_dir);
		if (!S_ISREG(fst.st_mode))
			return ferr(err, -EPROTO, "pages file %s of %s: not a regular file", name,
			            src_dir);
		if ((uint64_t)fst.st_size != size)
			return ferr(err, -EPROTO,
			            "pages file %s of %s: its MANIFEST records %" PRIu64
			            " bytes, the file has %lld",
			            name, src_dir, size, (long long)fst.st_size);
		in = find_inherited(w, NULL, name, &fst);
	}
	if (in) {
		if (in->size != size)
			return ferr(err, -EPROTO,
			            "pages file %s of %s: inherited before as %s with %" PRIu64
			            " bytes, now said to have %" PRIu64,
			            name, src_dir, in->name, in->size, size);
		*ret_index = (uint32_t)(in - w->inh) + 1;
		return 0;
	}
	if (1 + w->ninh >= PAGES_FILES_MAX)
		return ferr(err, -E2BIG,
		            "pages file %s of %s: an image names at most %d pages files", name,
		            src_dir, PAGES_FILES_MAX);
	if (w->ninh == w->inh_cap) {
		uint32_t cap = w->inh_cap ? 2 * w->inh_cap : 8;
		struct inherited *p = reallocarray(w->inh, cap, sizeof(*p));
		if (!p)
			return ferr(err, -ENOMEM, "pages file %s of %s: out of memory", name,
			            src_dir);
		w->inh = p;
		w->inh_cap = cap;
	}
	in = &w->inh[w->ninh];
	*in = (struct inherited){.size = size,
	                         .dev = fst.st_dev,
	                         .ino = fst.st_ino,
	                         .dir_dev = dst.st_dev,
	                         .dir_ino = dst.st_ino};
	snprintf(in->src_name, sizeof(in->src_name), "%s", name);
	if (dst.st_dev == w->dir_dev && dst.st_ino == w->dir_ino) {
		/* Already in our directory (the parent is the image this one replaces). */
		snprintf(in->name, sizeof(in->name), "%s", name);
	} else {
		r = link_fresh(w, sfd, src_dir, name, in->name, err);
		if (r < 0)
			return r;
		/* What we linked must be what we checked: src_dir's name may have been replaced. */
		if (fstatat(w->dirfd, in->name, &lst, AT_SYMLINK_NOFOLLOW) < 0 ||
		    lst.st_dev != fst.st_dev || lst.st_ino != fst.st_ino) {
			(void)unlinkat(w->dirfd, in->name, 0);
			return ferr(err, -EAGAIN,
			            "pages file %s of %s: replaced while it was being linked", name,
			            src_dir);
		}
		in->linked = 1; /* image_writer_free removes it if we never commit */
	}
	*ret_index = ++w->ninh;
	return 0;
}

int image_writer_inherit(struct image_writer *w, const char *src_dir, const char *name,
                         uint64_t size, uint32_t *ret_index, struct ferry_error *err)
{
	if (w->finished)
		return ferr(err, -EINVAL, "image %s: pages file %s of %s inherited after commit",
		            w->dir, name, src_dir);
	if (writer_inherit(w, src_dir, name, size, ret_index, err) < 0)
		return ferr_prefix(err, "image %s", w->dir);
	return 0;
}

static int rename_final(struct image_writer *w, const char *what, char *ret_name,
                        struct ferry_error *err)
{
	char tmp[FNAME_MAX];

	gen_name(tmp, what, w->gen, ".tmp");
	gen_name(ret_name, what, w->gen, "");
	if (renameat(w->dirfd, tmp, w->dirfd, ret_name) < 0)
		return ferr(err, -errno, "renaming %s to %s: %m", tmp, ret_name);
	return 0;
}

static int write_manifest(struct image_writer *w, const struct manifest *m, size_t *ret_len,
                          struct ferry_error *err)
{
	_cleanup_(wb_free) struct wbuf wb = {0};
	_cleanup_close_ int fd = -EBADF;
	int r;

	manifest_encode(&wb, m);
	if (wb.err)
		return ferr(err, wb.err, "out of memory");
	fd = openat(w->dirfd, "MANIFEST.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return ferr(err, -errno, "creating MANIFEST.tmp: %m");
	r = write_full(fd, wb.p, wb.len);
	if (r < 0)
		return ferr(err, r, "writing MANIFEST.tmp: %s", strerror(-r));
	if (fsync(fd) < 0)
		return ferr(err, -errno, "syncing MANIFEST.tmp: %m");
	*ret_len = wb.len;
	return 0;
}

/* Fill m's list: our own file (its name set by the rename), then the inherited ones. */
static int list_pages(struct image_writer *w, struct manifest *m, struct ferry_error *err)
{
	struct stat st;

	m->npages = 1 + w->ninh;
	m->pages = calloc(m->npages, sizeof(*m->pages));
	if (!m->pages)
		return ferr(err, -ENOMEM, "out of memory");
	m->pages[0].size = w->pages_size;
	for (uint32_t i = 0; i < w->ninh; i++) {
		const struct inherited *in = &w->inh[i];

		/* Never commit a MANIFEST naming a file that is not there as it says. */
		if (fstatat(w->dirfd, in->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return ferr(err, -errno, "inherited pages file %s: %m", in->name);
		if (st.st_dev != in->dev || st.st_ino != in->ino)
			return ferr(err, -EPROTO,
			            "inherited pages file %s: replaced since inherited", in->name);
		snprintf(m->pages[i + 1].name, sizeof(m->pages[i + 1].name), "%s", in->name);
		m->pages[i + 1].size = in->size;
	}
	return 0;
}

static int writer_commit(struct image_writer *w, uint64_t *ret_bytes, struct ferry_error *err)
{
	_cleanup_(manifest_done) struct manifest m = {.gen = w->gen};
	size_t mlen = 0;
	int r;

	r = image_put_record(w, IMG_END, 1, NULL, 0, err);
	if (r < 0)
		return r;
	w->finished = 1;
	r = writer_flush(w);
	if (r < 0)
		return ferr(err, r, "writing state-%" PRIu64 ".img.tmp: %s", w->gen, strerror(-r));
	if (ftruncate(w->pages_fd, (off_t)w->pages_size) < 0)
		return ferr(err, -errno, "sizing pages-%" PRIu64 ".img.tmp: %m", w->gen);
	r = list_pages(w, &m, err);
	if (r < 0)
		return r;
	/* Data first: the MANIFEST must never reach the disk before the files it names. */
	if (fsync(w->state_fd) < 0)
		return ferr(err, -errno, "syncing state-%" PRIu64 ".img.tmp: %m", w->gen);
	if (fsync(w->pages_fd) < 0)
		return ferr(err, -errno, "syncing pages-%" PRIu64 ".img.tmp: %m", w->gen);
	if ((r = rename_final(w, "state", m.state_name, err)) < 0 ||
	    (r = rename_final(w, "pages", m.pages[0].name, err)) < 0)
		return r;
	/* Also makes the hard links of inherited files durable; their data was synced by the
	 * commit of the image they come from. */
	if ((r = fsync_dir(w->dir)) < 0)
		return ferr(err, r, "syncing the directory: %s", strerror(-r));
	m.state_size = w->state_size;
	m.state_csum = XXH3_64bits_digest(w->hash);
	r = write_manifest(w, &m, &mlen, err);
	if (r < 0)
		return r;
	/* The commit point: rename is atomic, readers see the old MANIFEST or the new one. */
	if (renameat(w->dirfd, "MANIFEST.tmp", w->dirfd, "MANIFEST") < 0)
		return ferr(err, -errno, "renaming MANIFEST.tmp to MANIFEST: %m");
	w->committed = 1;
	if ((r = fsync_dir(w->dir)) < 0)
		/* Keep the old files: after a crash the old MANIFEST may be the one on disk. */
		return ferr(err, r, "committed, but syncing the directory failed: %s",
		            strerror(-r));
	/* Everything the new MANIFEST does not name; failures only leave junk. Other images'
	 * hard links to a removed file keep its data. */
	(void)scan_dir(w, &m);
	if (ret_bytes)
		*ret_bytes = w->state_size + w->pages_size + mlen;
	return 0;
}

int image_writer_commit(struct image_writer *w, uint64_t *ret_bytes, struct ferry_error *err)
{
	if (w->finished)
		return ferr(err, -EINVAL, "image %s: commit after commit", w->dir);
	if (writer_commit(w, ret_bytes, err) < 0)
		return ferr_prefix(err, "image %s", w->dir);
	return 0;
}

struct image_writer *image_writer_free(struct image_writer *w)
{
	static const char *const what[] = {"state", "pages"};
	char name[FNAME_MAX];

	if (!w)
		return NULL;
	/* Our generations are above any the MANIFEST names, so these files are ours to remove. */
	if (w->gen && !w->committed) {
		for (size_t i = 0; i < ARRAY_SIZE(what); i++) {
			gen_name(name, what[i], w->gen, ".tmp");
			(void)unlinkat(w->dirfd, name, 0);
			gen_name(name, what[i], w->gen, "");
			(void)unlinkat(w->dirfd, name, 0);
		}
		for (uint32_t i = 0; i < w->ninh; i++)
			if (w->inh[i].linked)
				(void)unlinkat(w->dirfd, w->inh[i].name, 0);
		(void)unlinkat(w->dirfd, "MANIFEST.tmp", 0);
	}
	safe_close(w->state_fd);
	safe_close(w->pages_fd);
	safe_close(w->lock_fd); /* releases the lock, after the cleanup above */
	safe_close(w->dirfd);
	wb_free(&w->buf);
	XXH3_freeState(w->hash);
	free(w->inh);
	free(w->dir);
	free(w);
	return NULL;
}

/* ---- reader ---- */

struct image_reader {
	char *dir;      /* as given to image_reader_open */
	uint8_t *state; /* the whole state file, verified */
	size_t state_len;
	size_t pos; /* next frame */
	uint32_t npages;
	struct pages_file *pages; /* as the MANIFEST names them */
	int *pages_fd;            /* npages entries, -EBADF until opened */
	uint64_t gen;
};

static void image_reader_freep(struct image_reader **r)
{
	*r = image_reader_free(*r);
}

static int open_sized(int dirfd, const char *name, uint64_t size, const char *named_by, int *ret_fd,
                      struct ferry_error *err)
{
	_cleanup_close_ int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	struct stat st;

	if (fd < 0 && errno == ENOENT)
		return ferr(err, -ENOENT, "%s: missing (%s)", name, named_by);
	if (fd < 0 || fstat(fd, &st) < 0)
		return ferr(err, -errno, "%s: %m", name);
	if (!S_ISREG(st.st_mode))
		return ferr(err, -EPROTO, "%s: not a regular file", name);
	if ((uint64_t)st.st_size != size)
		return ferr(err, -EPROTO,
		            "%s: %s: MANIFEST records %" PRIu64 " bytes, file has %lld", name,
		            (uint64_t)st.st_size < size ? "truncated" : "size mismatch", size,
		            (long long)st.st_size);
	*ret_fd = TAKE_FD(fd);
	return 0;
}

/* Check the state header and walk every frame; the state file is in memory. */
static int verify_state(struct image_reader *r, const struct manifest *m, struct ferry_error *err)
{
	const uint8_t *p = r->state;
	const char *name = m->state_name;
	size_t len = r->state_len, off = STATE_HDR_LEN;
	uint64_t csum;

	if (len < STATE_HDR_LEN || memcmp(p, STATE_MAGIC, MAGIC_LEN) != 0)
		return ferr(err, -EPROTO, "%s: bad header (not a ferry state file)", name);
	if (get_le(p + 8, 4) != FERRY_IMAGE_VERSION)
		return ferr(err, -EPROTO,
		            "%s: format version %" PRIu64 ", this ferry reads version %d", name,
		            get_le(p + 8, 4), FERRY_IMAGE_VERSION);
	if (get_le(p + 12, 8) != m->gen)
		return ferr(err, -EPROTO, "%s: generation %" PRIu64 ", MANIFEST says %" PRIu64,
		            name, get_le(p + 12, 8), m->gen);
	for (unsigned i = 0;; i++) {
		const uint8_t *f = p + off;
		uint16_t kind;
		uint32_t plen;

		if (off == len)
			return ferr(err, -EPROTO,
			            "%s: no IMG_END record after %u records (truncated)", name, i);
		if (len - off < FRAME_LEN)
			return ferr(err, -EPROTO,
			            "%s: record %u at offset %zu: frame header truncated", name, i,
			            off);
		kind = (uint16_t)get_le(f + 4, 2);
		plen = (uint32_t)get_le(f + 8, 4);
		if (get_le(f, 4) != FRAME_MAGIC || kind == 0)
			return ferr(err, -EPROTO,
			            "%s: record %u at offset %zu: bad frame header (kind %u)", name,
			            i, off, kind);
		if (plen > len - off - FRAME_LEN)
			return ferr(
			        err, -EPROTO,
			        "%s: record %u (kind %u) at offset %zu: %u bytes of payload run "
			        "past the end of the file",
			        name, i, kind, off, plen);
		if (image_checksum(f + FRAME_LEN, plen) != get_le(f + 12, 8))
			return ferr(
			        err, -EPROTO,
			        "%s: record %u (kind %u) at offset %zu: payload checksum mismatch",
			        name, i, kind, off);
		off += FRAME_LEN + plen;
		if (kind == IMG_END) {
			if (off != len)
				return ferr(err, -EPROTO, "%s: %zu bytes after IMG_END (record %u)",
				            name, len - off, i);
			break;
		}
	}
	/* Last: it also covers the header and the frame fields the record checksums do not. */
	csum = image_checksum(p, len);
	if (csum != m->state_csum)
		return ferr(err, -EPROTO,
		            "%s: file checksum mismatch (MANIFEST %016" PRIx64 ", file %016" PRIx64
		            "): a header is corrupt",
		            name, m->state_csum, csum);
	return 0;
}

/* Open every pages file the MANIFEST names; takes m->pages. */
static int reader_open_pages(int dirfd, struct manifest *m, struct image_reader *r,
                             struct ferry_error *err)
{
	int rc;

	r->pages_fd = malloc(m->npages * sizeof(*r->pages_fd));
	if (!r->pages_fd)
		return ferr(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < m->npages; i++)
		r->pages_fd[i] = -EBADF;
	r->npages = m->npages;
	r->pages = TAKE_PTR(m->pages);
	m->npages = 0;
	for (uint32_t i = 0; i < r->npages; i++) {
		rc = open_sized(
		        dirfd, r->pages[i].name, r->pages[i].size,
		        i == 0 ? "named by MANIFEST"
		               : "an inherited pages file of this image's chain was removed",
		        &r->pages_fd[i], err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int reader_load(int dirfd, struct manifest *m, struct image_reader *r,
                       struct ferry_error *err)
{
	_cleanup_close_ int fd = -EBADF;
	int rc;

	if (m->state_size > STATE_MAX)
		return ferr(err, -EPROTO, "%s: MANIFEST records %" PRIu64 " bytes, too large",
		            m->state_name, m->state_size);
	rc = open_sized(dirfd, m->state_name, m->state_size, "named by MANIFEST", &fd, err);
	if (rc < 0)
		return rc;
	r->gen = m->gen;
	rc = reader_open_pages(dirfd, m, r, err);
	if (rc < 0)
		return rc;
	r->state_len = (size_t)m->state_size;
	r->state = malloc(r->state_len ? r->state_len : 1);
	if (!r->state)
		return ferr(err, -ENOMEM, "%s: out of memory", m->state_name);
	rc = pread_full(fd, r->state, r->state_len, 0);
	if (rc < 0)
		return ferr(err, rc, "%s: reading: %s", m->state_name, strerror(-rc));
	r->pos = STATE_HDR_LEN;
	return verify_state(r, m, err);
}

int image_reader_open(const char *dir, struct image_reader **ret, struct ferry_error *err)
{
	_cleanup_close_ int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r;

	if (dirfd < 0)
		return ferr(err, -errno, "image %s: %m", dir);
	for (int attempt = 0;; attempt++) {
		_cleanup_(image_reader_freep) struct image_reader *rd = calloc(1, sizeof(*rd));
		_cleanup_(manifest_done) struct manifest m = {0}, again = {0};

		if (!rd)
			return ferr(err, -ENOMEM, "image %s: out of memory", dir);
		rd->dir = strdup(dir);
		if (!rd->dir)
			return ferr(err, -ENOMEM, "image %s: out of memory", dir);
		r = manifest_read(dirfd, &m, err);
		if (r == 0)
			r = reader_load(dirfd, &m, rd, err);
		if (r == 0) {
			*ret = TAKE_PTR(rd);
			return 0;
		}
		/* A commit between our MANIFEST read and the opens removes the files it named. */
		if (r != -ENOENT || attempt >= 3 || manifest_read(dirfd, &again, NULL) < 0 ||
		    again.gen == m.gen)
			return ferr_prefix(err, "image %s", dir);
	}
}

int image_next_record(struct image_reader *r, uint16_t *ret_kind, uint16_t *ret_version,
                      const void **ret_data, uint32_t *ret_len)
{
	const uint8_t *f = r->state + r->pos;
	uint16_t kind;

	/* Frames were all checked on open; IMG_END is last. */
	if (r->state_len - r->pos < FRAME_LEN)
		return 0;
	kind = (uint16_t)get_le(f + 4, 2);
	if (kind == IMG_END)
		return 0;
	*ret_kind = kind;
	*ret_version = (uint16_t)get_le(f + 6, 2);
	*ret_len = (uint32_t)get_le(f + 8, 4);
	*ret_data = f + FRAME_LEN;
	r->pos += FRAME_LEN + *ret_len;
	return 1;
}

void image_reader_rewind(struct image_reader *r)
{
	r->pos = STATE_HDR_LEN;
}

uint32_t image_reader_npages_files(const struct image_reader *r)
{
	return r->npages;
}

int image_reader_pages_fd_at(const struct image_reader *r, uint32_t idx)
{
	return idx < r->npages ? r->pages_fd[idx] : -EINVAL;
}

uint64_t image_reader_pages_size_at(const struct image_reader *r, uint32_t idx)
{
	return idx < r->npages ? r->pages[idx].size : 0;
}

const char *image_reader_pages_name(const struct image_reader *r, uint32_t idx)
{
	return idx < r->npages ? r->pages[idx].name : NULL;
}

int image_reader_pages_fd(const struct image_reader *r)
{
	return image_reader_pages_fd_at(r, 0);
}

uint64_t image_reader_pages_size(const struct image_reader *r)
{
	return image_reader_pages_size_at(r, 0);
}

const char *image_reader_dir(const struct image_reader *r)
{
	return r->dir;
}

uint64_t image_reader_generation(const struct image_reader *r)
{
	return r->gen;
}

struct image_reader *image_reader_free(struct image_reader *r)
{
	if (!r)
		return NULL;
	for (uint32_t i = 0; i < r->npages; i++)
		safe_close(r->pages_fd[i]);
	free(r->pages_fd);
	free(r->pages);
	free(r->state);
	free(r->dir);
	free(r);
	return NULL;
}
