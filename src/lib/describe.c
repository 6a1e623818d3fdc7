/* The capability space made readable: JSON descriptions of images and running components. */
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "cgroup.h"
#include "checkpoint.h"
#include "mem.h"
#include "fds.h"
#include "model.h"
#include "netlock.h"
#include "runtime.h"
#include "task.h"
#include "threads.h"
#include "track.h"
#include "services.h"
#include "session.h"
#include "util.h"

static json_object *hex(uint64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
	return json_object_new_string(buf);
}

static const char *vma_kind_name(const struct vma *v, const struct component *c)
{
	if (v->flags & VMA_F_HEAP)
		return "heap";
	if (v->flags & VMA_F_STACK)
		return "stack";
	switch (v->kind) {
	case VMA_ANON:
		return "anon";
	case VMA_FILE_PRIVATE:
		return "file";
	case VMA_FILE_SHARED:
		return "file-shared";
	case VMA_SHMEM:
		if (v->shmem >= 0 && c->shmems[v->shmem].kind == SHMEM_MEMFD)
			return "memfd";
		if (v->shmem >= 0 && c->shmems[v->shmem].kind == SHMEM_DELETED)
			return "deleted-shared";
		if (v->shmem >= 0 && c->shmems[v->shmem].kind == SHMEM_SYSV)
			return "sysv-shm";
		return "shared-anon";
	case VMA_VDSO:
		return "vdso";
	case VMA_VVAR:
		return "vvar";
	case VMA_VVAR_VCLOCK:
		return "vvar_vclock";
	default:
		return "?";
	}
}

static json_object *describe_thread(const struct thread *t)
{
	json_object *o = json_object_new_object(), *regs = json_object_new_object();
	const struct user_regs_struct *r = &t->regs;
	char state[96];
	const struct {
		const char *n;
		uint64_t v;
	} rv[] = {{"rip", r->rip},
	          {"rsp", r->rsp},
	          {"rbp", r->rbp},
	          {"rax", r->rax},
	          {"rbx", r->rbx},
	          {"rcx", r->rcx},
	          {"rdx", r->rdx},
	          {"rsi", r->rsi},
	          {"rdi", r->rdi},
	          {"r8", r->r8},
	          {"r9", r->r9},
	          {"r10", r->r10},
	          {"r11", r->r11},
	          {"r12", r->r12},
	          {"r13", r->r13},
	          {"r14", r->r14},
	          {"r15", r->r15},
	          {"eflags", r->eflags},
	          {"orig_rax", r->orig_rax},
	          {"fs_base", r->fs_base},
	          {"gs_base", r->gs_base}};

	for (size_t i = 0; i < ARRAY_SIZE(rv); i++)
		json_object_object_add(regs, rv[i].n, hex(rv[i].v));
	thread_state_describe(t, state, sizeof(state));
	json_object_object_add(o, "tid", json_object_new_int(t->tid));
	json_object_object_add(o, "comm", json_object_new_string(t->comm));
	json_object_object_add(o, "state", json_object_new_string(state));
	json_object_object_add(o, "regs", regs);
	json_object_object_add(o, "xstate_bytes", json_object_new_int((int)t->xstate_len));
	json_object_object_add(o, "sigmask", hex(t->sigmask));
	if (!(t->ss_flags & SS_DISABLE)) {
		char buf[96];
		snprintf(buf, sizeof(buf), "0x%" PRIx64 " size %" PRIu64, t->ss_sp, t->ss_size);
		json_object_object_add(o, "altstack", json_object_new_string(buf));
	} else {
		json_object_object_add(o, "altstack", NULL);
	}
	if (t->rseq_ptr) {
		char buf[96];
		snprintf(buf, sizeof(buf), "0x%" PRIx64 " len %u sig 0x%x", t->rseq_ptr,
		         t->rseq_len, t->rseq_sig);
		json_object_object_add(o, "rseq", json_object_new_string(buf));
	} else {
		json_object_object_add(o, "rseq", NULL);
	}
	json_object_object_add(o, "clear_child_tid", hex(t->clear_tid));
	return o;
}

