# python_manager.py TICKS: multiprocessing.Manager (fork start method): a server
# process listening on a named Unix socket, the program talking to it through proxies
# (one connection per thread), plus a worker process that also updates the shared
# dict through its own connection. Unmodified program: the output must equal an
# uninterrupted run's.
import multiprocessing
import os
import sys
import time


def worker(d, q, n):
    for i in range(n):
        q.get()
        d["w%d" % i] = i * 3


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    multiprocessing.set_start_method("fork")
    with multiprocessing.Manager() as m:
        d = m.dict()
        q = m.Queue()
        items = m.list()
        w = multiprocessing.Process(target=worker, args=(d, q, n))
        w.start()
        print("READY", os.getpid(), flush=True)
        for i in range(n):
            time.sleep(0.1)
            d[i] = i * i
            items.append(i)
            q.put(i)
            print("tick", i, sum(v for k, v in d.items() if isinstance(k, int)), len(items), flush=True)
        w.join()
        print("worker", sum(d["w%d" % i] for i in range(n)), w.exitcode, flush=True)
    print("done", flush=True)
