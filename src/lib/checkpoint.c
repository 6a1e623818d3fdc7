/* Checkpoint: freeze a component, capture its model (and pages), thaw it. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "checkpoint.h"
#include "fds.h"
#include "procfs.h"
#include "runtime.h"
#include "task.h"
#include "threads.h"
#include "util.h"

void checkpoint_thaw(struct frozen *fz)
{
	for (size_t i = 0; i < fz->n; i++)
		(void)tracee_detach(&fz->t[i], NULL);
	free(fz->t);
	fz->t = NULL;
	fz->n = 0;
}

static bool frozen_has(const struct frozen *fz, pid_t tid)
{
	for (size_t i = 0; i < fz->n; i++)
		if (fz->t[i].tid == tid)
			return true;
	return false;
}

/* Seize every thread, again and again until no new thread appears (a stopped thread cannot
 * clone, so this ends). */
static int freeze(pid_t pid, struct frozen *fz, struct ferry_error *err)
{
	for (bool more = true; more;) {
		_cleanup_free_ pid_t *tids = NULL;
		size_t n = 0;
		int r = procfs_tids(pid, &tids, &n);
		if (r < 0)
			return ferr(err, r, "pid %d: listing threads: %s", pid, strerror(-r));
		more = false;
		for (size_t i = 0; i < n; i++) {
			if (frozen_has(fz, tids[i]))
				continue;
			if (GROW(fz->t, fz->n) < 0)
				return ferr(err, -ENOMEM, "out of memory");
			r = tracee_seize_stop(&fz->t[fz->n], tids[i], PTRACE_O_TRACESYSGOOD, err);
			if (r == -ESRCH)
				continue; /* exited meanwhile */
			fz->n++;          /* seized (maybe not stopped): detach it on the way out */
			if (r < 0)
				return r;
			more = true;
		}
	}
	return 0;
}

static int refuse_children(pid_t pid, struct ferry_error *err)
{
	_cleanup_free_ pid_t *tids = NULL;
	size_t n = 0;
	int r = procfs_tids(pid, &tids, &n);
	if (r < 0)
		return ferr(err, r, "pid %d: listing threads: %s", pid, strerror(-r));
	for (size_t i = 0; i < n; i++) {
		char path[96];
		_cleanup_free_ char *kids = NULL;
		snprintf(path, sizeof(path), "/proc/%d/task/%d/children", pid, tids[i]);
		if (read_file(path, &kids, NULL) == 0 && kids[0] && kids[0] != '\n')
			return ferr(err, -ENOTSUP,
			            "pid %d has child processes (%.*s): process trees are not "
			            "supported yet",
			            pid, (int)strcspn(kids, "\n"), kids);
	}
	return 0;
}

static int capture_frozen(struct frozen *fz, struct component *c, struct process *p,
                          const char *log_path, struct image_writer *w, struct mem_stats *st,
                          struct ferry_error *err)
{
	_cleanup_free_ struct proc_map *maps = NULL;
	size_t nmaps = 0;
	uint64_t sys_ip = 0;
	struct tracee *main = NULL;
	int r;

	r = refuse_children(p->host_pid, err);
	if (r < 0)
		return r;
	r = procfs_maps(p->host_pid, &maps, &nmaps);
	if (r < 0)
		return ferr(err, r, "pid %d: reading mappings: %s", p->host_pid, strerror(-r));
	for (size_t i = 0; i < nmaps && !sys_ip; i++)
		if (strcmp(maps[i].path, "[vdso]") == 0)
			(void)tracee_find_syscall_insn(p->host_pid, maps[i].start, maps[i].end,
			                               &sys_ip);
	if (!sys_ip)
		return ferr(err, -ENOTSUP, "pid %d: no vdso with a syscall instruction",
		            p->host_pid);
	for (size_t i = 0; i < fz->n; i++) {
		fz->t[i].syscall_ip = sys_ip;
		if (fz->t[i].tid == p->host_pid)
			main = &fz->t[i];
	}
	if (!main)
		return ferr(err, -ESRCH, "pid %d: main thread is gone", p->host_pid);
	r = task_capture(main, p, err); /* its messages name the pid */
	if (r < 0)
		return r;
	p->threads = calloc(fz->n, sizeof(*p->threads));
	if (!p->threads)
		return ferr(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < fz->n; i++) {
		struct thread *t = &p->threads[p->nthreads++];
		r = threads_capture(&fz->t[i], p, t, err);
		if (r < 0)
			return r;
		r = task_capture_thread_pending(p, fz->t[i].tid, t->tid, err);
		if (r < 0)
			return r;
	}
	p->pid = 0;
	r = procfs_ns_tid(p->host_pid, p->host_pid, &p->pid);
	if (r < 0)
		return ferr(err, r, "pid %d: namespace pid: %s", p->host_pid, strerror(-r));
	struct fd_capture_ctx fctx = {.c = c, .p = p, .w = w, .st = st, .log_path = log_path};
	r = fds_capture(&fctx, err);
	if (r < 0)
		return r;
	r = mem_capture(c, p, maps, nmaps, w, st, err); /* smaps read once, above */
	if (r < 0)
		return r;
	struct stat sb;
	if (log_path && stat(log_path, &sb) == 0)
		c->log_offset = (uint64_t)sb.st_size;
	return 0;
}

