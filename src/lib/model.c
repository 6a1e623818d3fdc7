/* The component model and its image records: encoding and decoding of every record kind. */
#include <string.h>

#include "model.h"
#include "util.h"

/* Record versions: bump when a kind's payload changes; decoders accept what they know. */
#define V_COMPONENT 2 /* 2: capture, track and parent ids */
#define V_PROCESS                                                                                  \
	3 /* 2: interval timers appended; 3: ppid, pgid, sid, zombie status,                       \
	     credentials */
#define V_THREAD    1
#define V_VMA       2 /* 2: page runs name their pages file and checksummed block */
#define V_SHMEM     3 /* 3: SysV key, id and mode */
#define V_PAGEFILE  1
#define V_FD        4 /* 2: kind-specific numbers; 3: dup_of; 4: share */
#define V_SIGACTION 1
#define V_SIGINFO   1
#define V_PTIMER    1
#define V_INFLIGHT  1

int grow(void **arr, size_t *n, size_t elem)
{
	size_t cap = 1;
	/* capacity doubles at powers of two; n is the count */
	while (cap < *n + 1)
		cap <<= 1;
	if (*n == 0 || (*n & (*n - 1)) == 0) {
		void *p = realloc(*arr, cap * elem);
		if (!p)
			return -ENOMEM;
		*arr = p;
	}
	return 0;
}

void process_clear(struct process *p)
{
	for (size_t i = 0; i < p->nthreads; i++)
		free(p->threads[i].xstate);
	free(p->threads);
	for (size_t i = 0; i < p->nvmas; i++) {
		free(p->vmas[i].path);
		free(p->vmas[i].runs);
	}
	free(p->vmas);
	for (size_t i = 0; i < p->nfds; i++) {
		free(p->fds[i].path);
		free(p->fds[i].extra);
	}
	free(p->fds);
	free(p->sigacts);
	free(p->pending);
	free(p->ptimers);
	free(p->groups);
	free(p->exe);
	free(p->cwd);
	free(p->root);
	free(p->auxv);
	memset(p, 0, sizeof(*p));
}

struct component *model_free(struct component *c)
{
	if (!c)
		return NULL;
	for (size_t i = 0; i < c->nprocs; i++)
		process_clear(&c->procs[i]);
	free(c->procs);
	for (size_t i = 0; i < c->nshmems; i++) {
		free(c->shmems[i].name);
		free(c->shmems[i].runs);
	}
	free(c->shmems);
	for (size_t i = 0; i < c->npagefiles; i++)
		free(c->pagefiles[i].origin);
	free(c->pagefiles);
	for (size_t i = 0; i < c->ninflight; i++) {
		free(c->inflight[i].path);
		free(c->inflight[i].extra);
		if (c->inflight_local)
			safe_close(c->inflight_local[i]);
	}
	free(c->inflight);
	free(c->inflight_local);
	free(c->inflight_from);
	for (size_t i = 0; i < c->ninflight_pre; i++)
		safe_close(c->inflight_pre[i]);
	free(c->services);
	free(c->sessreg);
	free(c->svaddrs);
	free(c->inflight_pre);
	free(c);
	return NULL;
}

static void put_fid(struct wbuf *wb, const struct file_id *f)
{
	wb_u64(wb, f->dev);
	wb_u64(wb, f->ino);
	wb_u64(wb, f->size);
	wb_u64(wb, (uint64_t)f->mtime_ns);
}

static void get_fid(struct rbuf *rb, struct file_id *f)
{
	f->dev = rb_u64(rb);
	f->ino = rb_u64(rb);
	f->size = rb_u64(rb);
	f->mtime_ns = (int64_t)rb_u64(rb);
}

static void put_runs(struct wbuf *wb, const struct page_run *runs, size_t n)
{
	wb_u32(wb, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		wb_u64(wb, runs[i].addr);
		wb_u64(wb, runs[i].npages);
		wb_u32(wb, runs[i].file);
		wb_u64(wb, runs[i].off);
		wb_u64(wb, runs[i].blk_off);
		wb_u64(wb, runs[i].blk_pages);
		wb_u64(wb, runs[i].csum);
	}
}

