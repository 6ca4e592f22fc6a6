/* tree_seqpacket: tree_dgram over a Unix SOCK_SEQPACKET socket pair. */
#include <sys/socket.h>
#define SOCK_KIND SOCK_SEQPACKET
#include "tree_dgram.c"