static json_object *describe_vma(const struct vma *v, const struct component *c)
{
	json_object *o = json_object_new_object();
	char prot[5] = {v->prot & PROT_READ ? 'r' : '-', v->prot & PROT_WRITE ? 'w' : '-',
	                v->prot & PROT_EXEC ? 'x' : '-', v->flags & VMA_F_SHARED ? 's' : 'p', 0};
	uint64_t pages = 0;
	const struct page_run *runs = v->runs;
	size_t nruns = v->nruns;

	if (v->kind == VMA_SHMEM && v->shmem >= 0) {
		runs = c->shmems[v->shmem].runs;
		nruns = c->shmems[v->shmem].nruns;
	}
	for (size_t i = 0; i < nruns; i++)
		pages += runs[i].npages;
	json_object_object_add(o, "start", hex(v->start));
	json_object_object_add(o, "end", hex(v->end));
	json_object_object_add(o, "size", json_object_new_int64((int64_t)(v->end - v->start)));
	json_object_object_add(o, "prot", json_object_new_string(prot));
	json_object_object_add(o, "kind", json_object_new_string(vma_kind_name(v, c)));
	json_object_object_add(o, "path", v->path ? json_object_new_string(v->path) : NULL);
	json_object_object_add(o, "pages", json_object_new_int64((int64_t)pages));
	/* which pages file each stretch of saved pages comes from (a chain has several) */
	json_object *src = json_object_new_array();
	for (size_t i = 0; i < nruns;) {
		size_t j = i + 1;
		uint64_t n = runs[i].npages;
		while (j < nruns && runs[j].file == runs[i].file &&
		       runs[j].addr == runs[i].addr + n * MODEL_PAGE)
			n += runs[j++].npages;
		json_object *so = json_object_new_object();
		json_object_object_add(so, "start", hex(runs[i].addr));
		json_object_object_add(so, "pages", json_object_new_int64((int64_t)n));
		json_object_object_add(so, "file", json_object_new_int64(runs[i].file));
		json_object_array_add(src, so);
		i = j;
	}
	json_object_object_add(o, "sources", src);
	return o;
}

/* A session to a service of the node: which, with what arguments, what is in flight. */
static json_object *describe_session(const struct fd_entry *e)
{
	json_object *o = json_object_new_object();
	bool rom = e->nextra >= SS_MIN && e->extra[SS_KIND] == FERRY_SERVICE_ROM;
	char path[PATH_MAX], id[20];

	if (e->nextra < SS_MIN || !e->path)
		return o;
	snprintf(path, sizeof(path), SERVICES_DIR "/%s/%s", rom ? "rom" : "services", e->path);
	json_object_object_add(o, "service", json_object_new_string(e->path));
	json_object_object_add(o, "kind",
	                       json_object_new_string(ferry_service_kind_name(
	                               (enum ferry_service_kind)e->extra[SS_KIND])));
	json_object_object_add(o, "address", json_object_new_string(path));
	if (rom) {
		json_object_object_add(o, "offset", json_object_new_int64((int64_t)e->pos));
		return o;
	}
	snprintf(id, sizeof(id), "%016" PRIx64, e->extra[SS_ID]);
	json_object_object_add(o, "type",
	                       json_object_new_string(e->extra[UX_TYPE] == SOCK_SEQPACKET
	                                                      ? "seqpacket"
	                                                      : "stream"));
	json_object_object_add(o, "id", json_object_new_string(id));
	json_object_object_add(o, "recreated", json_object_new_int64((int64_t)e->extra[SS_SEQ]));
	json_object_object_add(o, "bytes_to_component",
	                       json_object_new_int64((int64_t)e->extra[UX_QBYTES]));
	json_object_object_add(o, "bytes_to_service",
	                       json_object_new_int64((int64_t)e->extra[SS_OUTQ]));
	return o;
}

