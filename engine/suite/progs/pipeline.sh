#!/bin/bash
# pipeline.sh TICKS: a shell pipeline as a process tree (bash forks, every stage
# execs another program): seq and awk write everything at once into pipes, perl
# passes one line per 100 ms on with a running sum, tee keeps a copy; then
# sort | md5sum. Unmodified programs: the output must equal an uninterrupted run's.
n=${1:-40}
echo "READY $$"
seq 1 "$n" | awk '{ print $1 * $1 }' \
    | perl -ne 'BEGIN { $| = 1 } select(undef, undef, undef, 0.1); $s += $_; print "tick ", $. - 1, " $s\n"' \
    | tee ticks.txt
sort -t ' ' -k3 -nr ticks.txt | md5sum
