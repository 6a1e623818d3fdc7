/* Feature: threads blocked in pthread_cond_wait / timedwait (futex) wake on a later broadcast. */
#include "feature.h"

#include <dirent.h>
#include <sys/syscall.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int predicate; /* set to 7 after go */

struct waiter {
	int timed;
	pid_t tid;
	int ret, seen;
};

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 120; /* far beyond any test: a timeout here is a failure */
	pthread_mutex_lock(&lock);
	__atomic_store_n(&w->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
	while (predicate == 0 && w->ret == 0)
		w->ret = w->timed ? pthread_cond_timedwait(&cond, &lock, &dl)
		                  : pthread_cond_wait(&cond, &lock);
	w->seen = predicate;
	pthread_mutex_unlock(&lock);
	return NULL;
}

/*
 * task_dir - the /proc/self/task entry of thread tid (a tid of our own PID namespace, which
 * need not be the one /proc was mounted for): the entry whose NSpid line ends with tid.
 */
static int task_dir(pid_t tid, char *buf, size_t size)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;
	int found = 0;

	while (d && !found && (de = readdir(d))) {
		char path[300], line[256];
		FILE *f;

		snprintf(path, sizeof(path), "/proc/self/task/%s/status", de->d_name);
		f = fopen(path, "r");
		while (f && fgets(line, sizeof(line), f))
			if (strncmp(line, "NSpid:", 6) == 0) {
				char *last = strrchr(line, '\t');
				found = last && atoi(last + 1) == tid;
				if (found)
					snprintf(buf, size, "/proc/self/task/%s", de->d_name);
			}
		if (f)
			fclose(f);
	}
	if (d)
		closedir(d);
	return found;
}

/*
 * in_futex - 1 when thread tid sits in the futex system call, or in restart_syscall: a timed
 * futex wait interrupted by a tracer (a checkpoint) resumes through the restart block.
 */
static int in_futex(pid_t tid)
{
	char path[320], buf[64] = "";
	FILE *f;

	if (!task_dir(tid, path, sizeof(path) - 8))
		return 0;
	strcat(path, "/syscall");
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return atoi(buf) == SYS_futex || atoi(buf) == SYS_restart_syscall;
}

/* back_in_futex - in_futex within a second (a restored thread may need a moment). */
static int back_in_futex(pid_t tid)
{
	for (int i = 0; i < 100; i++) {
		if (in_futex(tid))
			return 1;
		feature_sleep_ms(10);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct waiter w[2] = {{.timed = 0}, {.timed = 1}};
	pthread_t th[2];

	for (int i = 0; i < 2; i++)
		if (pthread_create(&th[i], NULL, waiter_main, &w[i]) != 0) {
			feature_fail("pthread_create failed");
			return feature_finish();
		}
	for (int i = 0; i < 2; i++)
		while (!__atomic_load_n(&w[i].tid, __ATOMIC_ACQUIRE) || !in_futex(w[i].tid))
			feature_sleep_ms(1);
	feature_ready();
	feature_wait_go(dir);

	for (int i = 0; i < 2; i++)
		if (!back_in_futex(w[i].tid))
			feature_fail("waiter %d (tid %d) is not in futex wait after go", i,
			             (int)w[i].tid);
	pthread_mutex_lock(&lock);
	predicate = 7;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	for (int i = 0; i < 2; i++) {
		if (feature_join(th[i], NULL, w[i].timed ? "timed waiter" : "waiter", 5) != 0)
			continue;
		if (w[i].ret != 0 || w[i].seen != 7)
			feature_fail("%s waiter: returned %d, saw predicate %d",
			             w[i].timed ? "timed" : "plain", w[i].ret, w[i].seen);
	}
	return feature_finish();
}