static int get_runs(struct rbuf *rb, struct page_run **ret, size_t *ret_n)
{
	uint32_t n = rb_u32(rb);
	if (rb->err || n > (rb->len - rb->off) / 52)
		return -EPROTO;
	struct page_run *runs = calloc(n ? n : 1, sizeof(*runs));
	if (!runs)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		struct page_run *u = &runs[i];
		u->addr = rb_u64(rb);
		u->npages = rb_u64(rb);
		u->file = rb_u32(rb);
		u->off = rb_u64(rb);
		u->blk_off = rb_u64(rb);
		u->blk_pages = rb_u64(rb);
		u->csum = rb_u64(rb);
		/* the data must lie inside its checksummed block */
		if (u->npages == 0 || u->off < u->blk_off || u->npages > u->blk_pages ||
		    (u->off - u->blk_off) / MODEL_PAGE > u->blk_pages - u->npages) {
			free(runs);
			return -EPROTO;
		}
	}
	*ret = runs;
	*ret_n = n;
	return 0;
}

static char *dup_or_null(const char *s)
{
	return (s && *s) ? strdup(s) : NULL;
}

/* Each put_* encodes one record into wb (reset by the caller). */
static void put_process(struct wbuf *wb, const struct process *p)
{
	wb_u32(wb, (uint32_t)p->pid);
	wb_str(wb, p->comm);
	wb_str(wb, p->exe);
	put_fid(wb, &p->exe_id);
	wb_str(wb, p->cwd);
	wb_str(wb, p->root);
	wb_u32(wb, p->umask);
	wb_u32(wb, p->personality);
	wb_u32(wb, MODEL_NRLIMITS);
	for (int i = 0; i < MODEL_NRLIMITS; i++) {
		wb_u64(wb, p->rlim[i].rlim_cur);
		wb_u64(wb, p->rlim[i].rlim_max);
	}
	const uint64_t mm[] = {p->start_code, p->end_code,  p->start_data,  p->end_data,
	                       p->start_brk,  p->brk,       p->start_stack, p->arg_start,
	                       p->arg_end,    p->env_start, p->env_end};
	for (size_t i = 0; i < ARRAY_SIZE(mm); i++)
		wb_u64(wb, mm[i]);
	wb_bytes(wb, p->auxv, p->auxv_len);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 4; j++)
			wb_u64(wb, p->itimer[i][j]);
	wb_u32(wb, (uint32_t)p->ppid);
	wb_u32(wb, (uint32_t)p->pgid);
	wb_u32(wb, (uint32_t)p->sid);
	wb_u32(wb, p->zombie);
	wb_u32(wb, (uint32_t)p->exit_status);
	for (int i = 0; i < 4; i++) {
		wb_u32(wb, p->uid[i]);
		wb_u32(wb, p->gid[i]);
	}
	wb_u32(wb, p->ngroups);
	for (uint32_t i = 0; i < p->ngroups; i++)
		wb_u32(wb, p->groups[i]);
	for (int i = 0; i < 5; i++)
		wb_u64(wb, p->cap[i]);
	wb_u32(wb, p->no_new_privs);
}

