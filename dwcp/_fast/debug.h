/* Debug is a C macro: build with DWCP_DEBUG=1 (setup.py) to compile in
 * invariant checks and alloc/free counters. Off by default. */
#ifndef DWCP_DEBUG
#define DWCP_DEBUG 0
#endif
