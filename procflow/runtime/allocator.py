"""The C allocator's policy in task processes: keep freed memory for reuse instead of returning it at once.

glibc's malloc returns the top of its heap to the kernel once more than M_TRIM_THRESHOLD of it is free,
and by default that threshold follows the largest block freed (twice it, so 2 MiB after a 1 MiB numpy
array). A task that makes a 1 MiB array per record then gives pages back every few records and takes
them again, fresh from the kernel: bench/channels.py's 1 MiB source took 50-60 page faults and about
200 us of CPU per record, of which filling the array and copying it into a slab take about 90. Fixed
thresholds keep blocks under MMAP_THRESHOLD in the heap and up to TRIM_THRESHOLD of it free for the next
record: 2 faults per record, the source twice as fast. A task holds at most TRIM_THRESHOLD of freed
memory more than before; larger arrays are mapped and unmapped as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set the thresholds in this process; False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
