/* memory_kinds: the page encodings of a checkpoint (raw, LZ4-compressed, all-zero
 * skipped) and the parallel fill of a restore. 96 MiB of private anonymous memory:
 * random data (stored raw), one repeated word per page (compressed), pages written
 * and then zeroed (skipped as zero), and a sparse area with every 7th page written
 * (untouched pages never stored), 68 MiB stored in all, enough for the restore's
 * two filling threads. Two threads rewrite pages of each area every tick.
 * A private file mapping has one page rewritten with zeros and one with a pattern:
 * after a restore the zero page must still read zero, not the file's bytes, and the
 * untouched pages the file's. At the end every page is checked against what it must
 * hold. */
#include "common.h"
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define MIB (1UL << 20)
#define AREA (32 * MIB)
#define NPAGES (AREA / PAGE)
#define FILE_PAGES 16

enum { RANDOM, PATTERN, ZERO, SPARSE, NAREAS };

static unsigned char *area[NAREAS];
static unsigned char *fmap;
static volatile int gen[NAREAS][NPAGES]; /* generation each page was last written with */
static volatile int stop_workers;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	return x ^ (x >> 33);
}

/* Word w of page p of area a at generation g (0: never written). */
static uint64_t word(int a, size_t p, int g, size_t w)
{
	if (g == 0)
		return 0;
	switch (a) {
	case RANDOM:
		return mix(((uint64_t)p << 20) ^ ((uint64_t)g << 44) ^ w);
	case PATTERN:
		return mix(((uint64_t)p << 8) ^ (uint64_t)g);
	case ZERO:
		return g % 2 ? mix(p ^ w ^ ((uint64_t)g << 40)) : 0;
	default:
		return w == 0 ? mix(p ^ ((uint64_t)g << 32)) : 0;
	}
}

static void write_page(int a, size_t p, int g)
{
	uint64_t *q = (uint64_t *)(area[a] + p * PAGE);
	size_t w;

	for (w = 0; w < PAGE / 8; w++)
		q[w] = word(a, p, g, w);
	gen[a][p] = g;
}

static int page_ok(int a, size_t p)
{
	const uint64_t *q = (const uint64_t *)(area[a] + p * PAGE);
	size_t w;

	for (w = 0; w < PAGE / 8; w++)
		if (q[w] != word(a, p, gen[a][p], w))
			return 0;
	return 1;
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg, round = 0;

	while (!stop_workers) {
		pthread_mutex_lock(&lock);
		for (int a = 0; a < NAREAS; a++) {
			size_t p = (size_t)(mix((uint64_t)round * 2 + id + a * 977) % NPAGES);

			if (a == SPARSE && p % 7)
				p -= p % 7;
			/* zero area: odd generations are data, even ones zero again */
			write_page(a, p, gen[a][p] + 1);
		}
		pthread_mutex_unlock(&lock);
		round++;
		sleep_ms(5);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th[2];
	int i, fd;
	unsigned char fbuf[FILE_PAGES * PAGE];

	suite_init(argc, argv);
	for (i = 0; i < NAREAS; i++) {
		area[i] = mmap(NULL, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (area[i] == MAP_FAILED)
			fail("mmap");
	}
	for (size_t p = 0; p < NPAGES; p++) {
		write_page(RANDOM, p, 1);
		write_page(PATTERN, p, 1);
		write_page(ZERO, p, 1);
		write_page(ZERO, p, 2); /* present but all zero */
		if (p % 7 == 0)
			write_page(SPARSE, p, 1);
	}
	for (i = 0; i < (int)sizeof(fbuf); i++)
		fbuf[i] = (unsigned char)(i * 7 + 1);
	fd = open("mapped.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, fbuf, sizeof(fbuf)) != (ssize_t)sizeof(fbuf))
		fail("mapped.dat");
	fmap = mmap(NULL, sizeof(fbuf), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fmap == MAP_FAILED)
		fail("mmap mapped.dat");
	close(fd);
	memset(fmap + 3 * PAGE, 0, PAGE);
	memset(fmap + 5 * PAGE, 0xa5, PAGE);
	(void)fmap[7 * PAGE]; /* read only: stays the file's */
	for (i = 0; i < 2; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i))
			fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++)
		tick(i);
	stop_workers = 1;
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	for (int a = 0; a < NAREAS; a++)
		for (size_t p = 0; p < NPAGES; p++)
			CHECK(page_ok(a, p), "area %d page %zu (generation %d) corrupted", a, p, gen[a][p]);
	for (i = 0; i < FILE_PAGES; i++) {
		for (size_t b = 0; b < PAGE; b++) {
			unsigned char want = i == 3 ? 0 : i == 5 ? 0xa5 : fbuf[i * PAGE + b];
			CHECK(fmap[i * PAGE + b] == want, "file page %d byte %zu: %u, want %u", i, b,
			      fmap[i * PAGE + b], want);
		}
	}
	pass();
}
