/* Process-wide state: exe, cwd, umask, rlimits, mm fields, signal dispositions, pending signals. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <stddef.h>
#include <sys/time.h>
#include <linux/prctl.h>
#include <signal.h>

#include "procfs.h"
#include "task.h"
#include "util.h"

#ifndef PTRACE_PEEKSIGINFO
#define PTRACE_PEEKSIGINFO 0x4209
#endif
#define PTRACE_PEEKSIGINFO_SHARED (1 << 0)

struct kernel_sigaction {
	uint64_t handler;
	uint64_t flags;
	uint64_t restorer;
	uint64_t mask;
};

int task_file_identity(const char *path, struct file_id *id)
{
	struct stat sb;
	if (stat(path, &sb) < 0)
		return -errno;
	id->dev = (uint64_t)sb.st_dev;
	id->ino = sb.st_ino;
	id->size = (uint64_t)sb.st_size;
	id->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
	return 0;
}

int task_check_file(const char *what, const char *path, const struct file_id *id,
                    struct ferry_error *err)
{
	struct file_id now;
	int r = task_file_identity(path, &now);
	if (r < 0)
		return ferr(err, r, "%s %s: %s", what, path, strerror(-r));
	if (now.size != id->size || now.mtime_ns != id->mtime_ns)
		return ferr(err, -ESTALE,
		            "%s %s: changed since the checkpoint (size %" PRIu64 " -> %" PRIu64
		            ", mtime %" PRId64 " -> %" PRId64 ")",
		            what, path, id->size, now.size, id->mtime_ns, now.mtime_ns);
	return 0;
}

static int read_link(pid_t pid, const char *name, char **ret)
{
	char path[64], buf[PATH_MAX];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	n = readlink(path, buf, sizeof(buf) - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	*ret = strdup(buf);
	return *ret ? 0 : -ENOMEM;
}

/* Inject one call in the main thread. */
static int inject(struct tracee *t, long *ret, long nr, uint64_t a0, uint64_t a1, uint64_t a2,
                  uint64_t a3, struct ferry_error *err)
{
	return tracee_syscall(t, ret, NULL, nr, a0, a1, a2, a3, 0, 0, err);
}

static int capture_signals(struct tracee *main, struct process *p, uint64_t scratch,
                           struct ferry_error *err)
{
	uint64_t caught = 0, ignored = 0;
	int r = 0;

	if (procfs_status_u64(p->host_pid, "SigCgt", 16, &caught) < 0 ||
	    procfs_status_u64(p->host_pid, "SigIgn", 16, &ignored) < 0)
		return ferr(err, -EIO, "pid %d: reading signal dispositions", p->host_pid);
	for (int sig = 1; sig <= 64 && r == 0; sig++) {
		struct kernel_sigaction ka;
		long ret;
		if (!((caught | ignored) & (1ULL << (sig - 1))))
			continue;
		r = inject(main, &ret, SYS_rt_sigaction, (uint64_t)sig, 0, scratch, 8, err);
		if (r == 0 && ret < 0)
			r = ferr(err, (int)ret, "pid %d: rt_sigaction(%d): %s", p->host_pid, sig,
			         strerror((int)-ret));
		if (r == 0)
			r = tracee_peek(p->host_pid, scratch, &ka, sizeof(ka));
		if (r == 0) {
			if (GROW(p->sigacts, p->nsigacts) < 0)
				r = ferr(err, -ENOMEM, "out of memory");
			else
				p->sigacts[p->nsigacts++] = (struct sigact){
				        sig, ka.handler, ka.flags, ka.restorer, ka.mask};
		}
	}
	return r;
}

#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS     77
#define PR_TIMER_CREATE_RESTORE_IDS_OFF 0
#define PR_TIMER_CREATE_RESTORE_IDS_ON  1
#define PR_TIMER_CREATE_RESTORE_IDS_GET 2
#endif

int task_probe_ptimer_ids(char *detail, size_t len)
{
	bool ok = prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET, 0, 0, 0) >= 0;
	if (detail)
		snprintf(detail, len, "PR_TIMER_CREATE_RESTORE_IDS (Linux >= 6.16) %s",
		         ok ? "present" : "missing");
	return ok;
}

/* One timer of /proc/PID/timers ("ID:", "signal:", "notify:", "ClockID:" lines) into t. */
static int parse_ptimer(struct process *p, const char *line, struct ptimer *t, bool *complete,
                        struct ferry_error *err)
{
	char kind[16], scope[8];
	int n;

