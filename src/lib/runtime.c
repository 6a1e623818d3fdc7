/* The runtime: component records in the state directory and the monitor that parents each one. */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/sched.h>
#include <time.h>

#include "runtime.h"
#include "services.h"
#include "util.h"

int ferry_runtime_init(struct ferry_runtime *rt, const char *state_dir, struct ferry_error *err)
{
	const char *dir = state_dir ? state_dir : getenv("FERRY_STATE_DIR");
	int r;

	if (!dir || !*dir)
		dir = "/run/ferry";
	if (strlen(dir) >= sizeof(rt->state_dir) - 80)
		return ferr(err, -ENAMETOOLONG, "state directory %s: name too long", dir);
	snprintf(rt->state_dir, sizeof(rt->state_dir), "%s", dir);
	r = mkdir_p(rt->state_dir, 0700);
	if (r < 0)
		return ferr(err, r, "state directory %s: %s", dir, strerror(-r));
	return 0;
}

int ferry_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n >= FERRY_NAME_MAX || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return 0;
	}
	return 1;
}

void runtime_dir(const struct ferry_runtime *rt, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", rt->state_dir, name);
}

void runtime_log_path(const struct ferry_runtime *rt, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/log", rt->state_dir, name);
}

uint64_t runtime_log_id(const struct ferry_runtime *rt, const char *name)
{
	char path[PATH_MAX];
	_cleanup_free_ char *buf = NULL;
	snprintf(path, sizeof(path), "%s/%s/log.id", rt->state_dir, name);
	if (read_file(path, &buf, NULL) < 0)
		return 0;
	return strtoull(buf, NULL, 16);
}

static int write_atomic(const char *path, const char *data)
{
	char tmp[PATH_MAX + 8];
	_cleanup_close_ int fd = -EBADF;
	int r;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	r = write_full(fd, data, strlen(data));
	if (r < 0)
		return r;
	if (rename(tmp, path) < 0)
		return -errno;
	return 0;
}

static int record_write(const struct ferry_runtime *rt, const struct ferry_component *c)
{
	char path[PATH_MAX], buf[1024];
	snprintf(path, sizeof(path), "%s/%s/record", rt->state_dir, c->name);
	snprintf(buf, sizeof(buf),
	         "pid=%d\nmonitor_pid=%d\nstate=%d\nexit_status=%d\nstarted=%" PRId64
	         "\nrestored=%d\n",
	         c->pid, c->monitor_pid, (int)c->state, c->exit_status, c->started, c->restored);
	return write_atomic(path, buf);
}

static int record_read(const struct ferry_runtime *rt, const char *name, struct ferry_component *c)
{
	char path[PATH_MAX];
	_cleanup_free_ char *buf = NULL;
	int r;

	snprintf(path, sizeof(path), "%s/%s/record", rt->state_dir, name);
	r = read_file(path, &buf, NULL);
	if (r < 0)
		return r;
	memset(c, 0, sizeof(*c));
	snprintf(c->name, sizeof(c->name), "%s", name);
	runtime_log_path(rt, name, c->log_path, sizeof(c->log_path));
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		char *eq = strchr(line, '=');
		if (!eq)
			continue;
		*eq = '\0';
		long long v = strtoll(eq + 1, NULL, 10);
		if (strcmp(line, "pid") == 0)
			c->pid = (pid_t)v;
		else if (strcmp(line, "monitor_pid") == 0)
			c->monitor_pid = (pid_t)v;
		else if (strcmp(line, "state") == 0)
			c->state = (enum ferry_state)v;
		else if (strcmp(line, "exit_status") == 0)
			c->exit_status = (int)v;
		else if (strcmp(line, "started") == 0)
			c->started = v;
		else if (strcmp(line, "restored") == 0)
			c->restored = (int)v;
	}
	return 0;
}

bool runtime_is_live(const struct ferry_component *c)
{
	if (c->state == FERRY_STATE_EXITED)
		return false;
	/* signal 0: only asks whether the process exists */
	return safe_kill(c->pid, 0) == 0 || safe_kill(c->monitor_pid, 0) == 0;
}

