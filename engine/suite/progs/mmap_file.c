/* mmap_file: a MAP_SHARED read-write mapping of shared.dat, a MAP_PRIVATE
 * read-write mapping of private.dat with copy-on-write pages modified before
 * and after the checkpoint, and a MAP_PRIVATE read-only mapping of ro.dat, all
 * with their fds closed. After restore the shared mapping must still be
 * coherent with the file both ways, modified private pages must hold the
 * program's data while unmodified ones show the file and the file itself
 * stays untouched. */
#include "common.h"
#include <fcntl.h>
#include <sys/mman.h>

#define PG 4096
#define NPG 32
#define RO_NPG 8

static unsigned char pat(const char *name, size_t off)
{
	return (unsigned char)(off * 7 + (off >> 12) * 13 + (unsigned char)name[0]);
}

static unsigned char *map_file(const char *name, size_t npg, int prot, int flags)
{
	unsigned char buf[PG];
	size_t off, i;
	int fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0644);
	void *p;

	if (fd < 0)
		fail("open %s", name);
	for (off = 0; off < npg * PG; off += PG) {
		for (i = 0; i < PG; i++)
			buf[i] = pat(name, off + i);
		if (write(fd, buf, PG) != PG)
			fail("write %s", name);
	}
	p = mmap(NULL, npg * PG, prot, flags, fd, 0);
	if (p == MAP_FAILED)
		fail("mmap %s", name);
	close(fd);
	return p;
}

static unsigned char *slurp(const char *name, size_t n)
{
	unsigned char *b = malloc(n);
	int fd = open(name, O_RDONLY);

	if (!b || fd < 0 || pread(fd, b, n, 0) != (ssize_t)n)
		fail("reading %s back", name);
	close(fd);
	return b;
}

int main(int argc, char **argv)
{
	unsigned char *sh, *pr, *ro, *file, expect;
	int i, p, last[NPG];
	size_t off;
	int fd;

	suite_init(argc, argv);
	sh = map_file("shared.dat", NPG, PROT_READ | PROT_WRITE, MAP_SHARED);
	pr = map_file("private.dat", NPG, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	ro = map_file("ro.dat", RO_NPG, PROT_READ, MAP_PRIVATE);
	for (p = 0; p < NPG; p++)
		last[p] = -1;
	pr[0 * PG + 5] = 0xa5;
	pr[5 * PG + 5] = 0xa5;
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		p = i % NPG;
		memset(sh + p * PG, (i + 1) & 0xff, PG);
		pr[p * PG + 100] = (unsigned char)(i + 1);
		last[p] = i;
	}
	/* shared: mapping matches the expected data and the file */
	for (p = 0; p < NPG; p++)
		for (off = 0; off < PG; off++) {
			expect = last[p] < 0 ? pat("shared.dat", p * PG + off) : (unsigned char)(last[p] + 1);
			if (sh[p * PG + off] != expect)
				fail("shared mapping page %d byte %zu: %#x, expected %#x", p, off, sh[p * PG + off], expect);
		}
	if (msync(sh, NPG * PG, MS_SYNC) != 0)
		fail("msync: %s", strerror(errno));
	file = slurp("shared.dat", NPG * PG);
	CHECK(memcmp(file, sh, NPG * PG) == 0, "shared.dat differs from its MAP_SHARED mapping");
	fd = open("shared.dat", O_WRONLY);
	if (fd < 0 || pwrite(fd, "coherent", 8, 3 * PG + 17) != 8)
		fail("pwrite shared.dat");
	close(fd);
	CHECK(memcmp(sh + 3 * PG + 17, "coherent", 8) == 0, "write to shared.dat not seen through the mapping");
	/* private: modified pages hold the data, others the file, file untouched */
	for (p = 0; p < NPG; p++)
		for (off = 0; off < PG; off++) {
			expect = pat("private.dat", p * PG + off);
			if (off == 100 && last[p] >= 0)
				expect = (unsigned char)(last[p] + 1);
			if (off == 5 && (p == 0 || p == 5))
				expect = 0xa5;
			if (pr[p * PG + off] != expect)
				fail("private mapping page %d byte %zu: %#x, expected %#x", p, off, pr[p * PG + off], expect);
		}
	free(file);
	file = slurp("private.dat", NPG * PG);
	for (off = 0; off < NPG * PG; off++)
		CHECK(file[off] == pat("private.dat", off), "private.dat changed on disk at %zu", off);
	for (off = 0; off < RO_NPG * PG; off++)
		CHECK(ro[off] == pat("ro.dat", off), "read-only mapping differs at %zu", off);
	pass();
}