	if (sscanf(line, "ID: %d", &t->id) == 1)
		return 0;
	if (sscanf(line, "signal: %d/%" SCNx64, &t->signo, &t->value) == 2)
		return 0;
	if (sscanf(line, "ClockID: %d", &t->clock) == 1) {
		*complete = true;
		return 0;
	}
	if (sscanf(line, "notify: %15[^/]/%7[^.].%d", kind, scope, &n) != 3)
		return 0; /* a line this kernel adds: not needed */
	if (strcmp(kind, "none") == 0) {
		t->notify = SIGEV_NONE;
	} else if (strcmp(kind, "signal") == 0 && strcmp(scope, "pid") == 0) {
		t->notify = SIGEV_SIGNAL;
	} else if (strcmp(kind, "signal") == 0 && strcmp(scope, "tid") == 0) {
		pid_t ns = 0;
		int r = procfs_ns_tid(p->host_pid, n, &ns);
		if (r < 0)
			return ferr(err, r, "pid %d: POSIX timer %d: its thread %d: %s",
			            p->host_pid, t->id, n, strerror(-r));
		t->notify = SIGEV_THREAD_ID;
		t->tid = ns;
	} else {
		return ferr(err, -ENOTSUP, "pid %d: POSIX timer %d: notification %s/%s unsupported",
		            p->host_pid, t->id, kind, scope);
	}
	return 0;
}

/*
 * POSIX timers (timer_create): what /proc/PID/timers says of each, and its period and time
 * left by injected timer_gettime. A restore creates each with its id again, which needs
 * PR_TIMER_CREATE_RESTORE_IDS: without it the component is refused here, where it runs on.
 */
static int capture_ptimers(struct tracee *main, struct process *p, uint64_t scratch,
                           struct ferry_error *err)
{
	char path[64];
	_cleanup_free_ char *text = NULL;
	struct ptimer t = {0};
	bool complete = false;
	int r = 0;

	snprintf(path, sizeof(path), "/proc/%d/timers", p->host_pid);
	if (read_file(path, &text, NULL) < 0 || !text[0])
		return 0;
	if (!task_probe_ptimer_ids(NULL, 0))
		return ferr(err, -ENOTSUP,
		            "pid %d has POSIX timers (timer_create): restoring their ids needs "
		            "PR_TIMER_CREATE_RESTORE_IDS (Linux >= 6.16), which this kernel lacks",
		            p->host_pid);
	for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && r == 0;
	     line = strtok_r(NULL, "\n", &save)) {
		r = parse_ptimer(p, line, &t, &complete, err);
		if (r < 0 || !complete)
			continue;
		struct {
			int64_t interval_s, interval_ns, value_s, value_ns;
		} its;
		long ret;
		r = inject(main, &ret, SYS_timer_gettime, (uint64_t)t.id, scratch, 0, 0, err);
		if (r == 0 && ret < 0)
			r = ferr(err, (int)ret, "pid %d: timer_gettime(%d): %s", p->host_pid, t.id,
			         strerror((int)-ret));
		if (r == 0)
			r = tracee_peek(p->host_pid, scratch, &its, sizeof(its));
		if (r == 0) {
			t.interval_ns = (uint64_t)(its.interval_s * 1000000000LL + its.interval_ns);
			t.value_ns = (uint64_t)(its.value_s * 1000000000LL + its.value_ns);
			if (GROW(p->ptimers, p->nptimers) < 0)
				r = ferr(err, -ENOMEM, "out of memory");
			else
				p->ptimers[p->nptimers++] = t;
		}
		t = (struct ptimer){0};
		complete = false;
	}
	return r;
}

/* Interval timers (alarm, setitimer) by injected getitimer. */
static int capture_timers(struct tracee *main, struct process *p, uint64_t scratch,
                          struct ferry_error *err)
{
	int r = capture_ptimers(main, p, scratch, err);

