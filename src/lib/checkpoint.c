/* Checkpoint: freeze a component, capture its model (and pages), thaw it. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <limits.h>
#include <time.h>
#include <unistd.h>

#include "chain.h"
#include "checkpoint.h"
#include "fds.h"
#include "procfs.h"
#include "runtime.h"
#include "session.h"
#include "task.h"
#include "threads.h"
#include "track.h"
#include "util.h"

void checkpoint_thaw(struct frozen *fz)
{
	/* its connections take segments again before its threads run */
	fds_held_release(&fz->held, true);
	for (size_t i = 0; i < fz->n; i++) {
		(void)tracee_disarm(&fz->t[i], NULL);
		(void)tracee_detach(&fz->t[i], NULL);
	}
	free(fz->t);
	free(fz->span);
	fz->t = NULL;
	fz->span = NULL;
	fz->n = fz->nspan = 0;
}

static bool frozen_has(const struct frozen *fz, pid_t tid)
{
	for (size_t i = 0; i < fz->n; i++)
		if (fz->t[i].tid == tid)
			return true;
	return false;
}

int checkpoint_freeze(pid_t pid, struct frozen *fz, struct ferry_error *err)
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
			/* exited between the listing and the seize, its tid taken by a thread of
			 * another process already: not ours to stop */
			char path[64];
			snprintf(path, sizeof(path), "/proc/%d/task/%d", pid, tids[i]);
			if (access(path, F_OK) < 0) {
				(void)tracee_detach(&fz->t[--fz->n], NULL);
				continue;
			}
			more = true;
		}
	}
	return 0;
}

/*
 * Arm every frozen thread for injection (tracee_arm). A thread whose stack has no room for the
 * frame is injected into unarmed, as before: only a dying ferry would hurt it.
 */
static int arm_all(struct frozen *fz, pid_t pid, uint64_t sigreturn_ip, const struct proc_map *maps,
                   size_t nmaps)
{
	if (!sigreturn_ip && tracee_find_sigreturn(pid, maps, nmaps, &sigreturn_ip) < 0)
		return 0; /* no trampoline in this process: unarmed */
	for (size_t i = 0; i < fz->n; i++)
		(void)tracee_arm(&fz->t[i], sigreturn_ip, NULL);
	return 0;
}

static int disarm_all(struct frozen *fz, struct ferry_error *err)
{
	int r = 0;

	for (size_t i = 0; i < fz->n; i++) {
		int q = tracee_disarm(&fz->t[i], r < 0 ? NULL : err);
		if (q < 0 && r == 0)
			r = q;
	}
	return r;
}

static int capture_frozen(struct frozen *fz, struct fd_held *held, struct component *c,
                          struct process *p, const char *log_path, struct image_writer *w,
                          struct mem_stats *st, struct mem_track *mt, const struct prefreeze *pf,
                          struct ferry_error *err)
{
	_cleanup_free_ struct proc_map *maps = NULL;
	size_t nmaps = 0;
	uint64_t sys_ip = 0;
	struct tracee *main = NULL;
	int r;

