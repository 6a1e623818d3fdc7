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
#include "util.h"

#define WHY_MAX 1024

/* The standard test image: these records, then these page allocations. */
static const uint16_t rec_kind[] = {IMG_COMPONENT, IMG_PROCESS, IMG_THREAD,
                                    IMG_VMA,       IMG_FD,      IMG_SIGACTION};
static const uint32_t rec_len[] = {17, 0, 3000, 64, 1, 40};
static const uint64_t page_len[] = {4096, 5000, 12288}; /* the 5000 leaves a sparse tail */
#define BIG_LEN (3u << 20) /* one record larger than the writer's flush threshold */

struct tally {
	int passed;
	int failed;
};

static void report(struct tally *t, const char *name, int ok, const char *why)
{
	if (ok) {
		t->passed++;
		printf("ok - %s\n", name);
	} else {
		t->failed++;
		printf("not ok - %s: %s\n", name, why);
	}
}

static int fail(char *why, const char *fmt, ...) _printf_(2, 3);
static int fail(char *why, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, WHY_MAX, fmt, ap);
	va_end(ap);
	return 0;
}

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

/* Write and commit the standard image with contents derived from seed (big: add BIG_LEN). */
static int write_image(const char *dir, unsigned seed, bool big, uint64_t *ret_bytes, char *why)
{
	struct image_writer *w = NULL;
	struct ferry_error err = {0};
	uint8_t *buf = malloc(BIG_LEN);
	int ok = 0;

	if (!buf)
		return fail(why, "out of memory");
	if (image_writer_open(dir, &w, &err) < 0) {
		fail(why, "writer_open: %s", err.msg);
		goto out;
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

/* Open the image in dir and compare everything with what write_image(seed, big) wrote. */
static int check_image(const char *dir, unsigned seed, bool big, uint64_t gen, char *why)
{
	struct image_reader *r = NULL;
	struct ferry_error err = {0};
	uint8_t *want = malloc(BIG_LEN), *got = malloc(16384);
	size_t nrec = ARRAY_SIZE(rec_kind) + big;
	int ok = 0;

	if (!want || !got) {
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
	if (image_reader_pages_size(r) != 4096 + 8192 + 12288) {
		fail(why, "pages size %lu", (unsigned long)image_reader_pages_size(r));
		goto out;
	}
	for (size_t i = 0, off = 0; i < ARRAY_SIZE(page_len); i++) {
		size_t span = (page_len[i] + 4095) / 4096 * 4096;
		if (pread_full(image_reader_pages_fd(r), got, span, (off_t)off) < 0) {
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
	image_reader_free(r);
	free(want);
	free(got);
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

/* Rewrite MANIFEST to match the state file as it is now (size and checksum). */
static int reseal_manifest(const char *dir)
{
	char p[PATH_MAX], *man = NULL, *state = NULL, name[64], pname[64];
	size_t mlen, slen;
	struct wbuf wb = {0};
	int r;

	path_of(p, dir, "MANIFEST");
	if ((r = read_file(p, &man, &mlen)) < 0)
		return r;
	struct rbuf rb = {.p = (uint8_t *)man, .len = mlen - 8};
	uint64_t magic = rb_u64(&rb), gen;
	uint32_t version = rb_u32(&rb);
	gen = rb_u64(&rb);
	rb_str(&rb, name, sizeof(name));
	(void)rb_u64(&rb); /* the old state size and checksum */
	(void)rb_u64(&rb);
	rb_str(&rb, pname, sizeof(pname));
	uint64_t psize = rb_u64(&rb);
	path_of(p, dir, name);
	if (rb.err || (r = read_file(p, &state, &slen)) < 0) {
		free(man);
		return rb.err ? rb.err : r;
	}
	wb_u64(&wb, magic);
	wb_u32(&wb, version);
	wb_u64(&wb, gen);
	wb_str(&wb, name);
	wb_u64(&wb, slen);
	wb_u64(&wb, image_checksum(state, slen));
	wb_str(&wb, pname);
	wb_u64(&wb, psize);
	wb_u64(&wb, image_checksum(wb.p, wb.len));
	r = wb.err ? wb.err : touch(dir, "MANIFEST", "");
	path_of(p, dir, "MANIFEST");
	if (r == 0) {
		_cleanup_close_ int fd = open(p, O_WRONLY | O_CLOEXEC);
		r = fd < 0 ? -errno : write_full(fd, wb.p, wb.len);
	}
	wb_free(&wb);
	free(man);
	free(state);
	return r;
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
	int r = file_edit(d, "state-1.img", 8, "\x02\0\0\0", 4, 0);
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
         "format version 7, this ferry reads version 1"},
        {"wrong version in the state file", m_state_version,
         "state-1.img: format version 2, this ferry reads version 1"},
        {"missing IMG_END", m_no_end, "state-1.img: no IMG_END record"},
        {"record cut short", m_cut_record, "run past the end of the file"},
        {"missing MANIFEST", m_no_manifest, "no MANIFEST"},
        {"empty MANIFEST", m_empty_manifest, "MANIFEST: truncated"},
        {"missing pages file", m_no_pages, "pages-1.img: missing"},
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
