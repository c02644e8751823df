#include "fuse/connection.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>

#include "fuse/kernel.h"

namespace fuse {

int Connection::backing_open(int backing_fd) {
  kernel::fuse_backing_map map{};
  map.fd = backing_fd;
  int id = ::ioctl(fd(), kernel::kDevIocBackingOpen, &map);
  return id < 0 ? -errno : id;
}

void Connection::backing_close(int id) {
  uint32_t bid = static_cast<uint32_t>(id);
  (void)::ioctl(fd(), kernel::kDevIocBackingClose, &bid);
}

int Connection::notify(const struct iovec* iov, int count) {
  ssize_t n = ::writev(fd(), iov, count);
  return n < 0 ? -errno : 0;
}

efuse::Result<efuse::UniqueFd> Connection::clone(bool* no_clone) const {
  if (no_clone != nullptr) *no_clone = false;
  efuse::UniqueFd c(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
  if (!c) return efuse::last_errno();
  uint32_t master = static_cast<uint32_t>(fd());
  if (::ioctl(c.get(), kernel::kDevIocClone, &master) != 0) {
    if (no_clone != nullptr) *no_clone = true;
    return efuse::last_errno();
  }
  return c;
}

}  // namespace fuse
