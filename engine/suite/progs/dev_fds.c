/* dev_fds: /dev/null open write-only (fd 40) and read-write (fd 42), and
 * /dev/urandom read-only (fd 41), used every tick. After restore they must be
 * the same devices (rdev 1:3 and 1:9) with the same access modes, and work. */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

static void at(const char *name, int flags, int want)
{
	int fd = open(name, flags);

	if (fd < 0 || dup2(fd, want) != want)
		fail("open %s", name);
	close(fd);
}

static void check(int fd, unsigned maj, unsigned min, int acc, const char *path)
{
	struct stat st;
	char proc[64], link[64];
	ssize_t n;

	if (fstat(fd, &st) != 0)
		fail("fd %d not open after restore", fd);
	CHECK(S_ISCHR(st.st_mode) && major(st.st_rdev) == maj && minor(st.st_rdev) == min,
	      "fd %d: not device %u:%u", fd, maj, min);
	CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == acc, "fd %d: access mode changed", fd);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, link, sizeof(link) - 1);
	CHECK(n > 0, "readlink %s", proc);
	link[n] = 0;
	CHECK(strcmp(link, path) == 0, "fd %d points to %s", fd, link);
}

static void use(int i)
{
	unsigned char b[32];
	int k, nz = 0;

	memset(b, 0, sizeof(b));
	if (write(40, "discard me", 10) != 10 || write(42, "discard", 7) != 7)
		fail("write to /dev/null at tick %d", i);
	if (read(42, b, 8) != 0)
		fail("read from /dev/null returned data");
	if (read(41, b, sizeof(b)) != sizeof(b))
		fail("read from /dev/urandom at tick %d", i);
	for (k = 0; k < (int)sizeof(b); k++)
		nz |= b[k];
	CHECK(nz, "/dev/urandom gave only zeros");
}

int main(int argc, char **argv)
{
	int i;

	suite_init(argc, argv);
	at("/dev/null", O_WRONLY, 40);
	at("/dev/urandom", O_RDONLY, 41);
	at("/dev/null", O_RDWR, 42);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		use(i);
	}
	check(40, 1, 3, O_WRONLY, "/dev/null");
	check(41, 1, 9, O_RDONLY, "/dev/urandom");
	check(42, 1, 3, O_RDWR, "/dev/null");
	use(-1);
	pass();
}
