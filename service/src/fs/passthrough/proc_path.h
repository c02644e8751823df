// "/proc/self/fd/N": the way to reach an O_PATH handle with calls that take no fd.
#pragma once

#include <cstdio>

namespace efuse::fs::passthrough {

class ProcPath {
 public:
  explicit ProcPath(int fd) { std::snprintf(buf_, sizeof buf_, "/proc/self/fd/%d", fd); }
  operator const char*() const { return buf_; }  // NOLINT: used as a path argument

 private:
  char buf_[32];
};

}  // namespace efuse::fs::passthrough