/* The pages files of an image: name, size, where each was written, pages taken from it. */
static json_object *describe_pagefiles(const struct component *c, const struct image_reader *rd)
{
	uint32_t n = image_reader_npages_files(rd);
	json_object *arr = json_object_new_array();

	for (uint32_t i = 0; i < n; i++) {
		uint64_t pages = 0;
		for (size_t p = 0; p < c->nprocs; p++)
			for (size_t v = 0; v < c->procs[p].nvmas; v++)
				for (size_t k = 0; k < c->procs[p].vmas[v].nruns; k++)
					if (c->procs[p].vmas[v].runs[k].file == i)
						pages += c->procs[p].vmas[v].runs[k].npages;
		for (size_t sh = 0; i == 0 && sh < c->nshmems; sh++)
			for (size_t k = 0; k < c->shmems[sh].nruns; k++)
				pages += c->shmems[sh].runs[k].npages;
		const struct pagefile *pf = i < c->npagefiles ? &c->pagefiles[i] : NULL;
		json_object *f = json_object_new_object();
		json_object_object_add(f, "index", json_object_new_int64(i));
		json_object_object_add(f, "name",
		                       json_object_new_string(image_reader_pages_name(rd, i)));
		json_object_object_add(
		        f, "bytes",
		        json_object_new_int64((int64_t)image_reader_pages_size_at(rd, i)));
		json_object_object_add(f, "origin", pf ? json_object_new_string(pf->origin) : NULL);
		json_object_object_add(f, "generation",
		                       json_object_new_int64(pf ? (int64_t)pf->gen : 0));
		json_object_object_add(f, "created", json_object_new_int64(pf ? pf->created : 0));
		json_object_object_add(f, "pages", json_object_new_int64((int64_t)pages));
		json_object_array_add(arr, f);
	}
	return arr;
}

static json_object *describe_fd(const struct fd_entry *e, const struct component *c)
{
	json_object *o = json_object_new_object();
	const struct fd_ops *ops = fds_ops_of(e->kind);
	char flags[128], meaning[PATH_MAX + 256] = "?";
	const struct fd_entry *origin = e;
	json_object *with = NULL;

	/* an open file description of several processes: described by its first holder (which
	 * holds what was captured of it), with the others named */
	bool first = true;
	for (size_t i = 0; e->share >= 0 && i < c->nprocs; i++)
		for (size_t j = 0; j < c->procs[i].nfds; j++) {
			const struct fd_entry *f = &c->procs[i].fds[j];
			if (f->share != e->share || f->dup_of >= 0)
				continue;
			if (first)
				origin = f;
			first = false;
			if (f == e)
				continue;
			char h[48];
			snprintf(h, sizeof(h), "pid %d fd %d", c->procs[i].pid, f->fd);
			if (!with)
				with = json_object_new_array();
			json_object_array_add(with, json_object_new_string(h));
		}
	fds_flags_str(e->flags, flags, sizeof(flags));
	if (e->dup_of >= 0)
		snprintf(meaning, sizeof(meaning), "the same open file as fd %d (dup)", e->dup_of);
	else if (ops)
		ops->describe(origin, meaning, sizeof(meaning));
	size_t nwith = with ? json_object_array_length(with) : 0;
	size_t len = strlen(meaning);
	for (size_t i = 0; i < nwith && len < sizeof(meaning); i++) {
		len += (size_t)snprintf(meaning + len, sizeof(meaning) - len, "%s%s",
		                        i ? ", " : "; also held by ",
		                        json_object_get_string(json_object_array_get_idx(with, i)));
		len = MIN(len, sizeof(meaning));
	}
	json_object_object_add(o, "fd", json_object_new_int(e->fd));
	json_object_object_add(o, "kind", json_object_new_string(ops ? ops->name : "?"));
	json_object_object_add(o, "path", e->path ? json_object_new_string(e->path) : NULL);
	json_object_object_add(o, "flags", json_object_new_string(flags));
	json_object_object_add(o, "pos", json_object_new_int64((int64_t)origin->pos));
	json_object_object_add(o, "cloexec", json_object_new_boolean(e->cloexec));
	json_object_object_add(o, "meaning", json_object_new_string(meaning));
	if (with)
		json_object_object_add(o, "shared_with", with);
	if (origin->kind == FD_SESSION)
		json_object_object_add(o, "session", describe_session(origin));
	return o;
}

/* A file in flight: the open file a process holds, or its own meaning. */
static json_object *describe_inflight(const struct fd_entry *e, const struct component *c)
{
	json_object *o = json_object_new_object();
	const struct fd_ops *ops = fds_ops_of(e->kind);
	char meaning[PATH_MAX + 256] = "?";
	const struct fd_entry *held = NULL;
	int32_t pid = 0, fd = e->dup_of;

	for (size_t i = 0; i < c->nprocs && !held; i++)
		for (size_t j = 0; j < c->procs[i].nfds && !held; j++) {
			const struct fd_entry *f = &c->procs[i].fds[j];
			if ((e->share >= 0 && f->share == e->share && f->dup_of < 0) ||
			    (e->dup_of >= 0 && f->fd == e->dup_of)) {
				held = f;
				pid = c->procs[i].pid;
				fd = f->fd;
			}
		}
	if (held)
		snprintf(meaning, sizeof(meaning), "the open file of pid %d fd %d", pid, fd);
	else if (ops)
		ops->describe(e, meaning, sizeof(meaning));
	json_object_object_add(o, "index", json_object_new_int(e->fd));
	json_object_object_add(o, "kind", json_object_new_string(ops ? ops->name : "?"));
	json_object_object_add(o, "meaning", json_object_new_string(meaning));
	if (held) {
		json_object_object_add(o, "held_by_pid", json_object_new_int(pid));
		json_object_object_add(o, "held_as_fd", json_object_new_int(fd));
	}
	return o;
}

