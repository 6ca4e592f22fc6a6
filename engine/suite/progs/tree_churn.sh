#!/bin/bash
# tree_churn.sh TICKS: a process tree that never holds still. Background loops spawn very
# short-lived children all the time (sleep, true, subshells that exit with a status),
# so every checkpoint round meets children that are forked, exec, exit and are reaped
# while it runs. The main loop ticks every 100 ms and sums the statuses of subshells.
# Unmodified program: the output must equal an uninterrupted run's.
n=${1:-40}
echo "READY $$"
churn() { while :; do sleep "$1"; /bin/true; (exit 3); done; }
churn 0.01 &
a=$!
churn 0.02 &
b=$!
s=0
for ((i = 0; i < n; i++)); do
	sleep 0.1
	(exit $((i % 7)))
	s=$((s + $?))
	echo "tick $i $s $(echo x$i)"
done
kill $a $b
wait $a $b 2>/dev/null
echo "done $s"