int ferry_component_get(const struct ferry_runtime *rt, const char *name,
                        struct ferry_component *ret, struct ferry_error *err)
{
	if (!ferry_name_valid(name))
		return ferr(err, -EINVAL, "invalid component name '%s'", name);
	int r = record_read(rt, name, ret);
	if (r == -ENOENT)
		return ferr(err, r, "no component named %s", name);
	if (r < 0)
		return ferr(err, r, "reading the record of %s: %s", name, strerror(-r));
	/* a monitor that died cannot record the exit: see for ourselves */
	if (ret->state == FERRY_STATE_RUNNING && !runtime_is_live(ret)) {
		ret->state = FERRY_STATE_EXITED;
		ret->exit_status = -1;
	}
	return 0;
}

static int cmp_component(const void *a, const void *b)
{
	return strcmp(((const struct ferry_component *)a)->name,
	              ((const struct ferry_component *)b)->name);
}

int ferry_list(const struct ferry_runtime *rt, struct ferry_component **ret, size_t *ret_n,
               struct ferry_error *err)
{
	DIR *d = opendir(rt->state_dir);
	struct dirent *de;
	struct ferry_component *all = NULL;
	size_t n = 0, cap = 0;

	if (!d)
		return ferr(err, -errno, "state directory %s: %m", rt->state_dir);
	while ((de = readdir(d))) {
		struct ferry_component c;
		if (!ferry_name_valid(de->d_name) || de->d_name[0] == '.')
			continue;
		if (ferry_component_get(rt, de->d_name, &c, NULL) < 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			struct ferry_component *na = realloc(all, cap * sizeof(*all));
			if (!na) {
				free(all);
				closedir(d);
				return ferr(err, -ENOMEM, "out of memory");
			}
			all = na;
		}
		all[n++] = c;
	}
	closedir(d);
	if (n)
		qsort(all, n, sizeof(*all), cmp_component);
	*ret = all;
	*ret_n = n;
	return 0;
}

int ferry_kill(const struct ferry_runtime *rt, const char *name, struct ferry_error *err)
{
	struct ferry_component c;
	char path[PATH_MAX];
	int r = ferry_component_get(rt, name, &c, err);

	if (r < 0)
		return r;
	if (c.state != FERRY_STATE_EXITED && c.pid > 0) {
		r = safe_kill(c.pid, SIGKILL);
		if (r < 0 && r != -ESRCH)
			return ferr(err, r, "%s: SIGKILL to pid %d: %s", name, c.pid, strerror(-r));
		/* the monitor reaps it and records the exit; the process is gone when
		 * /proc/PID is, or it is a zombie of ours no more */
		for (int i = 0; i < 500; i++) {
			struct ferry_component now;
			if (record_read(rt, name, &now) < 0 || now.state == FERRY_STATE_EXITED ||
			    !runtime_is_live(&now))
				break;
			usleep(10000);
		}
	}
	snprintf(path, sizeof(path), "%s/%s/record", rt->state_dir, name);
	if (unlink(path) < 0 && errno != ENOENT)
		return ferr(err, -errno, "%s: %m", path);
	return 0;
}

/* ---- the monitor ---- */

struct report {
	int code;
	pid_t pid;
	char msg[FERRY_ERROR_MAX];
	uint8_t extra[MONITOR_EXTRA_MAX];
};

/*
 * In the monitor: start the component and record it as running. A component whose record
 * cannot be written could not be found again: it does not stay.
 */
static int monitor_begin(const struct ferry_runtime *rt, const char *name, bool restored,
                         monitor_start_fn start, void *arg, pid_t *ret_pid, void *extra,
                         struct ferry_error *err)
{
	struct ferry_component c = {0};
	char log_path[PATH_MAX];
	int status, r;
	pid_t pid = 0;

