/* Memory: capture of every mapping and its pages, and their re-creation in a restored process. */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "chain.h"
#include "lazy.h"
#include "mem.h"
#include "procfs.h"
#include "task.h"
#include "track.h"
#include "util.h"

/* post-copy: anonymous mappings up to this size are deferred whole, without a scan */
#define DEFER_WHOLE_MAX (16ULL << 30)

/* Page data moves in chunks of this size; each chunk is one page run with its own checksum. */
#define CHUNK  (1024UL * 1024)
#define NSLOTS 4
/* copies up to this size are done without the writer thread */
#define INLINE_MAX (4 * CHUNK)

/* ---- the copy pipeline: a reader fills and checksums, a writer thread writes ---- */

struct copy_job {
	int src_fd; /* -1: read pid's memory at src; else pread src_fd at src */
	uint64_t src;
	uint64_t len;
	struct page_run *run; /* off and csum are filled in */
};

struct pipeline {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint8_t *buf[NSLOTS];
	uint64_t len[NSLOTS];
	uint64_t off[NSLOTS];
	int full[NSLOTS];
	int done;
	int out_fd;
	int werr;
};

/* pread of a shared memory object's pages: its last page may go past its end (an object of 32
 * bytes is mapped as a page), read as zeros there. */
static int pread_page(int fd, void *buf, size_t len, off_t off)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	memset((char *)buf + got, 0, len - got);
	return 0;
}

static void *writer_main(void *arg)
{
	struct pipeline *pl = arg;
	for (unsigned i = 0;; i = (i + 1) % NSLOTS) {
		pthread_mutex_lock(&pl->lock);
		while (!pl->full[i] && !pl->done)
			pthread_cond_wait(&pl->cond, &pl->lock);
		if (!pl->full[i]) {
			pthread_mutex_unlock(&pl->lock);
			return NULL;
		}
		pthread_mutex_unlock(&pl->lock);
		int r = pl->werr ? 0
		                 : pwrite_full(pl->out_fd, pl->buf[i], pl->len[i],
		                               (off_t)pl->off[i]);
		pthread_mutex_lock(&pl->lock);
		if (r < 0 && !pl->werr)
			pl->werr = r;
		pl->full[i] = 0;
		pthread_cond_broadcast(&pl->cond);
		pthread_mutex_unlock(&pl->lock);
	}
}

/* Read one chunk of a process's memory; /proc/PID/mem reaches pages that are not readable. */
/*
 * Read len bytes of pid's memory at addr. process_vm_readv is the fastest, but it pins the
 * pages (FOLL_PIN), and the kernel gives a process its own copy of an anonymous page it shares
 * copy-on-write with another before pinning it: read so, a forked process and its parent each
 * get a copy of every page they shared (measured: the page frames differ afterwards). nopin
 * reads through /proc/PID/mem instead, which takes the pages without pinning them.
 */
static int read_mem(pid_t pid, int memfd, uint64_t addr, void *buf, size_t len, bool nopin)
{
	struct iovec l = {buf, len}, r = {(void *)addr, len};
	if (!nopin && process_vm_readv(pid, &l, 1, &r, 1, 0) == (ssize_t)len)
		return 0;
	return pread_full(memfd, buf, len, (off_t)addr);
}

/* One job's pages, read into buf: their checksum and their room in the pages file. */
static void job_place(struct copy_job *jb, const void *buf, struct image_writer *w)
{
	jb->run->csum = image_checksum(buf, jb->len);
	jb->run->off = image_pages_alloc(w, jb->len);
	jb->run->file = 0;
	jb->run->blk_off = jb->run->off;
	jb->run->blk_pages = jb->run->npages;
}

/*
 * Page by page, a run of which some page cannot be read even through /proc/PID/mem (seen,
 * rarely, on pages the tracking reported written in a frozen component: "Input/output error").
 * What the kernel cannot read the process cannot either: such a page has no content to keep;
 * it is staged as zeros, which drop out of the image as empty pages.
 */
static int read_pages_or_zero(pid_t pid, int memfd, uint64_t addr, uint8_t *dst, uint64_t len)
{
	for (uint64_t at = 0; at < len; at += MODEL_PAGE) {
		int r = read_mem(pid, memfd, addr + at, dst + at, MODEL_PAGE, true);
		if (r == -EIO || r == -EFAULT)
			memset(dst + at, 0, MODEL_PAGE);
		else if (r < 0)
			return r;
	}
	return 0;
}

/*
 * A few pages (a post-copy freeze copies a handful, the stack and TLS): read and write in
 * turn, one buffer and no writer thread, whose start would cost more than the copy.
 */
static int copy_inline(pid_t pid, struct copy_job *jobs, size_t njobs, struct image_writer *w,
                       int memfd, bool nopin, struct ferry_error *err)
{
	_cleanup_free_ uint8_t *buf = malloc(CHUNK);

	if (!buf)
		return ferr(err, -ENOMEM, "out of memory");
	for (size_t j = 0; j < njobs; j++) {
		struct copy_job *jb = &jobs[j];
		int r = jb->src_fd < 0 ? read_mem(pid, memfd, jb->src, buf, jb->len, nopin)
		                       : pread_page(jb->src_fd, buf, jb->len, (off_t)jb->src);
		if (jb->src_fd < 0 && (r == -EIO || r == -EFAULT))
			r = read_pages_or_zero(pid, memfd, jb->src, buf, jb->len);
		if (r < 0)
			return ferr(err, r, "reading %s 0x%" PRIx64 "+0x%" PRIx64 ": %s",
			            jb->src_fd < 0 ? "memory at" : "shared memory object at offset",
			            jb->src, jb->len, strerror(-r));
		job_place(jb, buf, w);
		r = pwrite_full(image_pages_fd(w), buf, jb->len, (off_t)jb->run->off);
		if (r < 0)
			return ferr(err, r, "writing page data: %s", strerror(-r));
	}
	return 0;
}

static int run_pipeline(pid_t pid, struct copy_job *jobs, size_t njobs, struct image_writer *w,
                        bool nopin, struct ferry_error *err)
{
	struct pipeline pl = {
	        .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .out_fd = -1};
	_cleanup_close_ int memfd = -EBADF;
	pthread_t th;
	int r = 0;

	uint64_t total = 0;
	if (njobs == 0 || !w)
		return 0; /* no pages wanted (a description only) */
	for (size_t j = 0; j < njobs; j++)
		total += jobs[j].len;
	pl.out_fd = image_pages_fd(w);
	if (pid > 0) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/mem", pid);
		memfd = open(path, O_RDONLY | O_CLOEXEC);
		if (memfd < 0)
			return ferr(err, -errno, "%s: %m", path);
	}
	if (total <= INLINE_MAX)
		return copy_inline(pid, jobs, njobs, w, memfd, nopin, err);
	for (int i = 0; i < NSLOTS; i++) {
		pl.buf[i] = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		                 -1, 0);
		if (pl.buf[i] == MAP_FAILED) {
			pl.buf[i] = NULL;
			r = ferr(err, -errno, "allocating copy buffers: %m");
			goto out;
		}
	}
	if ((r = -pthread_create(&th, NULL, writer_main, &pl)) < 0) {
		ferr(err, r, "starting the image writer thread: %s", strerror(-r));
		goto out;
	}
	for (size_t j = 0, slot = 0; j < njobs; j++, slot = (slot + 1) % NSLOTS) {
		struct copy_job *jb = &jobs[j];
		pthread_mutex_lock(&pl.lock);
		while (pl.full[slot])
			pthread_cond_wait(&pl.cond, &pl.lock);
		pthread_mutex_unlock(&pl.lock);
		if (jb->src_fd < 0)
			r = read_mem(pid, memfd, jb->src, pl.buf[slot], jb->len, nopin);
		else
			r = pread_page(jb->src_fd, pl.buf[slot], jb->len, (off_t)jb->src);
		if (r < 0) {
			ferr(err, r, "reading %s 0x%" PRIx64 "+0x%" PRIx64 ": %s",
			     jb->src_fd < 0 ? "memory at" : "shared memory object at offset",
			     jb->src, jb->len, strerror(-r));
			break;
		}
		job_place(jb, pl.buf[slot], w);
		pthread_mutex_lock(&pl.lock);
		pl.len[slot] = jb->len;
		pl.off[slot] = jb->run->off;
		pl.full[slot] = 1;
		pthread_cond_broadcast(&pl.cond);
		pthread_mutex_unlock(&pl.lock);
	}
	pthread_mutex_lock(&pl.lock);
	pl.done = 1;
	pthread_cond_broadcast(&pl.cond);
	pthread_mutex_unlock(&pl.lock);
	pthread_join(th, NULL);
	if (r == 0 && pl.werr)
		r = ferr(err, pl.werr, "writing page data: %s", strerror(-pl.werr));
out:
	for (int i = 0; i < NSLOTS; i++)
		if (pl.buf[i])
			munmap(pl.buf[i], CHUNK);
	return r;
}

/* ---- finding the pages to save ---- */

static int add_run(struct page_run **runs, size_t *n, uint64_t addr, uint64_t len)
{
	/* split into chunks so each carries its own checksum */
	while (len > 0) {
		uint64_t l = MIN(len, CHUNK);
		if (*n > 0) {
			struct page_run *last = &(*runs)[*n - 1];
			uint64_t lastlen = last->npages * MODEL_PAGE;
			if (last->file == 0 && last->addr + lastlen == addr &&
			    lastlen + l <= CHUNK) {
				last->npages += l / MODEL_PAGE;
				addr += l;
				len -= l;
				continue;
			}
		}
		if (grow((void **)runs, n, sizeof(**runs)) < 0)
			return -ENOMEM;
		(*runs)[(*n)++] = (struct page_run){.addr = addr, .npages = l / MODEL_PAGE};
		addr += l;
		len -= l;
	}
	return 0;
}

/*
 * The pages of [s, e) (reported swapped by PAGEMAP_SCAN) that really hold data: swapped out or
 * migrating, not the markers write-protection leaves where no page is (PAGEMAP_SCAN reports
 * those as swapped too), and not file pages. *marker: the markers' swap type, measured on first
 * need (-2: not yet).
 */
static int swapped_data(int pagemap_fd, uint64_t s, uint64_t e, int *marker, uint64_t **ranges,
                        size_t *n)
{
	uint64_t ent[512];

	if (*marker == -2)
		*marker = track_marker_type();
	while (s < e) {
		size_t k = MIN(ARRAY_SIZE(ent), (e - s) / MODEL_PAGE);
		int r = pread_full(pagemap_fd, ent, k * sizeof(ent[0]),
		                   (off_t)(s / MODEL_PAGE * 8));
		if (r < 0)
			return r;
		for (size_t i = 0; i < k; i++, s += MODEL_PAGE) {
			bool swap = ent[i] >> 62 & 1, file = ent[i] >> 61 & 1;
			if (!swap || file || (int)(ent[i] & 31) == *marker)
				continue;
			if ((r = ranges_push(ranges, n, s, s + MODEL_PAGE)) < 0)
				return r;
		}
	}
	return 0;
}

