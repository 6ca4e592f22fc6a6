/* incr_mem: a program that dirties a small part of a large memory between checkpoints
 * and reshapes its address space, for incremental generations (ADR 0009).
 *
 * argv[1] steps of 20 ms (default 300), argv[2] MiB of data (default 64; half random,
 * half compressible). Each
 * step writes 2 random words of the big buffer. Once each, at fixed steps: a mapping
 * grows in place (mremap), another moves (mremap MAYMOVE|FIXED), a new mapping is
 * created and filled, pages of the big buffer that held data are dropped
 * (MADV_DONTNEED: they read as zeros), a mapping is unmapped, a file is read() into the
 * big buffer (the kernel writes the pages), and pages of a private file mapping are
 * written, one of them then dropped (it shows the file again). At the end it prints
 * "RESULT <hash of every live mapping>" and PASS. Every line but READY is
 * deterministic. */
#include "common.h"

#include <fcntl.h>
#include <sys/mman.h>

#define PG 4096UL
#define SMALL (64 * PG)

static uint64_t x = XORSHIFT_SEED;

static uint64_t rnd(void)
{
	return xorshift64(&x);
}

static void fill(uint64_t *p, size_t bytes)
{
	for (size_t i = 0; i < bytes / 8; i++)
		p[i] = rnd();
}

static uint64_t hash(uint64_t h, const void *p, size_t bytes)
{
	const uint64_t *w = p;
	for (size_t i = 0; i < bytes / 8; i++)
		h = (h ^ w[i]) * 0x100000001B3ULL;
	return h;
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		fail("mmap: %s", strerror(errno));
	return p;
}

static void make_file(const char *name, size_t len, uint8_t seed)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	uint8_t buf[4096];
	if (fd < 0)
		fail("create %s: %s", name, strerror(errno));
	for (size_t at = 0; at < len; at += sizeof(buf)) {
		for (size_t i = 0; i < sizeof(buf); i++)
			buf[i] = (uint8_t)(seed + at / 4096 * 7 + i * 13);
		if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
			fail("write %s", name);
	}
	close(fd);
}

int main(int argc, char **argv)
{
	long steps = argc > 1 ? atol(argv[1]) : 300;
	long mib = argc > 2 ? atol(argv[2]) : 64;
	size_t big_len = (size_t)mib << 20;
	uint64_t *big, *grow, *moved, *fresh = NULL, *doomed;
	uint8_t *fpriv;
	size_t grow_len = SMALL;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (steps < 10 || mib < 1 || mib > 4096)
		fail("usage: incr_mem [steps] [MiB]");
	make_file("fpriv.dat", 64 * PG, 3);
	make_file("input.dat", 16 * PG, 9);
	big = map_anon(big_len);
	/* First half random (stored raw), second half compressible (stored as LZ4 chunks,
	 * which a restore of a chain then uses in parts). */
	fill(big, big_len / 2);
	for (size_t i = big_len / 16; i < big_len / 8; i++)
		big[i] = (i / 512) * 0x9e3779b97f4a7c15ULL;
	/* Room after `grow` (reserved until it grows) so that it can grow in place. */
	grow = map_anon(4 * SMALL);
	mprotect((char *)grow + SMALL, 3 * SMALL, PROT_NONE);
	fill(grow, SMALL);
	moved = map_anon(SMALL);
	fill(moved, SMALL);
	doomed = map_anon(SMALL);
	fill(doomed, SMALL);
	fd = open("fpriv.dat", O_RDONLY);
	if (fd < 0)
		fail("open fpriv.dat");
	fpriv = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fpriv == MAP_FAILED)
		fail("mmap fpriv.dat");
	close(fd);
	for (int i = 0; i < 64; i += 4)
		fpriv[i * PG + 5] ^= 0x5a;
	ready();
	for (long s = 0; s < steps; s++) {
		long phase = s * 10 / steps;
		for (int i = 0; i < 2; i++) {
			uint64_t r = rnd();
			big[r % (big_len / 8)] += r;
		}
		if (s == steps * 2 / 10) {
			munmap((char *)grow + SMALL, 3 * SMALL);
			void *p = mremap(grow, grow_len, 2 * grow_len, 0);
			if (p == MAP_FAILED)
				fail("mremap grow in place: %s", strerror(errno));
			fill((uint64_t *)((char *)grow + grow_len), grow_len);
			grow_len *= 2;
			printf("grown in place\n");
		}
		if (s == steps * 3 / 10) {
			void *to = mmap(NULL, 2 * SMALL, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			void *p = mremap(moved, SMALL, 2 * SMALL, MREMAP_MAYMOVE | MREMAP_FIXED, to);
			if (p == MAP_FAILED)
				fail("mremap move: %s", strerror(errno));
			moved = p;
			fill(moved + SMALL / 8, SMALL);
			moved[0] ^= 0xabcdef;
			printf("moved\n");
		}
		if (s == steps * 4 / 10) {
			fresh = map_anon(SMALL);
			fill(fresh, SMALL);
			/* And one word in every 24th page of the random half: more separate
			 * written ranges than the kernel's internal scan buffer holds (512). */
			for (size_t p = 0; p < big_len / 2 / PG; p += 24)
				big[p * PG / 8 + 3] ^= rnd();
			printf("new mapping\n");
		}
		if (s == steps * 5 / 10) {
			/* Pages with data, some written since the last checkpoint, some not. */
			madvise((char *)big + 100 * PG, 8 * PG, MADV_DONTNEED);
			madvise((char *)big + big_len / 2, 3 * PG, MADV_DONTNEED);
			printf("dropped\n");
		}
		if (s == steps * 6 / 10) {
			munmap(doomed, SMALL);
			doomed = NULL;
			printf("unmapped\n");
		}
		if (s == steps * 7 / 10) {
			fd = open("input.dat", O_RDONLY);
			if (fd < 0 || read(fd, (char *)big + 1000 * PG, 16 * PG) != (ssize_t)(16 * PG))
				fail("read input.dat");
			close(fd);
			printf("read into memory\n");
		}
		if (s == steps * 8 / 10) {
			for (int i = 1; i < 64; i += 8)
				fpriv[i * PG + 9] ^= 0x77;
			/* A written private copy dropped: the page shows the file again. */
			madvise(fpriv, PG, MADV_DONTNEED);
			madvise(fpriv + 9 * PG, PG, MADV_DONTNEED);
			printf("file pages\n");
		}
		if (s % 10 == 0)
			printf("step %ld phase %ld\n", s, phase);
		sleep_ms(20);
	}
	uint64_t h = 1469598103934665603ULL;
	h = hash(h, big, big_len);
	h = hash(h, grow, grow_len);
	h = hash(h, moved, 2 * SMALL);
	if (fresh)
		h = hash(h, fresh, SMALL);
	h = hash(h, fpriv, 64 * PG);
	printf("RESULT %016llx\n", (unsigned long long)h);
	pass();
}
