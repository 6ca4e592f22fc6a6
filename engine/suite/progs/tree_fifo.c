/* tree_fifo: parent and child relay through two named FIFOs in the working
 * directory, both with data in flight: the parent writes a 300-byte request into
 * req.fifo every tick, the child answers each with its sum through ans.fifo but
 * lags ~3 requests behind. After a restore both FIFOs must connect the two again
 * with the buffered bytes intact. The program is tree_socketpair.c with USE_FIFO. */
#define USE_FIFO 1
#include "tree_socketpair.c"
