// io_uring channel: the memory of one ring entry (EntryBuffer) and its sizes.
#include "fuse/uring_channel.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace fuse {

namespace k = kernel;

namespace uring {

size_t payload_size(uint32_t max_write, uint16_t max_pages, size_t page_size) {
  size_t n = std::max<size_t>(k::kMinReadBufferKernel, max_write);
  return std::max<size_t>(n, static_cast<size_t>(max_pages) * page_size);
}

std::unique_ptr<EntryBuffer> EntryBuffer::create(size_t payload_capacity, int* err) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t cap = (payload_capacity + page - 1) / page * page;
  size_t size = kPrefix + cap;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    *err = errno;
    return nullptr;
  }
  return std::unique_ptr<EntryBuffer>(new EntryBuffer(static_cast<char*>(p), size, cap));
}

EntryBuffer::EntryBuffer(char* base, size_t map_size, size_t capacity)
    : base_(base), map_size_(map_size), capacity_(capacity) {
  static_assert(sizeof(k::fuse_uring_req_header) + sizeof(k::fuse_in_header) +
                    k::kUringHeaderArea <= kPrefix,
                "the reassembled request must not overlap the ring header");
  iov_[0] = {base_, sizeof(k::fuse_uring_req_header)};
  iov_[1] = {base_ + kPrefix, capacity_};
}

EntryBuffer::~EntryBuffer() { munmap(base_, map_size_); }

uint64_t EntryBuffer::commit_id() const {
  const auto* h = reinterpret_cast<const k::fuse_uring_req_header*>(base_);
  return h->ring_ent_in_out.commit_id;
}

uint32_t EntryBuffer::request_payload_size() const {
  const auto* h = reinterpret_cast<const k::fuse_uring_req_header*>(base_);
  return h->ring_ent_in_out.payload_sz;
}

std::span<const char> EntryBuffer::assemble_request(const char** why) {
  auto* h = header();
  k::fuse_in_header in;
  std::memcpy(&in, h->in_out, sizeof in);
  size_t payload_len = h->ring_ent_in_out.payload_sz;
  if (payload_len > capacity_) {
    *why = "payload_sz exceeds the payload buffer";
    return {};
  }
  if (in.len < sizeof in + payload_len) {
    *why = "in_header.len is shorter than the header plus payload";
    return {};
  }
  size_t op_len = in.len - sizeof in - payload_len;
  if (op_len > k::kUringHeaderArea) {
    *why = "in_header.len leaves more than op_in can hold";
    return {};
  }
  char* start = payload() - (op_len + sizeof in);
  std::memcpy(start, &in, sizeof in);
  std::memcpy(start + sizeof in, h->op_in, op_len);
  return {start, in.len};
}

int EntryBuffer::encode_reply(const struct iovec* iov, int count) {
  auto* h = header();
  k::fuse_out_header oh{};
  if (count >= 1 && iov[0].iov_len == sizeof oh) std::memcpy(&oh, iov[0].iov_base, sizeof oh);
  size_t total = 0;
  for (int i = 1; i < count; ++i) total += iov[i].iov_len;
  if (count < 1 || iov[0].iov_len != sizeof oh || total > capacity_) {
    oh.len = sizeof oh;
    oh.error = -EIO;
    std::memcpy(h->in_out, &oh, sizeof oh);
    h->ring_ent_in_out.payload_sz = 0;
    return -EOVERFLOW;
  }
  char* dst = payload();
  auto inside = [&](const struct iovec& v) {
    const char* s = static_cast<const char*>(v.iov_base);
    return v.iov_len != 0 && s < dst + capacity_ && s + v.iov_len > dst;
  };
  int pieces = count - 1;
  bool any_inside = false;
  for (int i = 1; i < count; ++i) any_inside |= inside(iov[i]);
  if (pieces == 1 || !any_inside) {
    size_t off = 0;
    for (int i = 1; i < count; ++i) {
      if (iov[i].iov_len == 0) continue;
      if (iov[i].iov_base != dst + off) std::memmove(dst + off, iov[i].iov_base, iov[i].iov_len);
      off += iov[i].iov_len;
    }
  } else {
    // Several pieces, some already in the payload buffer: gather through a copy so no
    // piece is overwritten before it is read. Not a path Session takes today.
    std::vector<char> tmp(total);
    size_t off = 0;
    for (int i = 1; i < count; ++i) {
      if (iov[i].iov_len == 0) continue;
      std::memcpy(tmp.data() + off, iov[i].iov_base, iov[i].iov_len);
      off += iov[i].iov_len;
    }
    std::memcpy(dst, tmp.data(), total);
  }
  std::memcpy(h->in_out, &oh, sizeof oh);
  h->ring_ent_in_out.payload_sz = static_cast<uint32_t>(total);
  return 0;
}

}  // namespace uring

}  // namespace fuse