/*
 * Pages of a private mapping that hold data of their own: present or swapped, not file pages
 * and not the shared zero page; appended to ranges (pairs). anon: a private anonymous mapping,
 * which holds no page-cache pages: not asking for PAGE_IS_FILE spares the kernel a page lookup
 * per entry (the scan of a GiB takes about half as long).
 */
static int scan_private(int pagemap_fd, uint64_t start, uint64_t end, bool anon, int *marker,
                        uint64_t **ranges, size_t *n, struct ferry_error *err)
{
	struct page_region regs[256];
	uint64_t cursor = start;

	while (cursor < end) {
		struct pm_scan_arg a = {
		        .size = sizeof(a),
		        .start = cursor,
		        .end = end,
		        .vec = (uint64_t)(uintptr_t)regs,
		        .vec_len = ARRAY_SIZE(regs),
		        .category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		        .return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO |
		                       (anon ? 0 : PAGE_IS_FILE),
		};
		long cnt = ioctl(pagemap_fd, PAGEMAP_SCAN, &a);
		if (cnt < 0)
			return ferr(err, -errno, "PAGEMAP_SCAN 0x%" PRIx64 "-0x%" PRIx64 ": %m",
			            cursor, end);
		for (long i = 0; i < cnt; i++) {
			uint64_t s = MAX(regs[i].start, cursor), e = regs[i].end;
			uint64_t cat = regs[i].categories;
			if (e <= s)
				continue; /* a range reported twice */
			if (!(cat & PAGE_IS_SWAPPED) && (cat & (PAGE_IS_FILE | PAGE_IS_PFNZERO)))
				continue;
			int r = (cat & PAGE_IS_PRESENT)
			                ? ranges_push(ranges, n, s, e)
			                : swapped_data(pagemap_fd, s, e, marker, ranges, n);
			if (r < 0)
				return ferr(err, r, "pagemap 0x%" PRIx64 "-0x%" PRIx64 ": %s", s, e,
				            strerror(-r));
			cursor = e;
		}
		if (a.walk_end <= cursor && cnt == 0)
			break;
		cursor = MAX(cursor, a.walk_end);
	}
	return 0;
}

int mem_scan_anon(int pagemap_fd, uint64_t start, uint64_t end, int *marker, uint64_t **ranges,
                  size_t *n, struct ferry_error *err)
{
	return scan_private(pagemap_fd, start, end, true, marker, ranges, n, err);
}

int shmem_lookup(struct component *c, int fd, uint32_t kind, const char *name,
                 struct image_writer *w, struct mem_stats *st, struct ferry_error *err)
{
	struct stat sb;
	struct shmem *s;
	_cleanup_free_ struct copy_job *jobs = NULL;
	size_t njobs = 0;
	off_t pos = 0;
	int r;

	if (fstat(fd, &sb) < 0)
		return ferr(err, -errno, "fstat of shared memory object: %m");
	for (size_t i = 0; i < c->nshmems; i++)
		if (c->shmems[i].dev == (uint64_t)sb.st_dev && c->shmems[i].ino == sb.st_ino) {
			if (kind == SHMEM_MEMFD)
				c->shmems[i].kind = SHMEM_MEMFD;
			return (int)i;
		}
	if (GROW(c->shmems, c->nshmems) < 0)
		return ferr(err, -ENOMEM, "out of memory");
	s = &c->shmems[c->nshmems];
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	s->dev = (uint64_t)sb.st_dev;
	s->ino = sb.st_ino;
	s->size = (uint64_t)sb.st_size;
	s->name = name ? strdup(name) : NULL;
	c->nshmems++;
	/* the object's data: every extent SEEK_DATA finds */
	while (pos < sb.st_size) {
		off_t d = lseek(fd, pos, SEEK_DATA);
		if (d < 0)
			break; /* ENXIO: no data past pos */
		off_t h = lseek(fd, d, SEEK_HOLE);
		if (h < 0)
			h = sb.st_size;
		d &= ~(off_t)(MODEL_PAGE - 1);
		h = (h + (off_t)MODEL_PAGE - 1) & ~(off_t)(MODEL_PAGE - 1);
		if (add_run(&s->runs, &s->nruns, (uint64_t)d, (uint64_t)(h - d)) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		pos = h;
	}
	jobs = calloc(s->nruns ? s->nruns : 1, sizeof(*jobs));
	if (!jobs)
		return ferr(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < s->nruns; i++) {
		jobs[njobs++] = (struct copy_job){.src_fd = fd,
		                                  .src = s->runs[i].addr,
		                                  .len = s->runs[i].npages * MODEL_PAGE,
		                                  .run = &s->runs[i]};
		st->pages_written += s->runs[i].npages;
	}
	st->pages_scanned += (uint64_t)(sb.st_size + (off_t)MODEL_PAGE - 1) / MODEL_PAGE;
	r = run_pipeline(-1, jobs, njobs, w, true, err);
	if (r < 0)
		return r;
	return (int)(c->nshmems - 1);
}

/*
 * A SysV shared memory segment attached at m (its inode number is its id): key, mode and size
 * from /proc/sysvipc/shm, and its content read through this attachment (the segment's file has
 * no read of its own), once per segment.
 */
static int sysv_lookup(struct component *c, pid_t pid, const struct proc_map *m,
                       struct image_writer *w, struct mem_stats *st, struct ferry_error *err)
{
	int32_t id = (int32_t)m->ino;
	_cleanup_free_ char *text = NULL;
	struct shmem sh = {.kind = SHMEM_SYSV, .sysv_id = id, .ino = m->ino};
	bool found = false;

	for (size_t i = 0; i < c->nshmems; i++)
		if (c->shmems[i].kind == SHMEM_SYSV && c->shmems[i].sysv_id == id)
			return (int)i;
	int r = read_file("/proc/sysvipc/shm", &text, NULL);
	if (r < 0)
		return ferr(err, r, "/proc/sysvipc/shm: %s", strerror(-r));
	for (char *l = strchr(text, '\n'); l && !found; l = strchr(l + 1, '\n')) {
		int key, sid;
		unsigned mode;
		unsigned long long size;
		if (sscanf(l + 1, "%d %d %o %llu", &key, &sid, &mode, &size) == 4 && sid == id) {
			/* the key it was made with, which its file is named after (a removed one's
			 * is private now) */
			unsigned named;
			sh.sysv_key = sscanf(m->path, "/SYSV%8x", &named) == 1 ? (int)named : key;
			sh.sysv_mode = mode;
			sh.size = size;
			found = true;
		}
	}
	if (!found)
		return ferr(err, -ENOENT,
		            "mapping 0x%" PRIx64 "-0x%" PRIx64 " %s: SysV segment %d "
		            "not in /proc/sysvipc/shm",
		            m->start, m->end, m->path, id);
	uint64_t len = (sh.size + MODEL_PAGE - 1) & ~(MODEL_PAGE - 1);
	if (m->pgoff != 0 || m->end - m->start < len)
		return ferr(err, -ENOTSUP,
		            "mapping 0x%" PRIx64 "-0x%" PRIx64
		            " %s: attached in part (unsupported)",
		            m->start, m->end, m->path);
	if (add_run(&sh.runs, &sh.nruns, 0, len) < 0)
		return ferr(err, -ENOMEM, "out of memory");
	_cleanup_free_ struct copy_job *jobs = calloc(sh.nruns, sizeof(*jobs));
	if (!jobs || GROW(c->shmems, c->nshmems) < 0) {
		free(sh.runs);
		return ferr(err, -ENOMEM, "out of memory");
	}
	c->shmems[c->nshmems++] = sh;
	struct shmem *s = &c->shmems[c->nshmems - 1];
	for (size_t i = 0; i < s->nruns; i++) {
		jobs[i] = (struct copy_job){.src_fd = -1,
		                            .src = m->start + s->runs[i].addr,
		                            .len = s->runs[i].npages * MODEL_PAGE,
		                            .run = &s->runs[i]};
		st->pages_written += s->runs[i].npages;
	}
	st->pages_scanned += len / MODEL_PAGE;
	r = run_pipeline(pid, jobs, s->nruns, w, true, err);
	return r < 0 ? r : (int)(c->nshmems - 1);
}

static int classify(struct component *c, pid_t pid, const struct proc_map *m, struct vma *v,
                    struct image_writer *w, struct mem_stats *st, struct ferry_error *err)
{
	static const struct {
		const char *code;
		uint32_t flag;
	} vmflags[] = {{"gd", VMA_F_GROWSDOWN}, {"hg", VMA_F_HUGEPAGE}, {"nh", VMA_F_NOHUGEPAGE},
	               {"dd", VMA_F_DONTDUMP},  {"dc", VMA_F_DONTFORK}, {"wf", VMA_F_WIPEONFORK},
	               {"lo", VMA_F_LOCKED},    {"nr", VMA_F_NORESERVE}};
	bool shared = m->perms[3] == 's';