	for (int which = 0; which < 3 && r == 0; which++) {
		long ret;
		struct itimerval it;
		r = inject(main, &ret, SYS_getitimer, (uint64_t)which, scratch, 0, 0, err);
		if (r == 0 && ret < 0)
			r = ferr(err, (int)ret, "pid %d: getitimer(%d): %s", p->host_pid, which,
			         strerror((int)-ret));
		if (r == 0)
			r = tracee_peek(p->host_pid, scratch, &it, sizeof(it));
		if (r == 0) {
			p->itimer[which][0] = (uint64_t)it.it_interval.tv_sec;
			p->itimer[which][1] = (uint64_t)it.it_interval.tv_usec;
			p->itimer[which][2] = (uint64_t)it.it_value.tv_sec;
			p->itimer[which][3] = (uint64_t)it.it_value.tv_usec;
		}
	}
	return r;
}

/* Pending signals of one queue (shared or one thread's), without dequeuing them. */
static int capture_pending(struct process *p, pid_t host_tid, int32_t tid, bool shared,
                           struct ferry_error *err)
{
	for (uint64_t off = 0;; off++) {
		struct {
			uint64_t off;
			uint32_t flags;
			int32_t nr;
		} arg = {off, shared ? PTRACE_PEEKSIGINFO_SHARED : 0, 1};
		uint8_t info[128];
		long n = ptrace(PTRACE_PEEKSIGINFO, host_tid, &arg, info);
		if (n < 0)
			return ferr(err, -errno, "thread %d: PTRACE_PEEKSIGINFO: %m", host_tid);
		if (n == 0)
			return 0;
		if (GROW(p->pending, p->npending) < 0)
			return ferr(err, -ENOMEM, "out of memory");
		p->pending[p->npending].tid = shared ? 0 : tid;
		memcpy(p->pending[p->npending].info, info, sizeof(info));
		p->npending++;
	}
}

/*
 * Every resource limit from /proc/PID/limits, for a process of another uid (prlimit on it
 * needs CAP_SYS_RESOURCE, which root lacks here): one line per resource, in their order, the
 * soft limit at column 26 and the hard one at 47.
 */
static int limits_file(pid_t pid, struct rlimit *rl)
{
	char path[64];
	_cleanup_free_ char *buf = NULL;
	int i = -1; /* the header line first */

	snprintf(path, sizeof(path), "/proc/%d/limits", pid);
	int r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	for (char *l = buf; l && *l && i < MODEL_NRLIMITS; i++) {
		char *nl = strchr(l, '\n');
		if (i >= 0) {
			if (!nl || nl - l < 48)
				return -EPROTO;
			rlim_t v[2];
			const char *at[2] = {l + 26, l + 47};
			for (int k = 0; k < 2; k++)
				v[k] = strncmp(at[k], "unlimited", 9) == 0
				               ? RLIM_INFINITY
				               : strtoull(at[k], NULL, 10);
			rl[i].rlim_cur = v[0];
			rl[i].rlim_max = v[1];
		}
		l = nl ? nl + 1 : NULL;
	}
	return i == MODEL_NRLIMITS ? 0 : -EPROTO;
}

/* Uid, Gid, Groups, the capability sets and NoNewPrivs from /proc/PID/status. */
static int capture_creds(struct process *p)
{
	char path[64];
	_cleanup_free_ char *buf = NULL;
	static const char *const caps[5] = {"CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"};
	int found = 0;

	snprintf(path, sizeof(path), "/proc/%d/status", p->host_pid);
	int r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (sscanf(l, "Uid: %u %u %u %u", &p->uid[0], &p->uid[1], &p->uid[2], &p->uid[3]) ==
		    4)
			found |= 1;
		else if (sscanf(l, "Gid: %u %u %u %u", &p->gid[0], &p->gid[1], &p->gid[2],
		                &p->gid[3]) == 4)
			found |= 2;
		else if (strncmp(l, "NoNewPrivs:", 11) == 0)
			p->no_new_privs = (uint32_t)strtoul(l + 11, NULL, 10);
		else if (strncmp(l, "Seccomp:", 8) == 0 && strtoul(l + 8, NULL, 10) != 0)
			return -EPERM; /* a filter ferry cannot carry: refused, not dropped */
		else if (strncmp(l, "Groups:", 7) == 0) {
			char *end = l + 7;
			for (;;) {
				char *next;
				unsigned long g = strtoul(end, &next, 10);
				if (next == end || *end == '\n')
					break;
				uint32_t *ng = realloc(p->groups, (p->ngroups + 1) * sizeof(*ng));
				if (!ng)
					return -ENOMEM;
				p->groups = ng;
				p->groups[p->ngroups++] = (uint32_t)g;
				end = next;
			}
		}
		for (int i = 0; i < 5; i++)
			if (strncmp(l, caps[i], 7) == 0) {
				p->cap[i] = strtoull(l + 7, NULL, 16);
				found |= 4 << i;
			}
	}
	return found == 0x7f ? 0 : -EPROTO;
}

