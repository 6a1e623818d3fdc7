/* Restore: the helper process that becomes the component, driven from its monitor by ptrace. */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/sched.h>

#include "fds.h"
#include "lazy.h"
#include "mem.h"
#include "procfs.h"
#include "restore.h"
#include "runtime.h"
#include "session.h"
#include "task.h"
#include "threads.h"
#include "track.h"
#include "util.h"

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif

/* Fixed temporary fd slots in the helper, from temp_lo up. */
enum {
	SLOT_SYNC = 0,
	SLOT_REPORT = 1,
	SLOT_PAGES = 2,
	SLOT_EXE = 3,
	SLOT_UFFD = 4, /* RESTORE_LAZY: the userfaultfd the helper made of its own memory */
	SLOT_FIRST_FREE = 5
};
/* Where the helper parks inherited fds while it clears its table. */
#define STAGING 4000

struct restore_arg {
	const struct ferry_runtime *rt;
	const char *name;
	const struct component *c;
	int *pages_fds;  /* the reader's, inherited by the monitor and the helper */
	uint32_t npages; /* pages files of the image */
	int *pages_slot; /* where each is placed in the helper (0: temp_lo + SLOT_PAGES) */
	int temp_lo;
	int **vma_fd;      /* per process, per vma */
	int *shmem_fd;     /* per shmem object */
	int share_lo;      /* the open file descriptions of a tree (fds_restore_shared) */
	int stash_lo;      /* fds restored once for several entries park here */
	uint64_t *scratch; /* per process: where the restorer's scratch pages go (free in it) */
	const struct proc_map *maps; /* the monitor's own mappings (the helper's vdso and vvar) */
	size_t nmaps;
	const struct restore_opts *opts;
	struct lazy *lz; /* RESTORE_LAZY: the pages of anonymous mappings come after the start */
	struct ferry_restore_stats stats;
	pid_t monitor; /* the monitor's pid (the helper's parent), where relays go (relay.c) */
	bool ns_ready; /* a helper made in advance: its namespaces are set up already */
};

long rs_sys(struct restorer *rs, const char *what, long nr, uint64_t a0, uint64_t a1, uint64_t a2,
            uint64_t a3, uint64_t a4, uint64_t a5, struct ferry_error *err)
{
	long ret;
	int r = tracee_syscall(&rs->main, &ret, NULL, nr, a0, a1, a2, a3, a4, a5, err);
	if (r < 0)
		return ferr_prefix(err, "%s", what);
	if (ret < 0 && ret > -4096)
		return ferr(err, (int)ret, "%s: %s", what, strerror((int)-ret));
	return ret;
}

int rs_batch_start(struct restorer *rs, struct rs_batch *b, uint64_t table, bool write_code,
                   struct ferry_error *err)
{
	int r = b->n ? tracee_syscalls_start(b->t, rs->scratch + RS_CODE_OFF, table, b->calls, b->n,
	                                     write_code, err)
	             : 0;
	if (r < 0)
		ferr_prefix(err, "%s (of %zu calls)", b->what[0], b->n);
	return r;
}

int rs_batch_finish(struct restorer *rs, struct rs_batch *b, uint64_t table,
                    struct tracee_clones *cl, struct ferry_error *err)
{
	size_t done = 0, n = b->n;
	int r;

	b->n = 0;
	if (n == 0)
		return 0;
	r = tracee_syscalls_finish(b->t, rs->scratch + RS_CODE_OFF, table, b->calls, n, &done, cl,
	                           err);
	if (r < 0)
		return ferr_prefix(err, "%s (of %zu calls)", b->what[0], n);
	if (done > 0 && b->calls[done - 1].ret < 0 && b->calls[done - 1].ret > -4096) {
		int e = (int)b->calls[done - 1].ret;
		const struct tracee_call *c = &b->calls[done - 1];
		return ferr(err, e, "%s (0x%" PRIx64 ", 0x%" PRIx64 "): %s", b->what[done - 1],
		            c->a[0], c->a[1], strerror(-e));
	}
	if (done != n)
		return ferr(err, -EPROTO, "%zu of %zu calls ran", done, n);
	return 0;
}

int rs_batch_run(struct restorer *rs, struct rs_batch *b, struct ferry_error *err)
{
	uint64_t table = rs->scratch + MODEL_PAGE;
	int r = rs_batch_start(rs, b, table, true, err);
	if (r < 0) {
		b->n = 0;
		return r;
	}
	return rs_batch_finish(rs, b, table, NULL, err);
}

int rs_batch_add(struct restorer *rs, struct rs_batch *b, const char *what, long nr, uint64_t a0,
                 uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                 struct ferry_error *err)
{
	if (b->n == RS_BATCH_MAX) {
		int r = rs_batch_run(rs, b, err);
		if (r < 0)
			return r;
	}
	b->what[b->n] = what;
	b->calls[b->n++] = (struct tracee_call){.nr = nr, .a = {a0, a1, a2, a3, a4, a5}};
	return 0;
}

/* ---- the helper: plain C in the new namespaces, before it is seized ---- */

/* Copy len bytes between files: in the kernel where it can, through a buffer where the two
 * files are on different file systems (copy_file_range gives EXDEV). */
static int copy_range(int in_fd, off_t in, int out_fd, off_t out, size_t len)
{
	char buf[65536];

	while (len > 0) {
		loff_t i = in, o = out;
		ssize_t n = copy_file_range(in_fd, &i, out_fd, &o, len, 0);
		if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP)) {
			size_t chunk = MIN(len, sizeof(buf));
			int r = pread_full(in_fd, buf, chunk, in);
			if (r == 0)
				r = pwrite_full(out_fd, buf, chunk, out);
			if (r < 0)
				return r;
			n = (ssize_t)chunk;
		} else if (n <= 0) {
			return n < 0 ? -errno : -EIO;
		}
		in += n;
		out += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * A shared anonymous object as the kernel makes one (its mappings show "/dev/zero (deleted)"),
 * but as an fd that several processes map: mapped here once, opened through map_files.
 */
static int shared_anon(uint64_t size, struct ferry_error *err)
{
	void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char path[96];

	if (m == MAP_FAILED)
		return ferr(err, -errno, "shared anonymous mapping of %" PRIu64 " bytes: %m", size);
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)m,
	         (unsigned long)m + size);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	int r = fd < 0 ? -errno : 0;
	munmap(m, size);
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	return fd;
}

/*
 * A file that was deleted while mapped: made again at its path and unlinked at once, so that
 * its mappings show the same name; if something took that path meanwhile, an unnamed file in
 * the same directory (O_TMPFILE).
 */
static int deleted_file(const char *path, struct ferry_error *err)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0) {
		(void)unlink(path);
		return fd;
	}
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = '\0';
	fd = open(dir, O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
	if (fd < 0)
		return ferr(err, -errno, "remaking deleted file %s: %m", path);
	return fd;
}

/*
 * A SysV segment with its id: the one still there (its processes ended and nobody removed it)
 * is taken, and filled from the image if nothing has it attached; otherwise it is made again
 * with its key and id (kernel.shm_next_id). Its processes map it through an fd of its file
 * (/proc/self/map_files of an attachment here), which attaches them as shmat does.
 */
