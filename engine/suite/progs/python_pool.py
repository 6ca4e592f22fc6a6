# python_pool.py TICKS: multiprocessing.Pool (fork start method: three worker
# processes, pipes, and semaphores in shared memory) mapping a function every tick.
# Unmodified program: the output must equal an uninterrupted run's.
import multiprocessing
import os
import sys
import time


def work(x):
    return x * x


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    multiprocessing.set_start_method("fork")
    print("READY", os.getpid(), flush=True)
    with multiprocessing.Pool(3) as pool:
        for i in range(n):
            time.sleep(0.1)
            print("tick", i, sum(pool.map(work, range(i + 8))), flush=True)
    print("done", flush=True)