int task_capture(struct tracee *main, struct process *p, struct ferry_error *err)
{
	uint64_t f[PROCFS_STAT_FIELDS];
	char path[64];
	_cleanup_free_ char *buf = NULL;
	size_t len;
	uint64_t v;
	long ret;
	int r;

	if ((r = read_link(p->host_pid, "exe", &p->exe)) < 0 ||
	    (r = read_link(p->host_pid, "cwd", &p->cwd)) < 0 ||
	    (r = read_link(p->host_pid, "root", &p->root)) < 0)
		return ferr(err, r, "pid %d: reading exe/cwd/root: %s", p->host_pid, strerror(-r));
	if (strstr(p->exe, " (deleted)"))
		return ferr(err, -ENOTSUP, "pid %d: executable %s was deleted (unsupported)",
		            p->host_pid, p->exe);
	r = task_file_identity(p->exe, &p->exe_id);
	if (r < 0)
		return ferr(err, r, "pid %d: executable %s: %s", p->host_pid, p->exe, strerror(-r));
	snprintf(path, sizeof(path), "/proc/%d/comm", p->host_pid);
	if (read_file(path, &buf, NULL) == 0) {
		buf[strcspn(buf, "\n")] = '\0';
		snprintf(p->comm, sizeof(p->comm), "%s", buf);
		free(TAKE_PTR(buf));
	}
	if (procfs_status_u64(p->host_pid, "Umask", 8, &v) == 0)
		p->umask = (uint32_t)v;
	snprintf(path, sizeof(path), "/proc/%d/personality", p->host_pid);
	if (read_file(path, &buf, NULL) == 0) {
		p->personality = (uint32_t)strtoul(buf, NULL, 16);
		free(TAKE_PTR(buf));
	}
	for (int i = 0; i < MODEL_NRLIMITS; i++)
		if (prlimit(p->host_pid, i, NULL, &p->rlim[i]) < 0 &&
		    (errno != EPERM || (r = limits_file(p->host_pid, p->rlim)) < 0))
			return ferr(err, errno == EPERM ? r : -errno, "pid %d: prlimit(%d): %m",
			            p->host_pid, i);
	r = procfs_stat(p->host_pid, f);
	if (r < 0)
		return ferr(err, r, "pid %d: reading stat: %s", p->host_pid, strerror(-r));
	p->start_code = f[26];
	p->end_code = f[27];
	p->start_stack = f[28];
	p->start_data = f[45];
	p->end_data = f[46];
	p->start_brk = f[47];
	p->arg_start = f[48];
	p->arg_end = f[49];
	p->env_start = f[50];
	p->env_end = f[51];
	r = capture_creds(p);
	if (r == -EPERM)
		return ferr(err, -ENOTSUP,
		            "pid %d: it runs under a seccomp filter (not supported yet)",
		            p->host_pid);
	if (r < 0)
		return ferr(err, r, "pid %d: reading its credentials: %s", p->host_pid,
		            strerror(-r));
	snprintf(path, sizeof(path), "/proc/%d/auxv", p->host_pid);
	r = read_file(path, (char **)&p->auxv, &len);
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	p->auxv_len = (uint32_t)len;
	r = inject(main, &ret, SYS_brk, 0, 0, 0, 0, err);
	if (r < 0)
		return r;
	p->brk = (uint64_t)ret;
	struct stack_scratch sc;
	r = stack_scratch_take(&sc, p->host_pid, main, err);
	if (r < 0)
		return r;
	r = capture_signals(main, p, sc.addr, err);
	if (r == 0)
		r = capture_timers(main, p, sc.addr, err);
	int r2 = stack_scratch_release(&sc, err);
	if (r < 0 || r2 < 0)
		return r < 0 ? r : r2;
	return capture_pending(p, main->tid, 0, true, err);
}

