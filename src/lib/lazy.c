/* Lazy restore: pages of private anonymous mappings supplied through userfaultfd, on first touch
 * (the fault handler) and in the background (the filler), by threads of the restoring monitor. */
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lazy.h"
#include "runtime.h"
#include "track.h"
#include "util.h"

/*
 * The component's mremap and madvise(MADV_DONTNEED) wait until we have read their event: we
 * move (or drop) the data still to come with the pages. fork is not followed (a child forked
 * before the filler ends sees zeros where pages were not filled yet).
 */
#define LAZY_EVENTS  (UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE)
#define LAZY_WP      (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
#define LAZY_CHUNK   (2UL << 20)  /* the filler's UFFDIO_COPY size */
#define LAZY_CLUSTER (64UL << 10) /* what the handler installs around a fault */
#define PG           MODEL_PAGE
#define LAZY_RECORD  "lazy"

/* Data still to install: [start, end) of the component now, from image address orig on. */
struct lazy_run {
	uint64_t start, end, orig;
	uint32_t file;
	uint64_t off;
};

struct lazy {
	int uffd;
	bool wp;
	pid_t pid;   /* the component, host pid */
	int pidfd;   /* the component: readable once it exited */
	int stop[2]; /* the handler ends when stop[1] is written or closed */
	int done[2]; /* done[1] closed by the filler once every run is in; done[0] for waiters */
	char record[PATH_MAX];
	struct lazy_source src;
	int *fds; /* the built-in source's pages files */
	uint32_t nfds;
	/* runs: sorted by start, disjoint. mu guards it; layout is held for reading across the
	 * filler's look-up and copy, for writing while an event (mremap, madvise) is applied */
	pthread_mutex_t mu;
	pthread_rwlock_t layout;
	struct lazy_run *runs;
	size_t nruns, cap;
	atomic_bool dead; /* the component is gone */
	atomic_int refs;
	pthread_t handler;
	bool handler_started;
};

static int files_read(void *arg, const struct lazy_piece *p, void *buf)
{
	const struct lazy *lz = arg;

	if (p->file >= lz->nfds)
		return -EPROTO;
	return pread_full(lz->fds[p->file], buf, p->len, (off_t)p->off);
}

int lazy_uffd(struct tracee *main, pid_t pid, bool wp, int *ret_fd, struct ferry_error *err)
{
	/*
	 * Not UFFD_USER_MODE_ONLY: faults the kernel takes on the component's behalf (a read(2)
	 * into a page not filled yet) and those of a checkpoint's process_vm_readv must wait for
	 * the page too, not fail with EFAULT. That needs CAP_SYS_PTRACE in the component.
	 */
	return track_inject_uffd(main, pid, 0, LAZY_EVENTS | (wp ? LAZY_WP : 0), ret_fd, err);
}

