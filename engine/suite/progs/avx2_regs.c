/* avx2_regs: two threads keep distinct patterns in all sixteen ymm registers
 * while spinning in an asm loop (where the checkpoint signal almost always
 * lands), then store and compare them; any register lost or clobbered across
 * checkpoint/restore makes a round mismatch. Skips without AVX2. */
#include "common.h"
#include <cpuid.h>
#include <pthread.h>
#include <stdatomic.h>

#define NREG 16
#define RW 32

static atomic_int stop;

static int have_avx2(void)
{
	unsigned a, b, c, d, lo, hi;

	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 6) != 6)
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return 0;
	return (b & bit_AVX2) != 0;
}

#define LD(i) "vmovdqu " #i "*32(%[in]), %%ymm" #i "\n\t"
#define ST(i) "vmovdqu %%ymm" #i ", " #i "*32(%[out])\n\t"

__attribute__((target("avx2"), noinline))
static void spin(const uint8_t *in, uint8_t *out, long iters)
{
	__asm__ volatile(
		LD(0) LD(1) LD(2) LD(3) LD(4) LD(5) LD(6) LD(7)
		LD(8) LD(9) LD(10) LD(11) LD(12) LD(13) LD(14) LD(15)
		"1: dec %[n]\n\t"
		"jnz 1b\n\t"
		ST(0) ST(1) ST(2) ST(3) ST(4) ST(5) ST(6) ST(7)
		ST(8) ST(9) ST(10) ST(11) ST(12) ST(13) ST(14) ST(15)
		"vzeroupper\n\t"
		: [n] "+r"(iters)
		: [in] "r"(in), [out] "r"(out)
		: "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
		  "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
		  "xmm13", "xmm14", "xmm15");
}

static void *worker(void *arg)
{
	int t = (int)(intptr_t)arg, i;
	static _Thread_local uint8_t in[NREG * RW] __attribute__((aligned(64)));
	static _Thread_local uint8_t out[NREG * RW] __attribute__((aligned(64)));
	long rounds = 0;

	for (i = 0; i < NREG * RW; i++)
		in[i] = (uint8_t)(i * 13 + t * 101 + 7);
	while (!atomic_load(&stop)) {
		memset(out, 0, sizeof(out));
		spin(in, out, 20000000L);
		for (i = 0; i < NREG; i++)
			if (memcmp(in + i * RW, out + i * RW, RW) != 0) {
				static char msg[100];
				snprintf(msg, sizeof(msg), "thread %d: ymm%d differs after round %ld", t, i, rounds);
				return msg;
			}
		rounds++;
	}
	return rounds >= 5 ? NULL : (void *)"too few rounds";
}

int main(int argc, char **argv)
{
	pthread_t th[2];
	void *ret;
	int i;

	suite_init(argc, argv);
	if (!have_avx2())
		skip("CPU or OS lacks AVX2");
	for (i = 0; i < 2; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) != 0)
			fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++)
		tick(i);
	atomic_store(&stop, 1);
	for (i = 0; i < 2; i++) {
		pthread_join(th[i], &ret);
		if (ret)
			fail("%s", (const char *)ret);
	}
	pass();
}