int task_restore_early(const struct process *p, struct ferry_error *err)
{
	/* every disposition the image does not name is the default: the helper inherited
	 * whatever its own process had installed */
	for (int sig = 1; sig <= 64; sig++) {
		struct kernel_sigaction dfl = {0};
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		if (syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8) < 0 && errno != EINVAL)
			return ferr(err, -errno, "rt_sigaction(%d, SIG_DFL): %m", sig);
	}
	for (size_t i = 0; i < p->nsigacts; i++) {
		const struct sigact *s = &p->sigacts[i];
		struct kernel_sigaction ka = {s->handler, s->flags, s->restorer, s->mask};
		if (s->sig == SIGKILL || s->sig == SIGSTOP)
			continue;
		if (syscall(SYS_rt_sigaction, s->sig, &ka, NULL, 8) < 0)
			return ferr(err, -errno, "rt_sigaction(%d): %m", s->sig);
	}
	umask(p->umask);
	if (personality(p->personality) < 0)
		return ferr(err, -errno, "personality(0x%x): %m", p->personality);
	if (p->root && strcmp(p->root, "/") != 0 && chroot(p->root) < 0)
		return ferr(err, -errno, "chroot %s: %m", p->root);
	if (p->cwd && chdir(p->cwd) < 0)
		return ferr(err, -errno, "chdir %s: %m", p->cwd);
	return 0;
}

int task_restore_mm(struct restorer *rs, const struct process *p, struct rs_batch *b,
                    struct ferry_error *err)
{
	struct prctl_mm_map map = {
	        .start_code = p->start_code,
	        .end_code = p->end_code,
	        .start_data = p->start_data,
	        .end_data = p->end_data,
	        .start_brk = p->start_brk,
	        .brk = p->brk,
	        .start_stack = p->start_stack,
	        .arg_start = p->arg_start,
	        .arg_end = p->arg_end,
	        .env_start = p->env_start,
	        .env_end = p->env_end,
	        .auxv = (__u64 *)(uintptr_t)(rs->scratch + 512),
	        .auxv_size = p->auxv_len,
	        .exe_fd = (uint32_t)rs->exe_fd,
	};
	int r;

	if (p->auxv_len > 3000)
		return ferr(err, -EPROTO, "auxv of %u bytes is too large", p->auxv_len);
	r = tracee_poke(rs->pid, rs->scratch, &map, sizeof(map));
	if (r == 0 && p->auxv_len)
		r = tracee_poke(rs->pid, rs->scratch + 512, p->auxv, p->auxv_len);
	if (r < 0)
		return ferr(err, r, "scratch write: %s", strerror(-r));
	return rs_batch_add(rs, b, "prctl(PR_SET_MM_MAP)", SYS_prctl, PR_SET_MM, PR_SET_MM_MAP,
	                    rs->scratch, sizeof(map), 0, 0, err);
}

/*
 * POSIX timers, created by the component itself (injected) with their ids again, then armed
 * with the time they had left (relative: a timer set for an absolute time fires as much later
 * as the component was stopped). Its threads exist by now, for SIGEV_THREAD_ID.
 */
static int restore_ptimer(struct restorer *rs, const struct ptimer *t, struct ferry_error *err)
{
	/* the kernel's struct sigevent (64 bytes, the thread id at 16), the id, the itimerspec */
	struct {
		uint64_t value;
		int32_t signo, notify, tid, pad[11];
		int32_t id, pad2;
		int64_t interval_s, interval_ns, value_s, value_ns;
	} a = {.value = t->value,
	       .signo = t->signo,
	       .notify = t->notify,
	       .tid = t->tid,
	       .id = t->id};
	uint64_t left = t->value_ns;
	int32_t got = -1;
	long ret;

	_Static_assert(offsetof(__typeof__(a), id) == 64, "sigevent is 64 bytes");
	if (!left && t->interval_ns)
		left = t->interval_ns; /* caught between an expiry and its signal's dequeue */
	a.interval_s = (int64_t)(t->interval_ns / 1000000000);
	a.interval_ns = (int64_t)(t->interval_ns % 1000000000);
	a.value_s = (int64_t)(left / 1000000000);
	a.value_ns = (int64_t)(left % 1000000000);
	int r = tracee_poke(rs->pid, rs->scratch, &a, sizeof(a));
	if (r < 0)
		return ferr(err, r, "scratch write: %s", strerror(-r));
	ret = rs_sys(rs, "timer_create", SYS_timer_create, (uint64_t)t->clock, rs->scratch,
	             rs->scratch + 64, 0, 0, 0, err);
	if (ret < 0)
		return ferr_prefix(err, "POSIX timer %d", t->id);
	r = tracee_peek(rs->pid, rs->scratch + 64, &got, sizeof(got));
	if (r < 0)
		return ferr(err, r, "scratch read: %s", strerror(-r));
	if (got != t->id)
		return ferr(err, -EPROTO, "POSIX timer %d was created as %d", t->id, got);
	if (!left)
		return 0; /* disarmed */
	ret = rs_sys(rs, "timer_settime", SYS_timer_settime, (uint64_t)t->id, 0, rs->scratch + 72,
	             0, 0, 0, err);
	return ret < 0 ? ferr_prefix(err, "POSIX timer %d", t->id) : 0;
}

