/*
 * bench-treehog MIB MODE NPROC: a tree of NPROC processes sharing MIB MiB. MODE shared: one
 * MAP_SHARED anonymous mapping written by the root; cow: private memory the root writes before
 * it forks, which every process then reads (copy-on-write, still shared). Every process also
 * has 64 KiB of its own. Prints READY once all are forked, then waits.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s MIB shared|cow NPROC\n", argv[0]);
		return 2;
	}
	size_t len = (size_t)atol(argv[1]) << 20;
	int shared = strcmp(argv[2], "shared") == 0, n = atoi(argv[3]);
	uint64_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
	                   (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
	int ready[2];
	if (m == MAP_FAILED || pipe(ready) < 0) {
		perror("setup");
		return 1;
	}
	for (size_t i = 0; i < len / 8; i++)
		m[i] = i * 0x9e3779b97f4a7c15ULL;
	for (int k = 1; k < n; k++) {
		pid_t p = fork();
		if (p == 0) {
			volatile uint64_t sum = 0;
			char *own = malloc(65536);
			memset(own, k, 65536);
			for (size_t i = 0; i < len / 8; i += 512)
				sum += m[i]; /* read: stays shared */
			if (write(ready[1], "r", 1) != 1)
				_exit(1);
			for (;;)
				pause();
		}
	}
	for (int k = 1; k < n; k++) {
		char c;
		if (read(ready[0], &c, 1) != 1)
			return 1;
	}
	puts("READY");
	fflush(stdout);
	for (;;)
		pause();
}
