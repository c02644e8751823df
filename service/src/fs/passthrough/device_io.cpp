#include "fs/passthrough/device_io.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "fs/passthrough/inode_table.h"

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

unsigned DirectStream::window_for(size_t depth) {
  return static_cast<unsigned>(
      std::clamp<size_t>((depth + kChunk - 1) / kChunk, kMinWindow, kMaxWindow));
}

size_t device_readahead_bytes(dev_t dev) {
  // A partition has no queue of its own: its disk's, one level up, reads ahead for it.
  for (const char* rel : {"queue/read_ahead_kb", "../queue/read_ahead_kb"}) {
    char path[96];
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/%s", major(dev), minor(dev), rel);
    FILE* f = fopen(path, "re");
    if (f == nullptr) continue;
    unsigned long kb = 0;
    const bool ok = fscanf(f, "%lu", &kb) == 1;
    fclose(f);
    if (ok) return static_cast<size_t>(kb) * 1024;
  }
  return 0;
}

std::unique_ptr<DirectStream> DirectStream::create(int fd, uint32_t align, size_t depth,
                                                   int* err, StreamCounters* counters) {
  if (align == 0 || (align & (align - 1)) != 0 || kChunk % align != 0) {
    *err = EINVAL;
    return nullptr;
  }
  const unsigned window = window_for(depth);
  std::unique_ptr<DirectStream> s(new DirectStream(fd, align, window, counters));
  int rc = io_uring_queue_init(window, &s->ring_, 0);
  if (rc < 0) {
    *err = -rc;
    return nullptr;
  }
  s->ring_ok_ = true;
  void* p = nullptr;
  if (posix_memalign(&p, std::max<size_t>(align, 4096), kChunk * window) != 0) {
    *err = ENOMEM;
    return nullptr;
  }
  s->buffers_ = static_cast<char*>(p);
  s->slots_.resize(window);
  for (unsigned i = 0; i < window; ++i) s->slots_[i].data = s->buffers_ + i * kChunk;
  return s;
}

DirectStream::~DirectStream() {
  if (ring_ok_) {
    reap_all();
    io_uring_queue_exit(&ring_);
  }
  std::free(buffers_);
}

DirectStream::Slot* DirectStream::find(uint64_t chunk) {
  for (Slot& s : slots_)
    if (s.chunk == chunk) return &s;
  return nullptr;
}

DirectStream::Slot* DirectStream::issue(uint64_t chunk) {
  // A slot that is empty, else one outside the window [base_, base_ + window_).
  Slot* slot = nullptr;
  for (Slot& s : slots_) {
    if (s.in_flight) continue;
    if (s.chunk == UINT64_MAX) {
      slot = &s;
      break;
    }
    if (s.chunk < base_ || s.chunk >= base_ + window_) slot = &s;
  }
  if (slot == nullptr) return nullptr;
  struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) return nullptr;
  slot->chunk = chunk;
  slot->in_flight = true;
  slot->res = 0;
  io_uring_prep_read(sqe, fd_, slot->data, static_cast<unsigned>(kChunk), chunk * kChunk);
  io_uring_sqe_set_data(sqe, slot);
  if (io_uring_submit(&ring_) < 1) {
    slot->in_flight = false;
    slot->chunk = UINT64_MAX;
    return nullptr;
  }
  ++in_flight_;
  ++chunks_read_;
  if (counters_ != nullptr) counters_->chunks_read.fetch_add(1, std::memory_order_relaxed);
  return slot;
}

int DirectStream::wait_for(Slot& s) {
  while (s.in_flight) {
    struct io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return rc;
    Slot* done = static_cast<Slot*>(io_uring_cqe_get_data(cqe));
    done->res = cqe->res;
    done->in_flight = false;
    --in_flight_;
    io_uring_cqe_seen(&ring_, cqe);
  }
  return 0;
}

void DirectStream::reap_all() {
  for (Slot& s : slots_)
    if (s.in_flight && wait_for(s) < 0) return;
}

// Keeps the chunks after `base_` in flight, as many as the ramp has reached, not past the
// end of the file.
void DirectStream::fill_ahead() {
  for (uint64_t c = base_ + 1; c < base_ + ahead_ && c <= eof_chunk_; ++c) {
    if (find(c) != nullptr) continue;
    if (in_flight_ >= window_ || issue(c) == nullptr) return;
  }
}

Result<size_t> DirectStream::read(std::span<char> buf, uint64_t off) {
  std::lock_guard lk(mu_);
  size_t done = 0;
  while (done < buf.size()) {
    const uint64_t at = off + done;
    const uint64_t chunk = at / kChunk;
    if (eof_chunk_ != UINT64_MAX && chunk > eof_chunk_) eof_chunk_ = UINT64_MAX;  // grown?
    base_ = chunk;  // the window follows the reader, forwards or back
    Slot* s = find(chunk);
    // A sequential reader finds its chunk read ahead: the depth ramps up, doubling (as the
    // kernel's readahead does), to the whole window. A reader that jumped starts again from
    // the shallowest, so that random reads pay for one chunk ahead, not for the window.
    ahead_ = s != nullptr ? std::min(window_, ahead_ * 2) : kMinWindow;
    if (s == nullptr) s = issue(chunk);
    if (s == nullptr) {
      // Every slot is busy with reads still in flight: read this one directly.
      auto n = direct_read(fd_, buf.subspan(done), at, align_);
      if (!n.ok()) return done > 0 ? Result<size_t>(done) : n;
      done += *n;
      break;
    }
    // The chunks after this one start now, while this one is waited for and copied.
    fill_ahead();
    if (s->in_flight) {
      ++chunks_waited_;
      if (counters_ != nullptr) counters_->chunks_waited.fetch_add(1, std::memory_order_relaxed);
      if (int rc = wait_for(*s); rc < 0) return Errno{-rc};
    }
    if (s->res < 0) {
      int e = -s->res;
      s->chunk = UINT64_MAX;  // not kept: the next read tries again
      if (e == EINTR || e == EAGAIN) continue;
      if (done > 0) break;
      return Errno{e};
    }
    const size_t have = static_cast<size_t>(s->res);
    if (have < kChunk) eof_chunk_ = chunk;
    const size_t skip = static_cast<size_t>(at - chunk * kChunk);
    if (skip >= have) break;  // end of file
    const size_t n = std::min(have - skip, buf.size() - done);
    std::memcpy(buf.data() + done, s->data + skip, n);
    done += n;
    if (have < kChunk && skip + n >= have) break;  // end of file
  }
  return done;
}

void DirectStream::drop() {
  std::lock_guard lk(mu_);
  reap_all();
  for (Slot& s : slots_) s.chunk = UINT64_MAX;
  eof_chunk_ = UINT64_MAX;
}

DirectStream::Stats DirectStream::stats() const {
  std::lock_guard lk(mu_);
  return {chunks_read_, chunks_waited_};
}

void Inode::drop_read_ahead() {
  std::shared_ptr<DirectStream> s;
  {
    std::lock_guard lk(io_mu);
    s = dev_stream;
  }
  if (s) s->drop();
}

}  // namespace efuse::fs::passthrough