static int get_process(struct rbuf *rb, uint16_t ver, struct process *p)
{
	char buf[PATH_MAX];
	uint32_t nr;

	p->pid = (int32_t)rb_u32(rb);
	rb_str(rb, p->comm, sizeof(p->comm));
	rb_str(rb, buf, sizeof(buf));
	p->exe = dup_or_null(buf);
	get_fid(rb, &p->exe_id);
	rb_str(rb, buf, sizeof(buf));
	p->cwd = dup_or_null(buf);
	rb_str(rb, buf, sizeof(buf));
	p->root = dup_or_null(buf);
	p->umask = rb_u32(rb);
	p->personality = rb_u32(rb);
	nr = rb_u32(rb);
	for (uint32_t i = 0; i < nr && !rb->err; i++) {
		uint64_t cur = rb_u64(rb), max = rb_u64(rb);
		if (i < MODEL_NRLIMITS) {
			p->rlim[i].rlim_cur = cur;
			p->rlim[i].rlim_max = max;
		}
	}
	uint64_t *mm[] = {&p->start_code, &p->end_code,  &p->start_data,  &p->end_data,
	                  &p->start_brk,  &p->brk,       &p->start_stack, &p->arg_start,
	                  &p->arg_end,    &p->env_start, &p->env_end};
	for (size_t i = 0; i < ARRAY_SIZE(mm); i++)
		*mm[i] = rb_u64(rb);
	size_t n;
	const void *auxv = rb_bytes_ptr(rb, &n);
	if (rb->err)
		return -EPROTO;
	p->auxv = malloc(n ? n : 1);
	if (!p->auxv || (!p->exe && p->exe_id.ino))
		return -ENOMEM;
	memcpy(p->auxv, auxv, n);
	p->auxv_len = (uint32_t)n;
	for (int i = 0; ver >= 2 && i < 3; i++)
		for (int j = 0; j < 4; j++)
			p->itimer[i][j] = rb_u64(rb);
	if (ver >= 3) {
		p->ppid = (int32_t)rb_u32(rb);
		p->pgid = (int32_t)rb_u32(rb);
		p->sid = (int32_t)rb_u32(rb);
		p->zombie = rb_u32(rb);
		p->exit_status = (int32_t)rb_u32(rb);
		for (int i = 0; i < 4; i++) {
			p->uid[i] = rb_u32(rb);
			p->gid[i] = rb_u32(rb);
		}
		p->ngroups = rb_u32(rb);
		if (rb->err || p->ngroups > 65536)
			return -EPROTO;
		p->groups = calloc(p->ngroups ? p->ngroups : 1, sizeof(*p->groups));
		if (!p->groups)
			return -ENOMEM;
		for (uint32_t i = 0; i < p->ngroups; i++)
			p->groups[i] = rb_u32(rb);
		for (int i = 0; i < 5; i++)
			p->cap[i] = rb_u64(rb);
		p->no_new_privs = rb_u32(rb);
	}
	return rb->err;
}

static void put_thread(struct wbuf *wb, const struct process *p, const struct thread *t)
{
	const struct user_regs_struct *r = &t->regs;
	const uint64_t regs[] = {r->r15,     r->r14,      r->r13, r->r12, r->rbp,    r->rbx, r->r11,
	                         r->r10,     r->r9,       r->r8,  r->rax, r->rcx,    r->rdx, r->rsi,
	                         r->rdi,     r->orig_rax, r->rip, r->cs,  r->eflags, r->rsp, r->ss,
	                         r->fs_base, r->gs_base,  r->ds,  r->es,  r->fs,     r->gs};
	wb_u32(wb, (uint32_t)p->pid);
	wb_u32(wb, (uint32_t)t->tid);
	wb_str(wb, t->comm);
	wb_u32(wb, ARRAY_SIZE(regs));
	for (size_t i = 0; i < ARRAY_SIZE(regs); i++)
		wb_u64(wb, regs[i]);
	wb_bytes(wb, t->xstate, t->xstate_len);
	wb_u64(wb, t->sigmask);
	wb_u64(wb, t->ss_sp);
	wb_u64(wb, t->ss_size);
	wb_u32(wb, (uint32_t)t->ss_flags);
	wb_u64(wb, t->rseq_ptr);
	wb_u32(wb, t->rseq_len);
	wb_u32(wb, t->rseq_sig);
	wb_u64(wb, t->clear_tid);
	wb_u64(wb, t->robust_head);
	wb_u64(wb, t->robust_len);
}

static int get_thread(struct rbuf *rb, struct thread *t)
{
	struct user_regs_struct *r = &t->regs;
	unsigned long long *regs[] = {
	        &r->r15,     &r->r14,      &r->r13, &r->r12, &r->rbp,    &r->rbx, &r->r11,
	        &r->r10,     &r->r9,       &r->r8,  &r->rax, &r->rcx,    &r->rdx, &r->rsi,
	        &r->rdi,     &r->orig_rax, &r->rip, &r->cs,  &r->eflags, &r->rsp, &r->ss,
	        &r->fs_base, &r->gs_base,  &r->ds,  &r->es,  &r->fs,     &r->gs};
	size_t n;

	rb_str(rb, t->comm, sizeof(t->comm));
	if (rb_u32(rb) != ARRAY_SIZE(regs))
		return -EPROTO;
	for (size_t i = 0; i < ARRAY_SIZE(regs); i++)
		*regs[i] = rb_u64(rb);
	const void *xs = rb_bytes_ptr(rb, &n);
	if (rb->err || n > XSTATE_MAX)
		return -EPROTO;
	t->xstate = malloc(n ? n : 1);
	if (!t->xstate)
		return -ENOMEM;
	memcpy(t->xstate, xs, n);
	t->xstate_len = (uint32_t)n;
	t->sigmask = rb_u64(rb);
	t->ss_sp = rb_u64(rb);
	t->ss_size = rb_u64(rb);
	t->ss_flags = (int32_t)rb_u32(rb);
	t->rseq_ptr = rb_u64(rb);
	t->rseq_len = rb_u32(rb);
	t->rseq_sig = rb_u32(rb);
	t->clear_tid = rb_u64(rb);
	t->robust_head = rb_u64(rb);
	t->robust_len = rb_u64(rb);
	return rb->err;
}