	v->start = m->start;
	v->end = m->end;
	v->pgoff = m->pgoff;
	v->shmem = -1;
	v->prot = (m->perms[0] == 'r' ? PROT_READ : 0) | (m->perms[1] == 'w' ? PROT_WRITE : 0) |
	          (m->perms[2] == 'x' ? PROT_EXEC : 0);
	v->flags = shared ? VMA_F_SHARED : 0;
	for (size_t i = 0; i < ARRAY_SIZE(vmflags); i++)
		if (procfs_vmflag(m, vmflags[i].code))
			v->flags |= vmflags[i].flag;
	if (strcmp(m->path, "[vdso]") == 0)
		v->kind = VMA_VDSO;
	else if (strcmp(m->path, "[vvar]") == 0)
		v->kind = VMA_VVAR;
	else if (strcmp(m->path, "[vvar_vclock]") == 0)
		v->kind = VMA_VVAR_VCLOCK;
	else if (procfs_vmflag(m, "io") || procfs_vmflag(m, "pf"))
		return ferr(err, -ENOTSUP,
		            "mapping 0x%" PRIx64 "-0x%" PRIx64 " %s: device memory (unsupported)",
		            m->start, m->end, m->path);
	else if (shared && strncmp(m->path, "/SYSV", 5) == 0) {
		v->kind = VMA_SHMEM;
		int idx = sysv_lookup(c, pid, m, w, st, err);
		if (idx < 0)
			return idx;
		v->shmem = idx;
	} else if (m->ino == 0 && !shared) {
		v->kind = VMA_ANON;
		if (strcmp(m->path, "[heap]") == 0)
			v->flags |= VMA_F_HEAP;
		if (strcmp(m->path, "[stack]") == 0)
			v->flags |= VMA_F_STACK;
	} else if (shared &&
	           (strncmp(m->path, "/dev/zero", 9) == 0 || strncmp(m->path, "/memfd:", 7) == 0 ||
	            m->ino == 0 || (m->path[0] == '/' && strstr(m->path, " (deleted)")))) {
		char mf[96];
		bool memfd = strncmp(m->path, "/memfd:", 7) == 0;
		bool deleted = !memfd && strncmp(m->path, "/dev/zero", 9) != 0 && m->ino != 0;
		char name[PATH_MAX] = "";
		v->kind = VMA_SHMEM;
		snprintf(mf, sizeof(mf), "/proc/%d/map_files/%" PRIx64 "-%" PRIx64, pid, m->start,
		         m->end);
		_cleanup_close_ int fd = open(mf, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return ferr(err, -errno, "mapping 0x%" PRIx64 "-0x%" PRIx64 " %s: %s: %m",
			            m->start, m->end, m->path, mf);
		if (memfd || deleted) {
			snprintf(name, sizeof(name), "%s", m->path + (memfd ? 7 : 0));
			char *del = strstr(name, " (deleted)");
			if (del)
				*del = '\0';
		}
		uint32_t kind = memfd ? SHMEM_MEMFD : deleted ? SHMEM_DELETED : SHMEM_ANON;
		int idx = shmem_lookup(c, fd, kind, name[0] ? name : NULL, w, st, err);
		if (idx < 0)
			return idx;
		v->shmem = idx;
	} else if (m->path[0] == '/') {
		if (strstr(m->path, " (deleted)"))
			return ferr(err, -ENOTSUP,
			            "mapping 0x%" PRIx64 "-0x%" PRIx64 " %s: the file was deleted "
			            "(unsupported)",
			            m->start, m->end, m->path);
		v->kind = shared ? VMA_FILE_SHARED : VMA_FILE_PRIVATE;
		v->path = strdup(m->path);
		if (!v->path)
			return ferr(err, -ENOMEM, "out of memory");
		int r = task_file_identity(m->path, &v->fid);
		if (r < 0)
			return ferr(err, r, "mapping 0x%" PRIx64 "-0x%" PRIx64 " %s: %s", m->start,
			            m->end, m->path, strerror(-r));
	} else {
		return ferr(err, -ENOTSUP,
		            "mapping 0x%" PRIx64 "-0x%" PRIx64 " %s: unsupported kind", m->start,
		            m->end, m->path);
	}
	return 0;
}

/* ---- staging: page data copied into memory while frozen, written after the thaw ---- */

#define IOV_BATCH 512

static int stage_reserve(struct mem_stage *sg, uint64_t need, struct ferry_error *err)
{
	if (sg->used + need <= sg->cap)
		return 0;
	uint64_t cap = MAX(sg->cap * 2, (sg->used + need + CHUNK) & ~(CHUNK - 1));
	void *b = sg->buf ? mremap(sg->buf, sg->cap, cap, MREMAP_MAYMOVE)
	                  : mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
	                         0);
	if (b == MAP_FAILED)
		return ferr(err, -errno, "staging buffer of %" PRIu64 " bytes: %m", cap);
	sg->buf = b;
	sg->cap = cap;
	return 0;
}

int mem_stage_prepare(struct mem_stage *sg, uint64_t bytes, struct ferry_error *err)
{
	if (bytes <= sg->cap)
		return 0;
	if (sg->buf)
		munmap(sg->buf, sg->cap);
	sg->buf = NULL;
	sg->cap = sg->used = 0;
	bytes = (bytes + CHUNK - 1) & ~(CHUNK - 1);
	/* faulted in now, so that the copy in the freeze finds the memory ready */
	void *b = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (b == MAP_FAILED)
		return ferr(err, -errno, "staging buffer of %" PRIu64 " bytes: %m", bytes);
	sg->buf = b;
	sg->cap = bytes;
	return 0;
}

void mem_stage_free(struct mem_stage *sg)
{
	if (sg->buf)
		munmap(sg->buf, sg->cap);
	free(sg->runs);
	free(sg->zero);
	memset(sg, 0, sizeof(*sg));
}

/* One half of a staged copy: runs [from, to) of pid into dst, many runs per system call. */
struct stage_part {
	pid_t pid;
	struct page_run **runs;
	size_t from, to;
	uint8_t *dst;
	bool nopin; /* read through /proc/PID/mem (see read_mem) */
	int r;
	struct ferry_error err;
};

static void *stage_part_copy(void *arg)
{
	struct stage_part *sp = arg;
	struct iovec remote[IOV_BATCH];
	_cleanup_close_ int memfd = -EBADF;
	uint8_t *dst = sp->dst;

	for (size_t i = sp->from; i < sp->to;) {
		size_t k = 0;
		uint64_t len = 0;
		for (; k < IOV_BATCH && i + k < sp->to; k++) {
			remote[k].iov_base = (void *)sp->runs[i + k]->addr;
			remote[k].iov_len = sp->runs[i + k]->npages * MODEL_PAGE;
			len += remote[k].iov_len;
		}
		struct iovec local = {dst, len};
		if (sp->nopin ||
		    process_vm_readv(sp->pid, &local, 1, remote, k, 0) != (ssize_t)len) {
			/* a page it cannot read (PROT_NONE): run by run, through /proc/PID/mem */
			if (memfd < 0) {
				char path[64];
				snprintf(path, sizeof(path), "/proc/%d/mem", sp->pid);
				memfd = open(path, O_RDONLY | O_CLOEXEC);
				if (memfd < 0) {
					sp->r = ferr(&sp->err, -errno, "%s: %m", path);
					return NULL;
				}
			}
			uint64_t at = 0;
			for (size_t j = 0; j < k; j++) {
				int r = read_mem(sp->pid, memfd, (uint64_t)remote[j].iov_base,
				                 dst + at, remote[j].iov_len, sp->nopin);
				if (r == -EIO || r == -EFAULT)
					r = read_pages_or_zero(sp->pid, memfd,
					                       (uint64_t)remote[j].iov_base,
					                       dst + at, remote[j].iov_len);
				if (r < 0) {
					sp->r = ferr(&sp->err, r,
					             "reading memory at 0x%" PRIx64 "+0x%zx: %s",
					             (uint64_t)remote[j].iov_base,
					             remote[j].iov_len, strerror(-r));
					return NULL;
				}
				at += remote[j].iov_len;
			}
		}
		dst += len;
		i += k;
	}
	return NULL;
}

/*
 * Copy the runs' pages of pid into the staging buffer. Scattered pages cost a page-table walk
 * each: with more than a few MiB the second half goes on another thread (the component is
 * frozen, so the other CPU is free).
 */
static int stage_copy(pid_t pid, struct mem_stage *sg, struct page_run **runs, size_t n, bool nopin,
                      struct ferry_error *err)
{
	struct stage_part part[2] = {{.pid = pid, .runs = runs}, {.pid = pid, .runs = runs}};
	uint64_t total = 0, half = 0;
	size_t mid = 0;
	pthread_t th;
	bool threaded = false;
	int r;

	for (size_t i = 0; i < n; i++)
		total += runs[i]->npages * MODEL_PAGE;
	r = stage_reserve(sg, total, err);
	if (r < 0)
		return r;
	struct page_run **grown =
	        realloc(sg->runs, (sg->nruns + n + 1) * sizeof(struct page_run *));
	if (!grown)
		return ferr(err, -ENOMEM, "out of memory");
	sg->runs = grown;
	while (mid < n && half < total / 2)
		half += runs[mid++]->npages * MODEL_PAGE;
	part[0] = (struct stage_part){
	        .pid = pid, .runs = runs, .to = mid, .dst = sg->buf + sg->used, .nopin = nopin};
	part[1] = (struct stage_part){.pid = pid,
	                              .runs = runs,
	                              .from = mid,
	                              .to = n,
	                              .dst = sg->buf + sg->used + half,
	                              .nopin = nopin};
	if (total >= 4 * CHUNK && mid < n)
		threaded = pthread_create(&th, NULL, stage_part_copy, &part[1]) == 0;
	stage_part_copy(&part[0]);
	if (threaded)
		pthread_join(th, NULL);
	else
		stage_part_copy(&part[1]);
	for (int i = 0; i < 2; i++)
		if (part[i].r < 0) {
			if (err)
				*err = part[i].err;
			return part[i].r;
		}
	for (size_t i = 0; i < n; i++)
		sg->runs[sg->nruns++] = runs[i];
	sg->used += total;
	return 0;
}

static bool page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;
	for (size_t i = 0; i < MODEL_PAGE / 8; i++)
		if (w[i])
			return false;
	return true;
}

int mem_stage_flush(struct mem_stage *sg, struct image_writer *w, struct mem_stats *st,
                    struct ferry_error *err)
{
	uint64_t t0 = now_ns(), at = 0;

	sg->nzero = 0;
	if (sg->used == 0)
		return 0;
	/* one reservation, so the buffer goes out in one write */
	uint64_t base = image_pages_alloc(w, sg->used);
	for (size_t i = 0; i < sg->nruns; i++) {
		struct page_run *run = sg->runs[i];
		uint64_t len = run->npages * MODEL_PAGE;
		for (uint64_t o = 0; o < len; o += MODEL_PAGE)
			if (page_is_zero(sg->buf + at + o) &&
			    ranges_push(&sg->zero, &sg->nzero, run->addr + o,
			                run->addr + o + MODEL_PAGE) < 0)
				return ferr(err, -ENOMEM, "out of memory");
		run->file = 0;
		run->off = run->blk_off = base + at;
		run->blk_pages = run->npages;
		run->csum = image_checksum(sg->buf + at, len);
		at += len;
	}
	int r = pwrite_full(image_pages_fd(w), sg->buf, sg->used, (off_t)base);
	st->write_ns += now_ns() - t0;
	if (r < 0)
		return ferr(err, r, "writing page data: %s", strerror(-r));
	sg->used = 0;
	sg->nruns = 0;
	return 0;
}

/* Complete the runs of a mapping marked from_parent: the parent's runs between the written. */
static int resolve_parent(struct vma *v, const struct chain *parent)
{
	struct page_run *runs = NULL;
	size_t n = 0;
	uint64_t cur = v->start;

	for (size_t k = 0; k <= v->nruns; k++) {
		uint64_t s = k < v->nruns ? v->runs[k].addr : v->end;
		if (s > cur && chain_resolve(parent, cur, s, &runs, &n, NULL, NULL) < 0)
			goto oom;
		if (k == v->nruns)
			break;
		if (GROW(runs, n) < 0)
			goto oom;
		runs[n++] = v->runs[k];
		cur = s + v->runs[k].npages * MODEL_PAGE;
	}
	free(v->runs);
	v->runs = runs;
	v->nruns = n;
	v->from_parent = false;
	return 0;
oom:
	free(runs);
	return -ENOMEM;
}

int mem_finish_runs(struct mem_stage *sg, struct process *p, const struct chain *parent,
                    struct mem_stats *st, struct ferry_error *err)
{
	uint64_t before = 0, after = 0;