	(void)prctl(PR_SET_NAME, "ferry-monitor");
	/* the caller may be gone by the time we report (a migration's receiver killed with its
	 * node): the component must not lose its monitor to SIGPIPE */
	signal(SIGPIPE, SIG_IGN);
	runtime_log_path(rt, name, log_path, sizeof(log_path));
	r = start(arg, log_path, &pid, extra, err);
	if (r < 0)
		return r;
	snprintf(c.name, sizeof(c.name), "%s", name);
	c.pid = pid;
	c.monitor_pid = getpid();
	c.state = FERRY_STATE_RUNNING;
	c.started = (int64_t)time(NULL);
	c.restored = restored;
	r = record_write(rt, &c);
	if (r < 0) {
		(void)safe_kill(pid, SIGKILL);
		(void)waitpid(pid, &status, 0);
		return ferr(err, r, "writing the record: %s", strerror(-r));
	}
	*ret_pid = pid;
	return 0;
}

/* A monitor holds no terminal, pipe or log of whoever started it. */
static void stdio_null(void)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (null < 0)
		return;
	dup2(null, 0);
	dup2(null, 1);
	dup2(null, 2);
	if (null > 2)
		close(null);
}

_noreturn_ void monitor_wait(const struct ferry_runtime *rt, const char *name, pid_t pid)
{
	struct ferry_component c;
	char path[PATH_MAX];
	struct stat sb;
	int status = 0;

	stdio_null();
	if (chdir("/") < 0) {
		/* only to not pin a mount; harmless */
	}
	/* its end, then its status: a session relay's thread (relay.c) may be tracing it, and
	 * a wait of ours would take the stops it waits for (one thread group) */
	_cleanup_close_ int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (;;) {
		struct pollfd pf = {.fd = pfd, .events = POLLIN};
		if (pfd >= 0 && poll(&pf, 1, -1) < 0 && errno == EINTR)
			continue;
		pid_t w = waitpid(pid, &status, pfd >= 0 ? WNOHANG : 0);
		if (w < 0 && errno == EINTR)
			continue;
		if (w == 0) {
			/* not reapable yet (its tracer's to see first): look again shortly */
			usleep(1000);
			continue;
		}
		break;
	}
	/* the record may have been removed by ferry kill: then leave it removed */
	snprintf(path, sizeof(path), "%s/%s/record", rt->state_dir, name);
	if (stat(path, &sb) == 0 && record_read(rt, name, &c) == 0 && c.pid == pid) {
		c.state = FERRY_STATE_EXITED;
		c.exit_status = status;
		(void)record_write(rt, &c);
	}
	_exit(0);
}

_noreturn_ static void monitor_main(const struct ferry_runtime *rt, const char *name, bool restored,
                                    monitor_start_fn start, void *arg, int rep_fd)
{
	struct report rep = {0};
	struct ferry_error err = {0};
	pid_t pid = 0;

	(void)setsid();
	stdio_null();
	rep.code = monitor_begin(rt, name, restored, start, arg, &pid, rep.extra, &err);
	rep.pid = pid;
	if (rep.code < 0)
		memcpy(rep.msg, err.msg, sizeof(rep.msg));
	(void)write_full(rep_fd, &rep, sizeof(rep));
	if (rep.code < 0)
		_exit(1);
	safe_close(rep_fd);
	monitor_wait(rt, name, pid);
}