static void put_vma(struct wbuf *wb, const struct process *p, const struct vma *v)
{
	wb_u32(wb, (uint32_t)p->pid);
	wb_u64(wb, v->start);
	wb_u64(wb, v->end);
	wb_u64(wb, v->pgoff);
	wb_u32(wb, v->prot);
	wb_u32(wb, v->flags);
	wb_u32(wb, v->kind);
	wb_u32(wb, (uint32_t)v->shmem);
	wb_str(wb, v->path);
	put_fid(wb, &v->fid);
	put_runs(wb, v->runs, v->nruns);
}

static int get_vma(struct rbuf *rb, struct vma *v)
{
	char path[PATH_MAX];

	v->start = rb_u64(rb);
	v->end = rb_u64(rb);
	v->pgoff = rb_u64(rb);
	v->prot = rb_u32(rb);
	v->flags = rb_u32(rb);
	v->kind = rb_u32(rb);
	v->shmem = (int32_t)rb_u32(rb);
	rb_str(rb, path, sizeof(path));
	get_fid(rb, &v->fid);
	if (rb->err || v->end <= v->start || (v->start | v->end) % MODEL_PAGE)
		return -EPROTO;
	v->path = dup_or_null(path);
	return get_runs(rb, &v->runs, &v->nruns);
}

static void put_fd(struct wbuf *wb, const struct process *p, const struct fd_entry *f)
{
	wb_u32(wb, (uint32_t)p->pid);
	wb_u32(wb, (uint32_t)f->fd);
	wb_u32(wb, f->kind);
	wb_u32(wb, f->flags);
	wb_u32(wb, f->cloexec);
	wb_u64(wb, f->pos);
	wb_str(wb, f->path);
	put_fid(wb, &f->fid);
	wb_u64(wb, f->rdev);
	wb_u32(wb, f->mode);
	wb_u32(wb, (uint32_t)f->shmem);
	wb_u32(wb, f->nextra);
	for (uint32_t i = 0; i < f->nextra; i++)
		wb_u64(wb, f->extra[i]);
	wb_u32(wb, (uint32_t)f->dup_of);
	wb_u32(wb, (uint32_t)f->share);
}

static int get_fd(struct rbuf *rb, uint16_t ver, struct fd_entry *f)
{
	char path[PATH_MAX];

	f->fd = (int32_t)rb_u32(rb);
	f->kind = rb_u32(rb);
	f->flags = rb_u32(rb);
	f->cloexec = rb_u32(rb);
	f->pos = rb_u64(rb);
	rb_str(rb, path, sizeof(path));
	get_fid(rb, &f->fid);
	f->rdev = rb_u64(rb);
	f->mode = rb_u32(rb);
	f->shmem = (int32_t)rb_u32(rb);
	if (ver >= 2) {
		f->nextra = rb_u32(rb);
		if (rb->err || f->nextra > (rb->len - rb->off) / 8)
			return -EPROTO;
		f->extra = calloc(f->nextra ? f->nextra : 1, sizeof(*f->extra));
		if (!f->extra)
			return -ENOMEM;
		for (uint32_t i = 0; i < f->nextra; i++)
			f->extra[i] = rb_u64(rb);
	}
	f->dup_of = ver >= 3 ? (int32_t)rb_u32(rb) : -1;
	f->share = ver >= 4 ? (int32_t)rb_u32(rb) : -1;
	if (rb->err || f->fd < 0)
		return -EPROTO;
	f->path = dup_or_null(path);
	return 0;
}