	for (size_t i = 0; i < p->nvmas; i++) {
		if (p->vmas[i].from_parent && resolve_parent(&p->vmas[i], parent) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		for (size_t j = 0; j < p->vmas[i].nruns; j++)
			before += p->vmas[i].runs[j].npages;
	}
	if (!sg->nzero)
		return 0;
	/* zero pages of anonymous mappings: an empty page reads as zeros just as well */
	for (size_t i = 0, k = 0; i < p->nvmas && k < sg->nzero; i++) {
		struct vma *v = &p->vmas[i];
		size_t first = k;
		while (k < sg->nzero && sg->zero[2 * k] < v->end)
			k++;
		if (v->kind == VMA_ANON && k > first &&
		    runs_subtract(&v->runs, &v->nruns, sg->zero + 2 * first, k - first) < 0)
			return ferr(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < p->nvmas; i++)
		for (size_t j = 0; j < p->vmas[i].nruns; j++)
			after += p->vmas[i].runs[j].npages;
	st->pages_written -= MIN(st->pages_written, before - after);
	sg->nzero = 0;
	return 0;
}

/* ---- capture of the private mappings ---- */

/* What follow() found. */
enum { FOLLOW_NOW = 0, FOLLOW_BEFORE = 1, FOLLOW_NOT = 2 };

/*
 * Keep [s, e) tracked and protect its pages again (collecting in *written, when not NULL, those
 * written since the last collect). FOLLOW_BEFORE: it was tracked already (flagged: VmFlags say
 * "uw"); FOLLOW_NOW: registered now, every page of it counts as new; FOLLOW_NOT: it cannot be
 * tracked. A flag read a moment ago can be stale (the mapping replaced by one of the same
 * size): a collect then fails with EPERM, and the mapping is registered anew.
 */
static int follow(const struct track *tk, bool flagged, uint64_t s, uint64_t e, uint64_t **written,
                  size_t *nwritten, struct ferry_error *err)
{
	if (flagged) {
		int r = track_collect(tk, s, e, written, nwritten, err);
		if (r != -EPERM)
			return r < 0 ? r : FOLLOW_BEFORE;
	}
	if (track_register(tk, s, e) < 0)
		return FOLLOW_NOT;
	int r = track_collect(tk, s, e, NULL, NULL, err);
	return r < 0 ? r : FOLLOW_NOW;
}

/*
 * 1 if v is a mapping the last round before the freeze saw just so. Only then may its empty
 * pages be taken as they were then: a mapping that grew or moved since may now cover a range
 * whose earlier owner the rounds and the parent describe.
 */
static bool seen_unchanged(const struct mem_track *mt, const struct vma *v)
{
	size_t lo = 0, hi = mt->nseen;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (mt->seen[mid].start < v->start)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < mt->nseen && mt->seen[lo].start == v->start && mt->seen[lo].end == v->end &&
	       procfs_vmflag(&mt->seen[lo], "uw");
}

/*
 * The pages of a private mapping to save. Without a parent, every page that holds data. With a
 * parent and a mapping tracked since it was taken, the written pages are new and every other
 * page with data is taken from the parent (or captured now where the parent has none).
 */
static int capture_private(const struct proc_map *m, struct vma *v, int pagemap, int *marker,
                           struct mem_track *mt, struct ferry_error *err)
{
	_cleanup_free_ uint64_t *data = NULL, *written = NULL, *gaps = NULL;
	size_t ndata = 0, nwritten = 0, ngaps = 0;
	bool incremental = false;
	int r;

	if (mt && mt->tk) {
		/* "uw": registered for write-protection, hence tracked since the last capture */
		bool flagged = procfs_vmflag(m, "uw") && !mt->tk->fresh;
		r = follow(mt->tk, flagged, v->start, v->end,
		           flagged && mt->parent ? &written : NULL, &nwritten, err);
		if (r < 0)
			return r;
		incremental = r == FOLLOW_BEFORE && mt->parent;
	}
	if (incremental && v->kind == VMA_ANON && seen_unchanged(mt, v)) {
		/*
		 * Without a scan of the whole mapping: an anonymous page that was not written since
		 * the parent is as it was then (it holds data exactly where the parent has a run:
		 * only a write, a fault on an empty entry or a zap changes it, and each shows as
		 * written). Written ranges are copied; empty pages among them read as zeros and are
		 * dropped from the runs when the copy is written out (mem_stage_flush).
		 */
		for (size_t k = 0; k < nwritten; k++)
			if (add_run(&v->runs, &v->nruns, written[2 * k],
			            written[2 * k + 1] - written[2 * k]) < 0)
				return ferr(err, -ENOMEM, "out of memory");
		/* the rest needs only the parent's model: worked out after the thaw */
		v->from_parent = true;
		return 0;
	}
	if (mt && mt->defer_anon && v->kind == VMA_ANON && (v->prot & PROT_READ) &&
	    !(v->flags & VMA_F_NORESERVE) && v->end - v->start <= DEFER_WHOLE_MAX) {
		/*
		 * Post-copy: not even a scan in the freeze. The whole mapping is deferred; the
		 * source tells its empty pages from its data as it streams them (migrate.c), and
		 * the destination leaves the empty ones unfilled.
		 */
		return add_run(&v->runs, &v->nruns, v->start, v->end - v->start) < 0
		               ? ferr(err, -ENOMEM, "out of memory")
		               : 0;
	}
	r = scan_private(pagemap, v->start, v->end, v->kind == VMA_ANON, marker, &data, &ndata,
	                 err);
	if (r < 0)
		return r;
	/* data minus written: from the parent; the written pages: now */
	for (size_t i = 0, w = 0; i < ndata; i++) {
		uint64_t cur = data[2 * i], e = data[2 * i + 1];
		while (incremental && w < nwritten && written[2 * w + 1] <= cur)
			w++;
		for (size_t k = w; incremental && k < nwritten && written[2 * k] < e; k++) {
			uint64_t ws = MAX(written[2 * k], cur), we = MIN(written[2 * k + 1], e);
			if (ws > cur && chain_resolve(mt->parent, cur, ws, &v->runs, &v->nruns,
			                              &gaps, &ngaps) < 0)
				return ferr(err, -ENOMEM, "out of memory");
			if (add_run(&v->runs, &v->nruns, ws, we - ws) < 0)
				return ferr(err, -ENOMEM, "out of memory");
			cur = we;
		}
		if (cur >= e)
			continue;
		r = incremental
		            ? chain_resolve(mt->parent, cur, e, &v->runs, &v->nruns, &gaps, &ngaps)
		            : add_run(&v->runs, &v->nruns, cur, e - cur);
		if (r < 0)
			return ferr(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < ngaps; i++)
		if (add_run(&v->runs, &v->nruns, gaps[2 * i], gaps[2 * i + 1] - gaps[2 * i]) < 0)
			return ferr(err, -ENOMEM, "out of memory");
	if (incremental || ngaps)
		runs_sort(v->runs, v->nruns);
	return 0;
}

/*
 * Post-copy: the pages a restored component touches first, sent with the last link rather than
 * fetched from the source on first touch. The kernel writes each thread's rseq area when the
 * restore registers it (a fetch over the network per thread, inside the downtime), and each
 * thread resumes on its stack and its TLS. Sorted, without duplicates.
 */
static int hot_pages(const struct process *p, uint64_t **ret, size_t *ret_n)
{
	const uint64_t mask = ~(uint64_t)(MODEL_PAGE - 1);
	size_t n = 0;
	uint64_t *v = calloc(p->nthreads * 8 + 1, sizeof(*v));

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < p->nthreads; i++) {
		const struct thread *t = &p->threads[i];
		uint64_t sp = t->regs.rsp & mask;
		if (t->rseq_ptr) {
			v[n++] = t->rseq_ptr & mask;
			v[n++] = (t->rseq_ptr + MAX(t->rseq_len, 1u) - 1) & mask;
		}
		if (t->regs.fs_base)
			v[n++] = t->regs.fs_base & mask;
		v[n++] = sp - MODEL_PAGE; /* calls go down, returns come up */
		v[n++] = sp;
		v[n++] = sp + MODEL_PAGE;
		v[n++] = t->regs.rip & mask; /* code in anonymous memory (a JIT) */
	}
	qsort(v, n, sizeof(*v), cmp_u64);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (k == 0 || v[k - 1] != v[i])
			v[k++] = v[i];
	*ret = v;
	*ret_n = k;
	return 0;
}

/* The runs of v split so that each hot page in them is a run of one page. */
static int split_hot(struct vma *v, const uint64_t *hot, size_t nhot)
{
	struct page_run *out = NULL;
	size_t nout = 0;
	size_t k = 0;

	for (size_t i = 0; i < v->nruns; i++) {
		uint64_t a = v->runs[i].addr, e = a + v->runs[i].npages * MODEL_PAGE;
		while (k < nhot && hot[k] < a)
			k++;
		for (size_t j = k; a < e; j++) {
			uint64_t cut = j < nhot && hot[j] < e ? hot[j] : e;
			uint64_t parts[2][2] = {
			        {a, cut}, {cut, j < nhot && hot[j] < e ? cut + MODEL_PAGE : e}};
			for (int q = 0; q < 2; q++) {
				if (parts[q][0] >= parts[q][1])
					continue;
				if (grow((void **)&out, &nout, sizeof(*out)) < 0) {
					free(out);
					return -ENOMEM;
				}
				out[nout++] = (struct page_run){
				        .addr = parts[q][0],
				        .npages = (parts[q][1] - parts[q][0]) / MODEL_PAGE};
			}
			a = parts[1][1];
		}
	}
	free(v->runs);
	v->runs = out;
	v->nruns = nout;
	return 0;
}

/* ---- copy-on-write pages shared with the parent since fork: stored once ---- */

#define PM_PRESENT (1ULL << 63)
#define PM_PFN     ((1ULL << 55) - 1)

/* The page frame of each of n pages from addr (0: not present), from a pagemap fd. */
static int read_pfns(int pagemap, uint64_t addr, size_t n, uint64_t *pfn)
{
	int r = pread_full(pagemap, pfn, n * sizeof(*pfn), (off_t)(addr / MODEL_PAGE * 8));
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++)
		pfn[i] = (pfn[i] & PM_PRESENT) ? pfn[i] & PM_PFN : 0;
	return 0;
}

/* The run of q holding addr, stored already (its data in a file, at a known place). */
static const struct page_run *stored_run_at(const struct process *q, uint64_t addr)
{
	for (size_t i = 0; i < q->nvmas; i++) {
		const struct vma *v = &q->vmas[i];
		if (addr < v->start || addr >= v->end)
			continue;
		for (size_t j = 0; j < v->nruns; j++) {
			const struct page_run *r = &v->runs[j];
			if (addr >= r->addr && addr < r->addr + r->npages * MODEL_PAGE)
				return r->blk_pages ? r : NULL;
		}
		return NULL;
	}
	return NULL;
}

/*
 * The runs of v (a private mapping of p) split where their pages are the very page frames q
 * (p's parent, captured before it) has at the same addresses: pages shared copy-on-write since
 * fork, which no one wrote since. Those runs name q's data in the image instead of a copy.
 */
static int cow_share(struct vma *v, int pagemap, int q_pagemap, const struct process *q,
                     struct mem_stats *st, struct ferry_error *err)
{
	_cleanup_free_ struct page_run *out = NULL;
	size_t nout = 0;

