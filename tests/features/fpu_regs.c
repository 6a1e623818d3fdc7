/* Feature: r8-r15 and the eight x87 stack registers keep their values across a freeze. */
#include "feature.h"

#include <stdint.h>

#define SPINS 2000000 /* iterations that keep the values only in registers */

#if defined(__x86_64__)
static uint64_t gpr_in[8], gpr_out[8];
static double x87_in[8], x87_out[8];
static int go_seen;

/* Load r8-r15 and st(0)-st(7), spin without touching memory, store them back (popping x87). */
static void reg_round(void)
{
	uint64_t n = SPINS;

#define LD(i, r) "mov " #i "*8(%[gin]), %%" #r "\n\t"
#define ST(i, r) "mov %%" #r ", " #i "*8(%[gout])\n\t"
#define FLD(i)   "fldl " #i "*8(%[xin])\n\t"
#define FST(i)   "fstpl " #i "*8(%[xout])\n\t"
	/* clang-format off */
	__asm__ volatile(LD(0, r8) LD(1, r9) LD(2, r10) LD(3, r11)
			 LD(4, r12) LD(5, r13) LD(6, r14) LD(7, r15)
			 FLD(0) FLD(1) FLD(2) FLD(3) FLD(4) FLD(5) FLD(6) FLD(7)
			 "1: dec %[n]\n\t"
			 "jnz 1b\n\t"
			 ST(0, r8) ST(1, r9) ST(2, r10) ST(3, r11)
			 ST(4, r12) ST(5, r13) ST(6, r14) ST(7, r15)
			 FST(7) FST(6) FST(5) FST(4) FST(3) FST(2) FST(1) FST(0)
			 : [n] "+r"(n)
			 : [gin] "r"(gpr_in), [gout] "r"(gpr_out), [xin] "r"(x87_in),
			   [xout] "r"(x87_out)
			 : "memory", "cc", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
			   "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");
	/* clang-format on */
#undef LD
#undef ST
#undef FLD
#undef FST
}

static void *spinner(void *arg)
{
	long rounds = 0;
	int last;

	do {
		last = __atomic_load_n(&go_seen, __ATOMIC_ACQUIRE);
		reg_round();
		rounds++;
		for (int i = 0; i < 8; i++) {
			if (gpr_out[i] != gpr_in[i])
				feature_fail("round %ld: r%d = %#llx, expected %#llx", rounds,
				             i + 8, (unsigned long long)gpr_out[i],
				             (unsigned long long)gpr_in[i]);
			if (x87_out[i] != x87_in[i])
				feature_fail("round %ld: x87 register %d = %a, expected %a", rounds,
				             7 - i, x87_out[i], x87_in[i]);
		}
		if (rounds == 1)
			__atomic_store_n((int *)arg, 1, __ATOMIC_RELEASE);
	} while (!last); /* one whole round after go was seen */
	return NULL;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	pthread_t th;
	int started = 0;

	for (int i = 0; i < 8; i++) {
		gpr_in[i] = 0x5a5a0000deadbeefULL ^ ((uint64_t)(i + 8) << 40);
		x87_in[i] = 1.0 / (i + 3) + i * 1000.0;
	}
	if (pthread_create(&th, NULL, spinner, &started) != 0) {
		feature_fail("pthread_create failed");
		return feature_finish();
	}
	while (!__atomic_load_n(&started, __ATOMIC_ACQUIRE))
		feature_sleep_ms(1);
	feature_ready();
	feature_wait_go(dir);

	__atomic_store_n(&go_seen, 1, __ATOMIC_RELEASE);
	feature_join(th, NULL, "register spinner", 10);
	return feature_finish();
}
#else
int main(void)
{
	puts("FAIL: fpu_regs is an x86-64 feature test");
	return 1;
}
#endif
