/* avx512_regs: two threads keep distinct patterns in all thirty-two zmm
 * registers and in the opmask registers k1-k7 while spinning in an asm loop
 * (where the checkpoint signal almost always lands), then store and compare
 * them; any state lost across checkpoint/restore makes a round mismatch.
 * Checks avx512f and OS support (XCR0 opmask/ZMM bits) at run time and skips
 * cleanly without them; only the asm function is compiled for AVX-512. */
#include "common.h"
#include <cpuid.h>
#include <pthread.h>
#include <stdatomic.h>

#define NREG 32
#define RW 64
#define NK 7

static atomic_int stop;

static int have_avx512f(void)
{
	unsigned a, b, c, d, lo, hi;

	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 0xe6) != 0xe6)
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return 0;
	return (b & bit_AVX512F) != 0;
}

#define LD(i) "vmovdqu64 " #i "*64(%[in]), %%zmm" #i "\n\t"
#define ST(i) "vmovdqu64 %%zmm" #i ", " #i "*64(%[out])\n\t"
#define KLD(i) "kmovw " #i "*2-2(%[kin]), %%k" #i "\n\t"
#define KST(i) "kmovw %%k" #i ", " #i "*2-2(%[kout])\n\t"

__attribute__((target("avx512f"), noinline))
static void spin(const uint8_t *in, uint8_t *out, const uint16_t *kin, uint16_t *kout, long iters)
{
	__asm__ volatile(
		LD(0) LD(1) LD(2) LD(3) LD(4) LD(5) LD(6) LD(7)
		LD(8) LD(9) LD(10) LD(11) LD(12) LD(13) LD(14) LD(15)
		LD(16) LD(17) LD(18) LD(19) LD(20) LD(21) LD(22) LD(23)
		LD(24) LD(25) LD(26) LD(27) LD(28) LD(29) LD(30) LD(31)
		KLD(1) KLD(2) KLD(3) KLD(4) KLD(5) KLD(6) KLD(7)
		"1: dec %[n]\n\t"
		"jnz 1b\n\t"
		ST(0) ST(1) ST(2) ST(3) ST(4) ST(5) ST(6) ST(7)
		ST(8) ST(9) ST(10) ST(11) ST(12) ST(13) ST(14) ST(15)
		ST(16) ST(17) ST(18) ST(19) ST(20) ST(21) ST(22) ST(23)
		ST(24) ST(25) ST(26) ST(27) ST(28) ST(29) ST(30) ST(31)
		KST(1) KST(2) KST(3) KST(4) KST(5) KST(6) KST(7)
		"vzeroupper\n\t"
		: [n] "+r"(iters)
		: [in] "r"(in), [out] "r"(out), [kin] "r"(kin), [kout] "r"(kout)
		: "memory", "cc",
		  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
		  "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
		  "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
		  "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31",
		  "k1", "k2", "k3", "k4", "k5", "k6", "k7");
}

static void *worker(void *arg)
{
	int t = (int)(intptr_t)arg, i;
	static _Thread_local uint8_t in[NREG * RW] __attribute__((aligned(64)));
	static _Thread_local uint8_t out[NREG * RW] __attribute__((aligned(64)));
	static _Thread_local uint16_t kin[NK], kout[NK];
	long rounds = 0;

	for (i = 0; i < NREG * RW; i++)
		in[i] = (uint8_t)(i * 13 + t * 101 + 7);
	for (i = 0; i < NK; i++)
		kin[i] = (uint16_t)(0x1357 * (i + 1) + t * 0x0101);
	while (!atomic_load(&stop)) {
		memset(out, 0, sizeof(out));
		memset(kout, 0, sizeof(kout));
		spin(in, out, kin, kout, 20000000L);
		for (i = 0; i < NREG; i++)
			if (memcmp(in + i * RW, out + i * RW, RW) != 0) {
				static char msg[100];
				snprintf(msg, sizeof(msg), "thread %d: zmm%d differs after round %ld", t, i, rounds);
				return msg;
			}
		for (i = 0; i < NK; i++)
			if (kin[i] != kout[i]) {
				static char msg[100];
				snprintf(msg, sizeof(msg), "thread %d: k%d differs after round %ld", t, i + 1, rounds);
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
	if (!have_avx512f())
		skip("CPU or OS lacks AVX-512F");
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
