/* tree_scm: the parent opens a file after forking and passes the fd to its child
 * over a socket pair (SCM_RIGHTS). Both then write lines through it: one open file
 * description, one offset, in two processes that got it by message, not by fork.
 * After a restore they must still share it (separate offsets would overwrite each
 * other's lines). */
#include "common.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>

static void line(int fd, char who, int i)
{
	char b[32];
	int n = snprintf(b, sizeof(b), "%c %d\n", who, i);

	if (write(fd, b, n) != n)
		_exit(5);
}

int main(int argc, char **argv)
{
	int sv[2], fd, i, st, seen[2][1000] = { { 0 } };
	char cbuf[CMSG_SPACE(sizeof(int))], x = 'x', buf[65536], *p;
	struct iovec iov = { &x, 1 };
	struct msghdr msg = { 0 };
	struct cmsghdr *c;
	pid_t child;
	ssize_t n;
	FILE *f;

	suite_init(argc, argv);
	if (suite_ticks > 1000)
		fail("too many ticks");
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		fail("socketpair");
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	child = fork();
	if (child == 0) {
		int got;

		close(sv[0]);
		if (recvmsg(sv[1], &msg, 0) != 1)
			_exit(2);
		c = CMSG_FIRSTHDR(&msg);
		if (!c || c->cmsg_type != SCM_RIGHTS)
			_exit(3);
		memcpy(&got, CMSG_DATA(c), sizeof(int));
		for (i = 0; i < suite_ticks; i++) {
			sleep_ms(100);
			line(got, 'C', i);
		}
		_exit(0);
	}
	if (child < 0)
		fail("fork");
	close(sv[1]);
	fd = open("passed.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		fail("open passed.txt");
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sv[0], &msg, 0) != 1)
		fail("sendmsg");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		line(fd, 'P', i);
	}
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %x", st);
	f = fopen("passed.txt", "r");
	if (!f)
		fail("reopen passed.txt");
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n < 0 ? 0 : n] = 0;
	for (p = buf; *p;) {
		char who;
		int k, used;

		if (sscanf(p, "%c %d\n%n", &who, &k, &used) != 2 || p[used - 1] != '\n')
			fail("garbled line at byte %d", (int)(p - buf));
		CHECK(k >= 0 && k < suite_ticks && (who == 'P' || who == 'C'), "bad line at byte %d", (int)(p - buf));
		seen[who == 'P' ? 0 : 1][k]++;
		p += used;
	}
	for (i = 0; i < suite_ticks; i++)
		CHECK(seen[0][i] == 1 && seen[1][i] == 1, "line %d seen %d/%d times (P/C): offsets not shared",
		      i, seen[0][i], seen[1][i]);
	pass();
}
