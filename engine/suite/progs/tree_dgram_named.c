/* tree_dgram_named: named Unix DATAGRAM sockets across a process tree, with
 * datagrams queued at the checkpoint.
 *
 *   root  server bound to the path "dgram.sock": reads, ~3 ticks behind, the
 *         datagrams of C1 (unbound, connect()ed to it: recvfrom gives no
 *         address) and C3 (bound to the path "c3.sock": recvfrom gives it), and
 *         answers each of C3's to the address recvfrom gave;
 *   S2    server bound to an abstract name: reads, ~3 ticks behind, the
 *         datagrams C2 (unbound) sends with sendto;
 *   C1, C2, C3 send one numbered datagram of a varying size per tick; C3 reads
 *         the answers ~3 behind too.
 * Every datagram is checked (sender, number, size, contents); after a restore
 * the queues must hold the same datagrams with the same sender addresses. The
 * children report through their exit status. */
#include "common.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define MAXMSG 512

struct hdr {
	char tag[4];
	int seq;
};

static int size_of(int who, int i)
{
	return 20 + (i * 37 + who * 101) % 300;
}

static void fill(unsigned char *m, int who, int i)
{
	int k;

	for (k = 0; k < size_of(who, i); k++)
		m[k] = (unsigned char)(i * 17 + k * 5 + who);
}

static uint64_t msg_sum(const unsigned char *m, int n)
{
	uint64_t s = (uint64_t)n;
	int k;

	for (k = 0; k < n; k++)
		s = s * 131 + m[k];
	return s;
}

static socklen_t addr_of(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (abstract) {
		memcpy(a->sun_path + 1, name, strlen(name));
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
	}
	strcpy(a->sun_path, name);
	return (socklen_t)sizeof(*a);
}

static int bound(const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t l = addr_of(&a, name, abstract);
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);

	if (!abstract)
		unlink(name);
	if (s < 0 || bind(s, (struct sockaddr *)&a, l) != 0)
		fail("bind %s", name);
	return s;
}

static ssize_t rcv(int fd, void *b, size_t n, struct sockaddr_un *from, socklen_t *fl)
{
	ssize_t r;

	do {
		if (fl)
			*fl = sizeof(*from);
		r = recvfrom(fd, b, n, 0, (struct sockaddr *)from, fl);
	} while (r < 0 && errno == EINTR);
	return r;
}

static ssize_t snd(int fd, const void *b, size_t n, const struct sockaddr_un *to, socklen_t tl)
{
	ssize_t r;

	do
		r = to ? sendto(fd, b, n, 0, (const struct sockaddr *)to, tl) : send(fd, b, n, 0);
	while (r < 0 && errno == EINTR);
	return r;
}

/* One numbered datagram of sender `who` (1..3). */
static int make(unsigned char *m, int who, int i)
{
	struct hdr h = { { 'c', (char)('0' + who), 0, 0 }, i };

	memcpy(m, &h, sizeof(h));
	fill(m + sizeof(h), who, i);
	return (int)sizeof(h) + size_of(who, i);
}

/* Checks a received datagram; returns its sender (1..3), 0 for END of that
 * sender (then *seq = sender), -1 when wrong. */
static int check(const unsigned char *m, ssize_t r, int *seq)
{
	unsigned char want[MAXMSG];
	struct hdr h;

	if (r < (ssize_t)sizeof(h))
		return -1;
	memcpy(&h, m, sizeof(h));
	if (h.tag[0] == 'E') {
		*seq = h.seq;
		return 0;
	}
	if (h.tag[0] != 'c' || h.tag[1] < '1' || h.tag[1] > '3')
		return -1;
	if (make(want, h.tag[1] - '0', h.seq) != r || memcmp(want, m, (size_t)r) != 0)
		return -1;
	*seq = h.seq;
	return h.tag[1] - '0';
}

static void send_end(int fd, int who, const struct sockaddr_un *to, socklen_t tl)
{
	struct hdr h = { { 'E', 'N', 'D', 0 }, who };

	if (snd(fd, &h, sizeof(h), to, tl) != (ssize_t)sizeof(h))
		_exit(9);
}

static char abs_name[64];

/* C1: unbound, connected to the path server. */
static void c1(void)
{
	unsigned char m[MAXMSG];
	struct sockaddr_un a;
	socklen_t l = addr_of(&a, "dgram.sock", 0);
	int s = socket(AF_UNIX, SOCK_DGRAM, 0), i, n;

	if (s < 0 || connect(s, (struct sockaddr *)&a, l) != 0)
		_exit(11);
	for (i = 0; i < suite_ticks; i++) {
		sleep_ms(100);
		n = make(m, 1, i);
		if (snd(s, m, (size_t)n, NULL, 0) != n)
			_exit(12);
	}
	send_end(s, 1, NULL, 0);
	_exit(0);
}

