/* grow: a program whose memory grows mid-run, for the disk-full test. It runs argv[1]
 * steps of 5 ms (default 600) over a 1 MiB buffer; at step argv[2] (default 100) it
 * allocates and fills argv[3] MiB more (default 64) with incompressible data and prints
 * "grown"; at the end it prints "RESULT <hash of both buffers>" and PASS. */
#include "common.h"

static uint64_t x = XORSHIFT_SEED;

static uint64_t rnd(void)
{
	return xorshift64(&x);
}

int main(int argc, char **argv)
{
	long steps = argc > 1 ? atol(argv[1]) : 600;
	long grow_at = argc > 2 ? atol(argv[2]) : 100;
	long grow_mib = argc > 3 ? atol(argv[3]) : 64;
	size_t small = 1 << 17, big = (size_t)grow_mib << 17, i;
	uint64_t *a, *b = NULL, h = 0;
	long s;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (steps < 1 || grow_mib < 1 || grow_mib > 4096)
		fail("usage: grow [steps] [grow_at] [MiB]");
	a = malloc(small * sizeof(*a));
	if (!a)
		fail("malloc");
	for (i = 0; i < small; i++)
		a[i] = rnd();
	ready();
	for (s = 0; s < steps; s++) {
		if (s == grow_at) {
			b = malloc(big * sizeof(*b));
			if (!b)
				fail("malloc");
			for (i = 0; i < big; i++)
				b[i] = rnd();
			printf("grown\n");
		}
		for (i = 0; i < 256; i++) {
			uint64_t r = rnd();
			a[r % small] += r;
			if (b)
				b[r % big] ^= r;
			h = h * 31 + a[r % small];
		}
		if (s % 20 == 0)
			printf("step %ld\n", s);
		sleep_ms(5);
	}
	for (i = 0; i < small; i++)
		h = (h ^ a[i]) * 0x100000001B3ULL;
	for (i = 0; b && i < big; i++)
		h = (h ^ b[i]) * 0x100000001B3ULL;
	printf("RESULT %016llx\n", (unsigned long long)h);
	pass();
}