	/* smaps was read before the freeze: only what changed since is read again */
	r = pf && pf->maps ? procfs_maps_refresh(p->host_pid, pf->maps, pf->nmaps, &maps, &nmaps)
	                   : procfs_maps(p->host_pid, &maps, &nmaps);
	if (r < 0)
		return ferr(err, r, "pid %d: reading mappings: %s", p->host_pid, strerror(-r));
	if (tracee_find_syscall_insn(p->host_pid, maps, nmaps, &sys_ip) < 0)
		return ferr(err, -ENOTSUP, "pid %d: no vdso with a syscall instruction",
		            p->host_pid);
	for (size_t i = 0; i < fz->n; i++) {
		fz->t[i].syscall_ip = sys_ip;
		if (fz->t[i].tid == p->host_pid)
			main = &fz->t[i];
	}
	if (!main)
		return ferr(err, -ESRCH, "pid %d: main thread is gone", p->host_pid);
	r = arm_all(fz, p->host_pid, pf ? pf->sigreturn_ip : 0, maps, nmaps);
	if (r < 0)
		return ferr(err, r, "pid %d: arming its threads: %s", p->host_pid, strerror(-r));
	if (mt && mt->tk && mt->tk->uffd < 0) {
		/* no tracking yet: start it now; without it the checkpoint is still taken */
		struct ferry_error e = {0};
		if (track_start(main, p->host_pid, mt->tk, &e) < 0) {
			snprintf(mt->why, sizeof(mt->why), "%s", e.msg);
			mt->tk = NULL;
		}
	}
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
	/* no more injected calls: the stack bytes under the frames back before memory is read */
	r = disarm_all(fz, err);
	if (r < 0)
		return r;
	struct fd_capture_ctx fctx = {
	        .c = c, .p = p, .w = w, .st = st, .log_path = log_path, .held = held};
	r = fds_capture(&fctx, err);
	if (r < 0)
		return r;
	r = mem_capture(c, p, maps, nmaps, w, st, mt, err); /* smaps read once, above */
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

/* The process of the component with host pid hp, or NULL. */
static struct process *proc_by_host(struct component *c, pid_t hp)
{
	for (size_t i = 0; i < c->nprocs; i++)
		if (c->procs[i].host_pid == hp)
			return &c->procs[i];
	return NULL;
}

static const struct process *proc_by_pid(const struct component *c, pid_t pid)
{
	for (size_t i = 0; i < c->nprocs; i++)
		if (c->procs[i].pid == pid)
			return &c->procs[i];
	return NULL;
}

/*
 * Can a restore make this process's session and group again? It forks every process from its
 * parent, so a session is either inherited or the process's own (setsid); a group is the
 * parent's, the process's own, or (set later, once all live processes exist) one whose leader
 * is in the component.
 */
static int check_ids(const struct component *c, const struct process *p, struct ferry_error *err)
{
	const struct process *pp = p->ppid ? proc_by_pid(c, p->ppid) : NULL;
	pid_t psid = pp ? pp->sid : 0, ppgid = pp ? pp->pgid : 0;

	if (p != &c->procs[0] && !pp)
		return ferr(err, -ENOTSUP, "pid %d: its parent %d is not in the component", p->pid,
		            p->ppid);
	if (p->sid != p->pid && p->sid != psid)
		return ferr(err, -ENOTSUP,
		            "pid %d: session %d is neither its own nor its parent's (%d): a "
		            "restore could not make it again",
		            p->pid, p->sid, psid);
	if (p->pgid == p->pid || p->pgid == ppgid)
		return 0;
	const struct process *leader = p->pgid ? proc_by_pid(c, p->pgid) : NULL;
	if (!leader || leader->pgid != p->pgid || leader->sid != p->sid || p->zombie)
		return ferr(
		        err, -ENOTSUP,
		        "pid %d: process group %d (%s) cannot be made again by a restore", p->pid,
		        p->pgid,
		        !leader ? "its leader is not in the component"
		        : p->zombie
		                ? "an exited process can only keep its parent's group or its own"
		                : "its leader left it");
	return 0;
}

/*
 * Find and freeze the processes of the component, parents before their children: each live
 * one's threads are seized (freeze) before its children are listed, so none can fork behind
 * our back; a child that exited meanwhile is a zombie (its parent, frozen, cannot reap it),
 * captured as such.
 */
static int freeze_tree(pid_t root, struct component *c, struct frozen *fz, struct ferry_error *err)
{
	int r;

	c->procs = calloc(1, sizeof(*c->procs));
	if (!c->procs)
		return ferr(err, -ENOMEM, "out of memory");
	c->nprocs = 1;
	c->procs[0].host_pid = root;
	for (size_t i = 0; i < c->nprocs; i++) {
		struct process *p = &c->procs[i];
		pid_t hp = p->host_pid;
		char state = '?';
		r = procfs_ns_ids(hp, &p->pid, &p->pgid, &p->sid, &state);
		if (r == -ENOENT && i > 0) {
			/* reaped by the kernel (its parent ignores SIGCHLD): gone, not captured */
			memmove(p, p + 1, (c->nprocs - i - 1) * sizeof(*p));
			c->nprocs--;
			i--;
			continue;
		}
		if (r < 0)
			return ferr(err, r, "pid %d: reading its ids: %s", hp, strerror(-r));
		if (GROW(fz->span, fz->nspan) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		struct frozen_span *sp = &fz->span[fz->nspan++];
		sp->first = fz->n;
		sp->n = 0;
		if (state == 'Z' || state == 'X') {
			uint64_t f[PROCFS_STAT_FIELDS];
			if (i == 0)
				return ferr(err, -ESRCH, "pid %d has exited", hp);
			p->zombie = 1;
			r = procfs_stat(hp, f);
			if (r < 0)
				return ferr(err, r, "pid %d (exited): its status: %s", hp,
				            strerror(-r));
			p->exit_status = (int32_t)f[52];
			continue;
		}
		r = checkpoint_freeze(hp, fz, err);
		sp->n = fz->n - sp->first;
		if (r < 0)
			return r;
		_cleanup_free_ pid_t *kids = NULL;
		size_t nkids = 0;
		r = procfs_children(hp, &kids, &nkids);
		if (r < 0)
			return ferr(err, r, "pid %d: listing its children: %s", hp, strerror(-r));
		for (size_t k = 0; k < nkids; k++) {
			if (proc_by_host(c, kids[k]))
				continue;
			if (GROW(c->procs, c->nprocs) < 0)
				return ferr(err, -ENOMEM, "out of memory");
			p = &c->procs[i]; /* moved by GROW */
			struct process *q = &c->procs[c->nprocs++];
			memset(q, 0, sizeof(*q));
			q->host_pid = kids[k];
			q->ppid = p->pid;
		}
	}
	if (c->procs[0].pid != 1)
		return ferr(err, -ENOTSUP, "pid %d is pid %d of its namespace, not its init", root,
		            c->procs[0].pid);
	for (size_t i = 0; i < c->nprocs; i++) {
		r = check_ids(c, &c->procs[i], err);
		if (r < 0)
			return r;
	}
	return 0;
}

int checkpoint_capture(const struct ferry_runtime *rt, const char *name, bool ending, pid_t pid,
                       const char *log_path, struct image_writer *w, struct frozen *fz,
                       struct component **ret, struct mem_stats *st, struct mem_track *mt,
                       const struct prefreeze *pf, struct ferry_error *err)
{
	struct component *c = calloc(1, sizeof(*c));
	int r;

	if (!c) {
		ferr_set(err, -ENOMEM, "out of memory");
		return -ENOMEM;
	}
	c->created = (int64_t)time(NULL);
	/* before the freeze: what is known of sessions */
	c->ending = ending;
	r = session_load(c, rt, name, err);
	if (r == 0)
		r = freeze_tree(pid, c, fz, err);
	/* dirty tracking and the rounds before the freeze follow the init only: the others are
	 * captured whole */
	for (size_t i = 0; r == 0 && i < c->nprocs; i++) {
		struct process *p = &c->procs[i];
		struct frozen view = {.t = fz->t + fz->span[i].first, .n = fz->span[i].n};
		if (p->zombie) {
			char path[64];
			_cleanup_free_ char *comm = NULL;
			snprintf(path, sizeof(path), "/proc/%d/comm", p->host_pid);
			if (read_file(path, &comm, NULL) == 0)
				snprintf(p->comm, sizeof(p->comm), "%.*s", (int)strcspn(comm, "\n"),
				         comm);
			continue;
		}
		r = capture_frozen(&view, &fz->held, c, p, log_path, w, st, i == 0 ? mt : NULL,
		                   i == 0 ? pf : NULL, err);
		if (r < 0 && c->nprocs > 1)
			ferr_prefix(err, "process %d", p->pid);
	}
	if (r == 0 && c->ninflight) {
		/* files in flight in the sockets' queues: held by a process, or captured alone */
		struct fd_capture_ctx fctx = {
		        .c = c, .w = w, .st = st, .log_path = log_path, .held = &fz->held};
		r = fds_inflight_resolve(&fctx, err);
	}
	if (r < 0) {
		model_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

/* The tracking and parent of one checkpoint, decided before the freeze. */
struct plan {
	struct track tk;
	bool tracking;     /* tk.uffd is an attached tracking */
	struct chain *ch;  /* the parent, when incremental */
	struct chain *pre; /* pages copied before the freeze (over ch), or NULL */
	char why[FERRY_FALLBACK_MAX];
};

static void plan_parent(struct plan *pl, const char *name, const char *parent)
{
	struct ferry_error e = {0};

	if (!pl->tracking) {
		snprintf(pl->why, sizeof(pl->why), "%s",
		         pl->why[0] ? pl->why : "no dirty tracking");
		return;
	}
	if (chain_open(parent, &pl->ch, &e) < 0) {
		snprintf(pl->why, sizeof(pl->why), "%s", e.msg);
		return;
	}
	/* last is set only by captures of this tracking (or by the restore it started with) */
	if (pl->ch->pc->capture_id == 0 || pl->ch->pc->capture_id != pl->tk.last) {
		snprintf(pl->why, sizeof(pl->why),
		         "%s is not the latest checkpoint of this run of %s: the pages written "
		         "since it are not known",
		         parent, name);
		pl->ch = chain_free(pl->ch);
	}
}

/* Append one line of figures to the component's stats file (for ferry stats). */
static void stats_record(const struct ferry_runtime *rt, const char *name,
                         const struct ferry_ckpt_stats *s)
{
	char dir[PATH_MAX], path[PATH_MAX + 8], line[256];

	runtime_dir(rt, name, dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/stats", dir);
	int n = snprintf(line, sizeof(line),
	                 "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %d %u\n",
	                 s->freeze_ns, s->total_ns, s->pages_scanned, s->pages_written,
	                 s->bytes_written, s->incremental, s->files);
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd >= 0)
		(void)write_full(fd, line, (size_t)n);
}

/* Start tracking in a brief freeze: inject userfaultfd() and take a copy of it out. */
static int start_tracking(pid_t pid, struct track *tk, uint64_t *ret_freeze_ns,
                          struct ferry_error *err)
{
	_cleanup_free_ struct proc_map *maps = NULL;
	struct frozen fz = {0};
	size_t nmaps = 0;
	uint64_t sys_ip = 0, t0 = now_ns();
	int r = procfs_maps(pid, &maps, &nmaps);

	if (r < 0)
		return ferr(err, r, "pid %d: reading mappings: %s", pid, strerror(-r));
	if (tracee_find_syscall_insn(pid, maps, nmaps, &sys_ip) < 0)
		return ferr(err, -ENOTSUP, "pid %d: no vdso with a syscall instruction", pid);
	r = checkpoint_freeze(pid, &fz, err);
	for (size_t i = 0; r == 0 && i < fz.n; i++)
		if (fz.t[i].tid == pid) {
			uint64_t sr = 0;
			fz.t[i].syscall_ip = sys_ip;
			if (tracee_find_sigreturn(pid, maps, nmaps, &sr) == 0)
				(void)tracee_arm(&fz.t[i], sr, NULL);
			r = track_start(&fz.t[i], pid, tk, err);
			int q = tracee_disarm(&fz.t[i], r < 0 ? NULL : err);
			r = r < 0 ? r : q;
			break;
		}
	checkpoint_thaw(&fz);
	*ret_freeze_ns = now_ns() - t0;
	return r;
}

/*
 * Rounds of copying before the freeze, while the component runs. A live checkpoint copies
 * everything, then what the last round saw written, until that is little or stops shrinking;
 * an incremental one copies in one round what was written since its parent. The freeze then
 * copies only what was written since the last round; the rest comes from the rounds (pl->pre)
 * and, under them, from the parent image.
 */
#define PRECOPY_ROUNDS_MAX 8
#define PRECOPY_ENOUGH     (8ULL << 20)

static int precopy(const struct ferry_runtime *rt, const char *name, pid_t pid, struct plan *pl,
                   struct image_writer *w, bool live, bool scan_only, struct prefreeze *pf,
                   struct ferry_ckpt_stats *s, struct ferry_error *err)
{
	uint64_t bytes = 0, last = UINT64_MAX;
	int r;

	if (!pl->tracking) {
		r = start_tracking(pid, &pl->tk, &s->freeze_ns, err);
		if (r < 0)
			return ferr_prefix(err, "live checkpoint needs dirty tracking");
		pl->tracking = true;
		r = track_keep(rt, name, pid, &pl->tk, err); /* its holder; last stays 0 */
		if (r < 0)
			return r;
	}
	pl->pre = calloc(1, sizeof(*pl->pre));
	if (!pl->pre)
		return ferr(err, -ENOMEM, "out of memory");
	pl->pre->own = true;
	pl->pre->under = pl->ch;
	for (uint32_t round = 0; round < PRECOPY_ROUNDS_MAX; round++) {
		enum mem_round mode = live && round == 0 ? MEM_ROUND_ALL
		                      : scan_only        ? MEM_ROUND_SCAN
		                                         : MEM_ROUND_WRITTEN;
		r = mem_precopy(pid, &pl->tk, w, mode, &pf->maps, &pf->nmaps, &pl->pre->idx,
		                &pl->pre->nidx, &pl->pre->through, &pl->pre->nthrough, &bytes, err);
		if (r < 0)
			return ferr_prefix(err, "copy round %u while running", round);
		if (scan_only)
			break;
		pl->tk.fresh = false; /* every private mapping is registered now */
		s->precopy_rounds++;
		s->precopy_bytes += bytes;
		if (!live || (round > 0 && (bytes <= PRECOPY_ENOUGH || bytes >= last)))
			break;
		last = bytes;
	}
	return 0;
}

static int checkpoint_once(const struct ferry_runtime *rt, const char *name, const char *dir,
                           const struct ferry_ckpt_opts *o, struct mem_stage *sg,
                           struct ferry_ckpt_stats *ret_stats, struct ferry_error *err)
{
	struct ferry_component rec;
	struct image_writer *w = NULL;
	struct component *c = NULL;
	struct mem_stats st = {0};
	struct ferry_ckpt_stats s = {0};
	struct frozen fz = {0};
	struct plan pl = {.tk = TRACK_INIT};
	struct chain_stats cs = {0};
	struct prefreeze pf = {0};
	bool stop = o->flags & FERRY_CKPT_STOP;
	uint64_t t0 = now_ns(), tf, bytes = 0, capture_id = 0, own_pages = 0;
	int r;

	r = ferry_component_get(rt, name, &rec, err);
	if (r < 0)
		return r;
	if (rec.state != FERRY_STATE_RUNNING)
		return ferr(err, -ESRCH, "component %s is not running", name);
	r = image_writer_open(dir, &w, err);
	if (r < 0)
		return r;
	pl.tracking = track_attach(rt, name, rec.pid, &pl.tk, pl.why, sizeof(pl.why)) == 0;
	if (o->parent)
		plan_parent(&pl, name, o->parent);
	/* until this capture commits, no image is a valid parent: collecting re-protects pages */
	if (pl.tracking && pl.tk.last != 0) {
		pl.tk.last = 0;
		r = track_keep(rt, name, rec.pid, &pl.tk, err);
		if (r < 0)
			goto fail;
	}
	/* a live checkpoint copies its memory while the component runs; so does an incremental
	 * one, the pages written since its parent: the freeze copies what was written meanwhile */
	if ((o->flags & FERRY_CKPT_LIVE) || pl.ch) {
		/* without copying rounds, still one scan: where tracked mappings hold data */
		bool scan_only = pl.ch && (o->flags & FERRY_CKPT_NO_ROUNDS);
		r = precopy(rt, name, rec.pid, &pl, w, o->flags & FERRY_CKPT_LIVE, scan_only, &pf,
		            &s, err);
		if (r < 0)
			goto fail;
	}
	struct chain *from = pl.pre ? pl.pre : pl.ch; /* where unwritten pages come from */
	if (getrandom(&capture_id, sizeof(capture_id), 0) != sizeof(capture_id)) {
		r = ferr(err, -errno, "getrandom: %m");
		goto fail;
	}
	if (from) {
		/* the pages to copy while frozen: a buffer faulted in now, before the freeze */
		uint64_t est = track_estimate(&pl.tk);
		r = mem_stage_prepare(sg, est + est / 4 + 4 * 1048576, err);
		if (r < 0)
			goto fail;
	}
	bool defer = stop && !from && o->handover && (o->flags & FERRY_CKPT_DEFER_ANON);
	/* post-copy: the component ends once its pages are out; protecting them again for
	 * tracking would only lengthen the freeze (a hand-over that fails leaves a full next
	 * checkpoint either way: the track file names no valid parent until a capture commits) */
	struct mem_track mt = {.tk = (pl.tracking || !stop) && !defer ? &pl.tk : NULL,
	                       .parent = from,
	                       .stage = from ? sg : NULL,
	                       .defer_anon = defer};
	if (pl.pre) {
		/* the mappings as the last round saw them (its registrations included) */
		mt.seen = pf.maps;
		mt.nseen = pf.nmaps;
	}
	if (pf.maps || procfs_maps(rec.pid, &pf.maps, &pf.nmaps) == 0)
		(void)tracee_find_sigreturn(rec.pid, pf.maps, pf.nmaps, &pf.sigreturn_ip);
	else
		pf.maps = NULL; /* read in the freeze then */
	tf = now_ns();
	r = checkpoint_capture(rt, name, stop && !o->handover, rec.pid, rec.log_path, w, &fz, &c,
	                       &st, &mt, &pf, err);
	if (r < 0) {
		checkpoint_thaw(&fz);
		goto fail;
	}
	/* with --stop the component stays frozen until the image is durable, then ends:
	 * it does nothing after the moment the image shows */
	if (!stop) {
		checkpoint_thaw(&fz);
		s.freeze_ns += now_ns() - tf;
	}
	s.incremental = pl.ch != NULL;
	if (!mt.tk && !pl.why[0])
		snprintf(pl.why, sizeof(pl.why), "%s", mt.why);
	s.tracked = mt.tk && !stop;
	if (s.tracked && !pl.tk.holder) {
		r = track_keep(rt, name, rec.pid, &pl.tk, err); /* a fresh tracking: its holder */
		if (r < 0)
			goto fail_frozen;
	}
	r = mem_stage_flush(sg, w, &st, err);
	if (r == 0)
		r = mem_finish_runs(sg, &c->procs[0], from, &st, err);
	if (r == 0)
		r = chain_finish(pl.ch, c, w, o->keep, dir, &cs, err);
	if (r < 0)
		goto fail_frozen;
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->log_id = runtime_log_id(rt, name);
	c->capture_id = capture_id;
	c->track_id = s.tracked ? pl.tk.id : 0;
	c->parent_id = pl.ch ? pl.ch->pc->capture_id : 0;
	/* the pages this image holds in its own file, copied frozen or in rounds before */
	for (size_t k = 0; k < c->nprocs; k++)
		for (size_t i = 0; i < c->procs[k].nvmas; i++)
			for (size_t j = 0; j < c->procs[k].vmas[i].nruns; j++)
				if (c->procs[k].vmas[i].runs[j].file == 0)
					own_pages += c->procs[k].vmas[i].runs[j].npages;
	own_pages -= MIN(own_pages, st.pages_shared_own); /* named twice, stored once */
	for (size_t i = 0; i < c->nshmems; i++)
		for (size_t j = 0; j < c->shmems[i].nruns; j++)
			own_pages += c->shmems[i].runs[j].npages;
	r = model_save(c, w, err);
	if (r == 0)
		r = image_writer_commit(w, &bytes, err);
	if (r < 0)
		goto fail_frozen;
	for (size_t k = 0; k < c->nprocs; k++) {
		s.threads += (uint32_t)c->procs[k].nthreads;
		s.vmas += (uint32_t)c->procs[k].nvmas;
		s.fds += (uint32_t)c->procs[k].nfds;
	}
	s.processes = (uint32_t)c->nprocs;
	w = image_writer_free(w);
	if (s.tracked) {
		/* the image is the parent the next incremental checkpoint may name */
		pl.tk.last = capture_id;
		struct ferry_error e = {0};
		if (track_keep(rt, name, rec.pid, &pl.tk, &e) < 0)
			s.tracked = false;
	}
	if (stop && o->handover) {
		/* someone else decides: end it, or let it run on */
		int h = o->handover(o->handover_arg, tf, c, err);
		if (h <= 0) {
			checkpoint_thaw(&fz);
			s.freeze_ns += now_ns() - tf;
			stop = false;
			if (h < 0) {
				r = h;
				goto out;
			}
		}
	}
	/* its TCP connections, closed with it, stay locked until a restore takes them (a
	 * migration decided already: it ends whatever) */
	if (stop && (r = fds_held_lock(&fz.held, err)) < 0 && !o->handover) {
		ferr_prefix(err, "image written, but not stopping %s", name);
		checkpoint_thaw(&fz);
		goto out;
	}
	if (stop) {
		s.freeze_ns += now_ns() - tf;
		if (!o->handover) {
			/* its sessions end here: a TCP one acknowledges what the image holds and
			 * is reset (a migration's did so at its decision) */
			_cleanup_free_ uint8_t *late = NULL;
			size_t nlate = 0;
			struct ferry_error e = {0};
			(void)session_late(c, &late, &nlate, &e);
		}
		r = safe_kill(rec.pid, SIGKILL);
		/* as its tracer we see its threads die first; only then can its monitor reap it */
		reap_killed(&fz);
		/* its connections close in repair mode: no FIN, no RST; a restore takes them */
		fds_held_release(&fz.held, false);
		checkpoint_thaw(&fz);
		/* its monitor records the exit; the record stays (state exited) for ps and logs */
		for (int i = 0; r == 0 && i < 500; i++) {
			struct ferry_component now;
			if (ferry_component_get(rt, name, &now, NULL) < 0 ||
			    now.state == FERRY_STATE_EXITED)
				break;
			usleep(10000);
		}
		if (r < 0) {
			r = ferr_prefix(err, "image written, but stopping %s", name);
			goto out;
		}
	}
	s.total_ns = now_ns() - t0;
	s.write_ns = st.write_ns;
	s.pages_scanned = st.pages_scanned;
	s.pages_written = own_pages;
	s.pages_frozen = st.pages_written;
	s.pages_folded = cs.pages_folded;
	s.pages_shared = st.pages_shared;
	s.bytes_written = bytes;
	s.files = cs.files;
	if (o->parent && !pl.ch)
		snprintf(s.fallback, sizeof(s.fallback), "%s", pl.why);
	stats_record(rt, name, &s);
	if (ret_stats)
		*ret_stats = s;
	r = 0;
	goto out;
fail_frozen:
	checkpoint_thaw(&fz);
	ferr_prefix(err, "%s left running; earlier image in %s kept", name, dir);
	goto out;
fail:
	ferr_prefix(err, "%s left running; nothing written", name);
out:
	free(pf.maps);
	model_free(c);
	image_writer_free(w);
	chain_free(pl.pre);
	chain_free(pl.ch);
	track_release(&pl.tk);
	return r;
}

int ferry_checkpoint(const struct ferry_runtime *rt, const char *name, const char *dir,
                     const struct ferry_ckpt_opts *opts, struct ferry_ckpt_stats *ret_stats,
                     struct ferry_error *err)
{
	struct ferry_ckpt_opts none = {0};
	struct mem_stage sg = {0};

	int r = checkpoint_once(rt, name, dir, opts ? opts : &none, &sg, ret_stats, err);
	mem_stage_free(&sg);
	return r;
}

int ferry_checkpoint_every(const struct ferry_runtime *rt, const char *name, const char *dir,
                           const struct ferry_ckpt_opts *opts, uint64_t interval_ns, uint64_t count,
                           ferry_tick_fn tick, void *arg, struct ferry_error *err)
{
	struct ferry_ckpt_opts o = *opts;
	struct mem_stage sg = {0}; /* kept from one checkpoint to the next: no fresh faults */
	struct stat sb;
	char manifest[PATH_MAX + 16];
	struct timespec next;
	int r = 0;

	snprintf(manifest, sizeof(manifest), "%s/MANIFEST", dir);
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (uint64_t i = 0; count == 0 || i < count; i++) {
		struct ferry_ckpt_stats st;
		/* incremental on what DIR holds; a DIR of another run just gives a full one */
		o.parent = stat(manifest, &sb) == 0 ? dir : NULL;
		r = checkpoint_once(rt, name, dir, &o, &sg, &st, err);
		if (r < 0 || (tick && tick(arg, &st)))
			break;
		/*
		 * The round before the freeze pays when the pages written since the last checkpoint
		 * are left alone afterwards. A component rewriting the same pages all the time
		 * writes them again before the freeze: then the round only copies them twice and
		 * doubles the write-protect faults, so go without it, and try it again now and
		 * then.
		 */
		if (o.flags & FERRY_CKPT_NO_ROUNDS)
			o.flags &= (i % 8 == 7) ? ~FERRY_CKPT_NO_ROUNDS : ~0u;
		else if (st.incremental && st.precopy_bytes &&
		         st.pages_frozen * 2 * 4096 >= st.precopy_bytes)
			o.flags |= FERRY_CKPT_NO_ROUNDS;
		if (count && i + 1 == count)
			break;
		uint64_t ns = (uint64_t)next.tv_nsec + interval_ns;
		next.tv_sec += (time_t)(ns / 1000000000ULL);
		next.tv_nsec = (long)(ns % 1000000000ULL);
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > next.tv_sec ||
		    (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec))
			next = now; /* behind: start the next one at once, do not catch up */
		/* in slices, so that tick can end a long wait soon */
		for (;;) {
			struct timespec slice;
			clock_gettime(CLOCK_MONOTONIC, &slice);
			slice.tv_nsec += 100000000L;
			if (slice.tv_nsec >= 1000000000L) {
				slice.tv_sec++;
				slice.tv_nsec -= 1000000000L;
			}
			bool last = slice.tv_sec > next.tv_sec ||
			            (slice.tv_sec == next.tv_sec && slice.tv_nsec >= next.tv_nsec);
			const struct timespec *until = last ? &next : &slice;
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, until, NULL) ==
			       EINTR)
				;
			if (tick && tick(arg, NULL))
				goto out;
			if (last)
				break;
		}
	}
out:
	mem_stage_free(&sg);
	return r;
}

static struct ferry_stat_summary summarize(uint64_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	return (struct ferry_stat_summary){.min = v[0], .median = v[n / 2], .max = v[n - 1]};
}

int ferry_stats(const struct ferry_runtime *rt, const char *name, struct ferry_stats *ret,
                struct ferry_error *err)
{
	struct ferry_component rec;
	char dir[PATH_MAX], path[PATH_MAX + 8];
	_cleanup_free_ char *text = NULL;
	_cleanup_free_ uint64_t *col = NULL;
	struct ferry_stats out = {0};
	size_t n = 0;

