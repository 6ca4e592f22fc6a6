/* tree_fifo: parent and child relay through two named FIFOs in the working
 * directory, both with data in flight: the parent writes a 300-byte request into
 * req.fifo every tick, the child answers each with its sum through ans.fifo but
 * lags ~3 requests behind. After a restore both FIFOs must connect the two again
 * with the buffered bytes intact. */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define MSG 300

static uint64_t msg_sum(const unsigned char *m)
{
	uint64_t s = 0;
	int k;

	for (k = 0; k < MSG; k++)
		s = s * 131 + m[k];
	return s;
}

static void fill(unsigned char *m, int i)
{
	int k;

	for (k = 0; k < MSG; k++)
		m[k] = (unsigned char)(i * 29 + k * 3);
}

static int io_full(int fd, void *buf, size_t n, int wr)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = wr ? write(fd, (char *)buf + done, n - done) : read(fd, (char *)buf + done, n - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		done += r;
	}
	return 0;
}

int main(int argc, char **argv)
{
	unsigned char m[MSG], want[MSG];
	int req, ans, i, st, answered = 0;
	uint64_t v;
	pid_t child;

	suite_init(argc, argv);
	unlink("req.fifo");
	unlink("ans.fifo");
	if (mkfifo("req.fifo", 0600) != 0 || mkfifo("ans.fifo", 0600) != 0)
		fail("mkfifo");
	child = fork();
	if (child == 0) {
		int n = 0;

		req = open("req.fifo", O_RDONLY);
		ans = open("ans.fifo", O_WRONLY);
		if (req < 0 || ans < 0)
			_exit(2);
		sleep_ms(300);
		while (io_full(req, m, MSG, 0) == 0) {
			fill(want, n);
			if (memcmp(m, want, MSG) != 0)
				_exit(3);
			v = msg_sum(m);
			if (io_full(ans, &v, 8, 1) != 0)
				_exit(4);
			n++;
			sleep_ms(100);
		}
		v = 0x5050000000000000ULL | (uint64_t)n;
		io_full(ans, &v, 8, 1);
		_exit(0);
	}
	if (child < 0)
		fail("fork");
	req = open("req.fifo", O_WRONLY);
	ans = open("ans.fifo", O_RDONLY);
	if (req < 0 || ans < 0)
		fail("open fifos");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		fill(m, i);
		if (io_full(req, m, MSG, 1) != 0)
			fail("send at tick %d", i);
		while (i + 1 - answered > 3) {
			fill(m, answered);
			if (io_full(ans, &v, 8, 0) != 0)
				fail("answer %d missing", answered);
			CHECK(v == msg_sum(m), "answer %d wrong", answered);
			answered++;
		}
	}
	close(req);
	while (answered < suite_ticks) {
		fill(m, answered);
		if (io_full(ans, &v, 8, 0) != 0)
			fail("answer %d missing at the end", answered);
		CHECK(v == msg_sum(m), "answer %d wrong", answered);
		answered++;
	}
	CHECK(io_full(ans, &v, 8, 0) == 0 && v == (0x5050000000000000ULL | (uint64_t)suite_ticks),
	      "final count %llx", (unsigned long long)v);
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %x", st);
	pass();
}
