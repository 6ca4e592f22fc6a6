#!/bin/bash
# make_j2.sh TICKS: GNU make -j2 as a process tree, with the Makefile make_j2.mk next to
# this script. make runs two recipes at a time, each a shell running short programs
# with sleeps that write files; one recipe is a sub-make sharing make's jobserver pipe
# (its tokens are bytes in flight in that pipe). The last rule prints every output and
# their checksum into make.out. Meanwhile the shell (the root) ticks every 100 ms, then
# waits for make and prints its output. Unmodified programs: the output must equal an
# uninterrupted run's.
n=${1:-40}
rm -rf out make.out
echo "READY $$"
make -j2 -s --no-print-directory -f "$(dirname "$0")/make_j2.mk" STEPS=$((n / 10)) > make.out &
m=$!
for ((i = 0; i < n; i++)); do
	sleep 0.1
	echo "tick $i"
done
wait $m
echo "make exited with $?"
cat make.out