static void sig_name(int sig, char *buf, size_t len)
{
	const char *abbrev = sigabbrev_np(sig);
	if (abbrev)
		snprintf(buf, len, "SIG%s", abbrev);
	else if (sig >= SIGRTMIN && sig <= SIGRTMAX)
		snprintf(buf, len, "SIGRTMIN+%d", sig - SIGRTMIN);
	else
		snprintf(buf, len, "%d", sig);
}

static json_object *timer_object(const char *kind, int64_t next_ns, int64_t interval_ns)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "kind", json_object_new_string(kind));
	/* when it fires next, from the checkpoint (null: disarmed), and its period (0: once) */
	json_object_object_add(o, "next_ms",
	                       next_ns ? json_object_new_double((double)next_ns / 1e6) : NULL);
	json_object_object_add(o, "interval_ms", json_object_new_double((double)interval_ns / 1e6));
	return o;
}

/* Interval timers that are armed, and every POSIX timer. */
static json_object *describe_timers(const struct process *p)
{
	static const char *const which[3] = {"ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"};
	json_object *arr = json_object_new_array();
	char buf[64];

	for (int i = 0; i < 3; i++) {
		const uint64_t *t = p->itimer[i];
		int64_t interval = (int64_t)(t[0] * 1000000000ULL + t[1] * 1000ULL);
		int64_t next = (int64_t)(t[2] * 1000000000ULL + t[3] * 1000ULL);
		static const char *const sig[3] = {"SIGALRM", "SIGVTALRM", "SIGPROF"};
		if (!interval && !next)
			continue;
		json_object *o = timer_object(which[i], next, interval);
		json_object_object_add(o, "signal", json_object_new_string(sig[i]));
		json_object_object_add(o, "notify", json_object_new_string("process"));
		json_object_array_add(arr, o);
	}
	for (size_t i = 0; i < p->nptimers; i++) {
		const struct ptimer *t = &p->ptimers[i];
		json_object *o =
		        timer_object("posix", (int64_t)t->value_ns, (int64_t)t->interval_ns);
		json_object_object_add(o, "id", json_object_new_int(t->id));
		json_object_object_add(o, "clock", json_object_new_int(t->clock));
		if (t->notify == SIGEV_NONE) {
			json_object_object_add(o, "notify", json_object_new_string("none"));
		} else {
			sig_name(t->signo, buf, sizeof(buf));
			json_object_object_add(o, "signal", json_object_new_string(buf));
			if (t->notify == SIGEV_THREAD_ID)
				snprintf(buf, sizeof(buf), "thread %d", t->tid);
			else
				snprintf(buf, sizeof(buf), "process");
			json_object_object_add(o, "notify", json_object_new_string(buf));
		}
		json_object_array_add(arr, o);
	}
	return arr;
}