static void put_shmem(struct wbuf *wb, const struct shmem *s)
{
	wb_u32(wb, s->kind);
	wb_u64(wb, s->dev);
	wb_u64(wb, s->ino);
	wb_u64(wb, s->size);
	wb_str(wb, s->name);
	put_runs(wb, s->runs, s->nruns);
	wb_u32(wb, (uint32_t)s->sysv_key);
	wb_u32(wb, (uint32_t)s->sysv_id);
	wb_u32(wb, s->sysv_mode);
}

static int get_shmem(struct rbuf *rb, uint16_t ver, struct shmem *s)
{
	char name[PATH_MAX];

	s->kind = rb_u32(rb);
	s->dev = rb_u64(rb);
	s->ino = rb_u64(rb);
	s->size = rb_u64(rb);
	rb_str(rb, name, sizeof(name));
	if (rb->err)
		return -EPROTO;
	s->name = dup_or_null(name);
	int r = get_runs(rb, &s->runs, &s->nruns);
	if (r == 0 && ver >= 3) {
		s->sysv_key = (int32_t)rb_u32(rb);
		s->sysv_id = (int32_t)rb_u32(rb);
		s->sysv_mode = rb_u32(rb);
		r = rb->err;
	}
	return r;
}

#define PUT(kind, ver)                                                                             \
	do {                                                                                       \
		if (wb.err)                                                                        \
			return ferr(err, wb.err, "encoding image records: out of memory");         \
		r = image_put_record(w, kind, ver, wb.p, (uint32_t)wb.len, err);                   \
		if (r < 0)                                                                         \
			return r;                                                                  \
		wb_reset(&wb);                                                                     \
	} while (0)

static void wbuf_freep(struct wbuf *wb)
{
	wb_free(wb);
}

int model_save(const struct component *c, struct image_writer *w, struct ferry_error *err)
{
	_cleanup_(wbuf_freep) struct wbuf wb = {0};
	int r;

	wb_str(&wb, c->name);
	wb_u64(&wb, (uint64_t)c->created);
	wb_u64(&wb, c->log_offset);
	wb_u64(&wb, c->log_id);
	wb_u64(&wb, c->capture_id);
	wb_u64(&wb, c->track_id);
	wb_u64(&wb, c->parent_id);
	PUT(IMG_COMPONENT, V_COMPONENT);
	for (size_t i = 0; i < c->npagefiles; i++) {
		wb_str(&wb, c->pagefiles[i].origin);
		wb_u64(&wb, c->pagefiles[i].gen);
		wb_u64(&wb, (uint64_t)c->pagefiles[i].created);
		PUT(IMG_PAGEFILE, V_PAGEFILE);
	}
	for (size_t i = 0; i < c->nshmems; i++) {
		put_shmem(&wb, &c->shmems[i]);
		PUT(IMG_SHMEM, V_SHMEM);
	}
	for (size_t i = 0; i < c->nprocs; i++) {
		const struct process *p = &c->procs[i];
		put_process(&wb, p);
		PUT(IMG_PROCESS, V_PROCESS);
		for (size_t j = 0; j < p->nthreads; j++) {
			put_thread(&wb, p, &p->threads[j]);
			PUT(IMG_THREAD, V_THREAD);
		}
		for (size_t j = 0; j < p->nvmas; j++) {
			put_vma(&wb, p, &p->vmas[j]);
			PUT(IMG_VMA, V_VMA);
		}
		for (size_t j = 0; j < p->nfds; j++) {
			put_fd(&wb, p, &p->fds[j]);
			PUT(IMG_FD, V_FD);
		}
		for (size_t j = 0; j < p->nsigacts; j++) {
			const struct sigact *s = &p->sigacts[j];
			wb_u32(&wb, (uint32_t)p->pid);
			wb_u32(&wb, (uint32_t)s->sig);
			wb_u64(&wb, s->handler);
			wb_u64(&wb, s->flags);
			wb_u64(&wb, s->restorer);
			wb_u64(&wb, s->mask);
			PUT(IMG_SIGACTION, V_SIGACTION);
		}
		for (size_t j = 0; j < p->npending; j++) {
			wb_u32(&wb, (uint32_t)p->pid);
			wb_u32(&wb, (uint32_t)p->pending[j].tid);
			wb_bytes(&wb, p->pending[j].info, sizeof(p->pending[j].info));
			PUT(IMG_SIGINFO, V_SIGINFO);
		}
		for (size_t j = 0; j < p->nptimers; j++) {
			const struct ptimer *t = &p->ptimers[j];
			wb_u32(&wb, (uint32_t)p->pid);
			wb_u32(&wb, (uint32_t)t->id);
			wb_u32(&wb, (uint32_t)t->clock);
			wb_u32(&wb, (uint32_t)t->notify);
			wb_u32(&wb, (uint32_t)t->signo);
			wb_u32(&wb, (uint32_t)t->tid);
			wb_u64(&wb, t->value);
			wb_u64(&wb, t->interval_ns);
			wb_u64(&wb, t->value_ns);
			PUT(IMG_PTIMER, V_PTIMER);
		}
	}
	for (size_t i = 0; i < c->ninflight; i++) {
		put_fd(&wb, &c->procs[0], &c->inflight[i]);
		PUT(IMG_INFLIGHT, V_INFLIGHT);
	}
	return 0;
}

