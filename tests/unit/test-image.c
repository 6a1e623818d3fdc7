/* Unit tests of the image container: round trips, codec, generations, crashes and corruption. */
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "image.h"
#include "tap.h"
#include "util.h"

/* The standard test image: these records, then these page allocations. */
static const uint16_t rec_kind[] = {IMG_COMPONENT, IMG_PROCESS, IMG_THREAD,
                                    IMG_VMA,       IMG_FD,      IMG_SIGACTION};
static const uint32_t rec_len[] = {17, 0, 3000, 64, 1, 40};
static const uint64_t page_len[] = {4096, 5000, 12288}; /* the 5000 leaves a sparse tail */
#define BIG_LEN (3u << 20) /* one record larger than the writer's flush threshold */

static void fill(uint8_t *p, size_t n, unsigned seed, unsigned idx)
{
	for (size_t j = 0; j < n; j++)
		p[j] = (uint8_t)(seed * 131 + idx * 31 + j * 7 + (j >> 8));
}

static void path_of(char *buf, const char *dir, const char *name)
{
	int n = snprintf(buf, PATH_MAX, "%s/%s", dir, name);
	if (n < 0 || n >= PATH_MAX)
		abort(); /* test paths are short */
}

/* A pages file to inherit, and the index image_writer_inherit must return for it. */
struct inh {
	const char *dir;
	const char *name;
	uint64_t size;
	uint32_t want_index;
};

#define STD_PAGES_SIZE (4096 + 8192 + 12288) /* the page file of the standard image */

/*
 * Write and commit the standard image with contents derived from seed (big: add BIG_LEN),
 * inheriting the n pages files of inh first.
 */
static int write_image_inh(const char *dir, unsigned seed, bool big, const struct inh *inh,
                           size_t n, uint64_t *ret_bytes, char *why)
{
	struct image_writer *w = NULL;
	struct ferry_error err = {0};
	uint8_t *buf = malloc(BIG_LEN);
	uint32_t idx;
	int ok = 0;

	if (!buf)
		return fail(why, "out of memory");
	if (image_writer_open(dir, &w, &err) < 0) {
		fail(why, "writer_open: %s", err.msg);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (image_writer_inherit(w, inh[i].dir, inh[i].name, inh[i].size, &idx, &err) < 0) {
			fail(why, "inherit %s/%s: %s", inh[i].dir, inh[i].name, err.msg);
			goto out;
		}
		if (idx != inh[i].want_index) {
			fail(why, "inherit %s/%s: index %u, expected %u", inh[i].dir, inh[i].name,
			     idx, inh[i].want_index);
			goto out;
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(rec_kind); i++) {
		fill(buf, rec_len[i], seed, (unsigned)i);
		if (image_put_record(w, rec_kind[i], (uint16_t)(i + 1), rec_len[i] ? buf : NULL,
		                     rec_len[i], &err) < 0) {
			fail(why, "put_record: %s", err.msg);
			goto out;
		}
	}
	if (big) {
		fill(buf, BIG_LEN, seed, 99);
		if (image_put_record(w, IMG_SHMEM, 1, buf, BIG_LEN, &err) < 0) {
			fail(why, "put_record big: %s", err.msg);
			goto out;
		}
	}
	for (size_t i = 0, expect = 0; i < ARRAY_SIZE(page_len); i++) {
		uint64_t off = image_pages_alloc(w, page_len[i]);
		if (off != expect || off % 4096) {
			fail(why, "pages_alloc %zu: offset %lu, expected %zu", i,
			     (unsigned long)off, expect);
			goto out;
		}
		expect += (page_len[i] + 4095) / 4096 * 4096;
		fill(buf, page_len[i], seed, 50 + (unsigned)i);
		if (pwrite_full(image_pages_fd(w), buf, page_len[i], (off_t)off) < 0) {
			fail(why, "pwrite: %m");
			goto out;
		}
	}
	if (image_writer_commit(w, ret_bytes, &err) < 0) {
		fail(why, "commit: %s", err.msg);
		goto out;
	}
	ok = 1;
out:
	image_writer_free(w);
	free(buf);
	return ok;
}

static int write_image(const char *dir, unsigned seed, bool big, uint64_t *ret_bytes, char *why)
{
	return write_image_inh(dir, seed, big, NULL, 0, ret_bytes, why);
}

/* Compare a pages file with the page runs write_image(seed) put in its own one. */
static int check_pages(int fd, unsigned seed, char *why)
{
	uint8_t *want = malloc(16384), *got = malloc(16384);
	int ok = 0;

	if (!want || !got) {
		fail(why, "out of memory");
		goto out;
	}
	for (size_t i = 0, off = 0; i < ARRAY_SIZE(page_len); i++) {
		size_t span = (page_len[i] + 4095) / 4096 * 4096;
		if (pread_full(fd, got, span, (off_t)off) < 0) {
			fail(why, "pread pages: %m");
			goto out;
		}
		memset(want, 0, span);
		fill(want, page_len[i], seed, 50 + (unsigned)i);
		if (memcmp(got, want, span) != 0) {
			fail(why, "page run %zu differs", i);
			goto out;
		}
		off += span;
	}
	ok = 1;
out:
	free(want);
	free(got);
	return ok;
}

/* Open the image in dir and compare everything with what write_image(seed, big) wrote. */
static int check_image(const char *dir, unsigned seed, bool big, uint64_t gen, char *why)
{
	struct image_reader *r = NULL;
	struct ferry_error err = {0};
	uint8_t *want = malloc(BIG_LEN);
	size_t nrec = ARRAY_SIZE(rec_kind) + big;
	int ok = 0;

	if (!want) {
		fail(why, "out of memory");
		goto out;
	}
	if (image_reader_open(dir, &r, &err) < 0) {
		fail(why, "reader_open: %s", err.msg);
		goto out;
	}
	if (image_reader_generation(r) != gen) {
		fail(why, "generation %lu, expected %lu", (unsigned long)image_reader_generation(r),
		     (unsigned long)gen);
		goto out;
	}
	for (int pass = 0; pass < 2; pass++) { /* the second pass checks rewind */
		uint16_t kind, ver;
		const void *data;
		uint32_t len;
		size_t i = 0;

		image_reader_rewind(r);
		for (; image_next_record(r, &kind, &ver, &data, &len) > 0; i++) {
			bool is_big = i == ARRAY_SIZE(rec_kind);
			uint32_t wlen = is_big ? BIG_LEN : i < nrec ? rec_len[i] : 0;
			if (i >= nrec || kind != (is_big ? IMG_SHMEM : rec_kind[i]) ||
			    ver != (is_big ? 1 : i + 1) || len != wlen) {
				fail(why, "record %zu: kind %u version %u len %u unexpected", i,
				     kind, ver, len);
				goto out;
			}
			fill(want, len, seed, is_big ? 99 : (unsigned)i);
			if (len && memcmp(data, want, len) != 0) {
				fail(why, "record %zu: payload differs", i);
				goto out;
			}
		}
		if (i != nrec) {
			fail(why, "%zu records, expected %zu", i, nrec);
			goto out;
		}
	}
	if (image_reader_pages_size(r) != STD_PAGES_SIZE) {
		fail(why, "pages size %lu", (unsigned long)image_reader_pages_size(r));
		goto out;
	}
	ok = check_pages(image_reader_pages_fd(r), seed, why);
out:
	image_reader_free(r);
	free(want);
	return ok;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Names in dir other than . and .., sorted, space-separated. */
static void listing(const char *dir, char *buf, size_t cap)
{
	char names[32][256];
	size_t n = 0;
	DIR *d = opendir(dir);
	struct dirent *de;

	buf[0] = '\0';
	if (!d)
		return;
	while ((de = readdir(d)) && n < ARRAY_SIZE(names))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			snprintf(names[n++], sizeof(names[0]), "%s", de->d_name);
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmp_name);
	for (size_t i = 0; i < n; i++)
		snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", i ? " " : "", names[i]);
}

static void rm_rf(const char *dir)
{
	char names[64][256], p[PATH_MAX];
	size_t n = 0;
	DIR *d = opendir(dir);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d)) && n < ARRAY_SIZE(names))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			snprintf(names[n++], sizeof(names[0]), "%s", de->d_name);
	closedir(d);
	for (size_t i = 0; i < n; i++) {
		path_of(p, dir, names[i]);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			rm_rf(p);
		else
			unlink(p);
	}
	rmdir(dir);
}

