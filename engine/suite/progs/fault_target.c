/* fault_target: a deterministic computation with a large, constantly changing state,
 * for the fault-injection and corruption tests. It fills a buffer (argv[2] MiB, default
 * 16), then runs argv[1] steps (default 3000); each step scrambles 4096 words at
 * pseudo-random places, folds them into a running hash and sleeps 5 ms. It prints
 * "READY <pid>", "step <n>" every 20 steps, and at the end "RESULT <hash of hash and
 * buffer>" and PASS. The result depends only on the arguments, so a run that was killed
 * and restored any number of times must print the same RESULT as an uninterrupted one. */
#include "common.h"

int main(int argc, char **argv)
{
	long steps = argc > 1 ? atol(argv[1]) : 3000;
	long mib = argc > 2 ? atol(argv[2]) : 16;
	size_t words, i;
	uint64_t *buf, x = XORSHIFT_SEED, h = 0, fold = 0;
	long s;
	int k;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (steps < 1 || mib < 1 || mib > 1024)
		fail("usage: fault_target [steps] [MiB]");
	words = (size_t)mib << 17;
	buf = malloc(words * sizeof(*buf));
	if (!buf)
		fail("malloc");
	for (i = 0; i < words; i++)
		buf[i] = i * 0x9E3779B97F4A7C15ULL;
	ready();
	for (s = 0; s < steps; s++) {
		for (k = 0; k < 4096; k++) {
			uint64_t j;

			j = xorshift64(&x) % words;
			buf[j] = buf[j] * 6364136223846793005ULL + x;
			h = h * 31 + buf[j];
		}
		if (s % 20 == 0)
			printf("step %ld\n", s);
		sleep_ms(5);
	}
	for (i = 0; i < words; i++)
		fold = (fold ^ buf[i]) * 0x100000001B3ULL;
	printf("RESULT %016llx\n", (unsigned long long)(h ^ fold));
	pass();
}