/* The process a per-process record belongs to: records follow their IMG_PROCESS. */
static struct process *owner(struct component *c, uint32_t pid)
{
	if (c->nprocs == 0 || (uint32_t)c->procs[c->nprocs - 1].pid != pid)
		return NULL;
	return &c->procs[c->nprocs - 1];
}

static int load_one(struct component *c, uint16_t kind, uint16_t ver, struct rbuf *rb)
{
	struct process *p;
	int r;

	switch (kind) {
	case IMG_COMPONENT:
		rb_str(rb, c->name, sizeof(c->name));
		c->created = (int64_t)rb_u64(rb);
		c->log_offset = rb_u64(rb);
		c->log_id = rb_u64(rb);
		c->capture_id = rb_u64(rb);
		c->track_id = rb_u64(rb);
		c->parent_id = rb_u64(rb);
		return rb->err;
	case IMG_PAGEFILE: {
		char origin[PATH_MAX];
		if (GROW(c->pagefiles, c->npagefiles) < 0)
			return -ENOMEM;
		struct pagefile *f = &c->pagefiles[c->npagefiles++];
		rb_str(rb, origin, sizeof(origin));
		f->gen = rb_u64(rb);
		f->created = (int64_t)rb_u64(rb);
		f->origin = strdup(origin);
		return f->origin ? rb->err : -ENOMEM;
	}
	case IMG_SHMEM:
		if (GROW(c->shmems, c->nshmems) < 0)
			return -ENOMEM;
		memset(&c->shmems[c->nshmems], 0, sizeof(struct shmem));
		r = get_shmem(rb, ver, &c->shmems[c->nshmems]);
		c->nshmems++;
		return r;
	case IMG_PROCESS:
		if (GROW(c->procs, c->nprocs) < 0)
			return -ENOMEM;
		memset(&c->procs[c->nprocs], 0, sizeof(struct process));
		c->nprocs++;
		return get_process(rb, ver, &c->procs[c->nprocs - 1]);
	case IMG_INFLIGHT:
		(void)rb_u32(rb); /* the root's pid */
		if (GROW(c->inflight, c->ninflight) < 0)
			return -ENOMEM;
		memset(&c->inflight[c->ninflight], 0, sizeof(struct fd_entry));
		r = get_fd(rb, 4, &c->inflight[c->ninflight]);
		c->ninflight++;
		return r;
	default:
		break;
	}
	p = owner(c, rb_u32(rb));
	if (!p)
		return -EPROTO;
	switch (kind) {
	case IMG_THREAD:
		if (GROW(p->threads, p->nthreads) < 0)
			return -ENOMEM;
		memset(&p->threads[p->nthreads], 0, sizeof(struct thread));
		p->threads[p->nthreads].tid = (int32_t)rb_u32(rb);
		return get_thread(rb, &p->threads[p->nthreads++]);
	case IMG_VMA:
		if (GROW(p->vmas, p->nvmas) < 0)
			return -ENOMEM;
		memset(&p->vmas[p->nvmas], 0, sizeof(struct vma));
		return get_vma(rb, &p->vmas[p->nvmas++]);
	case IMG_FD:
		if (GROW(p->fds, p->nfds) < 0)
			return -ENOMEM;
		memset(&p->fds[p->nfds], 0, sizeof(struct fd_entry));
		return get_fd(rb, ver, &p->fds[p->nfds++]);
	case IMG_SIGACTION: {
		if (GROW(p->sigacts, p->nsigacts) < 0)
			return -ENOMEM;
		struct sigact *s = &p->sigacts[p->nsigacts++];
		s->sig = (int32_t)rb_u32(rb);
		s->handler = rb_u64(rb);
		s->flags = rb_u64(rb);
		s->restorer = rb_u64(rb);
		s->mask = rb_u64(rb);
		return (rb->err || s->sig < 1 || s->sig > 64) ? -EPROTO : 0;
	}
	case IMG_SIGINFO: {
		if (GROW(p->pending, p->npending) < 0)
			return -ENOMEM;
		struct pending_sig *s = &p->pending[p->npending++];
		s->tid = (int32_t)rb_u32(rb);
		if (rb_bytes(rb, s->info, sizeof(s->info)) != sizeof(s->info))
			return -EPROTO;
		return rb->err;
	}
	case IMG_PTIMER: {
		if (GROW(p->ptimers, p->nptimers) < 0)
			return -ENOMEM;
		struct ptimer *t = &p->ptimers[p->nptimers++];
		t->id = (int32_t)rb_u32(rb);
		t->clock = (int32_t)rb_u32(rb);
		t->notify = (int32_t)rb_u32(rb);
		t->signo = (int32_t)rb_u32(rb);
		t->tid = (int32_t)rb_u32(rb);
		t->value = rb_u64(rb);
		t->interval_ns = rb_u64(rb);
		t->value_ns = rb_u64(rb);
		return (rb->err || t->id < 0 || t->signo < 0 || t->signo > 64) ? -EPROTO : 0;
	}
	default:
		(void)ver;
		return -ENOTSUP;
	}
}