static int sysv_segment(const struct shmem *s, int pages_fd, struct ferry_error *err)
{
	struct shmid_ds ds;
	int id = s->sysv_id, r = 0;
	bool fill = true;

	if (shmctl(id, IPC_STAT, &ds) == 0 && !(s->sysv_mode & SHM_DEST) &&
	    ds.shm_perm.__key == s->sysv_key && ds.shm_segsz == s->size) {
		fill = ds.shm_nattch == 0;
	} else {
		char want[16];
		int n = snprintf(want, sizeof(want), "%d", id);
		_cleanup_close_ int nf = open("/proc/sys/kernel/shm_next_id", O_WRONLY | O_CLOEXEC);
		if (nf < 0 || write(nf, want, (size_t)n) != n)
			return ferr(err, -errno, "SysV segment %d: kernel.shm_next_id: %m", id);
		int got = shmget(s->sysv_key, s->size,
		                 IPC_CREAT | IPC_EXCL | (int)(s->sysv_mode & 0777));
		if (got < 0)
			return ferr(err, -errno, "SysV segment %d (key %#x): shmget: %m", id,
			            (unsigned)s->sysv_key);
		if (got != id) {
			(void)shmctl(got, IPC_RMID, NULL);
			return ferr(err, -EBUSY, "SysV segment %d: made with id %d instead", id,
			            got);
		}
	}
	uint8_t *a = shmat(id, NULL, 0);
	if (a == (void *)-1)
		return ferr(err, -errno, "SysV segment %d: shmat: %m", id);
	for (size_t i = 0; fill && r == 0 && i < s->nruns; i++)
		r = pread_full(pages_fd, a + s->runs[i].addr,
		               MIN(s->runs[i].npages * MODEL_PAGE, s->size - s->runs[i].addr),
		               (off_t)s->runs[i].off);
	char path[96];
	uint64_t len = (s->size + MODEL_PAGE - 1) & ~(MODEL_PAGE - 1);
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)a,
	         (unsigned long)(a + len));
	int fd = r == 0 ? open(path, O_RDWR | O_CLOEXEC) : -1;
	if (r == 0 && fd < 0)
		r = -errno;
	shmdt(a);
	if (r < 0)
		return ferr(err, r, "SysV segment %d: %s", id, strerror(-r));
	return fd;
}

static int helper_shmem(const struct shmem *s, int pages_fd, struct ferry_error *err)
{
	if (s->kind == SHMEM_SYSV)
		return sysv_segment(s, pages_fd, err);

	int fd = s->kind == SHMEM_ANON ? shared_anon(s->size, err)
	         : s->kind == SHMEM_DELETED
	                 ? deleted_file(s->name ? s->name : "/", err)
	                 : memfd_create(s->name ? s->name : "ferry-shared", MFD_CLOEXEC);
	if (fd < 0)
		return s->kind != SHMEM_MEMFD ? fd : ferr(err, -errno, "memfd_create: %m");
	if (s->kind != SHMEM_ANON && ftruncate(fd, (off_t)s->size) < 0) {
		int r = -errno;
		safe_close(fd);
		return ferr(err, r, "memfd size %" PRIu64 ": %s", s->size, strerror(-r));
	}
	for (size_t i = 0; i < s->nruns; i++) {
		int r = copy_range(pages_fd, (off_t)s->runs[i].off, fd, (off_t)s->runs[i].addr,
		                   s->runs[i].npages * MODEL_PAGE);
		if (r < 0) {
			safe_close(fd);
			return ferr(err, r, "filling memfd: %s", strerror(-r));
		}
	}
	return fd;
}

/* Put fd at exactly slot (closing what was there). */
static int place(int fd, int slot, struct ferry_error *err)
{
	if (fd == slot)
		return 0;
	if (dup2(fd, slot) < 0)
		return ferr(err, -errno, "dup2 to fd %d: %m", slot);
	safe_close(fd);
	return 0;
}

/*
 * What the helper can do to its own memory before the monitor drives it, saving the monitor a
 * stop of it each (none of it is required: the monitor sees what was done and does the rest):
 * its rseq registration goes (the kernel would write to an area about to be unmapped), the
 * restorer's scratch pages are mapped where the image leaves room, and for a lazy restore a
 * userfaultfd of its memory waits at its slot.
 */
