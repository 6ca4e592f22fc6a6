/* tree_socketpair: parent and child talk over a Unix stream socket pair, both
 * directions with data queued: the parent sends a 300-byte message every tick,
 * the child answers each with its sum but lags ~3 messages behind. After a restore
 * the pair must still connect the two processes with the queued bytes intact. */
#include "common.h"
#include <sys/socket.h>
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
		m[k] = (unsigned char)(i * 13 + k * 7);
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
	int sv[2], i, st, answered = 0;
	uint64_t v;
	pid_t child;

	suite_init(argc, argv);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		fail("socketpair");
	child = fork();
	if (child == 0) {
		int n = 0;

		close(sv[0]);
		sleep_ms(300);
		while (io_full(sv[1], m, MSG, 0) == 0) {
			fill(want, n);
			if (memcmp(m, want, MSG) != 0)
				_exit(3);
			v = msg_sum(m);
			if (io_full(sv[1], &v, 8, 1) != 0)
				_exit(4);
			n++;
			sleep_ms(100);
		}
		v = 0x5050000000000000ULL | (uint64_t)n;
		io_full(sv[1], &v, 8, 1);
		_exit(0);
	}
	close(sv[1]);
	if (child < 0)
		fail("fork");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		fill(m, i);
		if (io_full(sv[0], m, MSG, 1) != 0)
			fail("send at tick %d", i);
		while (i + 1 - answered > 3) {
			fill(m, answered);
			if (io_full(sv[0], &v, 8, 0) != 0)
				fail("answer %d missing", answered);
			CHECK(v == msg_sum(m), "answer %d wrong", answered);
			answered++;
		}
	}
	shutdown(sv[0], SHUT_WR);
	while (answered < suite_ticks) {
		fill(m, answered);
		if (io_full(sv[0], &v, 8, 0) != 0)
			fail("answer %d missing at the end", answered);
		CHECK(v == msg_sum(m), "answer %d wrong", answered);
		answered++;
	}
	CHECK(io_full(sv[0], &v, 8, 0) == 0 && v == (0x5050000000000000ULL | (uint64_t)suite_ticks),
	      "final count %llx", (unsigned long long)v);
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %x", st);
	pass();
}
