/* The on-disk image container: a checksummed record file, page-data files and a manifest. */
#pragma once

#include <stdint.h>
#include <stddef.h>

#include "ferry/ferry.h"

/*
 * An image directory holds one committed image:
 *   MANIFEST          names the state file and an ordered list of pages files, with their sizes
 *                     (and the state file's checksum); replaced atomically (write tmp, fsync,
 *                     rename, fsync dir) as the last step
 *   state-<gen>.img   framed records (kind, version, length, checksum, payload)
 *   pages-<gen>.img   raw page data, every run at a 4096-aligned offset, no header. Pages file 0
 *                     is the image's own; the others are inherited from the images of an
 *                     incremental chain: kept from the image this one replaces, or hard links
 *                     to another image directory's files, under names of their own generations
 * A crash before the rename leaves the previous MANIFEST and its files intact; leftover temp
 * files of a failed checkpoint are never named by a MANIFEST, so restore cannot take them.
 * See docs/image-format.md.
 */

#define FERRY_IMAGE_VERSION 2

/* Record kinds, one per kind of object in the image. Numbers are part of the format. */
enum img_kind {
	IMG_COMPONENT = 1, /* name, creation time, origin host, log offset */
	IMG_PROCESS = 2,   /* pid, process-wide state: mm fields, cwd, umask, rlimits, ... */
	IMG_THREAD = 3,    /* tid, registers, xstate, sigmask, altstack, rseq, ... */
	IMG_VMA = 4,       /* one memory mapping and the page runs that hold its data */
	IMG_SHMEM = 5,     /* one shared-memory object (shared anon, memfd) and its data runs */
	IMG_FD = 6,        /* one fd table entry */
	IMG_SIGACTION = 7, /* one non-default signal disposition */
	IMG_SIGINFO = 8,   /* one pending signal (process-wide or per-thread) */
	IMG_END = 9,       /* last record; its absence means a truncated state file */
	IMG_PAGEFILE = 10, /* where one pages file of the image was first written */
	IMG_PTIMER = 11,   /* one POSIX timer */
	IMG_INFLIGHT = 12, /* one file in flight in a Unix socket's queue (SCM_RIGHTS) */
};

struct image_writer;
struct image_reader;

/*
 * image_writer_open - begin a new image in DIR (created if missing). Takes an exclusive lock
 * on DIR so two checkpoints cannot interleave; creates the next generation's state and pages
 * files under temporary names. Nothing already in DIR is changed until image_writer_commit.
 */
int image_writer_open(const char *dir, struct image_writer **ret, struct ferry_error *err);

/* image_put_record - append one record (buffered). data may be NULL when len is 0. */
int image_put_record(struct image_writer *w, uint16_t kind, uint16_t version, const void *data,
                     uint32_t len, struct ferry_error *err);

/*
 * image_pages_fd - the image's own page-data file (pages file 0), opened read-write. Writers
 * place data with pwrite at offsets they got from image_pages_alloc; the container only records
 * the final size.
 */
int image_pages_fd(const struct image_writer *w);

/*
 * image_pages_alloc - reserve len bytes (rounded up to 4096) of the own page file (pages file
 * 0); returns the offset.
 */
uint64_t image_pages_alloc(struct image_writer *w, uint64_t len);

/*
 * image_writer_inherit - make the committed pages file NAME of image directory SRC_DIR, whose
 * MANIFEST records SIZE bytes for it, part of the image being written, and return in
 * *ret_index its index (>= 1) in the new MANIFEST's list of pages files. Records refer to its
 * data by that index. If SRC_DIR is the writer's own directory (same device and inode) the
 * file is named as it is; otherwise it is hard-linked into the writer's directory under a
 * fresh pages-<g>.img (g above every generation there), so the new image keeps the data
 * when SRC_DIR's image is replaced or SRC_DIR removed, and no byte is copied. Inheriting the
 * same file again (same directory and name, or the same file under another name) returns the
 * earlier index. NAME must be a committed pages file's name, pages-<N>.img (else -EINVAL).
 * Fails with -EPROTO when the file's size is not SIZE, -EXDEV when SRC_DIR is on another file
 * system, -E2BIG past 1024 pages files, -EAGAIN if the file was replaced while being linked,
 * or -errno naming the file. A link made for an image that is never committed is removed by
 * image_writer_free.
 */
int image_writer_inherit(struct image_writer *w, const char *src_dir, const char *name,
                         uint64_t size, uint32_t *ret_index, struct ferry_error *err);

/* image_writer_npages_files - pages files the new image will name: 1 + those inherited. */
uint32_t image_writer_npages_files(const struct image_writer *w);

/* image_writer_generation - the generation of the image being written (its own files' N). */
uint64_t image_writer_generation(const struct image_writer *w);

