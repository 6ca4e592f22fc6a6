# shell_redirect.sh TICKS: two background subshells write lines to ONE open file
# description (the { ... } > log.txt redirection: one offset, no O_APPEND). The shell
# paces them through a FIFO they all hold read-write (one more shared description, with
# bytes in flight): each tick it writes two bytes and each subshell takes one per line.
# The shell prints its ticks through fd 3, a copy of its original stdout (and bash keeps
# another at fd 10 during the redirection). At the end the log is printed sorted.
# Unmodified program: the output must equal an uninterrupted run's (with separate
# offsets after a restore, lines would overwrite each other).
n=${1:-40}
rm -f pace.fifo idle.fifo
mkfifo pace.fifo idle.fifo
exec 9<>pace.fifo 7<>idle.fifo
exec 3>&1
echo READY $$
{
	( for ((i = 0; i < n; i++)); do read -r -n 1 -u 9; echo "A $i"; done ) &
	( for ((i = 0; i < n; i++)); do read -r -n 1 -u 9; echo "B $i"; done ) &
	for ((i = 0; i < n; i++)); do
		read -r -t 0.1 -u 7
		echo "tick $i" >&3
		printf 'xx' >&9
	done
	wait
} > log.txt
sort -k1,1 -k2n log.txt
echo "lines $(wc -l < log.txt) bytes $(wc -c < log.txt)"
