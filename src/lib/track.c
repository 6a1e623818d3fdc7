/* Dirty-page tracking: a userfaultfd made inside the component, PAGEMAP_SCAN from outside. */
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "lazy.h"
#include "model.h"
#include "runtime.h"
#include "track.h"
#include "util.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define TRACK_FEATURES (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
#define TASK_TOP       0x7ffffffff000ULL
/* Kept small: read-only scans with long vectors returned some ranges twice on this kernel. */
#define SCAN_VEC 256
/* The holder keeps the userfaultfd at this fd number. */
#define HOLDER_FD 3

static void track_path(const struct ferry_runtime *rt, const char *name, char *buf, size_t len)
{
	char dir[PATH_MAX];

	runtime_dir(rt, name, dir, sizeof(dir));
	snprintf(buf, len, "%s/track", dir);
}

static bool is_uffd(int fd)
{
	char path[64], target[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return false;
	target[n] = '\0';
	return strstr(target, "userfaultfd") != NULL;
}

int track_open_pagemap(struct track *tk, pid_t pid, struct ferry_error *err)
{
	char path[64];

	if (tk->pagemap >= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	tk->pagemap = open(path, O_RDONLY | O_CLOEXEC);
	if (tk->pagemap < 0)
		return ferr(err, -errno, "%s: %m", path);
	return 0;
}

int track_attach(const struct ferry_runtime *rt, const char *name, pid_t pid, struct track *tk,
                 char *why, size_t whylen)
{
	char path[PATH_MAX], comm[32] = "";
	_cleanup_free_ char *text = NULL, *ctext = NULL;
	long long hpid = 0, cpid = 0, fdno = -1;
	unsigned long long id = 0, last = 0;
	struct stat sb;

	/* a lazily restored component: its pages are all in before anyone looks for them */
	lazy_wait(rt, name, pid);
	track_path(rt, name, path, sizeof(path));
	if (read_file(path, &text, NULL) < 0) {
		snprintf(why, whylen, "no dirty tracking yet (first checkpoint of this run)");
		return -ENOENT;
	}
	if (sscanf(text, "pid=%lld holder=%lld fd=%lld id=%llu last=%llx", &cpid, &hpid, &fdno, &id,
	           &last) != 5 ||
	    hpid <= 0 || fdno < 0) {
		snprintf(why, whylen, "%s: unreadable", path);
		return -EPROTO;
	}
	if (cpid != pid) {
		snprintf(why, whylen, "the tracking recorded is of another process (pid %lld)",
		         cpid);
		return -ESTALE;
	}
	snprintf(path, sizeof(path), "/proc/%lld/comm", hpid);
	if (read_file(path, &ctext, NULL) == 0)
		snprintf(comm, sizeof(comm), "%.*s", (int)strcspn(ctext, "\n"), ctext);
	/* a holder, or the monitor of a restored component (track_restored) */
	if (strcmp(comm, "ferry-track") != 0 && strcmp(comm, "ferry-monitor") != 0) {
		snprintf(why, whylen, "the tracking holder (pid %lld) is gone", hpid);
		return -ESRCH;
	}
	int fd = pidfd_getfd_of((pid_t)hpid, (int)fdno);
	if (fd < 0) {
		snprintf(why, whylen, "the tracking holder (pid %lld): fd %lld: %s", hpid, fdno,
		         strerror(-fd));
		return fd;
	}
	if (fstat(fd, &sb) < 0 || (uint64_t)sb.st_ino != id || !is_uffd(fd)) {
		safe_close(fd);
		snprintf(why, whylen, "the tracking holder (pid %lld) holds another file", hpid);
		return -ESTALE;
	}
	tk->uffd = fd;
	tk->id = id;
	tk->last = last;
	tk->holder = (pid_t)hpid;
	tk->holder_fd = (int)fdno;
	tk->fresh = false;
	struct ferry_error e = {0};
	int r = track_open_pagemap(tk, pid, &e);
	if (r < 0) {
		snprintf(why, whylen, "%s", e.msg);
		tk->uffd = safe_close(tk->uffd);
		return r;
	}
	return 0;
}

int track_uffd_api(int fd, uint64_t features)
{
	struct uffdio_api api = {.api = UFFD_API, .features = features};

	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	if ((api.features & features) != features)
		return -ENOTSUP;
	return 0;
}

int track_inject_uffd(struct tracee *main, pid_t pid, long flags, uint64_t features, int *ret_fd,
                      struct ferry_error *err)
{
	long fd_in = -1, ignored;
	int r;

	r = tracee_syscall(main, &fd_in, NULL, SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | flags, 0,
	                   0, 0, 0, 0, err);
	if (r < 0)
		return ferr_prefix(err, "pid %d: injected userfaultfd", pid);
	if (fd_in < 0)
		return ferr(err, (int)fd_in, "pid %d: userfaultfd: %s", pid, strerror((int)-fd_in));
	int fd = pidfd_getfd_of(pid, (int)fd_in);
	r = tracee_syscall(main, &ignored, NULL, SYS_close, (uint64_t)fd_in, 0, 0, 0, 0, 0, err);
	if (fd < 0)
		return ferr(err, fd, "pid %d: pidfd_getfd of its userfaultfd: %s", pid,
		            strerror(-fd));
	if (r < 0) {
		safe_close(fd);
		return ferr_prefix(err, "pid %d: closing the injected userfaultfd", pid);
	}
	if (track_uffd_api(fd, features) < 0) {
		safe_close(fd);
		return ferr(err, -ENOTSUP, "pid %d: userfaultfd without features 0x%" PRIx64, pid,
		            features);
	}
	*ret_fd = fd;
	return 0;
}

int track_start(struct tracee *main, pid_t pid, struct track *tk, struct ferry_error *err)
{
	struct stat sb;
	int fd = -EBADF;
	int r = track_inject_uffd(main, pid, UFFD_USER_MODE_ONLY, TRACK_FEATURES, &fd, err);

	if (r == -ENOTSUP)
		return ferr(err, r,
		            "pid %d: userfaultfd without asynchronous write-protection "
		            "(WP_ASYNC, Linux >= 6.7): %s",
		            pid, strerror(-r));
	if (r < 0)
		return r;
	if (fstat(fd, &sb) < 0) {
		r = ferr(err, -errno, "pid %d: userfaultfd: %m", pid);
		safe_close(fd);
		return r;
	}
	r = track_open_pagemap(tk, pid, err);
	if (r < 0) {
		safe_close(fd);
		return r;
	}
	tk->uffd = fd;
	tk->id = (uint64_t)sb.st_ino;
	tk->last = 0;
	tk->holder = 0;
	tk->fresh = true;
	return 0;
}

int track_register(const struct track *tk, uint64_t start, uint64_t end)
{
	struct uffdio_register reg = {.range = {.start = start, .len = end - start},
	                              .mode = UFFDIO_REGISTER_MODE_WP};

	return ioctl(tk->uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

/*
 * One PAGEMAP_SCAN pass over [start, end), calling back for each region found. Only pages that
 * are there count: protecting a hole puts a marker in it (WP_UNPOPULATED), page tables and
 * all, which over a sparse reservation (AddressSanitizer's shadow, TiBs) is gigabytes of kernel
 * memory and minutes; a page that comes into a hole later is not write-protected, so it shows
 * as written, as it should.
 */
static int scan(int pagemap, uint64_t flags, uint64_t mask, uint64_t inverted, uint64_t start,
                uint64_t end, int (*fn)(void *arg, uint64_t s, uint64_t e), void *arg)
{
	struct page_region regs[SCAN_VEC];

	while (start < end) {
		struct pm_scan_arg a = {
		        .size = sizeof(a),
		        .flags = flags,
		        .start = start,
		        .end = end,
		        .vec = (uint64_t)(uintptr_t)regs,
		        .vec_len = ARRAY_SIZE(regs),
		        .category_inverted = inverted,
		        .category_mask = mask,
		        .category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		        .return_mask = mask,
		};
		long n = ioctl(pagemap, PAGEMAP_SCAN, &a);
		if (n < 0)
			return -errno;
		for (long i = 0; i < n; i++) {
			int r = fn(arg, MAX(regs[i].start, start), regs[i].end);
			if (r < 0)
				return r;
		}
		if (a.walk_end <= start)
			break;
		start = a.walk_end;
	}
	return 0;
}

struct range_list {
	uint64_t **v;
	size_t *n;
};

static int add_range(void *arg, uint64_t s, uint64_t e)
{
	struct range_list *l = arg;

	return l->v ? ranges_push(l->v, l->n, s, e) : 0;
}

int track_collect(const struct track *tk, uint64_t start, uint64_t end, uint64_t **ranges,
                  size_t *n, struct ferry_error *err)
{
	struct range_list l = {ranges, n};
	int r = scan(tk->pagemap, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0,
	             start, end, add_range, &l);
	if (r < 0)
		return ferr(err, r,
		            "PAGEMAP_SCAN (collect and protect) 0x%" PRIx64 "-0x%" PRIx64 ": %s",
		            start, end, strerror(-r));
	return 0;
}

static int add_bytes(void *arg, uint64_t s, uint64_t e)
{
	*(uint64_t *)arg += e - s;
	return 0;
}

uint64_t track_estimate(const struct track *tk)
{
	uint64_t bytes = 0;

	if (tk->pagemap < 0)
		return 0;
	/* written and not a file page: what a collect would return, plus new mappings' data */
	if (scan(tk->pagemap, 0, PAGE_IS_WRITTEN | PAGE_IS_FILE, PAGE_IS_FILE, 0, TASK_TOP,
	         add_bytes, &bytes) < 0)
		return 0;
	return bytes;
}

/* The holder: keeps the userfaultfd open until the component exits. */
/*
 * The holder: keeps the userfaultfd open until the component exits. It reports its pid only
 * once it has closed every other fd it inherited: the image directory's lock among them, which
 * a holder still holding it would make the next checkpoint find busy.
 */
_noreturn_ static void holder_main(int uffd, int pidfd, int report)
{
	int hi_uffd = fcntl(uffd, F_DUPFD, 100), hi_pidfd = fcntl(pidfd, F_DUPFD, 100);
	int hi_report = fcntl(report, F_DUPFD, 100);
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (hi_uffd < 0 || hi_pidfd < 0 || hi_report < 0 || null < 0)
		_exit(1);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL); /* not the blocked signals of a ferry --every */
	(void)setsid();
	(void)prctl(PR_SET_NAME, "ferry-track");
	if (dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0 ||
	    dup2(hi_uffd, HOLDER_FD) < 0 || dup2(hi_pidfd, HOLDER_FD + 1) < 0 ||
	    dup2(hi_report, HOLDER_FD + 2) < 0)
		_exit(1);
	syscall(SYS_close_range, HOLDER_FD + 3, ~0U, 0);
	if (chdir("/") < 0) {
		/* only to not pin a mount */
	}
	pid_t me = getpid();
	(void)write_full(HOLDER_FD + 2, &me, sizeof(me));
	close(HOLDER_FD + 2);
	struct pollfd p = {.fd = HOLDER_FD + 1, .events = POLLIN};
	for (;;)
		if (poll(&p, 1, -1) > 0)
			_exit(0);
}

static int spawn_holder(int uffd, pid_t pid, pid_t *ret, struct ferry_error *err)
{
	_cleanup_close_ int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	int p[2], status;
	pid_t holder = 0;

	if (pidfd < 0)
		return ferr(err, -errno, "pid %d: pidfd_open: %m", pid);
	if (pipe2(p, O_CLOEXEC) < 0)
		return ferr(err, -errno, "pipe: %m");
	pid_t mid = fork();
	if (mid == 0) {
		/* double fork: the holder is nobody's child and outlives us */
		pid_t h = fork();
		if (h == 0)
			holder_main(uffd, pidfd, p[1]);
		_exit(h > 0 ? 0 : 1);
	}
	safe_close(p[1]);
	/* EOF (0 bytes) if the holder died before reporting */
	int r = mid < 0 ? -errno : read_full(p[0], &holder, sizeof(holder));
	safe_close(p[0]);
	if (mid > 0)
		while (waitpid(mid, &status, 0) < 0 && errno == EINTR)
			;
	if (r < 0 || holder <= 0)
		return ferr(err, r < 0 ? r : -ECHILD, "starting the tracking holder: %s",
		            strerror(r < 0 ? -r : ECHILD));
	*ret = holder;
	return 0;
}

int track_keep(const struct ferry_runtime *rt, const char *name, pid_t pid, struct track *tk,
               struct ferry_error *err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8], text[256];
	int r;

	if (!tk->holder) {
		r = spawn_holder(tk->uffd, pid, &tk->holder, err);
		if (r < 0)
			return r;
		tk->holder_fd = HOLDER_FD;
	}
	track_path(rt, name, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int n = snprintf(text, sizeof(text),
	                 "pid=%d\nholder=%d\nfd=%d\nid=%" PRIu64 "\nlast=%" PRIx64 "\n", pid,
	                 tk->holder, tk->holder_fd, tk->id, tk->last);
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return ferr(err, -errno, "%s: %m", tmp);
	r = write_full(fd, text, (size_t)n);
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	return 0;
}

/*
 * Register (skip_anon: but the anonymous mappings, registered already) and protect every private
 * mapping of p, and record this process as the holder of tk's userfaultfd.
 */
static int restored_keep(const struct ferry_runtime *rt, const char *name, pid_t pid,
                         const struct process *p, uint64_t capture_id, struct track *tk,
                         bool skip_anon, struct ferry_error *err)
{
	int r = 0;

	for (size_t i = 0; r == 0 && i < p->nvmas; i++) {
		const struct vma *v = &p->vmas[i];
		if (v->kind != VMA_ANON && v->kind != VMA_FILE_PRIVATE)
			continue;
		/* registered for missing pages and write-protection by the lazy restore: every
		 * page of it is installed write-protected (UFFDIO_COPY_MODE_WP), none is there
		 * yet, so there is nothing to protect (over 1 GiB that pass cost 5 ms of a
		 * migration's downtime) */
		if (skip_anon && v->kind == VMA_ANON)
			continue;
		/* a mapping that cannot be tracked is saved whole by the next checkpoint */
		if (track_register(tk, v->start, v->end) == 0)
			r = track_collect(tk, v->start, v->end, NULL, NULL, err);
	}
	if (r == 0) {
		tk->holder = getpid();
		tk->holder_fd = tk->uffd;
		tk->last = capture_id;
		r = track_keep(rt, name, pid, tk, err);
	}
	return r;
}

int track_restored(const struct ferry_runtime *rt, const char *name, struct tracee *main, pid_t pid,
                   const struct process *p, uint64_t capture_id, struct ferry_error *err)
{
	struct track tk = TRACK_INIT;
	int r = track_start(main, pid, &tk, err);

	if (r == 0)
		r = restored_keep(rt, name, pid, p, capture_id, &tk, false, err);
	if (r < 0) {
		track_release(&tk);
		return r;
	}
	/* the userfaultfd stays open in this process for as long as it lives */
	tk.pagemap = safe_close(tk.pagemap);
	return 0;
}

int track_restored_uffd(const struct ferry_runtime *rt, const char *name, pid_t pid,
                        const struct process *p, uint64_t capture_id, int uffd,
                        struct ferry_error *err)
{
	struct track tk = TRACK_INIT;
	struct stat sb;

	if (fstat(uffd, &sb) < 0)
		return ferr(err, -errno, "userfaultfd: %m");
	int r = track_open_pagemap(&tk, pid, err);
	if (r < 0)
		return r;
	tk.uffd = uffd;
	tk.id = (uint64_t)sb.st_ino;
	tk.fresh = true;
	/* the anonymous mappings are registered for missing pages and write-protection both:
	 * registering them again for write-protection alone would drop the missing mode */
	r = restored_keep(rt, name, pid, p, capture_id, &tk, true, err);
	tk.pagemap = safe_close(tk.pagemap);
	return r;
}

void track_release(struct track *tk)
{
	tk->uffd = safe_close(tk->uffd);
	tk->pagemap = safe_close(tk->pagemap);
}

int track_probe(char *detail, size_t len)
{
	const size_t pg = 4096, npg = 4;
	_cleanup_close_ int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	struct track tk = {.uffd = fd, .pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)};
	uint64_t *ranges = NULL;
	size_t n = 0;
	int ok = 0;

	uint8_t *m =
	        mmap(NULL, pg * npg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd < 0 || tk.pagemap < 0 || m == MAP_FAILED) {
		snprintf(detail, len, "userfaultfd: %s", strerror(errno));
		goto out;
	}
	memset(m, 1, pg * npg);
	uint64_t s = (uint64_t)(uintptr_t)m, e = s + pg * npg;
	int r = track_uffd_api(fd, TRACK_FEATURES);
	if (r == 0)
		r = track_register(&tk, s, e);
	if (r == 0)
		r = track_collect(&tk, s, e, NULL, &n, NULL); /* protect all */
	if (r < 0) {
		snprintf(detail, len, "asynchronous write-protection (WP_ASYNC, Linux >= 6.7): %s",
		         strerror(-r));
		goto out;
	}
	m[2 * pg] = 2; /* exactly one page written */
	r = track_collect(&tk, s, e, &ranges, &n, NULL);
	ok = r == 0 && n == 1 && ranges[0] == s + 2 * pg && ranges[1] == s + 3 * pg;
	snprintf(detail, len, "%s",
	         ok ? "written pages found and protected again in one step (uffd-wp async + "
	              "PAGEMAP_SCAN)"
	            : "PAGEMAP_SCAN did not report exactly the page written");
out:
	free(ranges);
	if (m != MAP_FAILED)
		munmap(m, pg * npg);
	safe_close(tk.pagemap);
	return ok;
}

int track_marker_type(void)
{
	const size_t pg = 4096;
	_cleanup_close_ int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	struct track tk = {.uffd = fd, .pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)};
	uint64_t entry = 0;
	int type = -1;

	uint8_t *m = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd >= 0 && tk.pagemap >= 0 && m != MAP_FAILED) {
		uint64_t s = (uint64_t)(uintptr_t)m;
		m[0] = 1; /* a page table; the second page stays empty and gets a marker */
		if (track_uffd_api(fd, TRACK_FEATURES) == 0 &&
		    track_register(&tk, s, s + 2 * pg) == 0 &&
		    track_collect(&tk, s, s + 2 * pg, NULL, NULL, NULL) == 0 &&
		    pread_full(tk.pagemap, &entry, sizeof(entry), (off_t)((s + pg) / pg * 8)) ==
		            0 &&
		    (entry >> 62 & 1))
			type = (int)(entry & 31);
	}
	if (m != MAP_FAILED)
		munmap(m, 2 * pg);
	safe_close(tk.pagemap);
	return type;
}