/*
 * image_writer_commit - write IMG_END, fsync both own files, write and fsync the MANIFEST
 * (naming the state file, the own pages file and the inherited ones in index order), rename it
 * into place, fsync DIR, then remove every state or pages file in DIR the new MANIFEST does not
 * name. After a failure the previous image (if any) is still the committed one. *ret_bytes
 * (optional): bytes this commit wrote (state file, own pages file, MANIFEST); inherited files
 * cost none and are not counted.
 */
int image_writer_commit(struct image_writer *w, uint64_t *ret_bytes, struct ferry_error *err);

/*
 * image_writer_free - release a committed writer, or abandon an uncommitted one: unlink its
 * temporary files and the hard links image_writer_inherit made. Accepts NULL; returns NULL.
 */
struct image_writer *image_writer_free(struct image_writer *w);

/*
 * image_reader_open - open the committed image in DIR and verify the manifest, the sizes of
 * the state file and of every pages file it names, the checksum of every state record and the
 * presence of IMG_END. Refuses a missing, truncated, corrupted or wrong-version image (or one
 * whose inherited pages file is gone) with a message naming the file and the fault. Page data
 * is verified by the caller against the checksums its records carry. Holds one fd per pages
 * file until image_reader_free.
 */
int image_reader_open(const char *dir, struct image_reader **ret, struct ferry_error *err);

/*
 * image_next_record - iterate the state records in order. Returns 1 with the record (data
 * points into the reader and stays valid until image_reader_free), 0 after the last one
 * (IMG_END is not returned).
 */
int image_next_record(struct image_reader *r, uint16_t *ret_kind, uint16_t *ret_version,
                      const void **ret_data, uint32_t *ret_len);

/* image_reader_rewind - iterate from the first record again. */
void image_reader_rewind(struct image_reader *r);

/* image_reader_npages_files - pages files the MANIFEST names (1 .. 1024). */
uint32_t image_reader_npages_files(const struct image_reader *r);

/*
 * image_reader_pages_fd_at - pages file idx (0: the image's own), read-only, owned by the
 * reader; -EINVAL if idx is out of range.
 */
int image_reader_pages_fd_at(const struct image_reader *r, uint32_t idx);

/* image_reader_pages_size_at - its size as recorded (and checked); 0 if idx is out of range. */
uint64_t image_reader_pages_size_at(const struct image_reader *r, uint32_t idx);

/*
 * image_reader_pages_name - its name in the image directory, owned by the reader; NULL if idx
 * is out of range.
 */
const char *image_reader_pages_name(const struct image_reader *r, uint32_t idx);

/* image_reader_pages_fd / _size - the same for pages file 0, the image's own. */
int image_reader_pages_fd(const struct image_reader *r);
uint64_t image_reader_pages_size(const struct image_reader *r);

/* image_reader_dir - the directory path given to image_reader_open, owned by the reader. */
const char *image_reader_dir(const struct image_reader *r);

/*
 * Generation number of the committed image: grows with every commit in a directory, by more
 * than one when the previous writer hard-linked inherited files (their names take numbers too).
 */
uint64_t image_reader_generation(const struct image_reader *r);
struct image_reader *image_reader_free(struct image_reader *r);

/* checksum - the checksum used everywhere in the image (XXH3, 64 bits). */
uint64_t image_checksum(const void *data, size_t len);

/*
 * Record payload encoding: explicit little-endian fields, never raw structs. Writers append;
 * a failed allocation sticks in wb->err. Readers consume; running past the end sets rb->err
 * (-EPROTO) and returns zeros, so decoders check rb->err once at the end.
 */
struct wbuf {
	uint8_t *p;
	size_t len;
	size_t cap;
	int err;
};
void wb_u8(struct wbuf *wb, uint8_t v);
void wb_u16(struct wbuf *wb, uint16_t v);
void wb_u32(struct wbuf *wb, uint32_t v);
void wb_u64(struct wbuf *wb, uint64_t v);
void wb_bytes(struct wbuf *wb, const void *p, size_t n); /* u32 length, then bytes */
void wb_str(struct wbuf *wb, const char *s);             /* as wb_bytes, NULL as length 0 */
void wb_reset(struct wbuf *wb);                          /* len = 0, keep buffer */
void wb_free(struct wbuf *wb);

struct rbuf {
	const uint8_t *p;
	size_t len;
	size_t off;
	int err;
};
uint8_t rb_u8(struct rbuf *rb);
uint16_t rb_u16(struct rbuf *rb);
uint32_t rb_u32(struct rbuf *rb);
uint64_t rb_u64(struct rbuf *rb);
/* rb_bytes - copy a wb_bytes field into dst of size cap; -EPROTO (in rb->err) if it is longer. */
size_t rb_bytes(struct rbuf *rb, void *dst, size_t cap);
/* rb_str - a wb_str field into dst (NUL-terminated, cap includes the NUL). */
void rb_str(struct rbuf *rb, char *dst, size_t cap);
/* rb_bytes_ptr - a wb_bytes field in place: returns a pointer into the buffer, *ret_n its size. */
const void *rb_bytes_ptr(struct rbuf *rb, size_t *ret_n);