static void helper_own_memory(struct restore_arg *a, size_t idx)
{
	if (__rseq_size > 0) {
		void *area = (char *)__builtin_thread_pointer() + __rseq_offset;
		/* unregistering names the length registered: glibc's is one of these */
		const unsigned lens[] = {__rseq_size, 32, 20};
		for (size_t i = 0; i < 3; i++)
			if (syscall(SYS_rseq, area, lens[i], RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == 0)
				break;
	}
	uint64_t sc = a->scratch[idx];
	if (sc &&
	    mmap((void *)(uintptr_t)sc, RS_SCRATCH_PAGES * MODEL_PAGE,
	         PROT_READ | PROT_WRITE | PROT_EXEC,
	         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != (void *)(uintptr_t)sc)
		a->scratch[idx] = 0; /* the monitor maps them itself */
	if ((a->opts->flags & RESTORE_LAZY) && idx == 0) {
		int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		if (fd >= 0 && place(fd, a->temp_lo + SLOT_UFFD, NULL) < 0)
			safe_close(fd);
	}
}

/*
 * What each helper process reports, once, on the pipe they all share (one write of less than
 * PIPE_BUF: never interleaved): prepared (with or without its scratch pages), about to become
 * a zombie, or why it failed.
 */
enum { REP_READY = 0, REP_READY_SCRATCH = 1, REP_ZOMBIE = 2, REP_FAILED = 3 };
struct helper_report {
	int32_t idx; /* index of the process in the image, -1: before any */
	int32_t status;
	char msg[FERRY_ERROR_MAX];
};

static void helper_report(int fd, int32_t idx, int32_t status, const char *msg)
{
	struct helper_report rep = {.idx = idx, .status = status};
	snprintf(rep.msg, sizeof(rep.msg), "%s", msg ? msg : "");
	(void)write_full(fd, &rep, sizeof(rep));
}

/* The init's private anonymous mappings another process of the tree has too (same range), as
 * candidates to load before forking. */
static bool shared_range(const struct component *c, const struct vma *v)
{
	if (v->kind != VMA_ANON || !v->nruns || c->nprocs < 2)
		return false;
	for (size_t k = 1; k < c->nprocs; k++)
		for (size_t i = 0; i < c->procs[k].nvmas; i++) {
			const struct vma *w = &c->procs[k].vmas[i];
			if (w->start == v->start && w->end == v->end && w->kind == VMA_ANON &&
			    w->flags == v->flags)
				return true;
		}
	return false;
}

/*
 * In the init's helper, before it forks: its private anonymous mappings that other processes
 * have at the same place, mapped where the image has them (where the helper has nothing of its
 * own) and loaded, so that the processes forked share their pages copy-on-write as the
 * originals did. Which ones were: bits of `loaded` (by vma index), reported to the monitor.
 */
static void helper_preload(struct restore_arg *a, uint8_t *loaded, size_t nbits)
{
	const struct process *p = &a->c->procs[0];

	if (a->opts->flags & RESTORE_LAZY)
		return; /* the init's anonymous memory comes after it runs */
	for (size_t i = 0; i < p->nvmas && i < nbits; i++) {
		const struct vma *v = &p->vmas[i];
		if (!shared_range(a->c, v))
			continue;
		void *m =
		        mmap((void *)(uintptr_t)v->start, v->end - v->start, PROT_READ | PROT_WRITE,
		             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE |
		                     ((v->flags & VMA_F_NORESERVE) ? MAP_NORESERVE : 0),
		             -1, 0);
		if (m != (void *)(uintptr_t)v->start) {
			if (m != MAP_FAILED)
				munmap(m, v->end - v->start);
			continue; /* the helper has something there: loaded by the monitor later */
		}
		int r = 0;
		for (size_t j = 0; j < v->nruns && r == 0; j++) {
			const struct page_run *run = &v->runs[j];
			if (run->file >= a->npages)
				r = -EPROTO;
			else
				r = pread_full(a->pages_slot[run->file],
				               (void *)(uintptr_t)run->addr,
				               run->npages * MODEL_PAGE, (off_t)run->off);
		}
		if (r < 0) {
			munmap(m, v->end - v->start);
			continue;
		}
		loaded[i / 8] |= (uint8_t)(1u << (i % 8));
	}
}

/* Everything the processes of the component share, made once by the root before it forks:
 * the image's files at their slots, the shared memory objects, the open file descriptions. */
static int helper_common(struct restore_arg *a, int sync_rd, int rep_wr, const char *log_path,
                         struct ferry_error *err)
{
	struct rlimit rl;
	sigset_t all;
	int r, fd;

	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	r = a->ns_ready ? 0 : runtime_ns_setup(a->rt, err);
	if (r < 0)
		return r;
	/* room for the temporary slots whatever the image's limit */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	/* clear the fd table but for our three: park them high, close the rest */
	if (dup2(sync_rd, STAGING) < 0 || dup2(rep_wr, STAGING + 1) < 0)
		return ferr(err, -errno, "parking fds: %m");
	for (uint32_t i = 0; i < a->npages; i++)
		if (dup2(a->pages_fds[i], STAGING + 2 + (int)i) < 0)
			return ferr(err, -errno, "parking fds: %m");
	syscall(SYS_close_range, 0, STAGING - 1, 0);
	if ((r = place(STAGING, a->temp_lo + SLOT_SYNC, err)) < 0 ||
	    (r = place(STAGING + 1, a->temp_lo + SLOT_REPORT, err)) < 0)
		return r;
	for (uint32_t i = 0; i < a->npages; i++)
		if ((r = place(STAGING + 2 + (int)i, a->pages_slot[i], err)) < 0)
			return r;
	syscall(SYS_close_range, STAGING, ~0U, 0);
	for (size_t i = 0; i < a->c->nshmems; i++) {
		if (a->shmem_fd[i] < 0)
			continue;
		fd = helper_shmem(&a->c->shmems[i], a->temp_lo + SLOT_PAGES, err);
		if (fd < 0)
			return fd;
		if ((r = place(fd, a->shmem_fd[i], err)) < 0)
			return r;
	}
	if (a->c->nshares == 0)
		return 0;
	struct fd_restore_ctx fctx = {.log_path = log_path,
	                              .shmem_fd = a->shmem_fd,
	                              .pages_fd = a->temp_lo + SLOT_PAGES,
	                              .stash_lo = a->stash_lo,
	                              .share_lo = a->share_lo,
	                              .inflight = a->c->inflight,
	                              .ninflight = a->c->ninflight,
	                              .monitor_pid = a->monitor,
	                              .relay_all = a->opts->flags & RESTORE_SESSION_RELAY};
	return fds_restore_shared(a->c, &fctx, err);
}

/* What is the process's own, once its children are forked: its files, its fds, its memory. */
static int helper_own(struct restore_arg *a, size_t idx, const char *log_path,
                      struct ferry_error *err)
{
	const struct process *p = &a->c->procs[idx];
	int r, fd;

	/* files the mappings need */
	fd = open(p->exe, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ferr(err, -errno, "executable %s: %m", p->exe);
	if ((r = place(fd, a->temp_lo + SLOT_EXE, err)) < 0)
		return r;
	for (size_t i = 0; i < p->nvmas; i++) {
		const struct vma *v = &p->vmas[i];
		if (a->vma_fd[idx][i] < 0)
			continue;
		int mode =
		        (v->kind == VMA_FILE_SHARED && (v->prot & PROT_WRITE)) ? O_RDWR : O_RDONLY;
		fd = open(v->path, mode | O_CLOEXEC);
		if (fd < 0)
			return ferr(err, -errno, "mapped file %s: %m", v->path);
		if ((r = place(fd, a->vma_fd[idx][i], err)) < 0)
			return r;
	}
	r = task_restore_early(p, err);
	if (r < 0)
		return r;
	helper_own_memory(a, idx);
	struct fd_restore_ctx fctx = {.log_path = log_path,
	                              .shmem_fd = a->shmem_fd,
	                              .pages_fd = a->temp_lo + SLOT_PAGES,
	                              .stash_lo = a->stash_lo,
	                              .share_lo = a->share_lo,
	                              .inflight = a->c->inflight,
	                              .ninflight = a->c->ninflight,
	                              .monitor_pid = a->monitor,
	                              .relay_all = a->opts->flags & RESTORE_SESSION_RELAY};
	return fds_restore(p, &fctx, err);
}

/* A zombie of the image: it exits as it did (a signal's core dump flag is not made again). */
_noreturn_ static void helper_exit_as(int status)
{
	if (WIFSIGNALED(status)) {
		struct rlimit none = {0, 0};
		sigset_t one;
		int sig = WTERMSIG(status);
		(void)setrlimit(RLIMIT_CORE, &none);
		signal(sig, SIG_DFL);
		sigemptyset(&one);
		sigaddset(&one, sig);
		sigprocmask(SIG_UNBLOCK, &one, NULL);
		raise(sig);
	}
	_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

/*
 * Process idx of the image, in the helper: its session and group, then its children forked
 * with their pids (clone3 set_tid; each goes on here), then what is its own; it reports and
 * waits to be seized. Zombies exit as they did once reported; their parent waits until they
 * have (without reaping them) and takes the SIGCHLD they sent, which the original had had.
 */
_noreturn_ static void helper_tree(struct restore_arg *a, size_t idx, const char *log_path)
{
	const struct process *p = &a->c->procs[idx];
	struct ferry_error err = {0};
	int rep = a->temp_lo + SLOT_REPORT, r = 0;
	bool zombies = false;
	char buf;

	uint8_t loaded[FERRY_ERROR_MAX] = {0};
	if (idx == 0 && a->c->nprocs > 1)
		helper_preload(a, loaded, sizeof(loaded) * 8);
	if (p->sid == p->pid && getsid(0) != p->pid && setsid() < 0)
		r = ferr(&err, -errno, "setsid: %m");
	else if (p->pgid == p->pid && getpgrp() != p->pid && setpgid(0, 0) < 0)
		r = ferr(&err, -errno, "setpgid: %m");
	for (size_t j = 1; r == 0 && j < a->c->nprocs; j++) {
		const struct process *q = &a->c->procs[j];
		if (q->ppid != p->pid)
			continue;
		pid_t want = q->pid;
		struct clone_args ca = {.exit_signal = SIGCHLD,
		                        .set_tid = (uint64_t)(uintptr_t)&want,
		                        .set_tid_size = 1};
		pid_t k = (pid_t)syscall(SYS_clone3, &ca, sizeof(ca));
		if (k == 0)
			helper_tree(a, j, log_path);
		if (k < 0)
			r = ferr(&err, -errno, "forking pid %d: %m", q->pid);
		zombies |= q->zombie != 0;
	}
	if (r == 0 && p->zombie) {
		(void)prctl(PR_SET_NAME, p->comm, 0, 0, 0);
		helper_report(rep, (int32_t)idx, REP_ZOMBIE, NULL);
		helper_exit_as(p->exit_status);
	}
	for (size_t j = 1; r == 0 && zombies && j < a->c->nprocs; j++) {
		const struct process *q = &a->c->procs[j];
		siginfo_t si;
		if (q->ppid == p->pid && q->zombie &&
		    waitid(P_PID, (id_t)q->pid, &si, WEXITED | WNOWAIT) < 0)
			r = ferr(&err, -errno, "waiting for pid %d to exit: %m", q->pid);
	}
	if (r == 0 && zombies) {
		sigset_t chld;
		struct timespec zero = {0, 0};
		sigemptyset(&chld);
		sigaddset(&chld, SIGCHLD);
		while (sigtimedwait(&chld, NULL, &zero) == SIGCHLD)
			;
	}
	if (r == 0)
		r = helper_own(a, idx, log_path, &err);
	if (r < 0) {
		if (a->c->nprocs > 1)
			ferr_prefix(&err, "pid %d", p->pid);
		helper_report(rep, (int32_t)idx, REP_FAILED, err.msg);
		_exit(1);
	}
	struct helper_report hr = {.idx = (int32_t)idx,
	                           .status = a->scratch[idx] ? REP_READY_SCRATCH : REP_READY};
	memcpy(hr.msg, loaded, sizeof(hr.msg)); /* the init: the mappings it loaded */
	(void)write_full(rep, &hr, sizeof(hr));
	/* wait here; the monitor seizes us and replaces everything */
	for (;;)
		if (read(a->temp_lo + SLOT_SYNC, &buf, 1) <= 0)
			_exit(1);
}

_noreturn_ static void helper_main(struct restore_arg *a, int sync_rd, int rep_wr,
                                   const char *log_path)
{
	struct ferry_error err = {0};

	if (helper_common(a, sync_rd, rep_wr, log_path, &err) < 0) {
		/* the report pipe is at its slot, or still where it was inherited */
		int fd = fcntl(a->temp_lo + SLOT_REPORT, F_GETFD) >= 0 ? a->temp_lo + SLOT_REPORT
		                                                       : rep_wr;
		helper_report(fd, -1, REP_FAILED, err.msg);
		_exit(1);
	}
	helper_tree(a, 0, log_path);
}

/* ---- the monitor side ---- */

struct verify {
	const struct component *c;
	const int *fds;
	uint32_t nfds;
	struct ferry_error err;
	int r;
	uint64_t ns;
};

static void *verify_main(void *arg)
{
	struct verify *v = arg;
	uint64_t t0 = now_ns();
	v->r = mem_verify_pages(v->c, v->fds, v->nfds, &v->err);
	v->ns = now_ns() - t0;
	return NULL;
}

static int unregister_rseq(struct restorer *rs, struct ferry_error *err)
{
	struct {
		uint64_t ptr;
		uint32_t size, sig, flags, pad;
	} rc = {0};
	if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION, rs->pid, (void *)sizeof(rc), &rc) <= 0 || !rc.ptr)
		return 0;
	long r = rs_sys(rs, "rseq unregister", SYS_rseq, rc.ptr, rc.size, RSEQ_FLAG_UNREGISTER,
	                rc.sig, 0, 0, err);
	return r < 0 ? (int)r : 0;
}

/*
 * RESTORE_LAZY: a userfaultfd of the helper's mm, with write-protection for dirty tracking when
 * the image can be a parent (one context serves both), and the fault handler serving it from
 * here on (mlock and the kernel's own writes during the rebuild fault too). Without the
 * features for tracking, lazily without tracking; without a userfaultfd at all, as usual.
 */
static int lazy_start(struct restorer *rs, struct restore_arg *a)
{
	struct ferry_error e = {0};
	bool wp = a->c->capture_id != 0;
	int fd = -EBADF;
	/* the helper's own, if it made one: no injected call */
	int r = lazy_uffd_of(rs->pid, a->temp_lo + SLOT_UFFD, wp, &fd);

	if (r < 0)
		r = lazy_uffd(&rs->main, rs->pid, wp, &fd, &e);
	if (r == -ENOTSUP && wp) {
		wp = false;
		r = lazy_uffd(&rs->main, rs->pid, wp, &fd, &e);
	}
	if (r < 0)
		return r == -ESRCH ? r : 0; /* only a helper gone is fatal */
	a->lz = lazy_new(fd, wp, rs->pid, a->opts->lazy_src, a->pages_fds, a->npages, &e);
	return a->lz ? 0 : -ENOMEM;
}

/* The pgid a process of the image had when forked by its parent (its own if it made one). */
static pid_t pgid_at_fork(const struct component *c, const struct process *p)
{
	if (p->pgid == p->pid)
		return p->pid;
	for (size_t i = 0; i < c->nprocs; i++)
		if (c->procs[i].pid == p->ppid && p->ppid)
			return c->procs[i].pgid;
	return 0;
}

static int rebuild(struct restorer *rs, struct restore_arg *a, size_t idx, struct tracee *threads,
                   struct ferry_error *err)
{
	const struct process *p = &a->c->procs[idx];
	_cleanup_free_ struct proc_map *maps = NULL;
	size_t nmaps = 0;
	int r;

	/* only its vdso and vvar are looked at: as the monitor's, unless they were not read */
	const struct proc_map *cur = a->maps;
	size_t ncur = a->nmaps;
	if (!cur) {
		r = procfs_maps_noflags(rs->pid, &maps, &nmaps);
		if (r < 0)
			return ferr(err, r, "helper mappings: %s", strerror(-r));
		cur = maps;
		ncur = nmaps;
	}
	if (!rs->main.syscall_ip &&
	    tracee_find_syscall_insn(rs->pid, cur, ncur, &rs->main.syscall_ip) < 0)
		return ferr(err, -ENOTSUP, "no syscall instruction in the helper's vdso");
	if ((r = unregister_rseq(rs, err)) < 0)
		return r;
	if ((a->opts->flags & RESTORE_LAZY) && idx == 0) {
		r = lazy_start(rs, a);
		if (r < 0)
			return ferr(err, r, "lazy restore: %s", strerror(-r));
	}
	_cleanup_free_ struct rs_batch *fin = calloc(1, sizeof(*fin));
	if (!fin)
		return ferr(err, -ENOMEM, "out of memory");
	fin->t = &rs->main;
	/* the other threads; then one batch of the main thread: its own calls, PR_SET_MM_MAP
	 * and the temporary fds closed (the last use of them is the exe fd of PR_SET_MM_MAP) */
	/* a process group whose leader is another process: joined now that all exist */
	if (p->pgid != pgid_at_fork(a->c, p) &&
	    (r = rs_batch_add(rs, fin, "setpgid", SYS_setpgid, 0, (uint64_t)p->pgid, 0, 0, 0, 0,
	                      err)) < 0)
		return r;
	if ((r = mem_restore_lazy(rs, a->c, p, cur, ncur, idx == 0 ? a->lz : NULL, err)) < 0 ||
	    (r = threads_restore(rs, p, threads, fin, err)) < 0 ||
	    (r = task_restore_mm(rs, p, fin, err)) < 0 ||
	    (r = rs_batch_add(rs, fin, "close_range of temporary fds", SYS_close_range,
	                      (uint64_t)a->temp_lo, ~0U, 0, 0, 0, 0, err)) < 0 ||
	    (r = rs_batch_run(rs, fin, err)) < 0 || (r = threads_restore_main(rs, p, err)) < 0)
		return r;
	r = task_restore_late(rs, p, err);
	if (r < 0)
		return r;
	/* locks taken again (the temporary fds are closed); the scratch pages go; then the main
	 * thread's final registers */
	r = fd_file_relock(rs, p, err);
	if (r == 0)
		r = task_restore_creds(rs, p, err);
	if (r < 0)
		return r;
	long ret = rs_sys(rs, "munmap scratch pages", SYS_munmap, rs->scratch,
	                  RS_SCRATCH_PAGES * MODEL_PAGE, 0, 0, 0, 0, err);
	if (ret < 0)
		return (int)ret;
	/* its memory is the image's now: tracking starts here, so that the next checkpoint
	 * can be incremental on the image (a failure only makes that one full) */
	if (idx > 0) {
		/* dirty tracking follows the init only (the others are captured whole) */
	} else if (a->c->capture_id && a->lz) {
		struct ferry_error e = {0};
		if (lazy_tracks(a->lz))
			(void)track_restored_uffd(a->rt, a->name, rs->pid, p, a->c->capture_id,
			                          lazy_fd(a->lz), &e);
	} else if (a->c->capture_id) {
		struct ferry_error e = {0};
		(void)track_restored(a->rt, a->name, &rs->main, rs->pid, p, a->c->capture_id, &e);
	}
	/* every injected call put the final registers back; once more, to be plain about it */
	r = tracee_setregs(rs->main.tid, &rs->main.regs, err);
	threads[0] = rs->main;
	return r;
}

/* The sessions re-created, in the registry: their sockets and the sessions they continue. */
static void register_sessions(const struct restore_arg *a, const pid_t *host)
{
	struct session_reg *g = NULL;
	size_t n = 0;

	for (size_t i = 0; i < a->c->nprocs; i++)
		for (size_t j = 0; j < a->c->procs[i].nfds; j++) {
			const struct fd_entry *e = &a->c->procs[i].fds[j];
			char path[64];
			struct stat sb;
			if (e->kind != FD_SESSION || e->nextra < SS_MIN ||
			    e->extra[SS_KIND] == FERRY_SERVICE_ROM || !host[i])
				continue;
			snprintf(path, sizeof(path), "/proc/%d/fd/%d", host[i], e->fd);
			if (stat(path, &sb) < 0 || GROW(g, n) < 0)
				continue;
			g[n++] = (struct session_reg){sb.st_ino, e->extra[SS_ID],
			                              e->extra[SS_SEQ] + 1};
		}
	(void)session_register(a->rt, a->name, 0, g, n);
	free(g);
}

/* Read one report of a helper process (within a minute: a process that died without one
 * would otherwise leave us waiting on the others). */
static int read_report(int fd, struct helper_report *rep, struct ferry_error *err)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	int n = poll(&pfd, 1, 60000);

	if (n == 0)
		return ferr(err, -ETIMEDOUT, "preparing the processes: no report in 60 s");
	ssize_t got = n > 0 ? read(fd, rep, sizeof(*rep)) : -1;
	if (got != (ssize_t)sizeof(*rep))
		return ferr(err, -EIO, "preparing the process: helper died");
	rep->msg[sizeof(rep->msg) - 1] = 0;
	if (rep->status == REP_FAILED)
		return ferr(err, -EIO, "preparing the process: %s", rep->msg);
	return 0;
}

/* Which mappings of process i it inherited loaded from the init's helper (NULL: none). */
static uint8_t *kept_of(const struct component *c, size_t i, const uint8_t *loaded, size_t nbits)
{
	const struct process *p = &c->procs[i], *q = &c->procs[0];
	uint8_t *kept = NULL;

	for (size_t j = 0; j < q->nvmas && j < nbits; j++) {
		if (!(loaded[j / 8] & (1u << (j % 8))))
			continue;
		for (size_t k = 0; k < p->nvmas; k++)
			if (p->vmas[k].start == q->vmas[j].start &&
			    p->vmas[k].end == q->vmas[j].end && p->vmas[k].kind == VMA_ANON &&
			    p->vmas[k].flags == q->vmas[j].flags) {
				if (!kept && !(kept = calloc(p->nvmas, 1)))
					return NULL;
				kept[k] = 1;
			}
	}
	return kept;
}

/* The host pids of the helper processes: the root's children, theirs, ... by namespace pid. */
static int find_hosts(const struct component *c, pid_t root, pid_t *host, struct ferry_error *err)
{
	host[0] = root;
	for (size_t i = 0; i < c->nprocs; i++) {
		if (!host[i] || c->procs[i].zombie)
			continue;
		_cleanup_free_ pid_t *kids = NULL;
		size_t n = 0;
		int r = procfs_children(host[i], &kids, &n);
		if (r < 0)
			return ferr(err, r, "pid %d: its children: %s", host[i], strerror(-r));
		for (size_t k = 0; k < n; k++) {
			pid_t ns = 0;
			if (procfs_ns_tid(kids[k], kids[k], &ns) < 0)
				continue;
			for (size_t j = 1; j < c->nprocs; j++)
				if (c->procs[j].pid == ns && c->procs[j].ppid == c->procs[i].pid)
					host[j] = kids[k];
		}
	}
	for (size_t i = 0; i < c->nprocs; i++)
		if (!host[i] && !c->procs[i].zombie)
			return ferr(err, -ESRCH, "pid %d of the image: no helper process",
			            c->procs[i].pid);
	return 0;
}

static int restore_start(void *arg, const char *log_path, pid_t *ret_pid, void *extra,
                         struct ferry_error *err)
{
	struct restore_arg *a = arg;
	const struct component *c = a->c;
	struct verify ver = {.c = a->c, .fds = a->pages_fds, .nfds = a->npages};
	_cleanup_free_ struct restorer *rs = calloc(c->nprocs, sizeof(*rs));
	_cleanup_free_ struct tracee **threads = calloc(c->nprocs, sizeof(struct tracee *));
	_cleanup_free_ pid_t *host = calloc(c->nprocs, sizeof(*host));
	_cleanup_free_ int32_t *status = calloc(c->nprocs, sizeof(*status));
	uint8_t loaded[FERRY_ERROR_MAX] = {0};      /* the init's mappings its helper loaded */
	_cleanup_free_ struct proc_map *own = NULL; /* the monitor's mappings */
	size_t nown = 0;
	uint64_t sys_ip = 0;
	int sync[2], rep[2], wst, r = 0;
	_cleanup_close_ int relay_seal = -EBADF;
	pthread_t vth;
	bool vstarted = false;
	uint64_t t0 = now_ns();
	pid_t pid = 0;

	if (!rs || !threads || !host || !status) {
		r = ferr(err, -ENOMEM, "out of memory");
		goto free_threads;
	}
	a->monitor = getpid();
	/* sessions with bytes to deliver first: their helpers hand us relays (closing the seal
	 * when this returns says no more will come) */
	if (relay_needed(c, a->opts->flags & RESTORE_SESSION_RELAY) &&
	    (r = relay_start(a->rt, a->name, &relay_seal, err)) < 0)
		goto free_threads;
	for (size_t i = 0; i < c->nprocs; i++) {
		threads[i] = calloc(c->procs[i].nthreads ? c->procs[i].nthreads : 1,
		                    sizeof(struct tracee));
		if (!threads[i]) {
			r = ferr(err, -ENOMEM, "out of memory");
			goto free_threads;
		}
	}
	struct restore_helper *pre = a->opts->pre;
	if (pre && pre->pid > 0) {
		/* made in advance, told the image already (restore_image): it is ours now */
		pid = pre->pid;
		sync[1] = pre->sync_wr;
		rep[0] = pre->rep_rd;
		pre->pid = 0;
		pre->sync_wr = pre->rep_rd = -EBADF;
		pre->go_wr = safe_close(pre->go_wr);
	} else {
		if (pipe2(sync, O_CLOEXEC) < 0) {
			r = ferr(err, -errno, "pipe: %m");
			goto free_threads;
		}
		if (pipe2(rep, O_CLOEXEC) < 0) {
			r = ferr(err, -errno, "pipe: %m");
			safe_close(sync[0]);
			safe_close(sync[1]);
			goto free_threads;
		}
		pid = runtime_clone_ns(CLONE_NEWPID | CLONE_NEWNS);
		if (pid == 0)
			helper_main(a, sync[0], rep[1], log_path);
		safe_close(sync[0]);
		safe_close(rep[1]);
		if (pid < 0) {
			r = ferr(err, -errno, "clone3 (new pid and mount namespaces): %m");
			goto out;
		}
	}
	/* while the helper prepares: the caller's start (a post-copy receiver) */
	if (a->opts->hold &&
	    (r = a->opts->hold(a->opts->hold_arg, RESTORE_BEGIN, 0, &a->stats, err)) < 0)
		goto fail;
	/* and what the helper has as its fork: the places of the vdso and vvar, and a
	 * syscall instruction in that vdso (reading the maps is slow enough to overlap) */
	if (procfs_maps_noflags(getpid(), &own, &nown) == 0 &&
	    tracee_find_syscall_insn(getpid(), own, nown, &sys_ip) == 0) {
		a->maps = own;
		a->nmaps = nown;
	}
	/* every process reports once: prepared (with its scratch pages or not), a zombie, or
	 * why it failed */
	for (size_t k = 0; k < c->nprocs; k++) {
		struct helper_report hr;
		r = read_report(rep[0], &hr, err);
		if (r < 0)
			goto fail;
		if (hr.idx < 0 || (size_t)hr.idx >= c->nprocs) {
			r = ferr(err, -EPROTO, "preparing the process: report of process %d",
			         hr.idx);
			goto fail;
		}
		status[hr.idx] = hr.status;
		if (hr.idx == 0)
			memcpy(loaded, hr.msg, sizeof(loaded));
	}
	if (c->nprocs > 1 && (r = find_hosts(c, pid, host, err)) < 0)
		goto fail;
	host[0] = pid;
	/* page data is verified on another CPU while the helpers load it; nothing of the
	 * component runs before both are done. A lazy restore's caller vouches for the image. */
	if (a->opts->flags & RESTORE_LAZY)
		ver.r = 0;
	else if (pthread_create(&vth, NULL, verify_main, &ver) == 0)
		vstarted = true;
	else
		verify_main(&ver);
	for (size_t i = 0; i < c->nprocs; i++) {
		if (c->procs[i].zombie)
			continue;
		struct restorer *ri = &rs[i];
		ri->pid = host[i];
		ri->temp_lo = a->temp_lo;
		ri->pages_fds = a->pages_slot;
		ri->npages_fds = a->npages;
		ri->local_fds = a->pages_fds;
		ri->exe_fd = a->temp_lo + SLOT_EXE;
		ri->vma_fd = a->vma_fd[i];
		ri->shmem_fd = a->shmem_fd;
		_cleanup_free_ uint8_t *kept = kept_of(c, i, loaded, sizeof(loaded) * 8);
		ri->kept = kept;
		ri->base = kept ? &c->procs[0] : NULL;
		r = tracee_seize_stop(
		        &ri->main, host[i],
		        PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL, err);
		if (r == 0) {
			ri->main.syscall_ip = a->maps ? sys_ip : 0;
			ri->scratch = status[i] == REP_READY_SCRATCH ? a->scratch[i] : 0;
			r = rebuild(ri, a, i, threads[i], err);
		}
		if (r < 0) {
			if (c->nprocs > 1)
				ferr_prefix(err, "pid %d", c->procs[i].pid);
			break;
		}
		a->stats.pages_ns += ri->pages_ns;
		a->stats.pages_loaded += ri->pages_loaded;
	}
	/* a segment that was to go once its processes detach is marked so again, now that they
	 * have it attached */
	for (size_t i = 0; r == 0 && i < c->nshmems; i++)
		if (c->shmems[i].kind == SHMEM_SYSV && (c->shmems[i].sysv_mode & SHM_DEST))
			(void)shmctl(c->shmems[i].sysv_id, IPC_RMID, NULL);
	if (vstarted)
		pthread_join(vth, NULL);
	if (r == 0 && ver.r < 0) {
		r = ver.r;
		*err = ver.err;
	}
	if (r < 0)
		goto fail;
	register_sessions(a, host);
	if (a->lz) {
		/* the rest of the pages from now on, in the background */
		r = lazy_fill(a->lz, a->rt, a->name, err);
		if (r < 0)
			goto fail;
		a->lz = NULL;
	}
	a->stats.verify_ns = ver.ns;
	a->stats.total_ns = now_ns() - t0;
	if (a->opts->hold) {
		r = a->opts->hold(a->opts->hold_arg, RESTORE_HOLD, pid, &a->stats, err);
		if (r < 0)
			goto fail;
	}
	/* children first: the init, last, is the one a failure here would kill */
	for (size_t i = c->nprocs; i-- > 0;)
		for (size_t j = c->procs[i].zombie ? 0 : c->procs[i].nthreads; j-- > 0;) {
			r = tracee_detach(&threads[i][j], err);
			if (r < 0)
				goto fail;
		}
	if (a->opts->hold)
		(void)a->opts->hold(a->opts->hold_arg, RESTORE_RUNNING, pid, &a->stats, NULL);
	memcpy(extra, &a->stats, sizeof(a->stats));
	*ret_pid = pid;
	safe_close(sync[1]);
	safe_close(rep[0]);
	r = 0;
	goto free_threads;
fail:
	if (pid > 0) {
		/* the init of the namespace: every process of it dies with it */
		(void)safe_kill(pid, SIGKILL);
		/* its threads (and those of the others) are our tracees too: each must be reaped
		 * before the init can be */
		for (;;) {
			pid_t w = waitpid(-1, &wst, __WALL);
			if (w == pid || (w < 0 && errno != EINTR))
				break;
		}
	}
out:
	safe_close(sync[1]);
	safe_close(rep[0]);
free_threads:
	for (size_t i = 0; threads && i < c->nprocs; i++)
		free(threads[i]);
	return r;
}

/* Checks that need no process: the files the image refers to are the same. */
static int check_files(const struct component *c, struct ferry_error *err)
{
	for (size_t i = 0; i < c->nprocs; i++) {
		const struct process *p = &c->procs[i];
		if (p->zombie)
			continue;
		int r = task_check_file("executable", p->exe, &p->exe_id, err);
		if (r < 0)
			return r;
		for (size_t j = 0; j < p->nvmas; j++) {
			const struct vma *v = &p->vmas[j];
			if (v->kind != VMA_FILE_PRIVATE)
				continue;
			r = task_check_file("mapped file", v->path, &v->fid, err);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

int ferry_restore(const struct ferry_runtime *rt, const char *dir, const char *name, pid_t *ret_pid,
                  struct ferry_restore_stats *ret_stats, struct ferry_error *err)
{
	return restore_image(rt, dir, name, NULL, ret_pid, ret_stats, err);
}

static void restore_helper_go(struct restore_helper *h, const char *dir, unsigned flags);

/*
 * The processes of an image as a restore makes them: the init (pid 1 of its namespace) first,
 * every other after its parent, which is a live process of the image; pids distinct.
 */
static int check_tree(const struct component *c, struct ferry_error *err)
{
	if (c->procs[0].pid != 1 || c->procs[0].zombie)
		return ferr(err, -EPROTO, "its first process is pid %d, not the init",
		            c->procs[0].pid);
	for (size_t i = 1; i < c->nprocs; i++) {
		const struct process *p = &c->procs[i];
		bool parent = false;
		for (size_t j = 0; j < i; j++) {
			if (c->procs[j].pid == p->pid)
				return ferr(err, -EPROTO, "pid %d appears twice", p->pid);
			parent |= c->procs[j].pid == p->ppid && !c->procs[j].zombie;
		}
		if (p->pid <= 1 || !parent)
			return ferr(err, -EPROTO, "pid %d: parent %d is not before it in the image",
			            p->pid, p->ppid);
		if (!p->zombie && p->nthreads == 0)
			return ferr(err, -EPROTO, "pid %d: no threads", p->pid);
	}
	return 0;
}

/* What restore_plan allocates, freed. */
static void plan_free(struct restore_arg *a, struct image_reader *rd)
{
	free(a->pages_fds);
	free(a->pages_slot);
	for (size_t i = 0; a->vma_fd && a->c && i < a->c->nprocs; i++)
		free(a->vma_fd[i]);
	free(a->vma_fd);
	free(a->shmem_fd);
	free(a->scratch);
	a->scratch = NULL;
	model_free((struct component *)a->c);
	image_reader_free(rd);
	a->pages_fds = a->pages_slot = a->shmem_fd = NULL;
	a->vma_fd = NULL;
	a->c = NULL;
}

/*
 * The image at dir read and the places of everything the helper holds worked out: the same in
 * the monitor and in a helper made in advance (restore_helper_spawn), which each read the
 * image. Free with plan_free.
 */
static int restore_plan(const char *dir, struct restore_arg *a, struct image_reader **ret_rd,
                        struct ferry_error *err)
{
	struct image_reader *rd = NULL;
	struct component *c = NULL;
	int r = image_reader_open(dir, &rd, err);

	if (r < 0)
		return r;
	*ret_rd = rd;
	r = model_load(rd, &c, err);
	if (r < 0)
		return ferr_prefix(err, "image %s", dir);
	a->c = c;
	r = check_tree(c, err);
	if (r < 0)
		return ferr_prefix(err, "image %s", dir);
	/* temporary fd slots above every fd of the image */
	int top = 3;
	size_t nfile_vmas = 0;
	for (size_t k = 0; k < c->nprocs; k++) {
		const struct process *p = &c->procs[k];
		size_t files = 0;
		for (size_t i = 0; i < p->nfds; i++)
			top = MAX(top, p->fds[i].fd + 1);
		for (size_t i = 0; i < p->nvmas; i++)
			files += p->vmas[i].kind == VMA_FILE_PRIVATE ||
			         p->vmas[i].kind == VMA_FILE_SHARED;
		nfile_vmas = MAX(nfile_vmas, files);
	}
	a->npages = image_reader_npages_files(rd);
	a->pages_fds = calloc(a->npages, sizeof(int));
	a->pages_slot = calloc(a->npages, sizeof(int));
	a->temp_lo = top;
	a->vma_fd = calloc(c->nprocs, sizeof(int *));
	a->scratch = calloc(c->nprocs, sizeof(uint64_t));
	a->shmem_fd = calloc(c->nshmems ? c->nshmems : 1, sizeof(int));
	if (!a->vma_fd || !a->shmem_fd || !a->pages_fds || !a->pages_slot || !a->scratch)
		return ferr(err, -ENOMEM, "out of memory");
	int slot = top + SLOT_FIRST_FREE;
	for (uint32_t i = 0; i < a->npages; i++) {
		a->pages_fds[i] = image_reader_pages_fd_at(rd, i);
		a->pages_slot[i] = i == 0 ? top + SLOT_PAGES : slot++;
	}
	for (size_t i = 0; i < c->nshmems; i++) {
		size_t users = 0;
		bool whole = false;
		for (size_t k = 0; k < c->nprocs; k++) {
			const struct process *p = &c->procs[k];
			for (size_t j = 0; j < p->nvmas; j++)
				if (p->vmas[j].kind == VMA_SHMEM && p->vmas[j].shmem == (int)i) {
					users++;
					whole = p->vmas[j].pgoff == 0 &&
					        p->vmas[j].end - p->vmas[j].start ==
					                c->shmems[i].size;
				}
			for (size_t j = 0; j < p->nfds; j++)
				if (p->fds[j].kind == FD_MEMFD && p->fds[j].shmem == (int)i)
					users = 2;
		}
		/* a shared anonymous mapping of its own is mapped anonymously again */
		a->shmem_fd[i] =
		        (c->shmems[i].kind == SHMEM_ANON && users == 1 && whole) ? -1 : slot++;
	}
	a->share_lo = slot;
	slot += (int)c->nshares;
	/* each process's mapped files from the same slots: every process has its own table */
	for (size_t k = 0; k < c->nprocs; k++) {
		const struct process *p = &c->procs[k];
		int s = slot;
		a->vma_fd[k] = calloc(p->nvmas ? p->nvmas : 1, sizeof(int));
		if (!a->vma_fd[k])
			return ferr(err, -ENOMEM, "out of memory");
		for (size_t i = 0; i < p->nvmas; i++) {
			uint32_t kd = p->vmas[i].kind;
			a->vma_fd[k][i] =
			        (kd == VMA_FILE_PRIVATE || kd == VMA_FILE_SHARED) ? s++ : -1;
		}
		a->scratch[k] = p->zombie ? 0 : mem_free_range(p, RS_SCRATCH_PAGES * MODEL_PAGE);
	}
	slot += (int)nfile_vmas;
	a->stash_lo = slot + 16;
	return 0;
}

int restore_image(const struct ferry_runtime *rt, const char *dir, const char *name,
                  const struct restore_opts *o, pid_t *ret_pid,
                  struct ferry_restore_stats *ret_stats, struct ferry_error *err)
{
	static const struct restore_opts none = {0};
	struct image_reader *rd = NULL;
	struct restore_arg a = {0};
	struct ferry_restore_stats st = {0};
	char log[PATH_MAX];
	uint64_t t0 = now_ns();
	bool keep_log = false;
	int r;

	if (!o)
		o = &none;
	/* a helper made in advance reads the image while we do; its parent is its monitor */
	if (o->pre && !(o->flags & RESTORE_IN_PLACE)) {
		r = ferr(err, -EINVAL, "a helper made in advance needs RESTORE_IN_PLACE");
		goto out;
	}
	if (o->pre && o->pre->pid > 0)
		restore_helper_go(o->pre, dir, o->flags);
	r = restore_plan(dir, &a, &rd, err);
	if (r < 0)
		goto out;
	const struct component *c = a.c;
	if (!name)
		name = c->name;
	r = (o->flags & RESTORE_FILES_CHECKED) ? 0 : check_files(c, err);
	if (r < 0) {
		ferr_prefix(err, "image %s", dir);
		goto out;
	}
	st.verify_ns = now_ns() - t0;
	/* the log continues from the checkpoint: what the original wrote after it goes */
	runtime_log_path(rt, name, log, sizeof(log));
	if (c->log_id && runtime_log_id(rt, name) == c->log_id) {
		struct stat sb;
		keep_log = true;
		if (stat(log, &sb) == 0 && (uint64_t)sb.st_size > c->log_offset &&
		    truncate(log, (off_t)c->log_offset) < 0) {
			r = ferr(err, -errno, "log %s: truncating to %" PRIu64 ": %m", log,
			         c->log_offset);
			goto out;
		}
	}
	a.rt = rt;
	a.opts = o;
	a.name = name;
	r = ((o->flags & RESTORE_IN_PLACE) ? monitor_here : monitor_launch)(
	        rt, name, true, c->log_id, keep_log, restore_start, &a, ret_pid, &a.stats,
	        sizeof(a.stats), err);
	if (r < 0) {
		ferr_prefix(err, "restoring %s from %s", name, dir);
		goto out;
	}
	a.stats.verify_ns += st.verify_ns;
	a.stats.total_ns = now_ns() - t0;
	if (ret_stats)
		*ret_stats = a.stats;
out:
	/* a helper made in advance and not taken by restore_start */
	if (o->pre)
		restore_helper_drop(o->pre);
	plan_free(&a, rd);
	return r;
}

/* ---- a helper made in advance ---- */

struct helper_go {
	unsigned flags;
	char dir[PATH_MAX];
};

/* Close every fd but the n in keep (ascending). */
static void close_all_but(const int *keep, size_t n)
{
	unsigned lo = 0;
	for (size_t i = 0; i < n; i++) {
		if ((unsigned)keep[i] > lo)
			syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0);
		lo = (unsigned)keep[i] + 1;
	}
	syscall(SYS_close_range, lo, ~0U, 0);
}

static int cmp_int(const void *x, const void *y)
{
	return *(const int *)x - *(const int *)y;
}

/* The helper made in advance: its namespaces set up, it waits for the image, reads it and goes
 * on as any helper. */
_noreturn_ static void helper_standby(const struct ferry_runtime *rt, const char *name, int go_rd,
                                      int sync_rd, int rep_wr, pid_t monitor)
{
	struct ferry_error err = {0};
	struct image_reader *rd = NULL;
	struct helper_go go;
	char log_path[PATH_MAX];
	int keep[3] = {go_rd, sync_rd, rep_wr};

	/* nothing of the process it was made from: no connection, no lock, no terminal */
	qsort(keep, 3, sizeof(int), cmp_int);
	close_all_but(keep, 3);
	if (runtime_ns_setup(rt, &err) < 0)
		goto fail;
	/* told, or the restore gave up (end of file) */
	if (read_full(go_rd, &go, sizeof(go)) < 0)
		_exit(1);
	safe_close(go_rd);
	go.dir[sizeof(go.dir) - 1] = 0;
	struct restore_opts o = {.flags = go.flags};
	struct restore_arg a = {
	        .rt = rt, .name = name, .opts = &o, .monitor = monitor, .ns_ready = true};
	if (restore_plan(go.dir, &a, &rd, &err) < 0)
		goto fail;
	runtime_log_path(rt, name, log_path, sizeof(log_path));
	helper_main(&a, sync_rd, rep_wr, log_path);
fail:
	helper_report(rep_wr, -1, REP_FAILED, err.msg);
	_exit(1);
}

int restore_helper_spawn(const struct ferry_runtime *rt, const char *name, struct restore_helper *h,
                         struct ferry_error *err)
{
	int go[2], sync[2], rep[2];
	pid_t pid;

	*h = (struct restore_helper){.go_wr = -EBADF, .sync_wr = -EBADF, .rep_rd = -EBADF};
	if (pipe2(go, O_CLOEXEC) < 0)
		return ferr(err, -errno, "pipe: %m");
	if (pipe2(sync, O_CLOEXEC) < 0) {
		safe_close(go[0]);
		safe_close(go[1]);
		return ferr(err, -errno, "pipe: %m");
	}
	if (pipe2(rep, O_CLOEXEC) < 0) {
		safe_close(go[0]);
		safe_close(go[1]);
		safe_close(sync[0]);
		safe_close(sync[1]);
		return ferr(err, -errno, "pipe: %m");
	}
	pid_t self = getpid();
	pid = runtime_clone_ns(CLONE_NEWPID | CLONE_NEWNS);
	if (pid == 0)
		helper_standby(rt, name, go[0], sync[0], rep[1], self);
	int r = pid < 0 ? -errno : 0;
	safe_close(go[0]);
	safe_close(sync[0]);
	safe_close(rep[1]);
	if (r < 0) {
		safe_close(go[1]);
		safe_close(sync[1]);
		safe_close(rep[0]);
		return ferr(err, r, "clone3 (new pid and mount namespaces): %s", strerror(-r));
	}
	*h = (struct restore_helper){
	        .pid = pid, .go_wr = go[1], .sync_wr = sync[1], .rep_rd = rep[0]};
	return 0;
}

static void restore_helper_go(struct restore_helper *h, const char *dir, unsigned flags)
{
	struct helper_go go = {.flags = flags};
	snprintf(go.dir, sizeof(go.dir), "%s", dir);
	/* a helper gone shows when its report is read */
	(void)write_full(h->go_wr, &go, sizeof(go));
	h->go_wr = safe_close(h->go_wr);
}

void restore_helper_drop(struct restore_helper *h)
{
	if (h->pid > 0) {
		(void)safe_kill(h->pid, SIGKILL);
		while (waitpid(h->pid, NULL, __WALL) < 0 && errno == EINTR)
			;
		h->pid = 0;
	}
	h->go_wr = safe_close(h->go_wr);
	h->sync_wr = safe_close(h->sync_wr);
	h->rep_rd = safe_close(h->rep_rd);
}