static int make_sub(const char *base, const char *name, char *ret)
{
	path_of(ret, base, name);
	rm_rf(ret);
	return mkdir(ret, 0700) < 0 ? -errno : 0;
}

static int touch(const char *dir, const char *name, const char *content)
{
	char p[PATH_MAX];
	_cleanup_close_ int fd = -EBADF;

	path_of(p, dir, name);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	return write_full(fd, content, strlen(content));
}

/* ---- tests ---- */

static int test_codec(char *why)
{
	struct wbuf wb = {0};
	uint8_t small[8], blob[5] = {1, 2, 3, 4, 5};
	char s[16];
	size_t n;
	int ok = 0;

	wb_u8(&wb, 0xab);
	wb_u16(&wb, 0xbeef);
	wb_u32(&wb, 0x11223344);
	wb_u64(&wb, 0x8000000000000001ULL);
	wb_bytes(&wb, blob, sizeof(blob));
	wb_str(&wb, "hello");
	wb_str(&wb, NULL);
	wb_str(&wb, "");
	if (wb.err || wb.len != 1 + 2 + 4 + 8 + 4 + 5 + 4 + 5 + 4 + 4) {
		fail(why, "encoded %zu bytes, err %d", wb.len, wb.err);
		goto out;
	}
	if (wb.p[0] != 0xab || wb.p[1] != 0xef || wb.p[2] != 0xbe || wb.p[3] != 0x44 ||
	    wb.p[6] != 0x11 || wb.p[7] != 0x01 || wb.p[14] != 0x80) {
		fail(why, "not little-endian");
		goto out;
	}
	struct rbuf rb = {.p = wb.p, .len = wb.len};
	if (rb_u8(&rb) != 0xab || rb_u16(&rb) != 0xbeef || rb_u32(&rb) != 0x11223344 ||
	    rb_u64(&rb) != 0x8000000000000001ULL) {
		fail(why, "integers differ");
		goto out;
	}
	if (rb_bytes(&rb, small, sizeof(small)) != 5 || memcmp(small, blob, 5) != 0) {
		fail(why, "bytes differ");
		goto out;
	}
	rb_str(&rb, s, sizeof(s));
	if (strcmp(s, "hello") != 0) {
		fail(why, "string differs: \"%s\"", s);
		goto out;
	}
	rb_str(&rb, s, sizeof(s));
	if (s[0] != '\0') {
		fail(why, "NULL string came back as \"%s\"", s);
		goto out;
	}
	if (!rb_bytes_ptr(&rb, &n) || n != 0 || rb.err || rb.off != rb.len) {
		fail(why, "empty bytes_ptr, err %d, off %zu of %zu", rb.err, rb.off, rb.len);
		goto out;
	}
	/* Overruns: zeros, -EPROTO, sticky. */
	if (rb_u32(&rb) != 0 || rb.err != -EPROTO || rb_u8(&rb) != 0) {
		fail(why, "overrun not detected (err %d)", rb.err);
		goto out;
	}
	rb = (struct rbuf){.p = wb.p, .len = 3};
	if (rb_u32(&rb) != 0 || rb.err != -EPROTO) {
		fail(why, "short u32 not detected");
		goto out;
	}
	rb = (struct rbuf){.p = wb.p + 15, .len = wb.len - 15}; /* the 5-byte field */
	if (rb_bytes(&rb, small, 4) != 0 || rb.err != -EPROTO) {
		fail(why, "bytes longer than cap not detected");
		goto out;
	}
	rb = (struct rbuf){.p = wb.p + 24, .len = wb.len - 24}; /* "hello" */
	rb_str(&rb, s, 5);
	if (rb.err != -EPROTO || s[0] != '\0') {
		fail(why, "string longer than cap not detected");
		goto out;
	}
	rb = (struct rbuf){.p = wb.p + 15, .len = 6}; /* length 5, one byte present */
	if (rb_bytes_ptr(&rb, &n) != NULL || n != 0 || rb.err != -EPROTO) {
		fail(why, "bytes field past the end not detected");
		goto out;
	}
	rb = (struct rbuf){0};
	if (rb_u8(&rb) != 0 || rb.err != -EPROTO) {
		fail(why, "empty buffer overrun not detected");
		goto out;
	}
	size_t cap = wb.cap;
	wb_reset(&wb);
	if (wb.len != 0 || wb.cap != cap || !wb.p) {
		fail(why, "wb_reset did not keep the buffer");
		goto out;
	}
	ok = 1;
out:
	wb_free(&wb);
	return ok;
}

