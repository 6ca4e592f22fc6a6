/* file_offsets: regular files open at fixed fd numbers with their offsets and
 * flags: input.txt O_RDONLY being read (fd 20), log.txt O_WRONLY|O_APPEND
 * appended every tick (fd 21), rw.dat O_RDWR|FD_CLOEXEC written at a moving
 * offset (fd 22), ro.txt O_RDONLY|O_NONBLOCK (fd 23). After restore offsets,
 * access modes, flags and FD_CLOEXEC must match, and log.txt must hold each
 * line exactly once (an append-only file is cut back to its size at the
 * checkpoint). Dup'd fds sharing an offset: see dup_fds.c. */
#include "common.h"
#include <fcntl.h>

#define INLEN 65536

static unsigned char inpat(size_t k)
{
	return (unsigned char)((k * 7) % 251);
}

static void at(const char *name, int flags, int want)
{
	int got = open(name, flags, 0644);

	if (got < 0)
		fail("open %s: %s", name, strerror(errno));
	if (dup2(got, want) != want)
		fail("dup2");
	close(got);
}

static void check_fd(int fd, int accmode, int flags, int cloexec, off_t off)
{
	int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
	off_t cur = lseek(fd, 0, SEEK_CUR);

	if (fl < 0 || fdfl < 0)
		fail("fd %d is not open after restore", fd);
	CHECK((fl & O_ACCMODE) == accmode, "fd %d: access mode %#x, expected %#x", fd, fl & O_ACCMODE, accmode);
	CHECK((fl & (O_APPEND | O_NONBLOCK)) == flags, "fd %d: flags %#x, expected %#x", fd, fl & (O_APPEND | O_NONBLOCK), flags);
	CHECK(!!(fdfl & FD_CLOEXEC) == cloexec, "fd %d: FD_CLOEXEC is %d", fd, !!(fdfl & FD_CLOEXEC));
	CHECK(cur == off, "fd %d: offset %lld, expected %lld", fd, (long long)cur, (long long)off);
}

int main(int argc, char **argv)
{
	unsigned char buf[INLEN], rec[16];
	char line[64], *log;
	size_t k;
	int i, fd, len, pos;
	off_t in_off = 1000, rw_off = 4096;

	suite_init(argc, argv);
	fd = open("input.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	for (k = 0; k < INLEN; k++)
		buf[k] = inpat(k);
	if (fd < 0 || write(fd, buf, INLEN) != INLEN)
		fail("creating input.txt");
	close(fd);
	fd = open("ro.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, "read only\n", 10) != 10)
		fail("creating ro.txt");
	close(fd);
	at("input.txt", O_RDONLY, 20);
	at("log.txt", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 21);
	at("rw.dat", O_RDWR | O_CREAT | O_TRUNC, 22);
	at("ro.txt", O_RDONLY | O_NONBLOCK, 23);
	fcntl(22, F_SETFD, FD_CLOEXEC);
	if (read(20, buf, 1000) != 1000)
		fail("read input.txt");
	if (lseek(22, rw_off, SEEK_SET) != rw_off)
		fail("lseek");
	if (read(23, buf, 4) != 4)
		fail("read ro.txt");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		if (read(20, buf, 100) != 100)
			fail("read input.txt at tick %d", i);
		for (k = 0; k < 100; k++)
			CHECK(buf[k] == inpat(in_off + k), "input.txt byte %lld wrong", (long long)(in_off + k));
		in_off += 100;
		len = snprintf(line, sizeof(line), "log line %d\n", i);
		if (write(21, line, len) != len)
			fail("append to log.txt at tick %d", i);
		snprintf((char *)rec, sizeof(rec), "rec %010d\n", i);
		if (write(22, rec, 16) != 16)
			fail("write rw.dat at tick %d", i);
		rw_off += 16;
	}
	check_fd(20, O_RDONLY, 0, 0, in_off);
	check_fd(21, O_WRONLY, O_APPEND, 0, lseek(21, 0, SEEK_END));
	check_fd(22, O_RDWR, 0, 1, rw_off);
	check_fd(23, O_RDONLY, O_NONBLOCK, 0, 4);
	if (read(23, buf, 6) != 6 || memcmp(buf, " only\n", 6) != 0)
		fail("ro.txt reads wrong data at its offset");
	for (i = 0; i < suite_ticks; i++) {
		snprintf(line, sizeof(line), "rec %010d\n", i);
		if (pread(22, rec, 16, 4096 + 16 * i) != 16 || memcmp(rec, line, 16) != 0)
			fail("rw.dat record %d wrong", i);
	}
	log = malloc(64 * (size_t)suite_ticks + 1);
	fd = open("log.txt", O_RDONLY);
	len = fd < 0 ? -1 : (int)read(fd, log, 64 * (size_t)suite_ticks);
	if (len < 0)
		fail("read log.txt");
	log[len] = 0;
	for (i = 0, pos = 0; i < suite_ticks; i++) {
		int n = snprintf(line, sizeof(line), "log line %d\n", i);

		if (strncmp(log + pos, line, n) != 0)
			fail("log.txt wrong at line %d (duplicated or lost appends)", i);
		pos += n;
	}
	CHECK(pos == len, "log.txt has %d extra bytes after the last line", len - pos);
	pass();
}