/* Before a monitor starts its component: no other copy runs, a log, a log id, no old figures. */
static int monitor_prepare(const struct ferry_runtime *rt, const char *name, uint64_t log_id,
                           bool keep_log, struct ferry_error *err)
{
	struct ferry_component cur;
	char dir[PATH_MAX], path[PATH_MAX], idbuf[32];
	int r;

	if (!ferry_name_valid(name))
		return ferr(err, -EINVAL,
		            "invalid component name '%s' (use letters, digits, . _ -)", name);
	if (services_reserved(name))
		return ferr(
		        err, -EINVAL,
		        "component name '%s' is reserved (a component finds the node's services "
		        "at " SERVICES_DIR "/services, /rom and /resume)",
		        name);
	if (record_read(rt, name, &cur) == 0 && runtime_is_live(&cur))
		return ferr(err, -EEXIST, "component %s is already running (pid %d)", name,
		            cur.pid);
	runtime_dir(rt, name, dir, sizeof(dir));
	r = mkdir_p(dir, 0700);
	if (r < 0)
		return ferr(err, r, "%s: %s", dir, strerror(-r));
	/* a new log history unless the caller continues an existing one */
	runtime_log_path(rt, name, path, sizeof(path));
	if (!keep_log) {
		_cleanup_close_ int lfd =
		        open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (lfd < 0)
			return ferr(err, -errno, "log %s: %m", path);
	}
	if (!log_id && getrandom(&log_id, sizeof(log_id), 0) != sizeof(log_id))
		log_id = (uint64_t)now_ns();
	/* a new run: no dirty tracking and no checkpoint figures of the last one */
	snprintf(path, sizeof(path), "%s/track", dir);
	(void)unlink(path);
	snprintf(path, sizeof(path), "%s/stats", dir);
	(void)unlink(path);
	if (!keep_log) {
		/* sessions re-created for an earlier run (a restore registers its own) */
		snprintf(path, sizeof(path), "%s/sessions", dir);
		(void)unlink(path);
	}
	snprintf(path, sizeof(path), "%s/log.id", dir);
	snprintf(idbuf, sizeof(idbuf), "%016" PRIx64 "\n", log_id);
	r = write_atomic(path, idbuf);
	if (r < 0)
		return ferr(err, r, "%s: %s", path, strerror(-r));
	return 0;
}

int monitor_launch(const struct ferry_runtime *rt, const char *name, bool restored, uint64_t log_id,
                   bool keep_log, monitor_start_fn start, void *arg, pid_t *ret_pid,
                   void *ret_extra, size_t extra_len, struct ferry_error *err)
{
	struct report rep;
	int p[2], r, status;
	pid_t mid;

	r = monitor_prepare(rt, name, log_id, keep_log, err);
	if (r < 0)
		return r;
	if (pipe2(p, O_CLOEXEC) < 0)
		return ferr(err, -errno, "pipe: %m");
	mid = fork();
	if (mid < 0) {
		r = -errno;
		safe_close(p[0]);
		safe_close(p[1]);
		return ferr(err, r, "fork: %s", strerror(-r));
	}
	if (mid == 0) {
		safe_close(p[0]);
		monitor_main(rt, name, restored, start, arg, p[1]);
	}
	safe_close(p[1]);
	r = read_full(p[0], &rep, sizeof(rep));
	safe_close(p[0]);
	if (r < 0 || rep.code < 0) {
		/* it ends after reporting a failure (or died before): reap it */
		while (waitpid(mid, &status, 0) < 0 && errno == EINTR)
			;
	}
	if (r < 0)
		return ferr(err, -EIO, "the monitor of %s died before reporting", name);
	if (rep.code < 0)
		return ferr(err, rep.code, "%s", rep.msg);
	if (ret_extra)
		memcpy(ret_extra, rep.extra, MIN(extra_len, sizeof(rep.extra)));
	*ret_pid = rep.pid;
	return 0;
}

int monitor_here(const struct ferry_runtime *rt, const char *name, bool restored, uint64_t log_id,
                 bool keep_log, monitor_start_fn start, void *arg, pid_t *ret_pid, void *ret_extra,
                 size_t extra_len, struct ferry_error *err)
{
	uint8_t extra[MONITOR_EXTRA_MAX] = {0};
	int r = monitor_prepare(rt, name, log_id, keep_log, err);

	if (r < 0)
		return r;
	/* from here on this process parents the component: it outlives its own parent */
	if (prctl(PR_SET_PDEATHSIG, 0) < 0)
		return ferr(err, -errno, "PR_SET_PDEATHSIG: %m");
	r = monitor_begin(rt, name, restored, start, arg, ret_pid, extra, err);
	if (r < 0)
		return r;
	if (ret_extra)
		memcpy(ret_extra, extra, MIN(extra_len, sizeof(extra)));
	return 0;
}

/* ---- ferry run ---- */

struct run_arg {
	const struct ferry_runtime *rt;
	char *const *argv;
};