	int r = ferry_component_get(rt, name, &rec, err);
	if (r < 0)
		return r;
	runtime_dir(rt, name, dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/stats", dir);
	r = read_file(path, &text, NULL);
	if (r == -ENOENT) {
		*ret = out;
		return 0;
	}
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	for (const char *p = text; *p; p++)
		n += *p == '\n';
	col = calloc(5 * (n ? n : 1), sizeof(*col));
	if (!col)
		return ferr(err, -ENOMEM, "out of memory");
	size_t k = 0;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		struct ferry_ckpt_stats s = {0};
		int inc = 0;
		unsigned files = 0;
		if (sscanf(line,
		           "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %d %u",
		           &s.freeze_ns, &s.total_ns, &s.pages_scanned, &s.pages_written,
		           &s.bytes_written, &inc, &files) != 7)
			continue;
		s.incremental = inc != 0;
		s.files = files;
		const uint64_t v[5] = {s.freeze_ns, s.total_ns, s.pages_scanned, s.pages_written,
		                       s.bytes_written};
		for (int i = 0; i < 5; i++)
			col[i * n + k] = v[i];
		out.incremental += s.incremental;
		out.latest = s;
		k++;
	}
	out.count = k;
	if (k) {
		out.freeze_ns = summarize(col, k);
		out.total_ns = summarize(col + n, k);
		out.pages_scanned = summarize(col + 2 * n, k);
		out.pages_written = summarize(col + 3 * n, k);
		out.bytes_written = summarize(col + 4 * n, k);
	}
	*ret = out;
	return 0;
}
