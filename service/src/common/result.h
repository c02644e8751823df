// Result<T>: a value or an errno. The one error currency of the request path (no exceptions).
#pragma once

#include <cerrno>
#include <optional>
#include <utility>

namespace efuse {

struct Errno {
  int code;
};

// Captures errno right after a failed syscall.
inline Errno last_errno() { return Errno{errno != 0 ? errno : EIO}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Errno e) : error_(e.code != 0 ? e.code : EIO) {}  // NOLINT
  bool ok() const { return error_ == 0; }
  int error() const { return error_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }

 private:
  std::optional<T> value_;
  int error_ = 0;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Errno e) : error_(e.code != 0 ? e.code : EIO) {}  // NOLINT
  bool ok() const { return error_ == 0; }
  int error() const { return error_; }

 private:
  int error_ = 0;
};

using Status = Result<void>;

// Status from a syscall's int return (-1 means failure with errno set).
inline Status check(int rc) {
  if (rc < 0) return last_errno();
  return {};
}

}  // namespace efuse