	for (size_t j = 0; j < v->nruns; j++) {
		const struct page_run run = v->runs[j];
		_cleanup_free_ uint64_t *a = NULL, *b = NULL;
		if (run.blk_pages) {
			/* stored already: kept as it is */
			if (GROW(out, nout) < 0)
				return ferr(err, -ENOMEM, "out of memory");
			out[nout++] = run;
			continue;
		}
		a = malloc(run.npages * sizeof(*a));
		b = malloc(run.npages * sizeof(*b));
		if (!a || !b)
			return ferr(err, -ENOMEM, "out of memory");
		if (read_pfns(pagemap, run.addr, run.npages, a) < 0 ||
		    read_pfns(q_pagemap, run.addr, run.npages, b) < 0)
			memset(a, 0, run.npages * sizeof(*a)); /* not known: copied */
		for (size_t i = 0; i < run.npages;) {
			uint64_t addr = run.addr + i * MODEL_PAGE;
			const struct page_run *qr =
			        a[i] && a[i] == b[i] ? stored_run_at(q, addr) : NULL;
			size_t k = i + 1;
			if (qr) {
				/* as far as both go on sharing, within q's run */
				uint64_t qend = qr->addr + qr->npages * MODEL_PAGE;
				while (k < run.npages && a[k] && a[k] == b[k] &&
				       run.addr + k * MODEL_PAGE < qend)
					k++;
			} else {
				while (k < run.npages && !(a[k] && a[k] == b[k]))
					k++;
			}
			if (GROW(out, nout) < 0)
				return ferr(err, -ENOMEM, "out of memory");
			struct page_run *o = &out[nout++];
			*o = (struct page_run){.addr = addr, .npages = k - i};
			if (qr) {
				o->file = qr->file;
				o->off = qr->off + (addr - qr->addr);
				o->blk_off = qr->blk_off;
				o->blk_pages = qr->blk_pages;
				o->csum = qr->csum;
				st->pages_shared += k - i;
				st->pages_shared_own += qr->file == 0 ? k - i : 0;
			}
			i = k;
		}
	}
	free(v->runs);
	v->runs = out;
	v->nruns = nout;
	out = NULL;
	return 0;
}

static bool is_hot(const struct page_run *run, const uint64_t *hot, size_t nhot)
{
	return run->npages == 1 && bsearch(&run->addr, hot, nhot, sizeof(*hot), cmp_u64);
}

int mem_capture(struct component *c, struct process *p, const struct proc_map *maps, size_t nmaps,
                struct image_writer *w, struct mem_stats *st, struct mem_track *mt,
                struct ferry_error *err)
{
	_cleanup_free_ struct copy_job *jobs = NULL;
	_cleanup_free_ struct page_run **fresh = NULL;
	_cleanup_close_ int own_pagemap = -EBADF;
	size_t njobs = 0;
	int pagemap, r, marker = -2;