static int test_roundtrip(const char *base, char *why)
{
	char dir[PATH_MAX], p[PATH_MAX];
	uint64_t bytes = 0, sum = 0;
	const char *files[] = {"MANIFEST", "state-1.img", "pages-1.img"};
	struct stat st;

	/* A directory that does not exist yet: the writer creates it. */
	path_of(dir, base, "roundtrip/nested");
	if (!write_image(dir, 7, true, &bytes, why) || !check_image(dir, 7, true, 1, why))
		return 0;
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		path_of(p, dir, files[i]);
		if (stat(p, &st) < 0)
			return fail(why, "%s: %m", p);
		if ((st.st_mode & 0777) != 0600)
			return fail(why, "%s: mode %o", p, st.st_mode & 0777);
		/* Format version 2, one pages file: docs/image-format.md gives this size. */
		if (i == 0 && st.st_size != 86)
			return fail(why, "MANIFEST: %lld bytes, expected 86",
			            (long long)st.st_size);
		sum += (uint64_t)st.st_size;
	}
	if (bytes != sum)
		return fail(why, "commit reported %lu bytes, files hold %lu", (unsigned long)bytes,
		            (unsigned long)sum);
	return 1;
}

static int test_api_misuse(const char *base, char *why)
{
	char dir[PATH_MAX];
	struct image_writer *w = NULL;
	struct ferry_error err = {0};
	int r, ok = 0;

	if (make_sub(base, "misuse", dir) < 0)
		return fail(why, "mkdir: %m");
	if (image_writer_open(dir, &w, &err) < 0)
		return fail(why, "writer_open: %s", err.msg);
	if (image_put_record(w, 0, 1, NULL, 0, &err) != -EINVAL) {
		fail(why, "kind 0 accepted");
		goto out;
	}
	if (image_writer_commit(w, NULL, &err) < 0) {
		fail(why, "commit of an empty image: %s", err.msg);
		goto out;
	}
	r = image_put_record(w, IMG_FD, 1, "x", 1, &err);
	if (r != -EINVAL || !strstr(err.msg, "after commit")) {
		fail(why, "record after commit: %d %s", r, err.msg);
		goto out;
	}
	if (image_writer_commit(w, NULL, &err) != -EINVAL) {
		fail(why, "second commit accepted");
		goto out;
	}
	ok = 1;
out:
	image_writer_free(w);
	return ok;
}

