/*
 * Credentials: a child that changed its uids, gids and groups (and so lost its capabilities),
 * a root that dropped a capability from its bounding set and set no_new_privs. After go each
 * finds them as they were.
 */
#include <grp.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <linux/capability.h>

#include "feature.h"

static unsigned long long status_hex(const char *key)
{
	char line[256];
	unsigned long long v = ~0ULL;
	FILE *f = fopen("/proc/self/status", "r");
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, key, strlen(key)) == 0)
			v = strtoull(line + strlen(key), NULL, 16);
	if (f)
		fclose(f);
	return v;
}

/* The child waits for the root to pass go on (as uid 2000 it may not reach the directory). */
static int child_checks(int go_rd)
{
	char c;
	gid_t groups[] = {100, 200, 300};
	if (setgroups(3, groups) < 0 || setresgid(1000, 1001, 1002) < 0 ||
	    setresuid(2000, 2001, 2002) < 0)
		return 2;
	if (read(go_rd, &c, 1) != 1)
		return 2;
	uid_t r, e, s;
	gid_t gr, ge, gs, got[8];
	if (getresuid(&r, &e, &s) < 0 || r != 2000 || e != 2001 || s != 2002)
		return 3;
	if (getresgid(&gr, &ge, &gs) < 0 || gr != 1000 || ge != 1001 || gs != 1002)
		return 4;
	int n = getgroups(8, got);
	if (n != 3 || got[0] != 100 || got[1] != 200 || got[2] != 300)
		return 5;
	if (status_hex("CapEff:") != 0)
		return 6;
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	int ready[2];

	if (pipe(ready) < 0 || prctl(PR_CAPBSET_DROP, CAP_NET_RAW) < 0 ||
	    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	unsigned long long bnd = status_hex("CapBnd:");
	pid_t kid = fork();
	if (kid == 0) {
		close(ready[1]);
		int r = child_checks(ready[0]);
		_exit(r);
	}
	feature_sleep_ms(100); /* the child changes its ids */
	feature_ready();
	feature_wait_go(dir);
	if (write(ready[1], "g", 1) != 1)
		feature_fail("passing go on: %s", strerror(errno));
	if (status_hex("CapBnd:") != bnd || (bnd & (1ULL << CAP_NET_RAW)))
		feature_fail("bounding set %llx, expected %llx", status_hex("CapBnd:"), bnd);
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
		feature_fail("no_new_privs lost");
	if (getuid() != 0 || geteuid() != 0)
		feature_fail("root's uid is %d/%d", getuid(), geteuid());
	int st = 0;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		feature_fail("the child's credentials check ended with status %#x "
		             "(3 uids, 4 gids, 5 groups, 6 capabilities)",
		             st);
	return feature_finish();
}
