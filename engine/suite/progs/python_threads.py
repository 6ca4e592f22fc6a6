# python_threads: an unmodified python3 running four long-lived worker
# threads fed through queues; each step every worker extends its sha256 chain
# and the main thread prints a numbered line with the combined digest. The
# output is deterministic (no pids or times after the READY line), so the
# output of a checkpointed, killed and restored run must equal an
# uninterrupted one.
import hashlib
import os
import queue
import sys
import threading
import time

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
todo = [queue.Queue() for _ in range(4)]
done = queue.Queue()


def worker(k):
    h = hashlib.sha256(f"seed {k}".encode()).digest()
    while True:
        rounds = todo[k].get()
        if rounds is None:
            return
        for _ in range(rounds):
            h = hashlib.sha256(h).digest()
        done.put((k, h))


threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(4)]
for t in threads:
    t.start()
print(f"READY {os.getpid()}", flush=True)
total = hashlib.sha256()
for step in range(steps):
    for q in todo:
        q.put(3000)
    results = sorted(done.get() for _ in range(4))
    for _, h in results:
        total.update(h)
    print(f"step {step} {total.hexdigest()[:24]}", flush=True)
    time.sleep(0.1)
for q in todo:
    q.put(None)
for t in threads:
    t.join()
print(f"done {total.hexdigest()}", flush=True)