/*
 * As the tracer of a killed component we see its threads die first, and only then can its
 * monitor reap it. Any order: the leader's exit is reported after every other thread's, and
 * the last thread of a namespace's init waits (zap_pid_ns_processes) until its sibling
 * zombies are reaped, so sweep without blocking until all are gone.
 */
static void reap_killed(struct frozen *fz)
{
	for (int round = 0; round < 5000; round++) {
		bool left = false, progress = false;
		for (size_t i = 0; i < fz->n; i++) {
			struct tracee *t = &fz->t[i];
			int status;
			if (!t->seized)
				continue;
			pid_t w = waitpid(t->tid, &status, __WALL | WNOHANG);
			if (w < 0 && errno == ECHILD) {
				t->seized = false;
				continue;
			}
			if (w == t->tid && (WIFEXITED(status) || WIFSIGNALED(status))) {
				t->seized = false;
				progress = true;
				continue;
			}
			if (w == t->tid) /* a stop on the way out: let it go on dying */
				(void)ptrace(PTRACE_CONT, t->tid, NULL, NULL);
			left = true;
		}
		if (!left)
			return;
		if (!progress)
			usleep(1000);
	}
}

int checkpoint_capture(pid_t pid, const char *log_path, struct image_writer *w, struct frozen *fz,
                       struct component **ret, struct mem_stats *st, struct ferry_error *err)
{
	struct component *c = calloc(1, sizeof(*c));
	int r;

	if (!c || !(c->procs = calloc(1, sizeof(*c->procs)))) {
		free(c);
		ferr_set(err, -ENOMEM, "out of memory");
		return -ENOMEM;
	}
	c->nprocs = 1;
	c->procs[0].host_pid = pid;
	c->created = (int64_t)time(NULL);
	r = freeze(pid, fz, err);
	if (r == 0)
		r = capture_frozen(fz, c, &c->procs[0], log_path, w, st, err);
	if (r < 0) {
		model_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

int ferry_checkpoint(const struct ferry_runtime *rt, const char *name, const char *dir,
                     unsigned flags, struct ferry_ckpt_stats *ret_stats, struct ferry_error *err)
{
	struct ferry_component rec;
	struct image_writer *w = NULL;
	struct component *c = NULL;
	struct mem_stats st = {0};
	struct ferry_ckpt_stats s = {0};
	struct frozen fz = {0};
	uint64_t t0 = now_ns(), tf, bytes = 0;
	int r;

	r = ferry_component_get(rt, name, &rec, err);
	if (r < 0)
		return r;
	if (rec.state != FERRY_STATE_RUNNING)
		return ferr(err, -ESRCH, "component %s is not running", name);
	r = image_writer_open(dir, &w, err);
	if (r < 0)
		return r;
	tf = now_ns();
	r = checkpoint_capture(rec.pid, rec.log_path, w, &fz, &c, &st, err);
	if (r < 0) {
		checkpoint_thaw(&fz);
		image_writer_free(w);
		return ferr_prefix(err, "%s left running; nothing written", name);
	}
	/* with --stop the component stays frozen until the image is durable, then ends:
	 * it does nothing after the moment the image shows */
	if (!(flags & FERRY_CKPT_STOP)) {
		checkpoint_thaw(&fz);
		s.freeze_ns = now_ns() - tf;
	}
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->log_id = runtime_log_id(rt, name);
	r = model_save(c, w, err);
	if (r == 0)
		r = image_writer_commit(w, &bytes, err);
	s.threads = (uint32_t)c->procs[0].nthreads;
	s.vmas = (uint32_t)c->procs[0].nvmas;
	s.fds = (uint32_t)c->procs[0].nfds;
	model_free(c);
	image_writer_free(w);
	if (r < 0) {
		checkpoint_thaw(&fz);
		return ferr_prefix(err, "%s left running; earlier image in %s kept", name, dir);
	}
	if (flags & FERRY_CKPT_STOP) {
		s.freeze_ns = now_ns() - tf;
		r = safe_kill(rec.pid, SIGKILL);
		/* as its tracer we see its threads die first; only then can its monitor reap it */
		reap_killed(&fz);
		checkpoint_thaw(&fz);
		/* its monitor records the exit; the record stays (state exited) for ps and logs */
		for (int i = 0; r == 0 && i < 500; i++) {
			struct ferry_component now;
			if (ferry_component_get(rt, name, &now, NULL) < 0 ||
			    now.state == FERRY_STATE_EXITED)
				break;
			usleep(10000);
		}
		if (r < 0)
			return ferr_prefix(err, "image written, but stopping %s", name);
	}
	s.total_ns = now_ns() - t0;
	s.write_ns = st.write_ns;
	s.pages_scanned = st.pages_scanned;
	s.pages_written = st.pages_written;
	s.bytes_written = bytes;
	if (ret_stats)
		*ret_stats = s;
	return 0;
}
