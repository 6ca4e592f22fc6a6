/* tree_unix_server: a server listening on a named Unix socket (srv.sock in the
 * working directory) and three workers that connect to it. The server accepts two
 * at once and the third only at 3/4 of the run, so at a checkpoint it waits in the
 * listener's queue. Every tick the server sends each accepted worker a request;
 * workers answer with its sum, ~3 behind, so data is queued both ways. After a
 * restore the listener is bound again, the accepted connections reconnected with
 * their data, and the waiting connection is still there to accept.
 * With USE_TCP (tree_tcp.c) the same runs over loopback TCP. */
#include "common.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>

#ifndef USE_TCP
#define USE_TCP 0
#endif

#define MSG 200
#define NW 3

static int port;

static uint64_t msg_sum(const unsigned char *m)
{
	return sum131(m, MSG, 0);
}

static void fill(unsigned char *m, int w, int i)
{
	int k;

	for (k = 0; k < MSG; k++)
		m[k] = (unsigned char)(w * 71 + i * 13 + k * 7);
}

static int listen_sock(void)
{
	int l;

	if (USE_TCP) {
		struct sockaddr_in a = { .sin_family = AF_INET };
		socklen_t len = sizeof(a);

		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		l = socket(AF_INET, SOCK_STREAM, 0);
		if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 4) != 0)
			fail("tcp listen");
		getsockname(l, (struct sockaddr *)&a, &len);
		port = ntohs(a.sin_port);
	} else {
		struct sockaddr_un a = { .sun_family = AF_UNIX };

		strcpy(a.sun_path, "srv.sock");
		unlink("srv.sock");
		l = socket(AF_UNIX, SOCK_STREAM, 0);
		if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 4) != 0)
			fail("unix listen");
	}
	return l;
}

static int connect_sock(void)
{
	int fd;

	if (USE_TCP) {
		struct sockaddr_in a = { .sin_family = AF_INET };

		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a.sin_port = htons(port);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
			_exit(2);
	} else {
		struct sockaddr_un a = { .sun_family = AF_UNIX };

		strcpy(a.sun_path, "srv.sock");
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
			_exit(2);
	}
	return fd;
}

static void worker(int k)
{
	unsigned char m[MSG], want[MSG], id = (unsigned char)k;
	int fd = connect_sock(), n = 0;
	uint64_t v;

	if (read_full(fd, m, 1) != 0 || m[0] != 'G')
		_exit(3);
	if (write_full(fd, &id, 1) != 0)
		_exit(4);
	while (read_full(fd, m, MSG) == 0) {
		fill(want, k, n);
		if (memcmp(m, want, MSG) != 0)
			_exit(5);
		v = msg_sum(m);
		if (write_full(fd, &v, 8) != 0)
			_exit(6);
		n++;
		sleep_ms(80);
	}
	v = 0x5050000000000000ULL | (uint64_t)n;
	write_full(fd, &v, 8);
	_exit(0);
}

static int conn[NW], sent[NW], answered[NW];

static void take(int l)
{
	unsigned char id;
	int fd;

	do
		fd = accept(l, NULL, NULL);
	while (fd < 0 && errno == EINTR);
	if (fd < 0)
		fail("accept");
	if (write_full(fd, "G", 1) != 0 || read_full(fd, &id, 1) != 0 || id >= NW || conn[id] >= 0)
		fail("greeting");
	conn[id] = fd;
}

static void answer(int w)
{
	unsigned char m[MSG];
	uint64_t v;

	fill(m, w, answered[w]);
	if (read_full(conn[w], &v, 8) != 0)
		fail("answer %d of worker %d missing", answered[w], w);
	CHECK(v == msg_sum(m), "answer %d of worker %d wrong", answered[w], w);
	answered[w]++;
}

int main(int argc, char **argv)
{
	unsigned char m[MSG];
	pid_t kids[NW];
	int l, i, w;
	uint64_t v;

	suite_init(argc, argv);
	l = listen_sock();
	for (w = 0; w < NW; w++) {
		conn[w] = -1;
		kids[w] = fork_or_fail();
		if (kids[w] == 0) {
			close(l);
			worker(w);
		}
	}
	take(l);
	take(l);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		if (i == suite_ticks * 3 / 4)
			take(l);
		for (w = 0; w < NW; w++) {
			if (conn[w] < 0)
				continue;
			fill(m, w, sent[w]);
			if (write_full(conn[w], m, MSG) != 0)
				fail("request to worker %d", w);
			sent[w]++;
			while (sent[w] - answered[w] > 3)
				answer(w);
		}
	}
	for (w = 0; w < NW; w++) {
		CHECK(conn[w] >= 0, "worker %d never accepted", w);
		shutdown(conn[w], SHUT_WR);
		while (answered[w] < sent[w])
			answer(w);
		CHECK(read_full(conn[w], &v, 8) == 0 && v == (0x5050000000000000ULL | (uint64_t)sent[w]),
		      "final count of worker %d: %llx", w, (unsigned long long)v);
	}
	for (w = 0; w < NW; w++)
		expect_exit(kids[w], 0, "worker %d", w);
	pass();
}
