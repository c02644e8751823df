// "/proc/self/fd/N": the way to reach an O_PATH handle with calls that take no fd.
#pragma once

#include <sys/types.h>

#include <cstdio>

namespace efuse::fs::passthrough {

class ProcPath {
 public:
  explicit ProcPath(int fd) { std::snprintf(buf_, sizeof buf_, "/proc/self/fd/%d", fd); }
  operator const char*() const { return buf_; }  // NOLINT: used as a path argument

 private:
  char buf_[32];
};

// chmod of what an O_PATH handle names. fchmodat2 (Linux 6.6) takes the handle itself with
// AT_EMPTY_PATH; older kernels go through the /proc path, a lookup of four more components.
int chmod_fd(int fd, mode_t mode);

}  // namespace efuse::fs::passthrough
