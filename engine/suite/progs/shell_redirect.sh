# shell_redirect.sh TICKS: two background subshells write lines to ONE open file
# description (the { ... } > log.txt redirection: one offset, no O_APPEND) and pace
# themselves with `read -t` on a FIFO they share (opened read-write, never written),
# while the shell prints its ticks through fd 3, a copy of its original stdout (and
# bash keeps another at fd 10 during the redirection). At the end the log is printed
# sorted. Unmodified program: the output must equal an uninterrupted run's (with
# separate offsets after a restore, lines would overwrite each other).
n=${1:-40}
rm -f pace.fifo
mkfifo pace.fifo
exec 9<>pace.fifo
exec 3>&1
echo READY $$
{
	( for ((i = 0; i < n; i++)); do echo "A $i"; read -r -t 0.1 -u 9; done ) &
	( for ((i = 0; i < n; i++)); do echo "B $i"; read -r -t 0.1 -u 9; done ) &
	for ((i = 0; i < n; i++)); do echo "tick $i" >&3; read -r -t 0.1 -u 9; done
	wait
} > log.txt
sort -k1,1 -k2n log.txt
echo "lines $(wc -l < log.txt) bytes $(wc -c < log.txt)"