static int test_generations(const char *base, char *why)
{
	char dir[PATH_MAX], ls[1024];

	if (make_sub(base, "generations", dir) < 0)
		return fail(why, "mkdir: %m");
	for (unsigned g = 1; g <= 3; g++)
		if (!write_image(dir, g, false, NULL, why) || !check_image(dir, g, false, g, why))
			return 0;
	listing(dir, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-3.img state-3.img") != 0)
		return fail(why, "directory holds: %s", ls);
	return 1;
}

static int test_lock(const char *base, char *why)
{
	char dir[PATH_MAX];
	struct image_writer *a = NULL, *b = NULL;
	struct ferry_error err = {0};
	int r, ok = 0;

	if (make_sub(base, "lock", dir) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(dir, 1, false, NULL, why))
		return 0;
	if (image_writer_open(dir, &a, &err) < 0)
		return fail(why, "writer a: %s", err.msg);
	r = image_writer_open(dir, &b, &err);
	if (r != -EBUSY || b || !strstr(err.msg, "another checkpoint")) {
		fail(why, "second writer: %d \"%s\"", r, err.msg);
		goto out;
	}
	a = image_writer_free(a);
	if (image_writer_open(dir, &b, &err) < 0) {
		fail(why, "writer after release: %s", err.msg);
		goto out;
	}
	b = image_writer_free(b);
	ok = check_image(dir, 1, false, 1, why);
out:
	image_writer_free(a);
	image_writer_free(b);
	return ok;
}

/* Abandoned writers, in-process and by a process that dies, leave the old image in charge. */
static int test_crash(const char *base, char *why)
{
	char dir[PATH_MAX], ls[1024];
	struct image_writer *w = NULL;
	struct ferry_error err = {0};
	int status;
	pid_t pid;

	if (make_sub(base, "crash", dir) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(dir, 1, false, NULL, why))
		return 0;
	if (image_writer_open(dir, &w, &err) < 0)
		return fail(why, "writer_open: %s", err.msg);
	if (image_put_record(w, IMG_FD, 1, "abc", 3, &err) < 0 ||
	    pwrite_full(image_pages_fd(w), "x", 1, (off_t)image_pages_alloc(w, 1)) < 0) {
		image_writer_free(w);
		return fail(why, "writing: %s", err.msg);
	}
	w = image_writer_free(w);
	listing(dir, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-1.img state-1.img") != 0)
		return fail(why, "after an abandoned writer the directory holds: %s", ls);
	if (!check_image(dir, 1, false, 1, why))
		return 0;

	/* A process that dies mid-checkpoint: its temp files stay, its lock goes. */
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return fail(why, "fork: %m");
	if (pid == 0) {
		if (image_writer_open(dir, &w, &err) < 0)
			_exit(1);
		for (int i = 0; i < 5000; i++) /* more than the flush threshold */
			if (image_put_record(w, IMG_VMA, 1, ls, sizeof(ls), &err) < 0)
				_exit(1);
		if (pwrite_full(image_pages_fd(w), "x", 1, (off_t)image_pages_alloc(w, 1)) < 0)
			_exit(1);
		_exit(0); /* no free, no commit */
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return fail(why, "child writer failed (status %#x)", status);
	/* And the leftovers of one that died between its data renames and the MANIFEST rename. */
	if (touch(dir, "state-3.img", "garbage") < 0 || touch(dir, "pages-3.img", "") < 0 ||
	    touch(dir, "MANIFEST.tmp", "garbage") < 0)
		return fail(why, "creating leftovers: %m");
	listing(dir, ls, sizeof(ls));
	if (!strstr(ls, "state-2.img.tmp") || !strstr(ls, "pages-2.img.tmp"))
		return fail(why, "the dead writer left no temp files: %s", ls);
	if (!check_image(dir, 1, false, 1, why))
		return 0;
	/* The next checkpoint goes past the leftovers and clears them away. */
	if (!write_image(dir, 9, false, NULL, why) || !check_image(dir, 9, false, 4, why))
		return 0;
	listing(dir, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-4.img state-4.img") != 0)
		return fail(why, "after recovery the directory holds: %s", ls);
	return 1;
}

/* ---- corruption: each fault must be refused, and the message must name it ---- */

static int file_edit(const char *dir, const char *name, off_t off, const void *bytes, size_t n,
                     int xor)
{
	char p[PATH_MAX];
	uint8_t buf[16];
	_cleanup_close_ int fd = -EBADF;
	int r;

	path_of(p, dir, name);
	fd = open(p, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if ((r = pread_full(fd, buf, n, off)) < 0)
		return r;
	for (size_t i = 0; i < n; i++)
		buf[i] = xor? buf[i] ^ ((const uint8_t *)bytes)[i] : ((const uint8_t *)bytes)[i];
	return pwrite_full(fd, buf, n, off);
}

static int flip(const char *dir, const char *name, off_t off)
{
	return file_edit(dir, name, off, "\x10", 1, 1);
}

static int shorten(const char *dir, const char *name, off_t by)
{
	char p[PATH_MAX];
	struct stat st;

	path_of(p, dir, name);
	if (stat(p, &st) < 0 || truncate(p, st.st_size - by) < 0)
		return -errno;
	return 0;
}

/* A v2 MANIFEST as the test edits it: up to 4 pages files. */
struct tman {
	uint64_t magic;
	uint32_t version;
	uint64_t gen;
	char state[64];
	uint64_t state_size;
	uint64_t state_csum;
	uint32_t n;
	char pages[4][64];
	uint64_t pages_size[4];
};

static int man_read(const char *dir, struct tman *m)
{
	char p[PATH_MAX], *man = NULL;
	size_t mlen;
	int r;

	path_of(p, dir, "MANIFEST");
	if ((r = read_file(p, &man, &mlen)) < 0)
		return r;
	struct rbuf rb = {.p = (uint8_t *)man, .len = mlen - 8};
	*m = (struct tman){0};
	m->magic = rb_u64(&rb);
	m->version = rb_u32(&rb);
	m->gen = rb_u64(&rb);
	rb_str(&rb, m->state, sizeof(m->state));
	m->state_size = rb_u64(&rb);
	m->state_csum = rb_u64(&rb);
	m->n = rb_u32(&rb);
	for (uint32_t i = 0; i < m->n && i < ARRAY_SIZE(m->pages); i++) {
		rb_str(&rb, m->pages[i], sizeof(m->pages[i]));
		m->pages_size[i] = rb_u64(&rb);
	}
	r = rb.err ? rb.err : m->n > ARRAY_SIZE(m->pages) || rb.off != rb.len ? -EPROTO : 0;
	free(man);
	return r;
}

/* Write m as MANIFEST, with a correct trailing checksum. */
static int man_write(const char *dir, const struct tman *m)
{
	char p[PATH_MAX];
	struct wbuf wb = {0};
	int r;

	wb_u64(&wb, m->magic);
	wb_u32(&wb, m->version);
	wb_u64(&wb, m->gen);
	wb_str(&wb, m->state);
	wb_u64(&wb, m->state_size);
	wb_u64(&wb, m->state_csum);
	wb_u32(&wb, m->n);
	for (uint32_t i = 0; i < m->n && i < ARRAY_SIZE(m->pages); i++) {
		wb_str(&wb, m->pages[i]);
		wb_u64(&wb, m->pages_size[i]);
	}
	wb_u64(&wb, image_checksum(wb.p, wb.len));
	r = wb.err ? wb.err : touch(dir, "MANIFEST", "");
	path_of(p, dir, "MANIFEST");
	if (r == 0) {
		_cleanup_close_ int fd = open(p, O_WRONLY | O_CLOEXEC);
		r = fd < 0 ? -errno : write_full(fd, wb.p, wb.len);
	}
	wb_free(&wb);
	return r;
}

/* Rewrite MANIFEST to match the state file as it is now (size and checksum). */
static int reseal_manifest(const char *dir)
{
	char p[PATH_MAX], *state = NULL;
	struct tman m;
	size_t slen;
	int r;

	if ((r = man_read(dir, &m)) < 0)
		return r;
	path_of(p, dir, m.state);
	if ((r = read_file(p, &state, &slen)) < 0)
		return r;
	m.state_size = slen;
	m.state_csum = image_checksum(state, slen);
	free(state);
	return man_write(dir, &m);
}

static int cut_state_resealed(const char *dir, off_t by)
{
	int r = shorten(dir, "state-1.img", by);
	return r < 0 ? r : reseal_manifest(dir);
}

/* State file offsets of the standard image: header 20 bytes, frames 20 bytes + payload. */
#define REC0 20
#define REC1 (REC0 + 20 + 17)
#define REC2 (REC1 + 20 + 0)

static int m_trunc_state(const char *d)
{
	return shorten(d, "state-1.img", 10);
}
static int m_trunc_pages(const char *d)
{
	return shorten(d, "pages-1.img", 4096);
}
static int m_flip_payload(const char *d)
{
	return flip(d, "state-1.img", REC0 + 20 + 3);
}
static int m_flip_frame_magic(const char *d)
{
	return flip(d, "state-1.img", REC1 + 1);
}
static int m_flip_frame_kind(const char *d)
{
	return flip(d, "state-1.img", REC2 + 4);
}
static int m_flip_frame_len(const char *d)
{
	return file_edit(d, "state-1.img", REC2 + 9, "\x01", 1, 1);
}
static int m_flip_state_header(const char *d)
{
	return flip(d, "state-1.img", 2);
}
static int m_flip_manifest(const char *d)
{
	return flip(d, "MANIFEST", 14);
}
static int m_flip_manifest_magic(const char *d)
{
	return flip(d, "MANIFEST", 0);
}
static int m_manifest_version(const char *d)
{
	return file_edit(d, "MANIFEST", 8, "\x07\0\0\0", 4, 0);
}
static int m_state_version(const char *d)
{
	int r = file_edit(d, "state-1.img", 8, "\x03\0\0\0", 4, 0);
	return r < 0 ? r : reseal_manifest(d);
}
static int m_no_end(const char *d)
{
	return cut_state_resealed(d, 20);
}
static int m_cut_record(const char *d)
{
	return cut_state_resealed(d, 20 + 10);
}
static int m_no_manifest(const char *d)
{
	char p[PATH_MAX];
	path_of(p, d, "MANIFEST");
	return unlink(p) < 0 ? -errno : 0;
}
static int m_no_pages(const char *d)
{
	char p[PATH_MAX];
	path_of(p, d, "pages-1.img");
	return unlink(p) < 0 ? -errno : 0;
}
static int m_empty_manifest(const char *d)
{
	return touch(d, "MANIFEST", "");
}

/* Edit the MANIFEST's list of pages files with a valid checksum: only the reader's checks of
 * the names and of the files named can refuse it. */
static int m_pages_list(const char *d, uint32_t n, const char *name1, uint64_t size1,
                        const char *name0)
{
	struct tman m;
	int r = man_read(d, &m);

	if (r < 0)
		return r;
	m.n = n;
	if (name0)
		snprintf(m.pages[0], sizeof(m.pages[0]), "%s", name0);
	if (name1) {
		snprintf(m.pages[1], sizeof(m.pages[1]), "%s", name1);
		m.pages_size[1] = size1;
	}
	return man_write(d, &m);
}
static int m_no_pages_files(const char *d)
{
	return m_pages_list(d, 0, NULL, 0, NULL);
}
static int m_too_many_pages_files(const char *d)
{
	return m_pages_list(d, 1025, NULL, 0, NULL); /* the list then runs short of 1025 */
}
static int m_pages_twice(const char *d)
{
	return m_pages_list(d, 2, "pages-1.img", 24576, NULL);
}
static int m_pages_name_zeros(const char *d)
{
	return m_pages_list(d, 2, "pages-01.img", 24576, NULL);
}
static int m_pages_name_tmp(const char *d)
{
	return m_pages_list(d, 2, "pages-2.img.tmp", 24576, NULL);
}
static int m_pages_name_state(const char *d)
{
	return m_pages_list(d, 2, "state-1.img", 24576, NULL);
}
static int m_pages_name_slash(const char *d)
{
	return m_pages_list(d, 2, "../pages-1.img", 24576, NULL);
}
static int m_pages0_not_own(const char *d)
{
	return m_pages_list(d, 1, NULL, 0, "pages-5.img");
}
static int m_inherited_missing(const char *d)
{
	return m_pages_list(d, 2, "pages-4.img", 4096, NULL);
}
static int m_inherited_short(const char *d)
{
	int r = touch(d, "pages-4.img", "abc");
	return r < 0 ? r : m_pages_list(d, 2, "pages-4.img", 4096, NULL);
}

static const struct fault {
	const char *name;
	int (*mutate)(const char *dir);
	const char *expect;
} faults[] = {
        {"truncated state file", m_trunc_state, "state-1.img: truncated: MANIFEST records"},
        {"truncated pages file", m_trunc_pages, "pages-1.img: truncated: MANIFEST records"},
        {"bit flip in a record payload", m_flip_payload,
         "state-1.img: record 0 (kind 1) at offset 20: payload checksum mismatch"},
        {"bit flip in a frame magic", m_flip_frame_magic,
         "state-1.img: record 1 at offset 57: bad frame header"},
        {"bit flip in a frame kind", m_flip_frame_kind, "state-1.img: file checksum mismatch"},
        {"bit flip in a frame length", m_flip_frame_len, "state-1.img: record 2 (kind 3)"},
        {"bit flip in the state header", m_flip_state_header, "state-1.img: bad header"},
        {"bit flip in the manifest", m_flip_manifest, "MANIFEST: checksum mismatch"},
        {"bit flip in the manifest magic", m_flip_manifest_magic, "MANIFEST: bad magic"},
        {"wrong version in the manifest", m_manifest_version,
         "format version 7, this ferry reads version 2"},
        {"wrong version in the state file", m_state_version,
         "state-1.img: format version 3, this ferry reads version 2"},
        {"missing IMG_END", m_no_end, "state-1.img: no IMG_END record"},
        {"record cut short", m_cut_record, "run past the end of the file"},
        {"missing MANIFEST", m_no_manifest, "no MANIFEST"},
        {"empty MANIFEST", m_empty_manifest, "MANIFEST: truncated"},
        {"missing pages file", m_no_pages, "pages-1.img: missing"},
        {"a manifest naming no pages file", m_no_pages_files,
         "MANIFEST: names 0 pages files (1 to 1024 are allowed)"},
        {"a manifest naming 1025 pages files", m_too_many_pages_files,
         "MANIFEST: names 1025 pages files"},
        {"a manifest naming a pages file twice", m_pages_twice,
         "MANIFEST: names pages-1.img twice (pages files 0 and 1)"},
        {"a pages file name with leading zeros", m_pages_name_zeros,
         "MANIFEST: pages file 1 \"pages-01.img\" is invalid"},
        {"a temporary file as a pages file", m_pages_name_tmp,
         "MANIFEST: pages file 1 \"pages-2.img.tmp\" is invalid"},
        {"a state file as a pages file", m_pages_name_state,
         "MANIFEST: pages file 1 \"state-1.img\" is invalid"},
        {"a pages file outside the directory", m_pages_name_slash,
         "MANIFEST: pages file 1 \"../pages-1.img\" is invalid"},
        {"pages file 0 of another generation", m_pages0_not_own,
         "MANIFEST: pages file 0 is \"pages-5.img\", not this generation's pages-1.img"},
        {"a missing inherited pages file", m_inherited_missing,
         "pages-4.img: missing (an inherited pages file of this image's chain was removed)"},
        {"a truncated inherited pages file", m_inherited_short,
         "pages-4.img: truncated: MANIFEST records 4096 bytes, file has 3"},
};

static int test_fault(const char *base, const struct fault *f, char *why)
{
	char dir[PATH_MAX], prefix[PATH_MAX + 16];
	struct image_reader *r = NULL;
	struct ferry_error err = {0};
	int rc;

	if (make_sub(base, "fault", dir) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(dir, 3, false, NULL, why) || !check_image(dir, 3, false, 1, why))
		return 0;
	if ((rc = f->mutate(dir)) < 0)
		return fail(why, "mutating: %s", strerror(-rc));
	rc = image_reader_open(dir, &r, &err);
	if (rc >= 0) {
		image_reader_free(r);
		return fail(why, "image accepted");
	}
	snprintf(prefix, sizeof(prefix), "image %s: ", dir);
	if (r || rc != err.code || strncmp(err.msg, prefix, strlen(prefix)) != 0 ||
	    !strstr(err.msg, f->expect))
		return fail(why, "got %d \"%s\", want \"%s\"", rc, err.msg, f->expect);
	return 1;
}

/* ---- incremental chains: inherited pages files ---- */

static int same_file(const char *dir_a, const char *a, const char *dir_b, const char *b)
{
	char pa[PATH_MAX], pb[PATH_MAX];
	struct stat sa, sb;

	path_of(pa, dir_a, a);
	path_of(pb, dir_b, b);
	return stat(pa, &sa) == 0 && stat(pb, &sb) == 0 && sa.st_dev == sb.st_dev &&
	       sa.st_ino == sb.st_ino;
}

/*
 * Open the image in dir and check its list of pages files: names[i] holding the pages of
 * write_image(seeds[i]) (the standard image, whose own file is STD_PAGES_SIZE bytes).
 */
static int check_chain(const char *dir, size_t n, const char *const *names, const unsigned *seeds,
                       char *why)
{
	struct image_reader *r = NULL;
	struct ferry_error err = {0};
	int ok = 0;

	if (image_reader_open(dir, &r, &err) < 0)
		return fail(why, "reader_open: %s", err.msg);
	if (strcmp(image_reader_dir(r), dir) != 0) {
		fail(why, "reader dir \"%s\"", image_reader_dir(r));
		goto out;
	}
	if (image_reader_npages_files(r) != n) {
		fail(why, "%u pages files, expected %zu", image_reader_npages_files(r), n);
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		const char *name = image_reader_pages_name(r, i);
		if (!name || strcmp(name, names[i]) != 0) {
			fail(why, "pages file %u is %s, expected %s", i, name ? name : "(null)",
			     names[i]);
			goto out;
		}
		if (image_reader_pages_size_at(r, i) != STD_PAGES_SIZE) {
			fail(why, "pages file %u: size %lu", i,
			     (unsigned long)image_reader_pages_size_at(r, i));
			goto out;
		}
		if (!check_pages(image_reader_pages_fd_at(r, i), seeds[i], why))
			goto out;
	}
	if (image_reader_pages_fd_at(r, (uint32_t)n) != -EINVAL ||
	    image_reader_pages_name(r, (uint32_t)n) || image_reader_pages_size_at(r, (uint32_t)n)) {
		fail(why, "pages file %zu (out of range) answered", n);
		goto out;
	}
	ok = 1;
out:
	image_reader_free(r);
	return ok;
}

/* Gen 2 inherits gen 1's pages file in the same directory; gen 3, inheriting none, drops it. */
static int test_chain_same_dir(const char *base, char *why)
{
	char dir[PATH_MAX], ls[1024];
	const struct inh twice[] = {{dir, "pages-1.img", STD_PAGES_SIZE, 1},
	                            {dir, "pages-1.img", STD_PAGES_SIZE, 1}};

	if (make_sub(base, "chain", dir) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(dir, 1, false, NULL, why))
		return 0;
	if (!write_image_inh(dir, 2, false, twice, ARRAY_SIZE(twice), NULL, why) ||
	    !check_image(dir, 2, false, 2, why) ||
	    !check_chain(dir, 2, (const char *[]){"pages-2.img", "pages-1.img"},
	                 (const unsigned[]){2, 1}, why))
		return 0;
	listing(dir, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-1.img pages-2.img state-2.img") != 0)
		return fail(why, "after gen 2 the directory holds: %s", ls);
	/* And on down the chain: gen 3 names all three. */
	const struct inh both[] = {{dir, "pages-2.img", STD_PAGES_SIZE, 1},
	                           {dir, "pages-1.img", STD_PAGES_SIZE, 2}};
	if (!write_image_inh(dir, 3, false, both, ARRAY_SIZE(both), NULL, why) ||
	    !check_chain(dir, 3, (const char *[]){"pages-3.img", "pages-2.img", "pages-1.img"},
	                 (const unsigned[]){3, 2, 1}, why))
		return 0;
	if (!write_image(dir, 4, false, NULL, why) || !check_image(dir, 4, false, 4, why))
		return 0;
	listing(dir, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-4.img state-4.img") != 0)
		return fail(why, "after gen 4 the directory holds: %s", ls);
	return 1;
}

/* A child in another directory hard-links its parent's pages file and outlives the parent. */
static int test_chain_link(const char *base, char *why)
{
	char parent[PATH_MAX], child[PATH_MAX], ls[1024];
	const struct inh from_parent[] = {{parent, "pages-1.img", STD_PAGES_SIZE, 1}};
	const char *const names[] = {"pages-2.img", "pages-3.img"};
	const unsigned seeds[] = {12, 11};

	if (make_sub(base, "parent", parent) < 0 || make_sub(base, "child", child) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(parent, 11, false, NULL, why) || !write_image(child, 10, false, NULL, why))
		return 0;
	/* The child's own files are generation 2, the link the next one up. */
	if (!write_image_inh(child, 12, false, from_parent, 1, NULL, why) ||
	    !check_image(child, 12, false, 2, why) || !check_chain(child, 2, names, seeds, why))
		return 0;
	listing(child, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-2.img pages-3.img state-2.img") != 0)
		return fail(why, "the child directory holds: %s", ls);
	if (!same_file(parent, "pages-1.img", child, "pages-3.img"))
		return fail(why, "pages-3.img is not a hard link of the parent's pages-1.img");
	/* The parent's image replaced: its pages-1.img goes, the child's link keeps the data. */
	if (!write_image(parent, 13, false, NULL, why) || !check_image(parent, 13, false, 2, why))
		return 0;
	listing(parent, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-2.img state-2.img") != 0)
		return fail(why, "the parent directory holds: %s", ls);
	if (!check_chain(child, 2, names, seeds, why))
		return 0;
	/* And the parent gone altogether. */
	rm_rf(parent);
	if (!check_chain(child, 2, names, seeds, why))
		return 0;
	/* A grandchild takes both of the child's files; the next child image goes above them. */
	char grand[PATH_MAX];
	const struct inh from_child[] = {{child, "pages-2.img", STD_PAGES_SIZE, 1},
	                                 {child, "pages-3.img", STD_PAGES_SIZE, 2}};
	if (make_sub(base, "grandchild", grand) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image_inh(grand, 14, false, from_child, 2, NULL, why) ||
	    !check_chain(grand, 3, (const char *[]){"pages-1.img", "pages-2.img", "pages-3.img"},
	                 (const unsigned[]){14, 12, 11}, why))
		return 0;
	if (!write_image(child, 15, false, NULL, why) || !check_image(child, 15, false, 4, why))
		return 0;
	listing(child, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-4.img state-4.img") != 0)
		return fail(why, "after a full child image the directory holds: %s", ls);
	return check_chain(grand, 3, (const char *[]){"pages-1.img", "pages-2.img", "pages-3.img"},
	                   (const unsigned[]){14, 12, 11}, why);
}

/* The same file inherited again, by the same name, another path or another name: one entry. */
static int test_inherit_dup(const char *base, char *why)
{
	char parent[PATH_MAX], child[PATH_MAX], other_path[PATH_MAX], a[PATH_MAX], b[PATH_MAX];
	char ls[1024];

	if (make_sub(base, "dup-parent", parent) < 0 || make_sub(base, "dup-child", child) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(parent, 21, false, NULL, why))
		return 0;
	snprintf(other_path, sizeof(other_path), "%s/../dup-parent/.", parent);
	path_of(a, parent, "pages-1.img");
	path_of(b, parent, "pages-7.img");
	if (link(a, b) < 0)
		return fail(why, "link: %m");
	const struct inh inh[] = {{parent, "pages-1.img", STD_PAGES_SIZE, 1},
	                          {parent, "pages-1.img", STD_PAGES_SIZE, 1},
	                          {other_path, "pages-1.img", STD_PAGES_SIZE, 1},
	                          {parent, "pages-7.img", STD_PAGES_SIZE, 1}};
	if (!write_image_inh(child, 22, false, inh, ARRAY_SIZE(inh), NULL, why) ||
	    !check_chain(child, 2, (const char *[]){"pages-1.img", "pages-2.img"},
	                 (const unsigned[]){22, 21}, why))
		return 0;
	listing(child, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-1.img pages-2.img state-1.img") != 0)
		return fail(why, "the child directory holds: %s", ls);
	return 1;
}

/* Refusals: wrong size, missing file, bad names, another file system; nothing is left. */
static int test_inherit_refused(const char *base, char *why)
{
	char parent[PATH_MAX], child[PATH_MAX], nowhere[PATH_MAX], before[1024], after[1024];
	struct image_writer *w = NULL;
	struct ferry_error err = {0};
	uint32_t idx = 77;
	int r, ok = 0;

	if (make_sub(base, "ref-parent", parent) < 0 || make_sub(base, "ref-child", child) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(parent, 31, false, NULL, why) || !write_image(child, 32, false, NULL, why))
		return 0;
	listing(child, before, sizeof(before));
	if (image_writer_open(child, &w, &err) < 0)
		return fail(why, "writer_open: %s", err.msg);
	r = image_writer_inherit(w, parent, "pages-1.img", STD_PAGES_SIZE + 4096, &idx, &err);
	if (r != -EPROTO || idx != 77 || !strstr(err.msg, "pages file pages-1.img of ") ||
	    !strstr(err.msg, "records 28672 bytes, the file has 24576")) {
		fail(why, "wrong size: %d \"%s\"", r, err.msg);
		goto out;
	}
	r = image_writer_inherit(w, child, "pages-1.img", 4096, &idx, &err);
	if (r != -EPROTO || !strstr(err.msg, "records 4096 bytes")) {
		fail(why, "wrong size in the own directory: %d \"%s\"", r, err.msg);
		goto out;
	}
	r = image_writer_inherit(w, parent, "pages-9.img", 4096, &idx, &err);
	if (r != -ENOENT || !strstr(err.msg, "pages file pages-9.img of ")) {
		fail(why, "missing file: %d \"%s\"", r, err.msg);
		goto out;
	}
	const char *bad[] = {"../pages-1.img", "state-1.img", "pages-1.img.tmp",
	                     "pages-01.img",   "MANIFEST",    ""};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		r = image_writer_inherit(w, parent, bad[i], 0, &idx, &err);
		if (r != -EINVAL || !strstr(err.msg, "not a pages file name")) {
			fail(why, "name \"%s\": %d \"%s\"", bad[i], r, err.msg);
			goto out;
		}
	}
	path_of(nowhere, base, "nowhere");
	r = image_writer_inherit(w, nowhere, "pages-1.img", 0, &idx, &err);
	if (r != -ENOENT || !strstr(err.msg, "nowhere")) {
		fail(why, "missing directory: %d \"%s\"", r, err.msg);
		goto out;
	}
	/* Another file system, if /dev/shm is one. */
	struct stat sb, ss;
	char shm[] = "/dev/shm/ferry-test-image-XXXXXX";
	if (stat(base, &sb) == 0 && mkdtemp(shm) && stat(shm, &ss) == 0) {
		if (ss.st_dev != sb.st_dev) {
			if (!write_image(shm, 33, false, NULL, why)) {
				rm_rf(shm);
				goto out;
			}
			r = image_writer_inherit(w, shm, "pages-1.img", STD_PAGES_SIZE, &idx, &err);
			if (r != -EXDEV ||
			    !strstr(err.msg,
			            "pages file pages-1.img of /dev/shm/ferry-test-image-") ||
			    !strstr(err.msg,
			            "on another file system, cannot be hard-linked; put the "
			            "image on the same file system as its parent")) {
				fail(why, "another file system: %d \"%s\"", r, err.msg);
				rm_rf(shm);
				goto out;
			}
		}
		rm_rf(shm);
	}
	if (image_writer_npages_files(w) != 1) {
		fail(why, "%u pages files after refusals", image_writer_npages_files(w));
		goto out;
	}
	w = image_writer_free(w);
	listing(child, after, sizeof(after));
	if (strcmp(before, after) != 0) {
		fail(why, "the directory held %s, now %s", before, after);
		goto out;
	}
	ok = check_image(child, 32, false, 1, why);
out:
	image_writer_free(w);
	return ok;
}

/* Inherited files that vanish are refused on open, naming the file. */
static int test_inherited_removed(const char *base, char *why)
{
	char parent[PATH_MAX], child[PATH_MAX], p[PATH_MAX];
	const struct inh from_parent[] = {{parent, "pages-1.img", STD_PAGES_SIZE, 1}};
	struct image_reader *r = NULL;
	struct ferry_error err = {0};
	int rc;

	if (make_sub(base, "rm-parent", parent) < 0 || make_sub(base, "rm-child", child) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(parent, 41, false, NULL, why) ||
	    !write_image_inh(child, 42, false, from_parent, 1, NULL, why))
		return 0;
	path_of(p, child, "pages-2.img");
	if (unlink(p) < 0)
		return fail(why, "unlink: %m");
	rc = image_reader_open(child, &r, &err);
	if (rc != -ENOENT || r ||
	    !strstr(err.msg, "pages-2.img: missing (an inherited pages file of this image's chain "
	                     "was removed)"))
		return fail(why, "got %d \"%s\"", rc, err.msg);
	return 1;
}

/* Abandoned writers that inherited: freed, nothing new stays; dead, the next commit cleans. */
static int test_inherit_abandoned(const char *base, char *why)
{
	char parent[PATH_MAX], child[PATH_MAX], before[1024], ls[1024];
	struct image_writer *w = NULL;
	struct ferry_error err = {0};
	uint32_t i1 = 0, i2 = 0;
	int status;
	pid_t pid;

	if (make_sub(base, "ab-parent", parent) < 0 || make_sub(base, "ab-child", child) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(parent, 51, false, NULL, why) || !write_image(child, 52, false, NULL, why))
		return 0;
	listing(child, before, sizeof(before));
	if (image_writer_open(child, &w, &err) < 0)
		return fail(why, "writer_open: %s", err.msg);
	if (image_writer_inherit(w, child, "pages-1.img", STD_PAGES_SIZE, &i1, &err) < 0 ||
	    image_writer_inherit(w, parent, "pages-1.img", STD_PAGES_SIZE, &i2, &err) < 0 ||
	    image_put_record(w, IMG_FD, 1, "abc", 3, &err) < 0) {
		image_writer_free(w);
		return fail(why, "writing: %s", err.msg);
	}
	if (i1 != 1 || i2 != 2 || image_writer_npages_files(w) != 3) {
		image_writer_free(w);
		return fail(why, "indices %u %u, %u files", i1, i2, image_writer_npages_files(w));
	}
	listing(child, ls, sizeof(ls));
	if (!strstr(ls, "pages-3.img"))
		return fail(why, "no link while writing: %s", ls);
	w = image_writer_free(w);
	listing(child, ls, sizeof(ls));
	if (strcmp(ls, before) != 0)
		return fail(why, "after an abandoned writer the directory holds %s, not %s", ls,
		            before);
	if (!check_image(child, 52, false, 1, why) || !check_image(parent, 51, false, 1, why))
		return 0;

	/* A writer that dies after linking: the link stays, unnamed; the next commit removes it. */
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return fail(why, "fork: %m");
	if (pid == 0) {
		if (image_writer_open(child, &w, &err) < 0 ||
		    image_writer_inherit(w, parent, "pages-1.img", STD_PAGES_SIZE, &i1, &err) < 0)
			_exit(1);
		_exit(0); /* no free, no commit */
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return fail(why, "child writer failed (status %#x)", status);
	listing(child, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-1.img pages-2.img.tmp pages-3.img state-1.img "
	               "state-2.img.tmp") != 0)
		return fail(why, "the dead writer left: %s", ls);
	if (!check_image(child, 52, false, 1, why))
		return 0;
	if (!write_image(child, 53, false, NULL, why) || !check_image(child, 53, false, 4, why))
		return 0;
	listing(child, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-4.img state-4.img") != 0)
		return fail(why, "after recovery the directory holds: %s", ls);
	return check_image(parent, 51, false, 1, why);
}

/* A version 1 image (one pages file, no list) is refused; a new commit over it replaces it. */
static int test_v1_manifest(const char *base, char *why)
{
	char dir[PATH_MAX], p[PATH_MAX], ls[1024];
	struct image_reader *r = NULL;
	struct ferry_error err = {0};
	struct wbuf wb = {0};
	struct tman m;
	int rc;

	if (make_sub(base, "v1", dir) < 0)
		return fail(why, "mkdir: %m");
	if (!write_image(dir, 61, false, NULL, why))
		return 0;
	if ((rc = man_read(dir, &m)) < 0)
		return fail(why, "reading the manifest: %s", strerror(-rc));
	/* The version 1 layout: one pages file name and size, no count. */
	wb_u64(&wb, m.magic);
	wb_u32(&wb, 1);
	wb_u64(&wb, m.gen);
	wb_str(&wb, m.state);
	wb_u64(&wb, m.state_size);
	wb_u64(&wb, m.state_csum);
	wb_str(&wb, m.pages[0]);
	wb_u64(&wb, m.pages_size[0]);
	wb_u64(&wb, image_checksum(wb.p, wb.len));
	rc = wb.err ? wb.err : touch(dir, "MANIFEST", "");
	path_of(p, dir, "MANIFEST");
	if (rc == 0) {
		_cleanup_close_ int fd = open(p, O_WRONLY | O_CLOEXEC);
		rc = fd < 0 ? -errno : write_full(fd, wb.p, wb.len);
	}
	wb_free(&wb);
	if (rc < 0)
		return fail(why, "writing a v1 manifest: %s", strerror(-rc));
	rc = image_reader_open(dir, &r, &err);
	if (rc != -EPROTO || r || !strstr(err.msg, "format version 1, this ferry reads version 2"))
		return fail(why, "got %d \"%s\"", rc, err.msg);
	if (!write_image(dir, 62, false, NULL, why) || !check_image(dir, 62, false, 2, why))
		return 0;
	listing(dir, ls, sizeof(ls));
	if (strcmp(ls, ".lock MANIFEST pages-2.img state-2.img") != 0)
		return fail(why, "after a commit over it the directory holds: %s", ls);
	return 1;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static int test_no_dir(const char *base, char *why)
{
	char dir[PATH_MAX];
	struct image_reader *r = NULL;
	struct ferry_error err = {0};

	path_of(dir, base, "does-not-exist");
	if (image_reader_open(dir, &r, &err) != -ENOENT || r || !strstr(err.msg, dir))
		return fail(why, "got \"%s\"", err.msg);
	return 1;
}

int main(void)
{
	char base[] = "/tmp/ferry-test-image-XXXXXX", why[WHY_MAX], name[128];
	struct tally t = {0};
	int fds = count_fds();

	if (!mkdtemp(base)) {
		perror("mkdtemp");
		return 1;
	}
#define RUN(label, call) (why[0] = '\0', report(&t, label, (call), why))
	RUN("codec round trip and overrun detection", test_codec(why));
	RUN("round trip of records and page data", test_roundtrip(base, why));
	RUN("misuse of the writer", test_api_misuse(base, why));
	RUN("generation replacement removes old files", test_generations(base, why));
	RUN("concurrent writer gets EBUSY", test_lock(base, why));
	RUN("crash before commit keeps the previous image", test_crash(base, why));
	RUN("missing image directory", test_no_dir(base, why));
	RUN("a chain in one directory keeps inherited files", test_chain_same_dir(base, why));
	RUN("a hard-linked parent file outlives the parent", test_chain_link(base, why));
	RUN("inheriting a file twice gives one index", test_inherit_dup(base, why));
	RUN("bad inherits are refused and leave nothing", test_inherit_refused(base, why));
	RUN("a removed inherited file is named on open", test_inherited_removed(base, why));
	RUN("abandoned inheriting writers leave no files", test_inherit_abandoned(base, why));
	RUN("a version 1 manifest is refused", test_v1_manifest(base, why));
	for (size_t i = 0; i < ARRAY_SIZE(faults); i++) {
		snprintf(name, sizeof(name), "refuses %s", faults[i].name);
		RUN(name, test_fault(base, &faults[i], why));
	}
	rm_rf(base);
	snprintf(why, sizeof(why), "%d open fds at the start, %d at the end", fds, count_fds());
	report(&t, "no fd leaks", fds == count_fds(), why);
	printf("%d passed, %d failed\n", t.passed, t.failed);
	return t.failed ? 1 : 0;
}
