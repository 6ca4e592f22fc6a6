/* tree_dgram: parent and child ping-pong over a Unix DATAGRAM socket pair with
 * datagrams queued both ways: the parent sends one datagram of a varying size
 * every tick, the child answers each with its size and sum but lags ~3 behind.
 * After a restore the pair must deliver the queued datagrams with their
 * boundaries (sizes) intact. With SOCK_KIND SOCK_SEQPACKET (tree_seqpacket.c)
 * the same over a seqpacket pair. */
#include "common.h"
#include <sys/socket.h>

#ifndef SOCK_KIND
#define SOCK_KIND SOCK_DGRAM
#endif

#define MAXMSG 400

static int size_of(int i)
{
	return 40 + (i * 37) % 350;
}

static uint64_t msg_sum(const unsigned char *m, int n)
{
	return sum131(m, (size_t)n, (uint64_t)n);
}

static void fill(unsigned char *m, int i)
{
	int k;

	for (k = 0; k < size_of(i); k++)
		m[k] = (unsigned char)(i * 17 + k * 5);
}

static ssize_t rcv(int fd, void *b, size_t n)
{
	ssize_t r;

	do
		r = recv(fd, b, n, 0);
	while (r < 0 && errno == EINTR);
	return r;
}

int main(int argc, char **argv)
{
	unsigned char m[MAXMSG], want[MAXMSG];
	int sv[2], i, answered = 0;
	uint64_t v;
	pid_t child;

	suite_init(argc, argv);
	if (socketpair(AF_UNIX, SOCK_KIND, 0, sv) != 0)
		fail("socketpair");
	child = fork_or_fail();
	if (child == 0) {
		int n = 0;
		ssize_t r;

		close(sv[0]);
		sleep_ms(300);
		while ((r = rcv(sv[1], m, sizeof(m))) > 0) {
			if (r == 3 && memcmp(m, "END", 3) == 0)
				break;
			fill(want, n);
			if (r != size_of(n) || memcmp(m, want, r) != 0)
				_exit(3);
			v = msg_sum(m, (int)r);
			if (send(sv[1], &v, 8, 0) != 8)
				_exit(4);
			n++;
			sleep_ms(100);
		}
		v = 0x5050000000000000ULL | (uint64_t)n;
		send(sv[1], &v, 8, 0);
		_exit(0);
	}
	close(sv[1]);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		fill(m, i);
		if (send(sv[0], m, size_of(i), 0) != size_of(i))
			fail("send at tick %d", i);
		while (i + 1 - answered > 3) {
			fill(m, answered);
			CHECK(rcv(sv[0], &v, sizeof(v)) == 8, "answer %d missing", answered);
			CHECK(v == msg_sum(m, size_of(answered)), "answer %d wrong", answered);
			answered++;
		}
	}
	if (send(sv[0], "END", 3, 0) != 3)
		fail("send END");
	while (answered < suite_ticks) {
		fill(m, answered);
		CHECK(rcv(sv[0], &v, sizeof(v)) == 8, "answer %d missing at the end", answered);
		CHECK(v == msg_sum(m, size_of(answered)), "answer %d wrong", answered);
		answered++;
	}
	CHECK(rcv(sv[0], &v, sizeof(v)) == 8 && v == (0x5050000000000000ULL | (uint64_t)suite_ticks),
	      "final count %llx", (unsigned long long)v);
	expect_exit(child, 0, "child");
	pass();
}