/* clone3 as fork with flags; 0 in the child. */
pid_t runtime_clone_ns(uint64_t flags)
{
	struct clone_args ca = {.flags = flags, .exit_signal = SIGCHLD};
	return (pid_t)syscall(SYS_clone3, &ca, sizeof(ca));
}

/* In a new pid+mount namespace: /proc shows the namespace's own processes. */
int runtime_ns_setup(const struct ferry_runtime *rt, struct ferry_error *err)
{
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return ferr(err, -errno, "making mounts private: %m");
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return ferr(err, -errno, "mounting /proc: %m");
	return services_mount(rt, err);
}

static int run_start(void *arg, const char *log_path, pid_t *ret_pid, void *extra,
                     struct ferry_error *err)
{
	struct run_arg *ra = arg;
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return ferr(err, -errno, "pipe: %m");
	pid = runtime_clone_ns(CLONE_NEWPID | CLONE_NEWNS);
	if (pid < 0) {
		int r = -errno;
		safe_close(p[0]);
		safe_close(p[1]);
		return ferr(err, r, "clone3 (new pid and mount namespaces): %s", strerror(-r));
	}
	if (pid == 0) {
		struct ferry_error e = {0};
		int null, log;
		safe_close(p[0]);
		if (runtime_ns_setup(ra->rt, &e) < 0)
			goto fail;
		null = open("/dev/null", O_RDONLY);
		log = open(log_path, O_WRONLY | O_APPEND | O_CREAT, 0600);
		if (null < 0 || log < 0) {
			ferr(&e, -errno, "opening stdio (%s): %m", log_path);
			goto fail;
		}
		dup2(null, 0);
		dup2(log, 1);
		dup2(log, 2);
		/* everything but the report pipe, which exec closes (O_CLOEXEC) */
		if (p[1] > 3)
			syscall(SYS_close_range, 3, p[1] - 1, 0);
		syscall(SYS_close_range, p[1] + 1, ~0U, 0);
		execvp(ra->argv[0], ra->argv);
		ferr(&e, -errno, "exec %s: %m", ra->argv[0]);
	fail:
		(void)write_full(p[1], e.msg, strlen(e.msg) + 1);
		_exit(127);
	}
	safe_close(p[1]);
	char msg[FERRY_ERROR_MAX] = "";
	ssize_t n = read(p[0], msg, sizeof(msg) - 1);
	safe_close(p[0]);
	if (n > 0) {
		waitpid(pid, NULL, 0);
		return ferr(err, -EIO, "starting the component: %s", msg);
	}
	*ret_pid = pid;
	return 0;
}

int ferry_run(const struct ferry_runtime *rt, const char *name, char *const argv[], pid_t *ret_pid,
              struct ferry_error *err)
{
	struct run_arg ra = {rt, argv};

	if (!argv || !argv[0])
		return ferr(err, -EINVAL, "no program to run");
	return monitor_launch(rt, name, false, 0, false, run_start, &ra, ret_pid, NULL, 0, err);
}

int runtime_probe_set_tid(char *detail, size_t len)
{
	/* a child in a new pid namespace (pid 1) creates a process with a chosen pid */
	pid_t pid = runtime_clone_ns(CLONE_NEWPID);
	if (pid == 0) {
		pid_t want = 4242;
		struct clone_args ca = {.exit_signal = SIGCHLD,
		                        .set_tid = (uint64_t)(uintptr_t)&want,
		                        .set_tid_size = 1};
		pid_t c = (pid_t)syscall(SYS_clone3, &ca, sizeof(ca));
		if (c == 0)
			_exit(0);
		_exit(c == want ? 0 : 1);
	}
	int status = 0;
	if (pid < 0 || waitpid(pid, &status, 0) != pid) {
		snprintf(detail, len, "clone3 with a new pid namespace: %s", strerror(errno));
		return 0;
	}
	bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	snprintf(detail, len, "%s",
	         ok ? "clone3 set_tid gives chosen pids in a new namespace"
	            : "clone3 set_tid refused");
	return ok;
}