/* C2: unbound, sendto the abstract server. */
static void c2(void)
{
	unsigned char m[MAXMSG];
	struct sockaddr_un a;
	socklen_t l = addr_of(&a, abs_name, 1);
	int s = socket(AF_UNIX, SOCK_DGRAM, 0), i, n;

	if (s < 0)
		_exit(21);
	for (i = 0; i < suite_ticks; i++) {
		sleep_ms(100);
		n = make(m, 2, i);
		if (snd(s, m, (size_t)n, &a, l) != n)
			_exit(22);
	}
	send_end(s, 2, &a, l);
	_exit(0);
}

/* C3: bound to "c3.sock", sendto the path server, reads its answers ~3 behind. */
static void c3(void)
{
	unsigned char m[MAXMSG];
	struct sockaddr_un a, from;
	socklen_t l = addr_of(&a, "dgram.sock", 0), fl;
	int s = bound("c3.sock", 0), i, n, answered = 0;
	uint64_t v[2];

	for (i = 0; i < suite_ticks; i++) {
		sleep_ms(100);
		n = make(m, 3, i);
		if (snd(s, m, (size_t)n, &a, l) != n)
			_exit(32);
		while (i + 1 - answered > 3 || (i == suite_ticks - 1 && answered < suite_ticks)) {
			if (rcv(s, v, sizeof(v), &from, &fl) != sizeof(v))
				_exit(33);
			/* The answer comes from the path server, by name. */
			if (fl <= offsetof(struct sockaddr_un, sun_path) || strcmp(from.sun_path, "dgram.sock") != 0)
				_exit(34);
			n = make(m, 3, answered);
			if (v[0] != (uint64_t)answered || v[1] != msg_sum(m, n))
				_exit(35);
			answered++;
		}
	}
	send_end(s, 3, &a, l);
	_exit(0);
}

/* S2: the abstract server, for C2. */
static void s2(int s)
{
	unsigned char m[MAXMSG];
	int i, got = 0, seq, who;
	ssize_t r;

	for (i = 0;; i++) {
		sleep_ms(100);
		while (got < i - 2 || i >= suite_ticks) {
			r = rcv(s, m, sizeof(m), NULL, NULL);
			who = check(m, r, &seq);
			if (who == 0 && seq == 2 && got == suite_ticks)
				_exit(0);
			if (who != 2 || seq != got)
				_exit(41);
			got++;
		}
	}
}

int main(int argc, char **argv)
{
	unsigned char m[MAXMSG];
	int srv, abs_srv, i, st, k, seq, who, next[4] = { 0, 0, 0, 0 }, ends = 0, got = 0;
	pid_t kids[4];
	struct sockaddr_un from;
	socklen_t fl;
	ssize_t r;

	suite_init(argc, argv);
	snprintf(abs_name, sizeof(abs_name), "torpor-dgram-named-%d", (int)getpid());
	srv = bound("dgram.sock", 0);
	abs_srv = bound(abs_name, 1);
	kids[0] = fork();
	if (kids[0] == 0) {
		close(srv);
		s2(abs_srv);
	}
	if (kids[0] < 0)
		fail("fork");
	close(abs_srv);
	for (k = 1; k <= 3; k++) {
		kids[k] = fork();
		if (kids[k] == 0) {
			close(srv);
			if (k == 1)
				c1();
			if (k == 2)
				c2();
			c3();
		}
		if (kids[k] < 0)
			fail("fork");
	}
	ready();
	for (i = 0; ends < 2; i++) {
		if (i < suite_ticks)
			tick(i);
		while (got < 2 * (i - 2) || i >= suite_ticks) {
			r = rcv(srv, m, sizeof(m), &from, &fl);
			who = check(m, r, &seq);
			CHECK(who >= 0, "bad datagram of %zd bytes after %d", r, got);
			/* The sender's address: none for C1 (unbound), c3.sock for C3. */
			k = who ? who : seq;
			if (k == 1)
				CHECK(fl <= offsetof(struct sockaddr_un, sun_path), "C1's datagram %d has an address", seq);
			else
				CHECK(fl > offsetof(struct sockaddr_un, sun_path) && strcmp(from.sun_path, "c3.sock") == 0,
				      "C3's datagram %d comes from '%s' (%u)", seq, fl > 2 ? from.sun_path : "", (unsigned)fl);
			if (who == 0) {
				CHECK(next[k] == suite_ticks, "END of %d after %d datagrams", k, next[k]);
				if (++ends == 2)
					break;
				continue;
			}
			CHECK(seq == next[who], "datagram %d of C%d, want %d", seq, who, next[who]);
			next[who]++;
			got++;
			if (who == 3) {
				uint64_t v[2] = { (uint64_t)seq, msg_sum(m, (int)r) };

				CHECK(snd(srv, v, sizeof(v), &from, fl) == sizeof(v), "answer %d", seq);
			}
		}
	}
	for (k = 0; k <= 3; k++)
		CHECK(waitpid(kids[k], &st, 0) == kids[k] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child %d status %x", k, st);
	unlink("dgram.sock");
	unlink("c3.sock");
	pass();
}