static int restore_ptimers(struct restorer *rs, const struct process *p, struct ferry_error *err)
{
	int r = 0;
	long ret;

	if (!p->nptimers)
		return 0;
	ret = rs_sys(rs, "prctl(PR_TIMER_CREATE_RESTORE_IDS)", SYS_prctl,
	             PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0, 0, err);
	if (ret < 0)
		return (int)ret;
	for (size_t i = 0; i < p->nptimers && r == 0; i++)
		r = restore_ptimer(rs, &p->ptimers[i], err);
	ret = rs_sys(rs, "prctl(PR_TIMER_CREATE_RESTORE_IDS)", SYS_prctl,
	             PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0, 0,
	             r < 0 ? NULL : err);
	return r < 0 ? r : (ret < 0 ? (int)ret : 0);
}

#define CAP_COUNT 64

/*
 * The process's credentials, last of all (after them it may lack the privilege the rest of the
 * restore needs): capabilities dropped from the bounding set, groups, gids, uids (keeping the
 * capabilities across the uid change), then the capability sets and no_new_privs. Nothing is
 * done for a process with root's full credentials, the helper's own.
 */
int task_restore_creds(struct restorer *rs, const struct process *p, struct ferry_error *err)
{
	uint64_t full = 0;
	long ret = 0;
	int r;

	for (int i = 0; i < 4; i++)
		full |= p->uid[i] | p->gid[i];
	bool plain = full == 0 && p->ngroups <= 1 && (!p->ngroups || p->groups[0] == 0) &&
	             p->cap[0] == 0 && p->cap[4] == 0 && !p->no_new_privs &&
	             (p->cap[1] & p->cap[2] & p->cap[3]) == p->cap[3] && p->cap[1] == p->cap[2];
	if (plain)
		return 0;
	for (int c = 0; c < CAP_COUNT && ret >= 0; c++)
		if (!(p->cap[3] & (1ULL << c)) && prctl(PR_CAPBSET_READ, c) == 1)
			ret = rs_sys(rs, "PR_CAPBSET_DROP", SYS_prctl, PR_CAPBSET_DROP, (uint64_t)c,
			             0, 0, 0, 0, err);
	if (ret < 0)
		return (int)ret;
	r = tracee_poke(rs->pid, rs->scratch, p->groups, p->ngroups * sizeof(uint32_t));
	if (r < 0)
		return ferr(err, r, "writing the groups: %s", strerror(-r));
	if ((ret = rs_sys(rs, "setgroups", SYS_setgroups, p->ngroups, rs->scratch, 0, 0, 0, 0,
	                  err)) < 0 ||
	    (ret = rs_sys(rs, "prctl(PR_SET_KEEPCAPS)", SYS_prctl, PR_SET_KEEPCAPS, 1, 0, 0, 0, 0,
	                  err)) < 0 ||
	    (ret = rs_sys(rs, "setresgid", SYS_setresgid, p->gid[0], p->gid[1], p->gid[2], 0, 0, 0,
	                  err)) < 0 ||
	    (ret = rs_sys(rs, "setfsgid", SYS_setfsgid, p->gid[3], 0, 0, 0, 0, 0, err)) < 0 ||
	    (ret = rs_sys(rs, "setresuid", SYS_setresuid, p->uid[0], p->uid[1], p->uid[2], 0, 0, 0,
	                  err)) < 0 ||
	    (ret = rs_sys(rs, "setfsuid", SYS_setfsuid, p->uid[3], 0, 0, 0, 0, 0, err)) < 0 ||
	    (ret = rs_sys(rs, "prctl(PR_SET_KEEPCAPS)", SYS_prctl, PR_SET_KEEPCAPS, 0, 0, 0, 0, 0,
	                  err)) < 0)
		return (int)ret;
	/* capset: a header and two 32-bit halves of each set */
	struct {
		uint32_t version;
		int32_t pid;
		struct {
			uint32_t eff, prm, inh;
		} d[2];
	} cs = {.version = 0x20080522,
	        .d = {{(uint32_t)p->cap[2], (uint32_t)p->cap[1], (uint32_t)p->cap[0]},
	              {(uint32_t)(p->cap[2] >> 32), (uint32_t)(p->cap[1] >> 32),
	               (uint32_t)(p->cap[0] >> 32)}}};
	r = tracee_poke(rs->pid, rs->scratch, &cs, sizeof(cs));
	if (r < 0)
		return ferr(err, r, "writing the capabilities: %s", strerror(-r));
	ret = rs_sys(rs, "capset", SYS_capset, rs->scratch, rs->scratch + 8, 0, 0, 0, 0, err);
	for (int c = 0; c < CAP_COUNT && ret >= 0; c++)
		if (p->cap[4] & (1ULL << c))
			ret = rs_sys(rs, "PR_CAP_AMBIENT_RAISE", SYS_prctl, PR_CAP_AMBIENT,
			             PR_CAP_AMBIENT_RAISE, (uint64_t)c, 0, 0, 0, err);
	if (ret >= 0 && p->no_new_privs)
		ret = rs_sys(rs, "PR_SET_NO_NEW_PRIVS", SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0,
		             0, err);
	return ret < 0 ? (int)ret : 0;
}

