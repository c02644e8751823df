// The device path's reads (accel/device.h): O_DIRECT through io_uring, straight from the
// backing device into efused's buffer.
#pragma once

#include <cstdint>
#include <span>

#include "common/result.h"

namespace efuse::fs::passthrough {

// The direct I/O alignment of fd's file (statx STATX_DIOALIGN): the larger of the memory
// and file offset alignments, or 0 when the file system does no direct I/O (tmpfs reports
// none: since Linux 6.6 it accepts O_DIRECT without bypassing any cache).
uint32_t direct_io_alignment(int fd);

// Reads up to buf.size() bytes at `off` from `fd` (opened O_DIRECT) through this thread's
// io_uring ring (made at its first use; a thread whose ring cannot be set up reads with
// preadv2). `align` is direct_io_alignment(). An unaligned offset, length or buffer goes
// through an aligned bounce buffer of the thread's: the aligned range around it is read
// and the part asked for copied. Short only at end of file; fails with the read's errno.
Result<size_t> direct_read(int fd, std::span<char> buf, uint64_t off, uint32_t align);

}  // namespace efuse::fs::passthrough
