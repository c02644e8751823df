#include "fs/passthrough/device_io.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace efuse::fs::passthrough {

uint32_t direct_io_alignment(int fd) {
  struct statx st {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) != 0) return 0;
  if ((st.stx_mask & STATX_DIOALIGN) == 0 || st.stx_dio_offset_align == 0) return 0;
  return std::max(st.stx_dio_mem_align, st.stx_dio_offset_align);
}

namespace {

// One ring and one bounce buffer per thread that serves device-path reads (efused's
// workers and io_uring queue threads: a handful per mount).
class ThreadIo {
 public:
  ThreadIo() { ring_ok_ = io_uring_queue_init(4, &ring_, 0) == 0; }
  ~ThreadIo() {
    if (ring_ok_) io_uring_queue_exit(&ring_);
  }
  ThreadIo(const ThreadIo&) = delete;
  ThreadIo& operator=(const ThreadIo&) = delete;

  // One read of `len` bytes at `off` into `buf` (aligned): bytes read, or -errno.
  ssize_t read(int fd, void* buf, size_t len, uint64_t off) {
    if (!ring_ok_) {
      struct iovec iov = {buf, len};
      ssize_t n = preadv2(fd, &iov, 1, static_cast<off_t>(off), 0);
      return n < 0 ? -errno : n;
    }
    struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return -EAGAIN;  // cannot happen: one in flight at a time
    io_uring_prep_read(sqe, fd, buf, static_cast<unsigned>(len), off);
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0) return rc;
    struct io_uring_cqe* cqe = nullptr;
    rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc < 0) return rc;
    ssize_t res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    return res;
  }

  // An aligned buffer of at least `len` bytes, or null.
  char* bounce(size_t len, uint32_t align) {
    if (len > bounce_len_ || align > bounce_align_) {
      void* p = nullptr;
      if (posix_memalign(&p, std::max<size_t>(align, 4096), len) != 0) return nullptr;
      bounce_.reset(static_cast<char*>(p));
      bounce_len_ = len;
      bounce_align_ = std::max<uint32_t>(align, 4096);
    }
    return bounce_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  struct io_uring ring_ {};
  bool ring_ok_ = false;
  std::unique_ptr<char, Free> bounce_;
  size_t bounce_len_ = 0;
  uint32_t bounce_align_ = 0;
};

thread_local ThreadIo t_io;

bool aligned(uint64_t v, uint32_t a) { return (v & (a - 1)) == 0; }

}  // namespace

Result<size_t> direct_read(int fd, std::span<char> buf, uint64_t off, uint32_t align) {
  if (align == 0 || (align & (align - 1)) != 0) return Errno{EINVAL};
  size_t done = 0;
  while (done < buf.size()) {
    const uint64_t at = off + done;
    const size_t want = buf.size() - done;
    char* dst = buf.data() + done;
    ssize_t n;
    if (aligned(at, align) && aligned(want, align) &&
        aligned(reinterpret_cast<uintptr_t>(dst), align)) {
      n = t_io.read(fd, dst, want, at);  // straight into the caller's buffer
    } else {
      // The aligned range around [at, at + want), read into the bounce buffer.
      const uint64_t head = at & ~static_cast<uint64_t>(align - 1);
      const uint64_t end = (at + want + align - 1) & ~static_cast<uint64_t>(align - 1);
      char* b = t_io.bounce(end - head, align);
      if (b == nullptr) return Errno{ENOMEM};
      n = t_io.read(fd, b, end - head, head);
      if (n > 0) {
        const uint64_t skip = at - head;
        n = static_cast<ssize_t>(std::min<uint64_t>(n > static_cast<ssize_t>(skip)
                                                         ? static_cast<uint64_t>(n) - skip
                                                         : 0,
                                                     want));
        if (n > 0) std::memcpy(dst, b + skip, static_cast<size_t>(n));
      }
    }
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) {
      if (done > 0) break;
      return Errno{static_cast<int>(-n)};
    }
    if (n == 0) break;  // end of file
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace efuse::fs::passthrough
