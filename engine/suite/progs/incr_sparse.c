/* incr_sparse: compressible memory with isolated written pages, for the size of
 * incremental images (ADR 0009, image format 3.1 gathered chunks).
 *
 * argv[1] steps of 20 ms (default 200), argv[2] MiB of data (default 256). Every page
 * of the buffer repeats one 8-byte word of its own (like the benchmark's compressible
 * data), so a full image is small. At step steps/2 it rewrites every 100th page with a
 * new word (1% of the memory, each written page isolated) and prints "dirtied N". At the
 * end it prints "RESULT <hash of the buffer>" and PASS. Every line but READY is
 * deterministic. */
#include "common.h"

#include <sys/mman.h>

#define PG 4096UL

static void fill_page(uint64_t *p, uint64_t word)
{
	for (size_t i = 0; i < PG / 8; i++)
		p[i] = word;
}

int main(int argc, char **argv)
{
	long steps = argc > 1 ? atol(argv[1]) : 200;
	long mib = argc > 2 ? atol(argv[2]) : 256;
	size_t len = (size_t)mib << 20, pages = len / PG;
	uint64_t *big;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (steps < 10 || mib < 1 || mib > 4096)
		fail("usage: incr_sparse [steps] [MiB]");
	big = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (big == MAP_FAILED)
		fail("mmap: %s", strerror(errno));
	for (size_t p = 0; p < pages; p++)
		fill_page(big + p * PG / 8, (p + 1) * 0x9e3779b97f4a7c15ULL);
	ready();
	for (long s = 0; s < steps; s++) {
		if (s == steps / 2) {
			size_t n = 0;
			for (size_t p = 0; p < pages; p += 100, n++)
				fill_page(big + p * PG / 8, (p + 7) * 0xc2b2ae3d27d4eb4fULL);
			printf("dirtied %zu\n", n);
		}
		if (s % 10 == 0)
			printf("step %ld\n", s);
		sleep_ms(20);
	}
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < len / 8; i++)
		h = (h ^ big[i]) * 0x100000001B3ULL;
	printf("RESULT %016llx\n", (unsigned long long)h);
	pass();
}
