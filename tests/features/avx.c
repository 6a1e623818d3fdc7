/* Feature: ymm0-ymm15, MXCSR and the x87 control word survive a freeze (per thread). */
#include "feature.h"

#include <stdint.h>

#define SPINS 2000000 /* iterations that keep the values only in registers */

#if defined(__x86_64__)
static uint64_t ymm_in[16][4], ymm_out[16][4];
static int go_seen;

static uint32_t mxcsr_get(void)
{
	uint32_t v;

	__asm__ volatile("stmxcsr %0" : "=m"(v));
	return v;
}

static void mxcsr_set(uint32_t v)
{
	__asm__ volatile("ldmxcsr %0" : : "m"(v));
}

static uint16_t fcw_get(void)
{
	uint16_t v;

	__asm__ volatile("fnstcw %0" : "=m"(v));
	return v;
}

static void fcw_set(uint16_t v)
{
	__asm__ volatile("fldcw %0" : : "m"(v));
}

/* Load ymm0-15, spin without touching memory, store them back. */
static void ymm_round(void)
{
	uint64_t n = SPINS;

#define LD(i) "vmovdqu " #i "*32(%[in]), %%ymm" #i "\n\t"
#define ST(i) "vmovdqu %%ymm" #i ", " #i "*32(%[out])\n\t"
	/* clang-format off */
	__asm__ volatile(LD(0) LD(1) LD(2) LD(3) LD(4) LD(5) LD(6) LD(7)
			 LD(8) LD(9) LD(10) LD(11) LD(12) LD(13) LD(14) LD(15)
			 "1: dec %[n]\n\t"
			 "jnz 1b\n\t"
			 ST(0) ST(1) ST(2) ST(3) ST(4) ST(5) ST(6) ST(7)
			 ST(8) ST(9) ST(10) ST(11) ST(12) ST(13) ST(14) ST(15)
			 "vzeroupper\n\t"
			 : [n] "+r"(n)
			 : [in] "r"(ymm_in), [out] "r"(ymm_out)
			 : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
			   "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
	/* clang-format on */
#undef LD
#undef ST
}

static void *spinner(void *arg)
{
	const uint32_t mxcsr = 0xdf80; /* round up, flush-to-zero, all exceptions masked */
	long rounds = 0;
	int last;

	mxcsr_set(mxcsr);
	do {
		last = __atomic_load_n(&go_seen, __ATOMIC_ACQUIRE);
		ymm_round();
		rounds++;
		for (int r = 0; r < 16; r++)
			for (int l = 0; l < 4; l++)
				if (ymm_out[r][l] != ymm_in[r][l])
					feature_fail(
					        "round %ld: ymm%d lane %d = %#llx, expected %#llx",
					        rounds, r, l, (unsigned long long)ymm_out[r][l],
					        (unsigned long long)ymm_in[r][l]);
		if (mxcsr_get() != mxcsr)
			feature_fail("spinner MXCSR %#x, expected %#x", mxcsr_get(), mxcsr);
		if (rounds == 1)
			__atomic_store_n((int *)arg, 1, __ATOMIC_RELEASE);
	} while (!last); /* one whole round after go was seen */
	return NULL;
}

int main(int argc, char **argv)
{
	const char *dir = feature_dir(argc, argv);
	const uint16_t fcw = 0x0e7f; /* round toward zero, 53-bit precision */
	volatile float one = 1.0f, three = 3.0f;
	volatile long double lone = 1.0L, lthree = 3.0L;
	pthread_t th;
	int started = 0;

	if (!__builtin_cpu_supports("avx")) {
		feature_fail("this CPU has no AVX");
		return feature_finish();
	}
	for (int r = 0; r < 16; r++)
		for (int l = 0; l < 4; l++)
			ymm_in[r][l] = 0xa5a5000000000000ULL | (uint64_t)r << 8 | (uint64_t)l;
	mxcsr_set(0x7f80); /* round toward zero, all exceptions masked */
	fcw_set(fcw);
	float third = one / three;
	long double lthird = lone / lthree;
	uint32_t mxcsr = mxcsr_get(); /* now with the precision flag the division raised */
	if (pthread_create(&th, NULL, spinner, &started) != 0) {
		feature_fail("pthread_create failed");
		return feature_finish();
	}
	while (!__atomic_load_n(&started, __ATOMIC_ACQUIRE))
		feature_sleep_ms(1);
	feature_ready();
	feature_wait_go(dir);

	__atomic_store_n(&go_seen, 1, __ATOMIC_RELEASE);
	feature_join(th, NULL, "ymm spinner", 10);
	if (mxcsr_get() != mxcsr)
		feature_fail("main MXCSR %#x, expected %#x", mxcsr_get(), mxcsr);
	if (fcw_get() != fcw)
		feature_fail("x87 control word %#x, expected %#x", fcw_get(), fcw);
	/* The modes are really in effect, not just readable. */
	if (one / three != third)
		feature_fail("SSE 1/3 rounds differently: %a vs %a", (double)(one / three),
		             (double)third);
	if (lone / lthree != lthird)
		feature_fail("x87 1/3 rounds differently: %La vs %La", lone / lthree, lthird);
	return feature_finish();
}
#else
int main(void)
{
	puts("FAIL: avx is an x86-64 feature test");
	return 1;
}
#endif
