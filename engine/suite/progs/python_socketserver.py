# python_socketserver.py TICKS: socketserver.ThreadingTCPServer on loopback (a port the
# kernel picks) in the program, and a forked client process that sends a number every
# tick and prints the server's answer. Unmodified program: the output must equal an
# uninterrupted run's.
import os
import socket
import socketserver
import sys
import threading
import time


class Square(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            n = int(line)
            self.wfile.write(b"%d\n" % (n * n))
            self.wfile.flush()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Square)
    port = srv.server_address[1]
    pid = os.fork()
    if pid == 0:
        srv.socket.close()
        c = socket.create_connection(("127.0.0.1", port))
        f = c.makefile("rwb")
        for i in range(n):
            time.sleep(0.1)
            f.write(b"%d\n" % (i + 7))
            f.flush()
            print("tick", i, int(f.readline()), flush=True)
        c.close()
        os._exit(0)
    print("READY", os.getpid(), flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _, st = os.waitpid(pid, 0)
    srv.shutdown()
    print("done", st, flush=True)
