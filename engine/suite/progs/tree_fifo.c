/* tree_fifo: parent and child relay through two named FIFOs in the working
 * directory, both with data in flight: the parent writes a 300-byte request into
 * req.fifo every tick, the child answers each with its sum through ans.fifo but
 * lags ~3 requests behind. After a restore both FIFOs must connect the two again
 * with the buffered bytes intact. */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>

#define MSG 300

static uint64_t msg_sum(const unsigned char *m)
{
	return sum131(m, MSG, 0);
}

static void fill(unsigned char *m, int i)
{
	int k;

	for (k = 0; k < MSG; k++)
		m[k] = (unsigned char)(i * 29 + k * 3);
}

int main(int argc, char **argv)
{
	unsigned char m[MSG], want[MSG];
	int req, ans, i, answered = 0;
	uint64_t v;
	pid_t child;

	suite_init(argc, argv);
	unlink("req.fifo");
	unlink("ans.fifo");
	if (mkfifo("req.fifo", 0600) != 0 || mkfifo("ans.fifo", 0600) != 0)
		fail("mkfifo");
	child = fork_or_fail();
	if (child == 0) {
		int n = 0;

		req = open("req.fifo", O_RDONLY);
		ans = open("ans.fifo", O_WRONLY);
		if (req < 0 || ans < 0)
			_exit(2);
		sleep_ms(300);
		while (read_full(req, m, MSG) == 0) {
			fill(want, n);
			if (memcmp(m, want, MSG) != 0)
				_exit(3);
			v = msg_sum(m);
			if (write_full(ans, &v, 8) != 0)
				_exit(4);
			n++;
			sleep_ms(100);
		}
		v = 0x5050000000000000ULL | (uint64_t)n;
		write_full(ans, &v, 8);
		_exit(0);
	}
	req = open("req.fifo", O_WRONLY);
	ans = open("ans.fifo", O_RDONLY);
	if (req < 0 || ans < 0)
		fail("open fifos");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		fill(m, i);
		if (write_full(req, m, MSG) != 0)
			fail("send at tick %d", i);
		while (i + 1 - answered > 3) {
			fill(m, answered);
			if (read_full(ans, &v, 8) != 0)
				fail("answer %d missing", answered);
			CHECK(v == msg_sum(m), "answer %d wrong", answered);
			answered++;
		}
	}
	close(req);
	while (answered < suite_ticks) {
		fill(m, answered);
		if (read_full(ans, &v, 8) != 0)
			fail("answer %d missing at the end", answered);
		CHECK(v == msg_sum(m), "answer %d wrong", answered);
		answered++;
	}
	CHECK(read_full(ans, &v, 8) == 0 && v == (0x5050000000000000ULL | (uint64_t)suite_ticks),
	      "final count %llx", (unsigned long long)v);
	expect_exit(child, 0, "child");
	pass();
}
