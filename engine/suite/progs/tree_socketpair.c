/* tree_socketpair: parent and child talk over a Unix stream socket pair, both
 * directions with data queued: the parent sends a 300-byte message every tick,
 * the child answers each with its sum but lags ~3 messages behind. After a restore
 * the pair must still connect the two processes with the queued bytes intact.
 * With USE_FIFO (tree_fifo.c) the same runs through two named FIFOs in the working
 * directory: requests through req.fifo, answers through ans.fifo. */
#include "common.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#ifndef USE_FIFO
#define USE_FIFO 0
#endif

#define MSG 300
/* The message bytes: i * FILL_I + k * FILL_K. */
#if USE_FIFO
#define FILL_I 29
#define FILL_K 3
#else
#define FILL_I 13
#define FILL_K 7
#endif

static uint64_t msg_sum(const unsigned char *m)
{
	return sum131(m, MSG, 0);
}

static void fill(unsigned char *m, int i)
{
	int k;

	for (k = 0; k < MSG; k++)
		m[k] = (unsigned char)(i * FILL_I + k * FILL_K);
}

int main(int argc, char **argv)
{
	unsigned char m[MSG], want[MSG];
	int sv[2], req, ans, i, answered = 0;
	uint64_t v;
	pid_t child;

	suite_init(argc, argv);
	if (USE_FIFO) {
		unlink("req.fifo");
		unlink("ans.fifo");
		if (mkfifo("req.fifo", 0600) != 0 || mkfifo("ans.fifo", 0600) != 0)
			fail("mkfifo");
	} else if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
		fail("socketpair");
	}
	child = fork_or_fail();
	if (child == 0) {
		int n = 0;

		if (USE_FIFO) {
			req = open("req.fifo", O_RDONLY);
			ans = open("ans.fifo", O_WRONLY);
			if (req < 0 || ans < 0)
				_exit(2);
		} else {
			close(sv[0]);
			req = ans = sv[1];
		}
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
	if (USE_FIFO) {
		req = open("req.fifo", O_WRONLY);
		ans = open("ans.fifo", O_RDONLY);
		if (req < 0 || ans < 0)
			fail("open fifos");
	} else {
		close(sv[1]);
		req = ans = sv[0];
	}
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
	if (USE_FIFO)
		close(req);
	else
		shutdown(req, SHUT_WR);
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
