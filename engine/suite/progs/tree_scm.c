/* tree_scm: the parent opens a file after forking and passes the fd to its child
 * over a socket pair (SCM_RIGHTS). Both then write lines through it: one open file
 * description, one offset, in two processes that got it by message, not by fork.
 * After a restore they must still share it (separate offsets would overwrite each
 * other's lines). */
#include "common.h"
#include <fcntl.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	int sv[2], fd, i, seen[2][TAG_MAX_TICKS] = { { 0 } };
	char cbuf[CMSG_SPACE(sizeof(int))], x = 'x';
	struct iovec iov = { &x, 1 };
	struct msghdr msg = { 0 };
	struct cmsghdr *c;
	pid_t child;

	suite_init(argc, argv);
	if (suite_ticks > TAG_MAX_TICKS)
		fail("too many ticks");
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		fail("socketpair");
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	child = fork_or_fail();
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
			tag_line(got, 'C', i);
		}
		_exit(0);
	}
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
		tag_line(fd, 'P', i);
	}
	expect_exit(child, 0, "child");
	count_tag_lines("passed.txt", "PC", seen);
	for (i = 0; i < suite_ticks; i++)
		CHECK(seen[0][i] == 1 && seen[1][i] == 1, "line %d seen %d/%d times (P/C): offsets not shared",
		      i, seen[0][i], seen[1][i]);
	pass();
}
