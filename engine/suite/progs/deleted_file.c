/* deleted_file: gone.dat (O_RDWR, fd 30, 200 KiB) and gone-ro.dat (O_RDONLY,
 * fd 31) are unlinked while open. After restore both must still be open,
 * deleted (st_nlink 0, no name in the directory), at their offsets, with
 * every byte intact, and gone.dat still writable. */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>

#define LEN (200 * 1024)

static unsigned char pat(size_t k, int salt)
{
	return (unsigned char)(k * 11 + (k >> 10) + salt);
}

static void make(const char *name, int flags, int fdno, int salt)
{
	static unsigned char buf[LEN];
	size_t k;
	int fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);

	for (k = 0; k < LEN; k++)
		buf[k] = pat(k, salt);
	if (fd < 0 || write(fd, buf, LEN) != LEN)
		fail("creating %s", name);
	close(fd);
	fd = open(name, flags);
	if (fd < 0 || dup2(fd, fdno) != fdno)
		fail("open %s", name);
	close(fd);
	if (unlink(name) != 0)
		fail("unlink %s", name);
}

static void verify(int fd, int salt, off_t off)
{
	static unsigned char buf[LEN];
	struct stat st;
	size_t k;

	if (fstat(fd, &st) != 0)
		fail("fd %d not open after restore", fd);
	CHECK(st.st_nlink == 0, "fd %d: file is linked again (nlink %ld)", fd, (long)st.st_nlink);
	CHECK(st.st_size == LEN, "fd %d: size %lld", fd, (long long)st.st_size);
	CHECK(lseek(fd, 0, SEEK_CUR) == off, "fd %d: offset %lld, expected %lld", fd,
	      (long long)lseek(fd, 0, SEEK_CUR), (long long)off);
	if (pread(fd, buf, LEN, 0) != LEN)
		fail("fd %d: short read", fd);
	for (k = 0; k < LEN; k++)
		CHECK(buf[k] == pat(k, salt), "fd %d: byte %zu differs", fd, k);
}

int main(int argc, char **argv)
{
	unsigned char b[10];
	off_t off = 5000;
	int i, k;

	suite_init(argc, argv);
	make("gone.dat", O_RDWR, 30, 1);
	make("gone-ro.dat", O_RDONLY, 31, 2);
	if (lseek(30, 5000, SEEK_SET) != 5000 || lseek(31, 777, SEEK_SET) != 777)
		fail("lseek");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		if (read(30, b, 10) != 10)
			fail("read at tick %d", i);
		for (k = 0; k < 10; k++)
			CHECK(b[k] == pat(off + k, 1), "gone.dat byte %lld differs", (long long)(off + k));
		off += 10;
	}
	verify(30, 1, off);
	verify(31, 2, 777);
	CHECK(access("gone.dat", F_OK) != 0 && access("gone-ro.dat", F_OK) != 0, "a deleted file has a name again");
	if (pwrite(30, "still writable", 14, 100) != 14 || pread(30, b, 10, 100) != 10 || memcmp(b, "still writ", 10) != 0)
		fail("gone.dat not writable after restore");
	pass();
}