static json_object *describe_process(const struct process *p, const struct component *c)
{
	json_object *o = json_object_new_object();
	json_object *th = json_object_new_array(), *mem = json_object_new_array();
	json_object *fds = json_object_new_array(), *sigs = json_object_new_array();
	json_object *pend = json_object_new_array(), *rl = json_object_new_object();
	static const char *rnames[MODEL_NRLIMITS] = {
	        "cpu",     "fsize", "data",  "stack",      "core",     "rss",  "nproc",  "nofile",
	        "memlock", "as",    "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime"};
	char buf[128];

	json_object_object_add(o, "pid", json_object_new_int(p->pid));
	if (p->host_pid)
		json_object_object_add(o, "host_pid", json_object_new_int(p->host_pid));
	json_object_object_add(o, "ppid", json_object_new_int(p->ppid));
	json_object_object_add(o, "pgid", json_object_new_int(p->pgid));
	json_object_object_add(o, "sid", json_object_new_int(p->sid));
	if (p->zombie) {
		json_object_object_add(o, "zombie", json_object_new_boolean(true));
		json_object_object_add(o, "exit_status", json_object_new_int(p->exit_status));
		if (WIFSIGNALED(p->exit_status)) {
			sig_name(WTERMSIG(p->exit_status), buf, sizeof(buf));
			json_object_object_add(o, "exit_signal", json_object_new_string(buf));
		} else {
			json_object_object_add(o, "exit_code",
			                       json_object_new_int(WEXITSTATUS(p->exit_status)));
		}
	}
	json_object_object_add(o, "comm", json_object_new_string(p->comm));
	json_object_object_add(o, "exe", json_object_new_string(p->exe ? p->exe : ""));
	json_object_object_add(o, "cwd", json_object_new_string(p->cwd ? p->cwd : ""));
	json_object_object_add(o, "root", json_object_new_string(p->root ? p->root : ""));
	json_object_object_add(o, "umask", json_object_new_int((int)p->umask));
	json_object_object_add(o, "brk", hex(p->brk));
	for (size_t i = 0; i < p->nthreads; i++)
		json_object_array_add(th, describe_thread(&p->threads[i]));
	for (size_t i = 0; i < p->nvmas; i++)
		json_object_array_add(mem, describe_vma(&p->vmas[i], c));
	for (size_t i = 0; i < p->nfds; i++)
		json_object_array_add(fds, describe_fd(&p->fds[i], c));
	for (size_t i = 0; i < p->nsigacts; i++) {
		const struct sigact *s = &p->sigacts[i];
		json_object *so = json_object_new_object();
		sig_name(s->sig, buf, sizeof(buf));
		json_object_object_add(so, "signal", json_object_new_string(buf));
		json_object_object_add(so, "handler",
		                       s->handler == 1 ? json_object_new_string("SIG_IGN")
		                                       : hex(s->handler));
		json_object_object_add(so, "flags", hex(s->flags));
		json_object_object_add(so, "mask", hex(s->mask));
		json_object_array_add(sigs, so);
	}
	for (size_t i = 0; i < p->npending; i++) {
		json_object *so = json_object_new_object();
		int32_t signo;
		memcpy(&signo, p->pending[i].info, sizeof(signo));
		sig_name(signo, buf, sizeof(buf));
		json_object_object_add(so, "signal", json_object_new_string(buf));
		if (p->pending[i].tid)
			snprintf(buf, sizeof(buf), "thread %d", p->pending[i].tid);
		else
			snprintf(buf, sizeof(buf), "process");
		json_object_object_add(so, "scope", json_object_new_string(buf));
		json_object_array_add(pend, so);
	}
	for (int i = 0; i < MODEL_NRLIMITS; i++) {
		json_object *lo = json_object_new_array();
		json_object_array_add(lo, json_object_new_int64((int64_t)p->rlim[i].rlim_cur));
		json_object_array_add(lo, json_object_new_int64((int64_t)p->rlim[i].rlim_max));
		json_object_object_add(rl, rnames[i], lo);
	}
	json_object_object_add(o, "threads", th);
	json_object_object_add(o, "memory", mem);
	json_object_object_add(o, "fds", fds);
	json_object_object_add(o, "signals", sigs);
	json_object_object_add(o, "pending", pend);
	json_object_object_add(o, "timers", describe_timers(p));
	json_object_object_add(o, "rlimits", rl);
	return o;
}

static json_object *describe(const struct component *c)
{
	json_object *o = json_object_new_object(), *procs = json_object_new_array();
	json_object_object_add(o, "name", json_object_new_string(c->name));
	json_object_object_add(o, "format_version", json_object_new_int(FERRY_IMAGE_VERSION));
	json_object_object_add(o, "created", json_object_new_int64(c->created));
	json_object_object_add(o, "log_offset", json_object_new_int64((int64_t)c->log_offset));
	for (size_t i = 0; i < c->nprocs; i++)
		json_object_array_add(procs, describe_process(&c->procs[i], c));
	json_object_object_add(o, "processes", procs);
	json_object *fl = json_object_new_array();
	for (size_t k = 0; k < c->ninflight; k++)
		json_object_array_add(fl, describe_inflight(&c->inflight[k], c));
	json_object_object_add(o, "in_flight", fl);
	return o;
}

