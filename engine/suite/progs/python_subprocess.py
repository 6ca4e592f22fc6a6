# python_subprocess.py TICKS: subprocess.Popen with pipes both ways (the child is
# another python3, exec'd through vfork/posix_spawn or fork), one line per tick
# through it and back; then communicate() and the child's exit status.
# Unmodified program: the output must equal an uninterrupted run's.
import os
import subprocess
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
print("READY", os.getpid(), flush=True)
child = subprocess.Popen(
    [sys.executable, "-c",
     "import sys\n"
     "total = 0\n"
     "for line in sys.stdin:\n"
     "    total += len(line)\n"
     "    sys.stdout.write(line.upper())\n"
     "    sys.stdout.flush()\n"
     "sys.exit(total % 100)\n"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
for i in range(n):
    time.sleep(0.1)
    child.stdin.write(f"tick {i} {i * i}\n")
    child.stdin.flush()
    print(child.stdout.readline().strip().lower(), flush=True)
out, _ = child.communicate()
print("rest", repr(out), "status", child.returncode, flush=True)
