/*
 * SysV shared memory: a segment (IPC_PRIVATE) attached by the root and inherited by a child,
 * and a second one with a key, already removed (IPC_RMID: it goes once both detach). After go
 * the contents are there, the ids still name the segments, and a write by the child is seen by
 * the root.
 */
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>

#include "feature.h"

#define SIZE (64 * 1024 + 100) /* not a whole number of pages */

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	int sync[2], go[2];
	key_t key = (key_t)((unsigned)time(NULL) * 2654435761u % 0x7fffffff) | 1;
	int a = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
	int b = shmget(key, 8192, IPC_CREAT | IPC_EXCL | 0640);
	unsigned char *pa = a < 0 ? NULL : shmat(a, NULL, 0);
	unsigned *pb = b < 0 ? NULL : shmat(b, NULL, 0);

	if (!pa || pa == (void *)-1 || !pb || pb == (void *)-1 || pipe(sync) < 0 || pipe(go) < 0 ||
	    shmctl(b, IPC_RMID, NULL) < 0) {
		printf("FAIL: setup: %s\n", strerror(errno));
		if (a >= 0)
			shmctl(a, IPC_RMID, NULL);
		return 1;
	}
	for (int i = 0; i < SIZE; i++)
		pa[i] = (unsigned char)(i * 13 + 7);
	pb[0] = 0xfeedu;
	pid_t kid = fork();
	if (kid == 0) {
		char c;
		if (write(sync[1], "r", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(2);
		pb[1] = 0xbeefu; /* the root must see it */
		_exit(pa[SIZE - 1] == (unsigned char)((SIZE - 1) * 13 + 7) ? 0 : 3);
	}
	char c;
	if (read(sync[0], &c, 1) != 1)
		return 1;
	feature_ready();
	feature_wait_go(dir);
	for (int i = 0; i < SIZE; i++)
		if (pa[i] != (unsigned char)(i * 13 + 7)) {
			feature_fail("segment a: byte %d is %u", i, pa[i]);
			break;
		}
	struct shmid_ds ds;
	if (shmctl(a, IPC_STAT, &ds) < 0 || ds.shm_segsz != SIZE || ds.shm_nattch != 2)
		feature_fail("segment a (id %d): %s, size %zu, %lu attached", a, strerror(errno),
		             (size_t)ds.shm_segsz, (unsigned long)ds.shm_nattch);
	if (shmctl(b, IPC_STAT, &ds) < 0 || !(ds.shm_perm.mode & SHM_DEST) ||
	    (ds.shm_perm.mode & 0777) != 0640)
		feature_fail("segment b (id %d): %s, mode %o", b, strerror(errno),
		             (unsigned)ds.shm_perm.mode);
	if (pb[0] != 0xfeedu)
		feature_fail("segment b holds %#x", pb[0]);
	if (write(go[1], "g", 1) != 1)
		feature_fail("go to the child: %s", strerror(errno));
	int st = 0;
	if (waitpid(kid, &st, 0) != kid || st != 0)
		feature_fail("the child ended with status %#x", st);
	if (pb[1] != 0xbeefu)
		feature_fail("the child's write to segment b not seen: %#x", pb[1]);
	shmctl(a, IPC_RMID, NULL);
	return feature_finish();
}