int task_restore_late(struct restorer *rs, const struct process *p, struct ferry_error *err)
{
	for (size_t i = 0; i < p->npending; i++) {
		const struct pending_sig *s = &p->pending[i];
		int32_t signo;
		long ret;
		int r;

		memcpy(&signo, s->info, sizeof(signo));
		r = tracee_poke(rs->pid, rs->scratch, s->info, sizeof(s->info));
		if (r < 0)
			return ferr(err, r, "scratch write: %s", strerror(-r));
		if (s->tid == 0)
			ret = rs_sys(rs, "rt_sigqueueinfo", SYS_rt_sigqueueinfo, (uint64_t)p->pid,
			             (uint64_t)signo, rs->scratch, 0, 0, 0, err);
		else
			ret = rs_sys(rs, "rt_tgsigqueueinfo", SYS_rt_tgsigqueueinfo,
			             (uint64_t)p->pid, (uint64_t)s->tid, (uint64_t)signo,
			             rs->scratch, 0, 0, err);
		if (ret < 0)
			return ferr_prefix(err, "pending signal %d", signo);
	}
	/* interval timers go on with the time they had left */
	for (int which = 0; which < 3; which++) {
		const uint64_t *t = p->itimer[which];
		struct itimerval it = {{(time_t)t[0], (suseconds_t)t[1]},
		                       {(time_t)t[2], (suseconds_t)t[3]}};
		if (!t[2] && !t[3]) {
			if (!t[0] && !t[1])
				continue; /* disarmed */
			/* a periodic timer caught between its expiry and the dequeue of its signal
			 * (which re-arms it) reads 0 left: it goes on one interval on, and the
			 * pending signal restored above is that expiry's */
			it.it_value = it.it_interval;
		}
		int r = tracee_poke(rs->pid, rs->scratch, &it, sizeof(it));
		if (r < 0)
			return ferr(err, r, "scratch write: %s", strerror(-r));
		long ret = rs_sys(rs, "setitimer", SYS_setitimer, (uint64_t)which, rs->scratch, 0,
		                  0, 0, 0, err);
		if (ret < 0)
			return (int)ret;
	}
	int r = restore_ptimers(rs, p, err);
	if (r < 0)
		return r;
	for (int i = 0; i < MODEL_NRLIMITS; i++)
		if (prlimit(rs->pid, i, &p->rlim[i], NULL) < 0)
			return ferr(err, -errno, "prlimit(%d): %m", i);
	return 0;
}

int task_capture_thread_pending(struct process *p, pid_t host_tid, int32_t tid,
                                struct ferry_error *err)
{
	return capture_pending(p, host_tid, tid, false, err);
}

int task_probe_mm_map(char *detail, size_t len)
{
	unsigned int size = 0;
	bool ok = prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &size, 0, 0) == 0 &&
	          size == sizeof(struct prctl_mm_map);
	snprintf(detail, len, "PR_SET_MM_MAP %s (struct of %u bytes)", ok ? "present" : "missing",
	         size);
	return ok;
}
