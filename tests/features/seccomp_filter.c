/* Feature: a checkpoint refuses a process under a seccomp filter (ferry cannot carry the
 * filter, and dropping it would weaken the program), and leaves it running under it. */
#include <stddef.h>
#include <sys/prctl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "feature.h"

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	struct sock_filter f[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
	struct sock_fprog prog = {.len = 1, .filter = f};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
		printf("FAIL: seccomp: %s\n", strerror(errno));
		return 1;
	}
	feature_ready();
	feature_wait_go(dir);
	if (prctl(PR_GET_SECCOMP, 0, 0, 0, 0) != 2)
		feature_fail("no longer under its filter");
	return feature_finish();
}
