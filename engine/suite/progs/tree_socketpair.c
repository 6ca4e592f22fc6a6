/* tree_socketpair: parent and child talk over a Unix stream socket pair, both
 * directions with data queued: the parent sends a 300-byte message every tick,
 * the child answers each with its sum but lags ~3 messages behind. After a restore
 * the pair must still connect the two processes with the queued bytes intact. */
#include "common.h"
#include <sys/socket.h>

#define MSG 300

static uint64_t msg_sum(const unsigned char *m)
{
	return sum131(m, MSG, 0);
}

static void fill(unsigned char *m, int i)
{
	int k;

	for (k = 0; k < MSG; k++)
		m[k] = (unsigned char)(i * 13 + k * 7);
}

int main(int argc, char **argv)
{
	unsigned char m[MSG], want[MSG];
	int sv[2], i, answered = 0;
	uint64_t v;
	pid_t child;

	suite_init(argc, argv);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		fail("socketpair");
	child = fork_or_fail();
	if (child == 0) {
		int n = 0;

		close(sv[0]);
		sleep_ms(300);
		while (read_full(sv[1], m, MSG) == 0) {
			fill(want, n);
			if (memcmp(m, want, MSG) != 0)
				_exit(3);
			v = msg_sum(m);
			if (write_full(sv[1], &v, 8) != 0)
				_exit(4);
			n++;
			sleep_ms(100);
		}
		v = 0x5050000000000000ULL | (uint64_t)n;
		write_full(sv[1], &v, 8);
		_exit(0);
	}
	close(sv[1]);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		fill(m, i);
		if (write_full(sv[0], m, MSG) != 0)
			fail("send at tick %d", i);
		while (i + 1 - answered > 3) {
			fill(m, answered);
			if (read_full(sv[0], &v, 8) != 0)
				fail("answer %d missing", answered);
			CHECK(v == msg_sum(m), "answer %d wrong", answered);
			answered++;
		}
	}
	shutdown(sv[0], SHUT_WR);
	while (answered < suite_ticks) {
		fill(m, answered);
		if (read_full(sv[0], &v, 8) != 0)
			fail("answer %d missing at the end", answered);
		CHECK(v == msg_sum(m), "answer %d wrong", answered);
		answered++;
	}
	CHECK(read_full(sv[0], &v, 8) == 0 && v == (0x5050000000000000ULL | (uint64_t)suite_ticks),
	      "final count %llx", (unsigned long long)v);
	expect_exit(child, 0, "child");
	pass();
}
