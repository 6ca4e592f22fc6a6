/* dup_fds: one open file description behind three fds: shared.dat opened
 * O_RDWR at fd 50, dup2'd to fd 51 and F_DUPFD_CLOEXEC'd to fd 52; every tick
 * writes a record through one of them in turn. After restore the three must
 * still share one file offset (a write or lseek through one moves the others)
 * and keep their own FD_CLOEXEC flags; the file holds every record once. */
#include "common.h"
#include <fcntl.h>

static void check_off(off_t want)
{
	int fd;

	for (fd = 50; fd <= 52; fd++)
		CHECK(lseek(fd, 0, SEEK_CUR) == want, "fd %d: offset %lld, expected %lld (offset no longer shared?)", fd,
		      (long long)lseek(fd, 0, SEEK_CUR), (long long)want);
}

int main(int argc, char **argv)
{
	char rec[17], got[16];
	off_t off = 0;
	int fd, i;

	suite_init(argc, argv);
	fd = open("shared.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || dup2(fd, 50) != 50 || dup2(fd, 51) != 51 || fcntl(fd, F_DUPFD_CLOEXEC, 52) != 52)
		fail("setting up fds");
	close(fd);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		snprintf(rec, sizeof(rec), "rec %010d\n", i);
		if (write(50 + i % 3, rec, 16) != 16)
			fail("write at tick %d", i);
		off += 16;
		check_off(off);
	}
	check_off(off);
	CHECK(!(fcntl(50, F_GETFD) & FD_CLOEXEC) && !(fcntl(51, F_GETFD) & FD_CLOEXEC), "FD_CLOEXEC appeared on fd 50/51");
	CHECK(fcntl(52, F_GETFD) & FD_CLOEXEC, "fd 52 lost FD_CLOEXEC");
	if (lseek(51, 5, SEEK_CUR) != off + 5)
		fail("lseek");
	check_off(off + 5);
	for (i = 0; i < suite_ticks; i++) {
		snprintf(rec, sizeof(rec), "rec %010d\n", i);
		if (pread(50, got, 16, 16 * (off_t)i) != 16 || memcmp(got, rec, 16) != 0)
			fail("record %d wrong", i);
	}
	pass();
}