int lazy_uffd_of(pid_t pid, int slot, bool wp, int *ret_fd)
{
	int fd = pidfd_getfd_of(pid, slot);
	if (fd < 0)
		return fd;
	int r = track_uffd_api(fd, LAZY_EVENTS | (wp ? LAZY_WP : 0));
	if (r < 0) {
		safe_close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

static void lazy_destroy(struct lazy *lz)
{
	safe_close(lz->uffd);
	safe_close(lz->pidfd);
	safe_close(lz->stop[0]);
	safe_close(lz->stop[1]);
	safe_close(lz->done[0]);
	safe_close(lz->done[1]);
	for (uint32_t i = 0; i < lz->nfds; i++)
		safe_close(lz->fds[i]);
	free(lz->fds);
	free(lz->runs);
	pthread_mutex_destroy(&lz->mu);
	pthread_rwlock_destroy(&lz->layout);
	free(lz);
}

static void lazy_put(struct lazy *lz)
{
	if (atomic_fetch_sub(&lz->refs, 1) != 1)
		return;
	if (lz->wp) {
		/* the tracking of this component (its track file) names our fd: it stays open */
		lz->uffd = -EBADF;
	}
	lazy_destroy(lz);
}

/* ---- the run table ---- */

static int runs_insert(struct lazy *lz, size_t at, const struct lazy_run *r)
{
	if (lz->nruns == lz->cap) {
		size_t cap = lz->cap ? lz->cap * 2 : 64;
		struct lazy_run *n = realloc(lz->runs, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		lz->runs = n;
		lz->cap = cap;
	}
	memmove(&lz->runs[at + 1], &lz->runs[at], (lz->nruns - at) * sizeof(*r));
	lz->runs[at] = *r;
	lz->nruns++;
	return 0;
}

/* The first run ending after addr. */
static size_t runs_find(const struct lazy *lz, uint64_t addr)
{
	size_t lo = 0, hi = lz->nruns;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (lz->runs[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int cmp_run(const void *a, const void *b)
{
	const struct lazy_run *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

/* Split so that no run crosses addr. */
static int runs_split(struct lazy *lz, uint64_t addr)
{
	size_t i = runs_find(lz, addr);

	if (i == lz->nruns || lz->runs[i].start >= addr)
		return 0;
	struct lazy_run tail = lz->runs[i];
	uint64_t d = addr - tail.start;
	tail.start = addr;
	tail.orig += d;
	tail.off += d;
	lz->runs[i].end = addr;
	return runs_insert(lz, i + 1, &tail);
}

/* Drop [s, e): its pages were zapped (MADV_DONTNEED) or replaced; they read as zeros now. */
static int runs_drop(struct lazy *lz, uint64_t s, uint64_t e)
{
	int r = runs_split(lz, s);
	if (r == 0)
		r = runs_split(lz, e);
	if (r < 0)
		return r;
	size_t i = runs_find(lz, s), j = i;
	while (j < lz->nruns && lz->runs[j].end <= e)
		j++;
	memmove(&lz->runs[i], &lz->runs[j], (lz->nruns - j) * sizeof(*lz->runs));
	lz->nruns -= j - i;
	return 0;
}

/* mremap moved [from, from + len) to to: the data still to come moves along. */
static int runs_move(struct lazy *lz, uint64_t from, uint64_t to, uint64_t len)
{
	int r = runs_drop(lz, to, to + len); /* what was there is gone */
	if (r == 0)
		r = runs_split(lz, from);
	if (r == 0)
		r = runs_split(lz, from + len);
	if (r < 0)
		return r;
	for (size_t i = runs_find(lz, from); i < lz->nruns && lz->runs[i].start < from + len; i++) {
		lz->runs[i].start = lz->runs[i].start - from + to;
		lz->runs[i].end = lz->runs[i].end - from + to;
	}
	qsort(lz->runs, lz->nruns, sizeof(*lz->runs), cmp_run);
	return 0;
}

/* ---- installing pages ---- */

/*
 * UFFDIO_COPY of len bytes from buf to dst (write-protected with wp: a page filled is clean for
 * dirty tracking). Returns the bytes installed from dst on (> 0), or -errno for the first page:
 * -EEXIST (a page is there), -EAGAIN (the layout is changing), -ENOENT (not registered there),
 * -ESRCH (the component is gone).
 */
static long copy_in(const struct lazy *lz, uint64_t dst, const void *buf, uint64_t len)
{
	struct uffdio_copy c = {.dst = dst,
	                        .src = (uint64_t)(uintptr_t)buf,
	                        .len = len,
	                        .mode = lz->wp ? UFFDIO_COPY_MODE_WP : 0};

	if (ioctl(lz->uffd, UFFDIO_COPY, &c) == 0)
		return (long)len;
	if (c.copy > 0)
		return (long)c.copy;
	return c.copy < 0 ? (long)c.copy : -errno;
}

/*
 * Zeros for [dst, dst + len). With write-protection, a copy of zeros: UFFDIO_ZEROPAGE cannot
 * take the write-protect marker (it refuses a page table entry holding one with EEXIST, Linux
 * 6.18) and would leave the page unprotected, i.e. written for the next checkpoint.
 */
static long zero_in(const struct lazy *lz, const void *zeros, uint64_t dst, uint64_t len)
{
	if (lz->wp)
		return copy_in(lz, dst, zeros, len);
	struct uffdio_zeropage z = {.range = {.start = dst, .len = len}};
	if (ioctl(lz->uffd, UFFDIO_ZEROPAGE, &z) == 0)
		return (long)len;
	if (z.zeropage > 0)
		return (long)z.zeropage;
	return z.zeropage < 0 ? (long)z.zeropage : -errno;
}

static void wake(const struct lazy *lz, uint64_t addr)
{
	struct uffdio_range w = {.start = addr, .len = PG};
	(void)ioctl(lz->uffd, UFFDIO_WAKE, &w);
}

/* A fault at addr: the cluster around it from its run, or zeros where no run is. */
static int serve(struct lazy *lz, uint64_t addr, uint8_t *buf, const uint8_t *zeros)
{
	uint64_t lo = addr & ~(LAZY_CLUSTER - 1), hi = lo + LAZY_CLUSTER;
	struct lazy_piece p = {0};
	bool data = false;
	long n;

	addr &= ~(PG - 1);
	pthread_mutex_lock(&lz->mu);
	size_t i = runs_find(lz, addr);
	if (i < lz->nruns && lz->runs[i].start <= addr) {
		const struct lazy_run *r = &lz->runs[i];
		lo = MAX(lo, r->start);
		hi = MIN(hi, r->end);
		p = (struct lazy_piece){.addr = r->orig + (lo - r->start),
		                        .len = hi - lo,
		                        .file = r->file,
		                        .off = r->off + (lo - r->start),
		                        .urgent = true};
		data = true;
	} else {
		if (i < lz->nruns)
			hi = MIN(hi, lz->runs[i].start);
		if (i > 0)
			lo = MAX(lo, lz->runs[i - 1].end);
	}
	pthread_mutex_unlock(&lz->mu);
	uint64_t at = lo;
	if (data) {
		int r = lz->src.read(lz->src.arg, &p, buf);
		if (r < 0)
			return r;
		if (r == LAZY_EMPTY)
			data = false;
	}
	if (data) {
		n = copy_in(lz, lo, buf, hi - lo);
		if (n < 0 && n != -EAGAIN && n != -ESRCH && hi - lo > PG) {
			at = addr; /* only the page faulted */
			n = copy_in(lz, addr, buf + (addr - lo), PG);
		}
	} else {
		n = zero_in(lz, zeros, lo, hi - lo);
		if (n < 0 && n != -EAGAIN && n != -ESRCH && hi - lo > PG) {
			at = addr;
			n = zero_in(lz, zeros, addr, PG);
		}
	}
	if (n == -ESRCH)
		return (int)n;
	/*
	 * Installed, or there already (-EEXIST), or the layout is changing under an event not read
	 * yet (-EAGAIN): the faulting thread retries, and faults again if it must. A copy wakes
	 * only the range it installed: wake the page faulted in any case.
	 */
	if (n < 0 || at + (uint64_t)n < addr + PG)
		wake(lz, addr);
	return 0;
}

static int apply_event(struct lazy *lz, const struct uffd_msg *m)
{
	int r = 0;

	pthread_rwlock_wrlock(&lz->layout);
	pthread_mutex_lock(&lz->mu);
	if (m->event == UFFD_EVENT_REMAP)
		r = runs_move(lz, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
	else if (m->event == UFFD_EVENT_REMOVE || m->event == UFFD_EVENT_UNMAP)
		r = runs_drop(lz, m->arg.remove.start, m->arg.remove.end);
	pthread_mutex_unlock(&lz->mu);
	pthread_rwlock_unlock(&lz->layout);
	return r;
}

static void *handler_main(void *arg)
{
	struct lazy *lz = arg;
	struct uffd_msg msgs[32];
	uint8_t *buf = mmap(NULL, 2 * LAZY_CLUSTER, PROT_READ | PROT_WRITE,
	                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (buf == MAP_FAILED)
		goto out;
	for (;;) {
		struct pollfd p[3] = {{.fd = lz->uffd, .events = POLLIN},
		                      {.fd = lz->pidfd, .events = POLLIN},
		                      {.fd = lz->stop[0], .events = POLLIN}};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents || p[2].revents || (p[0].revents & (POLLERR | POLLHUP)))
			break;
		ssize_t n = read(lz->uffd, msgs, sizeof(msgs));
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0)
			break;
		int r = 0;
		for (size_t i = 0; r >= 0 && i < (size_t)n / sizeof(msgs[0]); i++) {
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				r = serve(lz, msgs[i].arg.pagefault.address, buf,
				          buf + LAZY_CLUSTER);
			else
				r = apply_event(lz, &msgs[i]);
		}
		if (r == -ESRCH)
			break;
		if (r == -EIO) {
			/* the source of its pages is gone (post-copy lost the source node): its
			 * memory cannot be completed, and a thread waits for a page that will not
			 * come. End it rather than leave it hanging. */
			(void)safe_kill(lz->pid, SIGKILL);
			break;
		}
	}
	munmap(buf, 2 * LAZY_CLUSTER);
out:
	atomic_store(&lz->dead, true);
	lazy_put(lz);
	return NULL;
}

/* Start a thread with every signal blocked: the monitor's own thread waits for the component. */
static int start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = -pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r;
}

struct lazy *lazy_new(int uffd, bool wp, pid_t pid, const struct lazy_source *src, const int *fds,
                      uint32_t nfds, struct ferry_error *err)
{
	struct lazy *lz = calloc(1, sizeof(*lz));
	int r;

	if (!lz) {
		safe_close(uffd);
		ferr(err, -ENOMEM, "out of memory");
		return NULL;
	}
	lz->uffd = uffd;
	lz->wp = wp;
	lz->pid = pid;
	lz->pidfd = lz->stop[0] = lz->stop[1] = lz->done[0] = lz->done[1] = -EBADF;
	pthread_mutex_init(&lz->mu, NULL);
	/* the filler takes it for reading chunk after chunk: an event must not starve */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&lz->layout, &ra);
	pthread_rwlockattr_destroy(&ra);
	atomic_init(&lz->refs, 1);
	lz->src = src ? *src : (struct lazy_source){.read = files_read, .arg = lz};
	lz->fds = calloc(nfds ? nfds : 1, sizeof(int));
	if (!lz->fds) {
		r = ferr(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (; !src && lz->nfds < nfds; lz->nfds++) {
		lz->fds[lz->nfds] = fcntl(fds[lz->nfds], F_DUPFD_CLOEXEC, 3);
		if (lz->fds[lz->nfds] < 0) {
			r = ferr(err, -errno, "pages file %u: %m", lz->nfds);
			goto fail;
		}
	}
	lz->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (lz->pidfd < 0) {
		r = ferr(err, -errno, "pid %d: pidfd_open: %m", pid);
		goto fail;
	}
	if (pipe2(lz->stop, O_CLOEXEC) < 0 || pipe2(lz->done, O_CLOEXEC) < 0) {
		r = ferr(err, -errno, "pipe: %m");
		goto fail;
	}
	r = start_thread(&lz->handler, handler_main, lz);
	if (r < 0) {
		ferr(err, r, "starting the page fault handler: %s", strerror(-r));
		goto fail;
	}
	atomic_fetch_add(&lz->refs, 1); /* the handler's */
	lz->handler_started = true;
	return lz;
fail:
	lazy_destroy(lz);
	return NULL;
}

int lazy_add(struct lazy *lz, uint64_t start, uint64_t end, const struct page_run *runs, size_t n,
             struct ferry_error *err)
{
	struct uffdio_register reg = {.range = {.start = start, .len = end - start},
	                              .mode = UFFDIO_REGISTER_MODE_MISSING |
	                                      (lz->wp ? UFFDIO_REGISTER_MODE_WP : 0)};
	int r = 0;
	size_t first;

	if (ioctl(lz->uffd, UFFDIO_REGISTER, &reg) < 0)
		return ferr(err, -errno, "userfaultfd register 0x%" PRIx64 "-0x%" PRIx64 ": %m",
		            start, end);
	pthread_mutex_lock(&lz->mu);
	first = lz->nruns;
	for (size_t i = 0; r == 0 && i < n; i++) {
		struct lazy_run x = {.start = runs[i].addr,
		                     .end = runs[i].addr + runs[i].npages * PG,
		                     .orig = runs[i].addr,
		                     .file = runs[i].file,
		                     .off = runs[i].off};
		if (x.start < start || x.end > end || x.start >= x.end)
			r = -EPROTO;
		else if (lz->nruns > first && lz->runs[lz->nruns - 1].end == x.start &&
		         lz->runs[lz->nruns - 1].file == x.file &&
		         lz->runs[lz->nruns - 1].off + (x.start - lz->runs[lz->nruns - 1].start) ==
		                 x.off)
			lz->runs[lz->nruns - 1].end = x.end; /* contiguous in memory and file */
		else
			r = runs_insert(lz, lz->nruns, &x);
	}
	if (r == 0)
		qsort(lz->runs, lz->nruns, sizeof(*lz->runs), cmp_run);
	pthread_mutex_unlock(&lz->mu);
	if (r < 0)
		return ferr(err, r, "mapping 0x%" PRIx64 "-0x%" PRIx64 ": page runs: %s", start,
		            end, strerror(-r));
	return 0;
}

int lazy_fd(const struct lazy *lz)
{
	return lz->uffd;
}

bool lazy_tracks(const struct lazy *lz)
{
	return lz->wp;
}

/* ---- the filler ---- */

static bool page_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)(const void *)p;
	for (size_t i = 0; i < PG / sizeof(*w); i++)
		if (w[i])
			return false;
	return true;
}

/* Install buf's [*done, end) at dst + *done on, narrowing down where the layout changed. */
static int copy_range(struct lazy *lz, uint64_t dst, const uint8_t *buf, uint64_t *done,
                      uint64_t end)
{
	for (uint64_t want = end - *done; *done < end;) {
		long n = copy_in(lz, dst + *done, buf + *done, MIN(want, end - *done));
		if (n > 0) {
			*done += (uint64_t)n;
			want = end - *done;
		} else if (n == -EEXIST) {
			*done += PG; /* the handler was first */
		} else if (n == -ENOENT || n == -EINVAL) {
			/* not registered there (a mapping split or unmapped since): narrow down */
			if (want > PG)
				want = MAX(PG, (want / 2) & ~(PG - 1));
			else
				*done += PG;
		} else {
			return (int)n;
		}
	}
	return 0;
}

/*
 * Install the first chunk of the first run. Returns 1 if done (nothing left), 0 to go on,
 * -ESRCH when the component is gone, -EAGAIN to try again after a moment, other -errno to stop.
 */
static int fill_one(struct lazy *lz, uint8_t *buf)
{
	uint64_t done = 0;
	int r = 0;

	pthread_rwlock_rdlock(&lz->layout);
	pthread_mutex_lock(&lz->mu);
	if (lz->nruns == 0) {
		pthread_mutex_unlock(&lz->mu);
		pthread_rwlock_unlock(&lz->layout);
		return 1;
	}
	const struct lazy_run *x = &lz->runs[0];
	uint64_t dst = x->start, len = MIN(x->end - x->start, LAZY_CHUNK);
	struct lazy_piece p = {.addr = x->orig, .len = len, .file = x->file, .off = x->off};
	pthread_mutex_unlock(&lz->mu);
	/* only this thread removes from the front of the table, and the layout is held: run 0
	 * stays as it is until the unlock below */
	r = lz->src.read(lz->src.arg, &p, buf);
	if (r == LAZY_EMPTY) {
		done = len; /* left unfilled: a fault there gets zeros (serve) */
		r = 0;
	}
	while (r == 0 && done < len) {
		/* pages of zeros are left unfilled too: installing them would only allocate
		 * memory (a fault there gets zeros); the pages with data go in */
		while (done < len && page_zero(buf + done))
			done += PG;
		uint64_t end = done;
		while (end < len && !page_zero(buf + end))
			end += PG;
		r = copy_range(lz, dst, buf, &done, end);
	}
	if (done) {
		pthread_mutex_lock(&lz->mu);
		struct lazy_run *y = &lz->runs[0];
		y->start += done;
		y->orig += done;
		y->off += done;
		if (y->start >= y->end) {
			memmove(&lz->runs[0], &lz->runs[1], (lz->nruns - 1) * sizeof(*y));
			lz->nruns--;
		}
		pthread_mutex_unlock(&lz->mu);
	}
	pthread_rwlock_unlock(&lz->layout);
	return r;
}

static void *filler_main(void *arg)
{
	struct lazy *lz = arg;
	uint8_t *buf =
	        mmap(NULL, LAZY_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int r = buf == MAP_FAILED ? -ENOMEM : 0;

	while (r == 0 && !atomic_load(&lz->dead)) {
		r = fill_one(lz, buf);
		if (r == -EAGAIN) {
			usleep(100); /* an event the handler is about to read */
			r = 0;
		}
	}
	if (buf != MAP_FAILED)
		munmap(buf, LAZY_CHUNK);
	/* every run is in (r == 1), or it ends without: checkpoints stop waiting either way */
	unlink(lz->record);
	lz->done[1] = safe_close(lz->done[1]);
	lazy_put(lz);
	return NULL;
}

int lazy_fill(struct lazy *lz, const struct ferry_runtime *rt, const char *name,
              struct ferry_error *err)
{
	char dir[PATH_MAX], text[128];
	struct stat sb;
	pthread_t t;
	int r;

	runtime_dir(rt, name, dir, sizeof(dir));
	snprintf(lz->record, sizeof(lz->record), "%s/%s", dir, LAZY_RECORD);
	if (fstat(lz->done[0], &sb) < 0)
		return ferr(err, -errno, "pipe: %m");
	snprintf(text, sizeof(text), "pid=%d\nholder=%d\nfd=%d\nid=%" PRIu64 "\n", (int)lz->pid,
	         (int)getpid(), lz->done[0], (uint64_t)sb.st_ino);
	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", lz->record);
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	r = fd < 0 ? -errno : write_full(fd, text, strlen(text));
	if (r == 0 && rename(tmp, lz->record) < 0)
		r = -errno;
	if (r < 0)
		return ferr(err, r, "%s: %s", lz->record, strerror(-r));
	atomic_fetch_add(&lz->refs, 1);
	r = start_thread(&t, filler_main, lz);
	if (r < 0) {
		atomic_fetch_sub(&lz->refs, 1);
		unlink(lz->record);
		return ferr(err, r, "starting the page filler: %s", strerror(-r));
	}
	pthread_detach(t);
	pthread_detach(lz->handler);
	lz->handler_started = false;
	lazy_put(lz); /* the caller's reference: the threads own it now */
	return 0;
}

struct lazy *lazy_free(struct lazy *lz)
{
	if (!lz)
		return NULL;
	if (lz->handler_started) {
		(void)write_full(lz->stop[1], "x", 1);
		pthread_join(lz->handler, NULL);
	}
	lz->wp = false; /* nobody tracks through it: close it too */
	lazy_put(lz);
	return NULL;
}

void lazy_wait(const struct ferry_runtime *rt, const char *name, pid_t pid)
{
	char dir[PATH_MAX], path[PATH_MAX + 8], comm[64] = "";
	_cleanup_free_ char *text = NULL, *ctext = NULL;
	long long cpid = 0, holder = 0, fdno = -1;
	unsigned long long id = 0;
	struct stat sb;

	runtime_dir(rt, name, dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/%s", dir, LAZY_RECORD);
	if (read_file(path, &text, NULL) < 0 ||
	    sscanf(text, "pid=%lld holder=%lld fd=%lld id=%llu", &cpid, &holder, &fdno, &id) != 4 ||
	    cpid != pid || holder <= 0 || fdno < 0)
		return;
	/* the monitor of the component: a record left by an earlier one names another process */
	snprintf(path, sizeof(path), "/proc/%lld/comm", holder);
	if (read_file(path, &ctext, NULL) == 0)
		snprintf(comm, sizeof(comm), "%.*s", (int)strcspn(ctext, "\n"), ctext);
	if (strcmp(comm, "ferry-monitor") != 0)
		return;
	_cleanup_close_ int fd = pidfd_getfd_of((pid_t)holder, (int)fdno);
	if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISFIFO(sb.st_mode) || (uint64_t)sb.st_ino != id)
		return;
	/* hang-up once the filler closed the only write end */
	struct pollfd p = {.fd = fd, .events = POLLIN};
	while (poll(&p, 1, -1) < 0 && errno == EINTR)
		;
}