int model_load(struct image_reader *r, struct component **ret, struct ferry_error *err)
{
	struct component *c = calloc(1, sizeof(*c));
	uint16_t kind, ver;
	const void *data;
	uint32_t len;
	size_t idx = 0;
	int rc;

	if (!c)
		return ferr(err, -ENOMEM, "out of memory");
	image_reader_rewind(r);
	while ((rc = image_next_record(r, &kind, &ver, &data, &len)) > 0) {
		struct rbuf rb = {.p = data, .len = len};
		rc = load_one(c, kind, ver, &rb);
		if (rc == 0 && rb.err)
			rc = rb.err;
		if (rc < 0) {
			model_free(c);
			if (rc == -ENOTSUP)
				return ferr(err, -EPROTO,
				            "record %zu: unknown kind %u (version %u)", idx, kind,
				            ver);
			return ferr(err, rc, "record %zu (kind %u): malformed", idx, kind);
		}
		idx++;
	}
	if (rc < 0 || c->nprocs == 0) {
		model_free(c);
		return ferr(err, rc < 0 ? rc : -EPROTO, "image holds no process");
	}
	/* the shared open file descriptions are counted, not stored */
	for (size_t i = 0; i < c->nprocs; i++)
		for (size_t j = 0; j < c->procs[i].nfds; j++) {
			int32_t s = c->procs[i].fds[j].share;
			if (s >= 1 << 20) {
				model_free(c);
				return ferr(err, -EPROTO, "pid %d fd %d: share %d out of range",
				            c->procs[i].pid, c->procs[i].fds[j].fd, s);
			}
			if (s >= 0 && (uint32_t)s >= c->nshares)
				c->nshares = (uint32_t)s + 1;
		}
	/* a file in flight refers to a share some process holds, or to an fd of the one
	 * process, or is its own */
	for (size_t k = 0; k < c->ninflight; k++) {
		const struct fd_entry *f = &c->inflight[k];
		if (f->fd != (int32_t)k || (f->share >= 0 && (uint32_t)f->share >= c->nshares) ||
		    (f->dup_of >= 0 && c->nprocs != 1)) {
			model_free(c);
			return ferr(err, -EPROTO, "file in flight %zu: malformed", k);
		}
	}
	*ret = c;
	return 0;
}
