# python_syslog.py TICKS: Unix datagram sockets between the processes of a Python
# program. A forked worker logs one record per tick with logging.handlers.SysLogHandler
# to the program's own "syslog" server (a datagram socket bound to the path log.sock);
# a second worker, bound to an abstract name, asks a question per tick through a socket
# connected to ask.sock, whose path the server removes once the worker is connected;
# the answers go back to the address recvfrom gives. The server reads ~3 ticks behind,
# so datagrams are queued at any checkpoint. Unmodified program: the output must equal
# an uninterrupted run's.
import logging
import logging.handlers
import os
import socket
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
for p in ("log.sock", "ask.sock"):
    if os.path.exists(p):
        os.unlink(p)
me = "\0torpor-syslog-%d" % os.getpid()
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.bind("log.sock")
ask = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
ask.bind("ask.sock")

w1 = os.fork()
if w1 == 0:
    log.close()
    ask.close()
    logger = logging.getLogger("worker")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.handlers.SysLogHandler(address="log.sock"))
    for i in range(n):
        time.sleep(0.1)
        logger.info("record %d %s", i, "x" * (i * 13 % 90))
    logger.info("END")
    os._exit(0)

w2 = os.fork()
if w2 == 0:
    log.close()
    ask.close()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.bind(me)
    c.connect("ask.sock")
    c.send(b"hello")
    status = 0
    got = 0
    for i in range(n):
        time.sleep(0.1)
        c.send(b"%d" % i)
        while i - got >= 3 or (i == n - 1 and got < n):
            a, frm = c.recvfrom(100)
            if a != b"%d" % (got * got) or frm != "ask.sock":
                status = 3
            got += 1
    os._exit(status)

hello, addr = ask.recvfrom(100)
os.unlink("ask.sock")
print("READY", os.getpid(), flush=True)
print("first", hello.decode(), addr == me.encode(), flush=True)


def answer():
    q, a = ask.recvfrom(100)
    ask.sendto(b"%d" % (int(q) ** 2), a)
    return int(q), a == me.encode()


for i in range(n):
    time.sleep(0.1)
    if i >= 3:
        rec = log.recv(1000)
        print("tick", i, rec.decode().rstrip("\0"), *answer(), flush=True)
    else:
        print("tick", i, flush=True)
while True:
    rec = log.recv(1000).decode().rstrip("\0")
    print("late", rec, flush=True)
    if rec.endswith("END"):
        break
for _ in range(3):
    print("late answer", *answer(), flush=True)
_, s1 = os.waitpid(w1, 0)
_, s2 = os.waitpid(w2, 0)
print("done", s1, s2, os.path.exists("ask.sock"), flush=True)
os.unlink("log.sock")