	if (mt && mt->tk) {
		pagemap = mt->tk->pagemap;
	} else {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/pagemap", p->host_pid);
		pagemap = own_pagemap = open(path, O_RDONLY | O_CLOEXEC);
		if (pagemap < 0)
			return ferr(err, -errno, "%s: %m", path);
	}
	p->vmas = calloc(nmaps ? nmaps : 1, sizeof(*p->vmas));
	if (!p->vmas)
		return ferr(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < nmaps; i++) {
		if (strcmp(maps[i].path, "[vsyscall]") == 0)
			continue;
		struct vma *v = &p->vmas[p->nvmas++];
		r = classify(c, p->host_pid, &maps[i], v, w, st, err);
		if (r < 0)
			return r;
		if (v->kind == VMA_ANON || v->kind == VMA_FILE_PRIVATE) {
			st->pages_scanned += (v->end - v->start) / MODEL_PAGE;
			r = capture_private(&maps[i], v, pagemap, &marker, mt, err);
			if (r < 0)
				return r;
		}
	}
	/* a forked process: what it still shares with its parent is stored once */
	const struct process *q = NULL;
	for (size_t i = 0; p->ppid && w && i < c->nprocs && !q; i++)
		if (c->procs[i].pid == p->ppid && &c->procs[i] < p && !c->procs[i].zombie)
			q = &c->procs[i];
	if (q) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/pagemap", q->host_pid);
		_cleanup_close_ int qpm = open(path, O_RDONLY | O_CLOEXEC);
		for (size_t i = 0; qpm >= 0 && i < p->nvmas; i++)
			if ((p->vmas[i].kind == VMA_ANON || p->vmas[i].kind == VMA_FILE_PRIVATE) &&
			    p->vmas[i].nruns &&
			    (r = cow_share(&p->vmas[i], pagemap, qpm, q, st, err)) < 0)
				return r;
	}
	_cleanup_free_ uint64_t *hot = NULL;
	size_t nhot = 0;
	bool defer = mt && mt->defer_anon && w;
	if (defer) {
		if (hot_pages(p, &hot, &nhot) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		for (size_t i = 0; i < p->nvmas; i++)
			if (p->vmas[i].kind == VMA_ANON && (p->vmas[i].prot & PROT_READ) &&
			    split_hot(&p->vmas[i], hot, nhot) < 0)
				return ferr(err, -ENOMEM, "out of memory");
	}
	/* the runs whose pages are copied now (not taken from a parent) */
	for (size_t i = 0; i < p->nvmas; i++)
		njobs += p->vmas[i].nruns;
	jobs = calloc(njobs ? njobs : 1, sizeof(*jobs));
	fresh = calloc(njobs ? njobs : 1, sizeof(struct page_run *));
	if (!jobs || !fresh)
		return ferr(err, -ENOMEM, "out of memory");
	njobs = 0;
	for (size_t i = 0; i < p->nvmas; i++)
		for (size_t j = 0; j < p->vmas[i].nruns; j++) {
			struct page_run *run = &p->vmas[i].runs[j];
			if (run->blk_pages)
				continue; /* already stored: in a parent, or by a live round */
			if (defer && p->vmas[i].kind == VMA_ANON && !is_hot(run, hot, nhot)) {
				/* post-copy: its room in the file, filled by whoever streams it */
				run->off = image_pages_alloc(w, run->npages * MODEL_PAGE);
				run->file = 0;
				run->blk_off = run->off;
				run->blk_pages = run->npages;
				run->csum = 0;
				continue;
			}
			fresh[njobs] = run;
			jobs[njobs++] = (struct copy_job){.src_fd = -1,
			                                  .src = run->addr,
			                                  .len = run->npages * MODEL_PAGE,
			                                  .run = run};
			st->pages_written += run->npages;
		}
	uint64_t t0 = now_ns();
	if (mt && mt->stage && w)
		r = stage_copy(p->host_pid, mt->stage, fresh, njobs, c->nprocs > 1, err);
	else
		r = run_pipeline(p->host_pid, jobs, njobs, w, c->nprocs > 1, err);
	st->write_ns += now_ns() - t0;
	return r;
}

/* ---- live checkpoints: rounds of copying while the component runs ---- */

/* The pages in both a and b (sorted range pairs), appended to out. */
static int ranges_intersect(const uint64_t *a, size_t na, const uint64_t *b, size_t nb,
                            uint64_t **out, size_t *nout)
{
	for (size_t i = 0, j = 0; i < na && j < nb;) {
		uint64_t s = MAX(a[2 * i], b[2 * j]), e = MIN(a[2 * i + 1], b[2 * j + 1]);
		if (s < e && ranges_push(out, nout, s, e) < 0)
			return -ENOMEM;
		if (a[2 * i + 1] < b[2 * j + 1])
			i++;
		else
			j++;
	}
	return 0;
}

/* A private mapping whose pages a live round can copy (classify() decides the rest later). */
static bool precopy_candidate(const struct proc_map *m)
{
	static const char *const special[] = {"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"};

	for (size_t i = 0; i < ARRAY_SIZE(special); i++)
		if (strcmp(m->path, special[i]) == 0)
			return false;
	/* every other private mapping, [heap] and [stack] included: the final capture takes
	 * a registered mapping's unwritten pages from the rounds, so each must be in them */
	return m->perms[3] == 'p' && !procfs_vmflag(m, "io") && !procfs_vmflag(m, "pf") &&
	       (m->ino == 0 || m->path[0] == '/');
}

/* Has pid child processes (whose copy-on-write pages a pinning read would unshare)? */
static bool forked(pid_t pid)
{
	_cleanup_free_ pid_t *kids = NULL;
	size_t n = 0;
	return procfs_children(pid, &kids, &n) < 0 || n > 0;
}

int mem_precopy(pid_t pid, struct track *tk, struct image_writer *w, enum mem_round mode,
                struct proc_map **io_maps, size_t *io_nmaps, struct page_run **pre, size_t *npre,
                uint64_t **through, size_t *nthrough, uint64_t *ret_bytes, struct ferry_error *err)
{
	bool first = mode == MEM_ROUND_ALL;
	_cleanup_free_ uint64_t *take = NULL;
	_cleanup_free_ struct page_run *fresh = NULL;
	_cleanup_free_ struct copy_job *jobs = NULL;
	struct proc_map *maps = NULL;
	size_t nmaps = 0, ntake = 0, nfresh = 0;
	int marker = -2, r;

	/* smaps walks every page table: read it once, then only what changed */
	r = *io_maps ? procfs_maps_refresh(pid, *io_maps, *io_nmaps, &maps, &nmaps)
	             : procfs_maps(pid, &maps, &nmaps);
	if (r < 0)
		return ferr(err, r, "pid %d: reading mappings: %s", pid, strerror(-r));
	free(*io_maps);
	*io_maps = maps;
	*io_nmaps = nmaps;
	for (size_t i = 0; i < nmaps; i++) {
		struct proc_map *m = &maps[i];
		_cleanup_free_ uint64_t *data = NULL, *written = NULL;
		size_t ndata = 0, nwritten = 0;
		if (!precopy_candidate(m))
			continue;
		bool flagged = procfs_vmflag(m, "uw");
		if (mode == MEM_ROUND_SCAN) {
			/* where the pages hold data; written and new ones are the freeze's */
			r = flagged ? scan_private(tk->pagemap, m->start, m->end, m->ino == 0,
			                           &marker, through, nthrough, err)
			            : 0;
			if (r < 0)
				return r;
			continue;
		}
		/* protect first, then copy: a write after this point is seen next round */
		r = follow(tk, flagged, m->start, m->end, flagged && !first ? &written : NULL,
		           &nwritten, err);
		if (r < 0)
			return r;
		if (r == FOLLOW_NOT)
			continue; /* not trackable: the final freeze copies it */
		if (r == FOLLOW_NOW) {
			/* as smaps would show it now */
			size_t l = strlen(m->vmflags);
			snprintf(m->vmflags + l, sizeof(m->vmflags) - l, "%suw ",
			         l && m->vmflags[l - 1] != ' ' ? " " : "");
		}
		bool all = first || r == FOLLOW_NOW;
		r = scan_private(tk->pagemap, m->start, m->end, m->ino == 0, &marker, &data, &ndata,
		                 err);
		if (r < 0)
			return r;
		r = all ? 0 : ranges_intersect(data, ndata, written, nwritten, &take, &ntake);
		for (size_t k = 0; all && r == 0 && k < ndata; k++)
			r = ranges_push(&take, &ntake, data[2 * k], data[2 * k + 1]);
		/* the data not written: as the earlier image has it */
		for (size_t k = 0; !all && r == 0 && k < ndata; k++)
			r = ranges_push(through, nthrough, data[2 * k], data[2 * k + 1]);
		if (r < 0)
			return ferr(err, r, "out of memory");
	}
	/* newer copies replace older ones */
	if (runs_subtract(pre, npre, take, ntake) < 0)
		return ferr(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < ntake; i++)
		if (add_run(&fresh, &nfresh, take[2 * i], take[2 * i + 1] - take[2 * i]) < 0)
			return ferr(err, -ENOMEM, "out of memory");
	jobs = calloc(nfresh ? nfresh : 1, sizeof(*jobs));
	if (!jobs)
		return ferr(err, -ENOMEM, "out of memory");
	uint64_t bytes = 0;
	for (size_t i = 0; i < nfresh; i++) {
		jobs[i] = (struct copy_job){.src_fd = -1,
		                            .src = fresh[i].addr,
		                            .len = fresh[i].npages * MODEL_PAGE,
		                            .run = &fresh[i]};
		bytes += jobs[i].len;
	}
	r = run_pipeline(pid, jobs, nfresh, w, forked(pid), err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < nfresh; i++) {
		if (GROW(*pre, *npre) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		(*pre)[(*npre)++] = fresh[i];
	}
	runs_sort(*pre, *npre);
	*ret_bytes = bytes;
	return 0;
}

/* ---- verification of page data before a restored component runs ---- */

/* The pages files, mapped read-only: checksums are taken straight from them, with no copy. */
struct mapped_files {
	const uint8_t **p;
	uint64_t *size;
	uint32_t n;
};

/* Blocks already verified: an open-addressing set of (file, offset) keys. */
struct block_set {
	uint64_t *keys; /* key + 1; 0 is empty */
	size_t cap;
};

/* 1 if key was new (and is now in the set), 0 if seen, -ENOMEM */
static int block_set_add(struct block_set *bs, uint64_t key, size_t max_keys)
{
	if (!bs->keys) {
		bs->cap = 64;
		while (bs->cap < max_keys * 2)
			bs->cap <<= 1;
		bs->keys = calloc(bs->cap, sizeof(*bs->keys));
		if (!bs->keys)
			return -ENOMEM;
	}
	for (size_t h = (key * 0x9E3779B97F4A7C15ULL) & (bs->cap - 1);;
	     h = (h + 1) & (bs->cap - 1)) {
		if (bs->keys[h] == key + 1)
			return 0;
		if (bs->keys[h] == 0) {
			bs->keys[h] = key + 1;
			return 1;
		}
	}
}

static int verify_runs(const struct page_run *runs, size_t n, const struct mapped_files *mf,
                       struct block_set *bs, size_t max_keys, bool own_only,
                       struct ferry_error *err)
{
	for (size_t i = 0; i < n; i++) {
		const struct page_run *u = &runs[i];
		uint64_t len = u->blk_pages * MODEL_PAGE;
		if (u->file >= mf->n || (own_only && u->file != 0))
			return ferr(err, -EPROTO, "page run at 0x%" PRIx64 ": pages file %u of %u",
			            u->addr, u->file, mf->n);
		if (len > CHUNK)
			return ferr(err, -EPROTO, "page run at 0x%" PRIx64 " is too long", u->addr);
		uint64_t size = mf->size[u->file];
		if (u->blk_off > size || len > size - u->blk_off)
			return ferr(err, -EIO,
			            "pages file %u offset %" PRIu64 ": past its end (%" PRIu64
			            " bytes), truncated",
			            u->file, u->blk_off, size);
		int r = block_set_add(bs, ((uint64_t)u->file << 48) | (u->blk_off / MODEL_PAGE),
		                      max_keys);
		if (r < 0)
			return ferr(err, r, "out of memory");
		if (r == 0)
			continue;
		if (image_checksum(mf->p[u->file] + u->blk_off, len) != u->csum)
			return ferr(err, -EBADMSG,
			            "pages file %u offset %" PRIu64 " (data of 0x%" PRIx64
			            "): checksum mismatch, image corrupted",
			            u->file, u->blk_off, u->addr);
	}
	return 0;
}

int mem_verify_pages(const struct component *c, const int *fds, uint32_t nfds,
                     struct ferry_error *err)
{
	struct mapped_files mf = {.n = nfds};
	struct block_set bs = {0};
	size_t max_keys = 0;
	int r = 0;

	mf.p = calloc(nfds ? nfds : 1, sizeof(*mf.p));
	mf.size = calloc(nfds ? nfds : 1, sizeof(*mf.size));
	if (!mf.p || !mf.size) {
		r = ferr(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < nfds; i++) {
		struct stat sb;
		if (fstat(fds[i], &sb) < 0) {
			r = ferr(err, -errno, "pages file %u: %m", i);
			goto out;
		}
		mf.size[i] = (uint64_t)sb.st_size;
		if (!mf.size[i])
			continue;
		const uint8_t *p = mmap(NULL, mf.size[i], PROT_READ, MAP_SHARED, fds[i], 0);
		if (p == MAP_FAILED) {
			r = ferr(err, -errno, "mapping pages file %u: %m", i);
			goto out;
		}
		mf.p[i] = p;
		(void)madvise((void *)p, mf.size[i], MADV_SEQUENTIAL);
	}
	for (size_t i = 0; i < c->nshmems; i++)
		max_keys += c->shmems[i].nruns;
	for (size_t i = 0; i < c->nprocs; i++)
		for (size_t j = 0; j < c->procs[i].nvmas; j++)
			max_keys += c->procs[i].vmas[j].nruns;
	/* shared memory objects are filled from the image's own file */
	for (size_t i = 0; i < c->nshmems && r == 0; i++)
		r = verify_runs(c->shmems[i].runs, c->shmems[i].nruns, &mf, &bs, max_keys, true,
		                err);
	for (size_t i = 0; i < c->nprocs && r == 0; i++)
		for (size_t j = 0; j < c->procs[i].nvmas && r == 0; j++)
			r = verify_runs(c->procs[i].vmas[j].runs, c->procs[i].vmas[j].nruns, &mf,
			                &bs, max_keys, false, err);
out:
	for (uint32_t i = 0; mf.p && i < nfds; i++)
		if (mf.p[i])
			munmap((void *)mf.p[i], mf.size[i]);
	free(mf.p);
	free(mf.size);
	free(bs.keys);
	return r;
}

/* ---- restore ---- */

#define TASK_TOP 0x7ffffffff000ULL

static int find_vma_kind(const struct process *p, uint32_t kind)
{
	for (size_t i = 0; i < p->nvmas; i++)
		if (p->vmas[i].kind == kind)
			return (int)i;
	return -1;
}

/* Move the helper's [vvar] [vvar_vclock] [vdso] to the image's addresses. */
/* where a vdso part waits while its old and new places overlap */
#define VDSO_PARK 0x100000000ULL

/* One system call of the teardown: queued in b if there is one, else run at once. */
static int teardown_call(struct restorer *rs, struct rs_batch *b, const char *what, long nr,
                         uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                         struct ferry_error *err)
{
	if (b)
		return rs_batch_add(rs, b, what, nr, a0, a1, a2, a3, a4, 0, err);
	long r = rs_sys(rs, what, nr, a0, a1, a2, a3, a4, 0, err);
	return r < 0 ? (int)r : 0;
}

/* munmap [lo, hi) but the mappings the process keeps (inherited loaded: restorer.kept). */
static int unmap_but_kept(struct restorer *rs, struct rs_batch *b, const struct process *p,
                          const char *what, uint64_t lo, uint64_t hi, struct ferry_error *err)
{
	uint64_t at = lo;
	int r = 0;

	/* the vmas are in address order */
	for (size_t i = 0; rs->kept && i < p->nvmas && r == 0; i++) {
		const struct vma *v = &p->vmas[i];
		if (!rs->kept[i] || v->end <= at || v->start >= hi)
			continue;
		if (v->start > at)
			r = teardown_call(rs, b, what, SYS_munmap, at, v->start - at, 0, 0, 0, err);
		at = v->end;
	}
	if (r == 0 && at < hi)
		r = teardown_call(rs, b, what, SYS_munmap, at, hi - at, 0, 0, 0, err);
	return r;
}

static int move_vdso(struct restorer *rs, struct rs_batch *b, const struct process *p,
                     const struct proc_map *cur, size_t ncur, struct ferry_error *err)
{
	static const uint32_t kinds[] = {VMA_VVAR, VMA_VVAR_VCLOCK, VMA_VDSO};
	static const char *names[] = {"[vvar]", "[vvar_vclock]", "[vdso]"};
	uint64_t from[3] = {0}, len[3] = {0};

	for (size_t k = 0; k < 3; k++)
		for (size_t i = 0; i < ncur; i++)
			if (strcmp(cur[i].path, names[k]) == 0) {
				from[k] = cur[i].start;
				len[k] = cur[i].end - cur[i].start;
			}
	for (size_t k = 0; k < 3; k++) {
		int vi = find_vma_kind(p, kinds[k]);
		if (vi < 0 || !from[k]) {
			if (vi < 0 && !from[k])
				continue;
			return ferr(err, -ENOTSUP,
			            "%s: present in %s only; the image was made on "
			            "another kernel",
			            names[k], vi < 0 ? "this kernel" : "the image");
		}
		const struct vma *v = &p->vmas[vi];
		if (v->end - v->start != len[k])
			return ferr(err, -ENOTSUP,
			            "%s: size %" PRIu64 " in the image, %" PRIu64
			            " here; the image was made on another kernel",
			            names[k], v->end - v->start, len[k]);
		if (v->start == from[k])
			continue;
		/* through a parking address if the old and new places overlap */
		uint64_t park = VDSO_PARK + k * 0x100000ULL;
		if (from[k] < v->end && v->start < from[k] + len[k]) {
			int r = teardown_call(rs, b, "mremap vdso (park)", SYS_mremap, from[k],
			                      len[k], len[k], MREMAP_MAYMOVE | MREMAP_FIXED, park,
			                      err);
			if (r < 0)
				return r;
			from[k] = park;
		}
		int r = teardown_call(rs, b, "mremap vdso", SYS_mremap, from[k], len[k], len[k],
		                      MREMAP_MAYMOVE | MREMAP_FIXED, v->start, err);
		if (r < 0)
			return r;
		if (kinds[k] == VMA_VDSO)
			rs->main.syscall_ip = rs->main.syscall_ip - from[k] + v->start;
	}
	return 0;
}

/* Load the page runs of a mapping: the helper reads the pages file into its own memory. */
/* Runs shorter than this are filled from outside, many per system call; longer ones by the
 * helper reading the pages file itself (one injected pread, like a process reading a file). */
#define FILL_SMALL (256UL * 1024)
#define FILL_BUF   (4UL * 1024 * 1024)
#define FILL_IOV   1024

/* Pieces of small runs gathered for one process_vm_writev into the helper. */
struct fill {
	uint8_t *buf;
	uint64_t used;
	struct iovec remote[FILL_IOV];
	size_t n;
};

static int fill_flush(struct restorer *rs, struct fill *f, struct ferry_error *err)
{
	struct iovec local = {f->buf, f->used};

	if (f->n == 0)
		return 0;
	ssize_t w = process_vm_writev(rs->pid, &local, 1, f->remote, f->n, 0);
	if (w != (ssize_t)f->used)
		return ferr(err, w < 0 ? -errno : -EIO,
		            "filling %zu page runs from 0x%" PRIx64 ": %s", f->n,
		            (uint64_t)(uintptr_t)f->remote[0].iov_base,
		            w < 0 ? strerror(errno) : "short write");
	f->used = 0;
	f->n = 0;
	return 0;
}

/*
 * Load the page runs of a mapping. A long run is read by the helper into its own memory
 * (pread from the pages file). Short runs, which an incremental chain has by the thousand
 * (each page written since the base splits the base's runs), would cost an injected call each:
 * they are read here from the same files and written into the helper in batches.
 */
static int load_runs(struct restorer *rs, struct fill *f, const struct page_run *runs, size_t n,
                     uint64_t base, struct ferry_error *err)
{
	int r;

	for (size_t i = 0; i < n;) {
		/* coalesce runs contiguous both in memory and in the file */
		size_t j = i + 1;
		uint64_t len = runs[i].npages * MODEL_PAGE;
		while (j < n && runs[j].addr == runs[i].addr + len &&
		       runs[j].file == runs[i].file && runs[j].off == runs[i].off + len) {
			len += runs[j].npages * MODEL_PAGE;
			j++;
		}
		uint64_t dst = runs[i].addr + base;
		if (runs[i].file >= rs->npages_fds)
			return ferr(err, -EPROTO, "loading 0x%" PRIx64 ": pages file %u of %u", dst,
			            runs[i].file, rs->npages_fds);
		if (len < FILL_SMALL && rs->local_fds) {
			if (f->n == FILL_IOV || f->used + len > FILL_BUF) {
				r = fill_flush(rs, f, err);
				if (r < 0)
					return r;
			}
			r = pread_full(rs->local_fds[runs[i].file], f->buf + f->used, len,
			               (off_t)runs[i].off);
			if (r < 0)
				return ferr(err, r, "loading 0x%" PRIx64 ": pages file %u: %s", dst,
				            runs[i].file, strerror(-r));
			f->remote[f->n++] = (struct iovec){(void *)dst, len};
			f->used += len;
		} else {
			long rr = rs_sys(rs, "pread of page data", SYS_pread64,
			                 (uint64_t)rs->pages_fds[runs[i].file], dst, len,
			                 runs[i].off, 0, 0, err);
			if (rr >= 0 && (uint64_t)rr != len)
				return ferr(err, -EIO,
				            "loading 0x%" PRIx64 ": short read (%ld of %" PRIu64
				            ")",
				            dst, rr, len);
			if (rr < 0)
				return ferr_prefix(err, "loading 0x%" PRIx64 "+%" PRIu64, dst, len);
		}
		rs->pages_loaded += len / MODEL_PAGE;
		i = j;
	}
	/* before map_one protects the mapping: the batch goes in now */
	return fill_flush(rs, f, err);
}

static const uint32_t madv_flags[][2] = {
        {VMA_F_HUGEPAGE, MADV_HUGEPAGE},     {VMA_F_NOHUGEPAGE, MADV_NOHUGEPAGE},
        {VMA_F_DONTDUMP, MADV_DONTDUMP},     {VMA_F_DONTFORK, MADV_DONTFORK},
        {VMA_F_WIPEONFORK, MADV_WIPEONFORK},
};

/* The mmap that makes mapping idx of p again (queued in b), with the protection it is filled
 * under (*ret_prot). */
static int map_one(struct restorer *rs, struct rs_batch *b, const struct component *c,
                   const struct process *p, size_t idx, uint64_t *ret_prot, struct ferry_error *err)
{
	const struct vma *v = &p->vmas[idx];
	uint64_t len = v->end - v->start;
	uint64_t flags = MAP_FIXED, fd = (uint64_t)-1, off = 0;

	*ret_prot = 0;
	if (rs->kept && rs->kept[idx]) {
		*ret_prot = PROT_READ | PROT_WRITE; /* as the init's helper mapped it */
		return 0;
	}
	switch (v->kind) {
	case VMA_VDSO:
	case VMA_VVAR:
	case VMA_VVAR_VCLOCK:
		return 0;
	case VMA_ANON:
		flags |= MAP_PRIVATE | MAP_ANONYMOUS;
		if (v->flags & VMA_F_GROWSDOWN)
			flags |= MAP_GROWSDOWN;
		if (v->flags & VMA_F_NORESERVE)
			flags |= MAP_NORESERVE;
		break;
	case VMA_FILE_PRIVATE:
	case VMA_FILE_SHARED:
		flags |= v->kind == VMA_FILE_SHARED ? MAP_SHARED : MAP_PRIVATE;
		fd = (uint64_t)rs->vma_fd[idx];
		off = v->pgoff;
		break;
	case VMA_SHMEM:
		if (c->shmems[v->shmem].kind == SHMEM_SYSV) {
			/* attached as shmat does (a mapping of the segment's file is not an
			 * attachment: shm_nattch, shmdt and IPC_RMID would not see it) */
			uint64_t shf = SHM_REMAP | ((v->prot & PROT_WRITE) ? 0 : SHM_RDONLY) |
			               ((v->prot & PROT_EXEC) ? SHM_EXEC : 0);
			*ret_prot = v->prot;
			int r = rs_batch_add(rs, b, "shmat", SYS_shmat,
			                     (uint64_t)c->shmems[v->shmem].sysv_id, v->start, shf,
			                     0, 0, 0, err);
			return r < 0 ? ferr_prefix(err, "mapping 0x%" PRIx64, v->start) : 0;
		}
		flags |= MAP_SHARED;
		fd = (uint64_t)rs->shmem_fd[v->shmem];
		off = v->pgoff;
		if (rs->shmem_fd[v->shmem] < 0) {
			/* a shared anonymous mapping of its own: map it and fill it directly */
			flags |= MAP_ANONYMOUS;
			off = 0;
		}
		break;
	default:
		return ferr(err, -EPROTO, "mapping 0x%" PRIx64 ": unknown kind %u", v->start,
		            v->kind);
	}
	uint64_t prot = PROT_READ | PROT_WRITE | (v->prot & PROT_EXEC);
	if (v->kind == VMA_FILE_SHARED)
		prot = v->prot; /* the file may be open read-only */
	*ret_prot = prot;
	int r = rs_batch_add(rs, b, "mmap", SYS_mmap, v->start, len, prot, flags, fd, off, err);
	return r < 0 ? ferr_prefix(err, "mapping 0x%" PRIx64 "-0x%" PRIx64 " %s", v->start, v->end,
	                           v->path ? v->path : "")
	             : 0;
}

/* Has v a run holding addr? */
static int cmp_run_addr(const void *a, const void *b)
{
	const struct page_run *x = a, *y = b;
	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* A copy of the n runs at runs, in address order (NULL and n 0: none). */
static struct page_run *runs_sorted(const struct page_run *runs, size_t n)
{
	struct page_run *c = n ? malloc(n * sizeof(*c)) : NULL;
	if (c) {
		memcpy(c, runs, n * sizeof(*c));
		qsort(c, n, sizeof(*c), cmp_run_addr);
	}
	return c;
}

static uint64_t run_end(const struct page_run *r)
{
	return r->addr + r->npages * MODEL_PAGE;
}

/*
 * A mapping the process inherited loaded from the init's helper: what it holds that differs
 * from the init's is loaded (pages it wrote, and those its own parent wrote before forking it);
 * what the init holds and it does not is dropped (MADV_DONTNEED: zeros, as it had). Both run
 * lists are walked once, side by side, in address order.
 */
static int fill_kept(struct restorer *rs, struct fill *f, const struct process *p,
                     const struct vma *v, struct ferry_error *err)
{
	const struct process *q = rs->base;
	const struct vma *bv = NULL;
	int r = 0;

	if (p == q)
		return 0; /* the init: loaded by its helper */
	for (size_t i = 0; i < q->nvmas && !bv; i++)
		if (q->vmas[i].start == v->start)
			bv = &q->vmas[i];
	size_t nc = v->nruns, nb = bv ? bv->nruns : 0, bi = 0, ci = 0;
	_cleanup_free_ struct page_run *cr = runs_sorted(v->runs, nc);
	_cleanup_free_ struct page_run *br = runs_sorted(bv ? bv->runs : NULL, nb);
	if ((nc && !cr) || (nb && !br))
		return ferr(err, -ENOMEM, "out of memory");
	/* its pages that are not the init's (another page, or none there): loaded */
	for (size_t j = 0; j < nc && r == 0; j++) {
		const struct page_run *c = &cr[j];
		uint64_t addr = c->addr, end = run_end(c), from = addr;
		while (addr < end && r == 0) {
			while (bi < nb && run_end(&br[bi]) <= addr)
				bi++;
			uint64_t stop;
			bool same = false;
			if (bi < nb && br[bi].addr <= addr) {
				stop = MIN(end, run_end(&br[bi]));
				same = br[bi].file == c->file &&
				       br[bi].off + (addr - br[bi].addr) ==
				               c->off + (addr - c->addr);
			} else {
				stop = bi < nb ? MIN(end, br[bi].addr) : end;
			}
			if (same && from < addr) { /* what differed before this: one load */
				struct page_run part = *c;
				part.addr = from;
				part.npages = (addr - from) / MODEL_PAGE;
				part.off = c->off + (from - c->addr);
				r = load_runs(rs, f, &part, 1, 0, err);
			}
			addr = stop;
			if (same)
				from = addr;
		}
		if (r == 0 && from < end) {
			struct page_run part = *c;
			part.addr = from;
			part.npages = (end - from) / MODEL_PAGE;
			part.off = c->off + (from - c->addr);
			r = load_runs(rs, f, &part, 1, 0, err);
		}
	}
	/* the init's pages it does not have: dropped */
	for (size_t j = 0; j < nb && r == 0; j++) {
		uint64_t addr = br[j].addr, end = run_end(&br[j]);
		while (addr < end && r == 0) {
			while (ci < nc && run_end(&cr[ci]) <= addr)
				ci++;
			if (ci < nc && cr[ci].addr <= addr) {
				addr = MIN(end, run_end(&cr[ci])); /* it has these */
				continue;
			}
			uint64_t stop = ci < nc ? MIN(end, cr[ci].addr) : end;
			long ret = rs_sys(rs, "madvise(MADV_DONTNEED)", SYS_madvise, addr,
			                  stop - addr, MADV_DONTNEED, 0, 0, 0, err);
			r = ret < 0 ? (int)ret : 0;
			addr = stop;
		}
	}
	return r;
}

/* Its content: loaded now, or left to the lazy restore. */
static int fill_one(struct restorer *rs, struct fill *f, const struct component *c,
                    const struct process *p, size_t idx, struct lazy *lz, struct ferry_error *err)
{
	const struct vma *v = &p->vmas[idx];

	if (v->kind == VMA_VDSO || v->kind == VMA_VVAR || v->kind == VMA_VVAR_VCLOCK)
		return 0;
	if (rs->kept && rs->kept[idx])
		return fill_kept(rs, f, p, v, err);
	if (v->kind == VMA_ANON && lz) /* on first touch and from the background (lazy.c) */
		return lazy_add(lz, v->start, v->end, v->runs, v->nruns, err);
	if (v->kind == VMA_SHMEM && rs->shmem_fd[v->shmem] < 0)
		return load_runs(rs, f, c->shmems[v->shmem].runs, c->shmems[v->shmem].nruns,
		                 v->start - v->pgoff, err);
	return load_runs(rs, f, v->runs, v->nruns, 0, err);
}

/* Its advice, locks and final protection (queued in b). */
static int finish_one(struct restorer *rs, struct rs_batch *b, const struct process *p, size_t idx,
                      uint64_t prot, struct ferry_error *err)
{
	const struct vma *v = &p->vmas[idx];
	uint64_t len = v->end - v->start;
	int r = 0;

	if (!prot)
		return 0;
	for (size_t i = 0; r == 0 && i < ARRAY_SIZE(madv_flags); i++)
		if (v->flags & madv_flags[i][0])
			r = rs_batch_add(rs, b, "madvise", SYS_madvise, v->start, len,
			                 madv_flags[i][1], 0, 0, 0, err);
	if (r == 0 && (v->flags & VMA_F_LOCKED))
		r = rs_batch_add(rs, b, "mlock", SYS_mlock, v->start, len, 0, 0, 0, 0, err);
	if (r == 0 && prot != v->prot)
		r = rs_batch_add(rs, b, "mprotect", SYS_mprotect, v->start, len, v->prot, 0, 0, 0,
		                 err);
	return r < 0 ? ferr_prefix(err, "mapping 0x%" PRIx64, v->start) : 0;
}

/* The lowest free range of len bytes in p's address space (above the first 64 KiB). */
uint64_t mem_free_range(const struct process *p, uint64_t len)
{
	for (uint64_t a = 0x10000; a + len <= TASK_TOP; a += MODEL_PAGE) {
		bool used = false;
		for (size_t i = 0; i < p->nvmas && !used; i++)
			if (a < p->vmas[i].end && a + len > p->vmas[i].start) {
				used = true;
				a = p->vmas[i].end - MODEL_PAGE;
			}
		if (!used)
			return a;
	}
	return 0;
}

int mem_restore(struct restorer *rs, const struct component *c, const struct process *p,
                const struct proc_map *cur, size_t ncur, struct ferry_error *err)
{
	return mem_restore_lazy(rs, c, p, cur, ncur, NULL, err);
}

int mem_restore_lazy(struct restorer *rs, const struct component *c, const struct process *p,
                     const struct proc_map *cur, size_t ncur, struct lazy *lz,
                     struct ferry_error *err)
{
	uint64_t keep_lo = 0, keep_hi = 0;
	long r;

	for (size_t i = 0; i < ncur; i++) {
		if (strcmp(cur[i].path, "[vvar]") != 0 &&
		    strcmp(cur[i].path, "[vvar_vclock]") != 0 && strcmp(cur[i].path, "[vdso]") != 0)
			continue;
		keep_lo = keep_lo ? MIN(keep_lo, cur[i].start) : cur[i].start;
		keep_hi = MAX(keep_hi, cur[i].end);
	}
	if (!keep_lo)
		return ferr(err, -ENOTSUP, "the helper has no vdso");
	_cleanup_free_ uint64_t *prot = calloc(p->nvmas ? p->nvmas : 1, sizeof(*prot));
	_cleanup_free_ struct rs_batch *b = calloc(1, sizeof(*b));
	if (!prot || !b)
		return ferr(err, -ENOMEM, "out of memory");
	b->t = &rs->main;
	/*
	 * 1. everything of the helper goes, but the vdso through which we make system calls and
	 * the scratch pages; 2. the vdso to its place in the image; 3. scratch pages for system
	 * call arguments and batches of calls. When the helper mapped the scratch pages itself
	 * (where the image leaves room, below its vdso), all of it is one batch with the mmaps of
	 * step 4; otherwise call by call, and the scratch pages are mapped last.
	 */
	uint64_t sc = rs->scratch, sc_end = sc + RS_SCRATCH_PAGES * MODEL_PAGE;
	struct rs_batch *tb = sc && sc_end <= keep_lo && sc_end <= VDSO_PARK ? b : NULL;
	if (tb) {
		r = unmap_but_kept(rs, tb, p, "munmap below the scratch pages", 0, sc, err);
		if (r >= 0 && sc_end < keep_lo)
			r = unmap_but_kept(rs, tb, p, "munmap below the vdso", sc_end, keep_lo,
			                   err);
	} else {
		rs->scratch = 0;
		r = unmap_but_kept(rs, NULL, p, "munmap below the vdso", 0, keep_lo, err);
	}
	if (r >= 0)
		r = unmap_but_kept(rs, tb, p, "munmap above the vdso", keep_hi, TASK_TOP, err);
	if (r >= 0)
		r = move_vdso(rs, tb, p, cur, ncur, err);
	if (r >= 0 && !tb) {
		rs->scratch = mem_free_range(p, RS_SCRATCH_PAGES * MODEL_PAGE);
		r = teardown_call(rs, NULL, "mmap scratch pages", SYS_mmap, rs->scratch,
		                  RS_SCRATCH_PAGES * MODEL_PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
		                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, (uint64_t)-1,
		                  err);
	}
	if (r < 0)
		return (int)r;
	/* 4. every mapping, filled, with its final protection */
	uint64_t t0 = now_ns();
	struct fill *f = calloc(1, sizeof(*f));
	if (f)
		f->buf = mmap(NULL, FILL_BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		              -1, 0);
	if (!f || f->buf == MAP_FAILED) {
		free(f);
		return ferr(err, -ENOMEM, "out of memory");
	}
	/* in three passes, the first and last each a batch of calls: every mmap; the contents;
	 * advice, locks and final protections (the mappings are disjoint: order is free) */
	for (size_t i = 0; i < p->nvmas && r >= 0; i++)
		r = map_one(rs, b, c, p, i, &prot[i], err);
	if (r >= 0)
		r = rs_batch_run(rs, b, err);
	for (size_t i = 0; i < p->nvmas && r >= 0; i++)
		r = fill_one(rs, f, c, p, i, lz, err);
	for (size_t i = 0; i < p->nvmas && r >= 0; i++)
		r = finish_one(rs, b, p, i, prot[i], err);
	if (r >= 0)
		r = rs_batch_run(rs, b, err);
	munmap(f->buf, FILL_BUF);
	free(f);
	if (r < 0)
		return (int)r;
	rs->pages_ns += now_ns() - t0;
	return 0;
}

/* ---- kernel probes (ferry check) ---- */

int mem_probe_pagemap_scan(char *detail, size_t len)
{
	char page[MODEL_PAGE] __attribute__((aligned(4096)));
	struct page_region reg;
	_cleanup_close_ int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	page[0] = 1;
	struct pm_scan_arg a = {.size = sizeof(a),
	                        .start = (uint64_t)(uintptr_t)page,
	                        .end = (uint64_t)(uintptr_t)page + MODEL_PAGE,
	                        .vec = (uint64_t)(uintptr_t)&reg,
	                        .vec_len = 1,
	                        .category_anyof_mask = PAGE_IS_PRESENT,
	                        .return_mask = PAGE_IS_PRESENT};
	long n = fd < 0 ? -1 : ioctl(fd, PAGEMAP_SCAN, &a);
	snprintf(detail, len, "%s",
	         n == 1 ? "finds the pages that hold data (Linux >= 6.7)"
	                : "PAGEMAP_SCAN missing: Linux >= 6.7 is needed");
	return n == 1;
}

int mem_probe_vdso_mremap(char *detail, size_t len)
{
	/* in a child: move its own vdso and make a system call afterwards */
	pid_t pid = fork();
	if (pid == 0) {
		_cleanup_free_ struct proc_map *maps = NULL;
		size_t n = 0;
		if (procfs_maps(getpid(), &maps, &n) < 0)
			_exit(2);
		for (size_t i = 0; i < n; i++)
			if (strcmp(maps[i].path, "[vdso]") == 0) {
				uint64_t l = maps[i].end - maps[i].start;
				void *to = mmap(NULL, l, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
				                0);
				void *r = mremap((void *)maps[i].start, l, l,
				                 MREMAP_MAYMOVE | MREMAP_FIXED, to);
				_exit(r == to && syscall(SYS_getpid) > 0 ? 0 : 1);
			}
		_exit(3);
	}
	int status = 0;
	if (pid < 0 || waitpid(pid, &status, 0) != pid) {
		snprintf(detail, len, "could not fork a probe");
		return 0;
	}
	bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	snprintf(detail, len, "%s",
	         ok ? "the vdso can be moved to where an image had it"
	            : "mremap of the vdso refused");
	return ok;
}

int mem_probe_vm_readv(char *detail, size_t len)
{
	char a[8] = "ferry", b[8] = "";
	struct iovec l = {b, sizeof(b)}, r = {a, sizeof(a)};
	bool ok = process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)sizeof(a);
	snprintf(detail, len, "%s", ok ? "copies another process's memory" : strerror(errno));
	return ok;
}
