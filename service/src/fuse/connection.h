// One FUSE connection (one mount) and what belongs to it rather than to any one request: the
// /dev/fuse fd, more fds attached to it (FUSE_DEV_IOC_CLONE), FUSE passthrough backing ids
// (FUSE_DEV_IOC_BACKING_OPEN / _CLOSE) and notifications (unique 0, always over /dev/fuse:
// the io_uring rings refuse them). Replies go through each request's Transport (reply.h).
//
// Owned by the mount; outlives the channel serving it and the Session's use of it
// (Session::connect). Thread-safe: every method is one syscall on the fd.
#pragma once

#include <sys/uio.h>

#include "common/result.h"
#include "common/unique_fd.h"

namespace fuse {

class Connection {
 public:
  explicit Connection(efuse::UniqueFd dev_fd) : fd_(std::move(dev_fd)) {}
  virtual ~Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd() const { return fd_.get(); }

  // Registers `backing_fd` as a passthrough backing file; returns its id (>= 1) or -errno.
  virtual int backing_open(int backing_fd);
  virtual void backing_close(int id);
  // Sends one notification (iov[0] is a fuse_out_header with unique 0); 0 or -errno.
  virtual int notify(const struct iovec* iov, int count);
  // A new /dev/fuse fd attached to this connection, for a worker or a ring of its own. On
  // failure *no_clone (if given) says whether /dev/fuse opened but FUSE_DEV_IOC_CLONE failed
  // (an old kernel: share fd() instead) rather than the open itself.
  efuse::Result<efuse::UniqueFd> clone(bool* no_clone = nullptr) const;

 protected:
  Connection() = default;  // tests: a connection without a device

 private:
  efuse::UniqueFd fd_;
};

}  // namespace fuse
