/* brk: the heap grows with sbrk every tick and malloc fills the main arena;
 * after restore the break must be where it was, every byte written to the
 * heap intact, and brk must still grow, shrink and grow again (the kernel's
 * mm brk fields restored), with malloc working on top. */
#include "common.h"
#include <stdint.h>

#define STEP (4 * 4096)
#define NSMALL 2000

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (unsigned char)((i * 31 + seed * 17) ^ (i >> 8));
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i] != (unsigned char)((i * 31 + seed * 17) ^ (i >> 8)))
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	unsigned char *base, *p, *chunks[1000], *small[NSMALL], *big;
	int i, n;

	suite_init(argc, argv);
	n = suite_ticks > 1000 ? 1000 : suite_ticks;
	for (i = 0; i < NSMALL; i++) {
		small[i] = malloc(64 + i % 200);
		if (!small[i])
			fail("malloc");
		fill(small[i], 64 + i % 200, i);
	}
	base = sbrk(0);
	if (sbrk(16 * 4096) == (void *)-1)
		fail("sbrk");
	fill(base, 16 * 4096, 99999);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		if (i < n) {
			chunks[i] = sbrk(STEP);
			if (chunks[i] == (void *)-1)
				fail("sbrk at tick %d", i);
			fill(chunks[i], STEP, i);
		}
	}
	CHECK(same(base, 16 * 4096, 99999), "initial brk area corrupted");
	for (i = 0; i < n; i++) {
		CHECK(chunks[i] == base + 16 * 4096 + (size_t)i * STEP, "brk chunk %d not contiguous", i);
		CHECK(same(chunks[i], STEP, i), "brk chunk %d corrupted", i);
	}
	for (i = 0; i < NSMALL; i++)
		CHECK(same(small[i], 64 + i % 200, i), "malloc block %d corrupted", i);
	p = sbrk(0);
	CHECK(p == base + 16 * 4096 + (size_t)n * STEP, "break moved: %p, expected %p", (void *)p,
	      (void *)(base + 16 * 4096 + (size_t)n * STEP));
	if (sbrk(1 << 20) == (void *)-1)
		fail("sbrk(1 MiB) after restore: %s", strerror(errno));
	fill(p, 1 << 20, 7);
	CHECK(same(p, 1 << 20, 7), "new brk area unusable");
	if (sbrk(-(1 << 20)) == (void *)-1 || sbrk(0) != p)
		fail("brk shrink after restore failed");
	if (sbrk(256 * 1024) != p)
		fail("brk regrow after restore failed");
	fill(p, 256 * 1024, 8);
	CHECK(same(p, 256 * 1024, 8), "regrown brk area unusable");
	for (i = 0; i < NSMALL; i++)
		free(small[i]);
	for (i = 0; i < NSMALL; i++) {
		small[i] = malloc(100 + i);
		if (!small[i])
			fail("malloc after restore");
		fill(small[i], 100 + i, i + 3);
	}
	for (i = 0; i < NSMALL; i++)
		CHECK(same(small[i], 100 + i, i + 3), "malloc after restore corrupted");
	big = malloc(8 << 20);
	CHECK(big != NULL, "big malloc after restore");
	fill(big, 8 << 20, 5);
	CHECK(same(big, 8 << 20, 5), "big malloc area unusable");
	pass();
}
