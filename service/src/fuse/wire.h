// Bounds-checked decoding of request bodies and encoding helpers for replies.
//
// Nothing here trusts a length: every take() checks what is left, and a short or malformed
// body yields nullptr / nullopt, which the session turns into an EINVAL/EIO reply.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>

#include "fuse/kernel.h"

namespace fuse {

class Reader {
 public:
  explicit Reader(std::span<const char> data) : data_(data) {}

  // Copies the next sizeof(T) bytes into a T (requests need not be aligned for T).
  template <class T>
  std::optional<T> take() {
    if (data_.size() < sizeof(T)) return std::nullopt;
    T v;
    std::memcpy(&v, data_.data(), sizeof(T));
    data_ = data_.subspan(sizeof(T));
    return v;
  }

  // Takes `n` bytes but copies min(n, sizeof(T)) into a zeroed T: for structs that grew
  // across protocol minors (the compat sizes of setxattr_in and init_in).
  template <class T>
  std::optional<T> take_prefix(size_t n) {
    if (data_.size() < n) return std::nullopt;
    T v{};
    std::memcpy(&v, data_.data(), n < sizeof(T) ? n : sizeof(T));
    data_ = data_.subspan(n);
    return v;
  }

  std::optional<std::span<const char>> take_bytes(size_t n) {
    if (data_.size() < n) return std::nullopt;
    auto out = data_.first(n);
    data_ = data_.subspan(n);
    return out;
  }

  // A NUL-terminated name that must end inside the body. Empty names, "." and "..", and
  // names containing '/' are rejected: the kernel never sends them (efused does not offer
  // NFS export, the only source of ".." lookups), and a forged one must not step outside
  // the directory it names, least of all above the backing tree's root.
  std::optional<std::string_view> take_name() {
    auto s = take_string();
    if (!s || s->empty() || *s == "." || *s == ".." || s->find('/') != std::string_view::npos)
      return std::nullopt;
    return s;
  }

  // A NUL-terminated string (symlink targets may contain '/').
  std::optional<std::string_view> take_string() {
    const void* nul = std::memchr(data_.data(), '\0', data_.size());
    if (nul == nullptr) return std::nullopt;
    size_t len = static_cast<size_t>(static_cast<const char*>(nul) - data_.data());
    std::string_view s(data_.data(), len);
    data_ = data_.subspan(len + 1);
    return s;
  }

  size_t remaining() const { return data_.size(); }
  std::span<const char> rest() const { return data_; }

 private:
  std::span<const char> data_;
};

inline void split_timeout(double t, uint64_t* sec, uint32_t* nsec) {
  if (t <= 0) {
    *sec = 0;
    *nsec = 0;
    return;
  }
  *sec = static_cast<uint64_t>(t);
  *nsec = static_cast<uint32_t>((t - static_cast<double>(*sec)) * 1e9);
}

inline void encode_attr(const struct stat& st, kernel::fuse_attr* a) {
  *a = {};
  a->ino = st.st_ino;
  a->size = static_cast<uint64_t>(st.st_size);
  a->blocks = static_cast<uint64_t>(st.st_blocks);
  a->atime = static_cast<uint64_t>(st.st_atim.tv_sec);
  a->mtime = static_cast<uint64_t>(st.st_mtim.tv_sec);
  a->ctime = static_cast<uint64_t>(st.st_ctim.tv_sec);
  a->atimensec = static_cast<uint32_t>(st.st_atim.tv_nsec);
  a->mtimensec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  a->ctimensec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
  a->mode = st.st_mode;
  a->nlink = static_cast<uint32_t>(st.st_nlink);
  a->uid = st.st_uid;
  a->gid = st.st_gid;
  a->rdev = static_cast<uint32_t>(st.st_rdev);
  a->blksize = static_cast<uint32_t>(st.st_blksize);
}

}  // namespace fuse
