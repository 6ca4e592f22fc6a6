/* tree_tcp: tree_unix_server over loopback TCP (127.0.0.1, a port the kernel
 * picks, bound again at restore). */
#define USE_TCP 1
#include "tree_unix_server.c"