int ferry_inspect(const char *dir, struct json_object **ret, struct ferry_error *err)
{
	struct image_reader *rd = NULL;
	struct component *c = NULL;
	struct stat sb;
	char path[PATH_MAX];
	int r = image_reader_open(dir, &rd, err);

	if (r < 0)
		return r;
	r = model_load(rd, &c, err);
	if (r < 0) {
		image_reader_free(rd);
		return ferr_prefix(err, "image %s", dir);
	}
	json_object *o = describe(c);
	json_object_object_add(o, "generation",
	                       json_object_new_int64((int64_t)image_reader_generation(rd)));
	snprintf(path, sizeof(path), "%s/MANIFEST", dir);
	uint64_t bytes = image_reader_pages_size(rd);
	if (stat(path, &sb) == 0)
		bytes += (uint64_t)sb.st_size;
	json_object_object_add(o, "image_bytes", json_object_new_int64((int64_t)bytes));
	json_object_object_add(o, "pages_files", describe_pagefiles(c, rd));
	json_object_object_add(o, "incremental", json_object_new_boolean(c->parent_id != 0));
	model_free(c);
	image_reader_free(rd);
	*ret = o;
	return 0;
}

int ferry_caps(const struct ferry_runtime *rt, const char *name, struct json_object **ret,
               struct ferry_error *err)
{
	struct ferry_component rec;
	struct component *c = NULL;
	struct mem_stats st = {0};
	struct frozen fz = {0};
	int r = ferry_component_get(rt, name, &rec, err);

	if (r < 0)
		return r;
	if (rec.state != FERRY_STATE_RUNNING)
		return ferr(err, -ESRCH, "component %s is not running", name);
	r = checkpoint_capture(rt, name, false, rec.pid, rec.log_path, NULL, &fz, &c, &st, NULL,
	                       NULL, err);
	checkpoint_thaw(&fz);
	if (r < 0)
		return r;
	snprintf(c->name, sizeof(c->name), "%s", name);
	*ret = describe(c);
	model_free(c);
	return 0;
}

/* ---- ferry check: every subsystem's kernel probe ---- */

/* A probe returns 1 if the feature works, 0 if not, and says what it saw in detail. */
typedef int (*probe_fn)(char *detail, size_t len);

static const struct {
	const char *feature;
	probe_fn probe;
} probes[] = {
        {"pagemap_scan", mem_probe_pagemap_scan},
        {"vdso_mremap", mem_probe_vdso_mremap},
        {"process_vm_readv", mem_probe_vm_readv},
        {"dirty_tracking", track_probe},
        {"ptrace_seize", threads_probe_ptrace},
        {"pid_namespace_set_tid", runtime_probe_set_tid},
        {"prctl_mm_map", task_probe_mm_map},
        {"cgroup_freeze", cgroup_probe},
        {"posix_timer_ids", task_probe_ptimer_ids},
        {"network_lock", netlock_probe},
};

int ferry_check(struct json_object **ret, struct ferry_error *err)
{
	json_object *arr = json_object_new_array();

	for (size_t i = 0; i < ARRAY_SIZE(probes); i++) {
		char detail[256] = "";
		int ok = probes[i].probe(detail, sizeof(detail));
		json_object *o = json_object_new_object();
		json_object_object_add(o, "feature", json_object_new_string(probes[i].feature));
		json_object_object_add(o, "ok", json_object_new_boolean(ok > 0));
		json_object_object_add(o, "detail", json_object_new_string(detail));
		json_object_array_add(arr, o);
	}
	size_t nk;
	const struct fd_ops *const *kinds = fds_kinds(&nk);
	for (size_t i = 0; i < nk; i++) {
		char detail[256] = "", feature[64];
		if (!kinds[i]->kernel_probe)
			continue;
		int ok = kinds[i]->kernel_probe(detail, sizeof(detail));
		snprintf(feature, sizeof(feature), "fd_%s", kinds[i]->name);
		json_object *o = json_object_new_object();
		json_object_object_add(o, "feature", json_object_new_string(feature));
		json_object_object_add(o, "ok", json_object_new_boolean(ok > 0));
		json_object_object_add(o, "detail", json_object_new_string(detail));
		json_object_array_add(arr, o);
	}
	(void)err;
	*ret = arr;
	return 0;
}
