// FUSE mounts from /proc/self/mountinfo, keyed by the connection id the BPF programs see
// (the super block's device number in the kernel's encoding, major << 20 | minor; equal to
// the name of /sys/fs/fuse/connections/<id>). Used to label BPF metrics with the mountpoint
// and file system type of each connection.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace efuse::bpf {

struct FuseMount {
  std::string mountpoint;  // unescaped (\040 -> ' ')
  std::string fstype;      // "fuse", "fuse.efuse", "fuse.passthrough_ll", "fuseblk", ...
};

// Kernel dev_t encoding of "major:minor" (MKDEV).
constexpr uint32_t connection_id(uint32_t major, uint32_t minor) {
  return (major << 20) | (minor & 0xfffffU);
}
std::string connection_name(uint32_t conn);  // "major:minor"

// Parses mountinfo text; keeps FUSE mounts only (fstype "fuse", "fuse.*", "fuseblk").
// When a connection is mounted more than once (bind mounts), the mount of the file
// system's root ("/" in field 4) wins, then the first one listed.
std::map<uint32_t, FuseMount> parse_fuse_mounts(std::string_view mountinfo);

// parse_fuse_mounts() of /proc/self/mountinfo; empty when unreadable.
std::map<uint32_t, FuseMount> read_fuse_mounts();

// The fusectl file system (one directory per FUSE connection on the host, every mount
// namespace): systemd's mount at /sys/fs/fuse/connections when it is there, else an
// instance of efused's own, mounted nowhere (fsopen/fsmount: a detached mount that goes
// away with its descriptor; nothing in any mount table changes).
class FuseCtl {
 public:
  // Not ok() when neither can be had (no fusectl in the kernel, no privilege); *reason says
  // why.
  static FuseCtl open(std::string* reason);
  FuseCtl() = default;
  FuseCtl(FuseCtl&& o) noexcept : dirfd_(o.dirfd_) { o.dirfd_ = -1; }
  FuseCtl& operator=(FuseCtl&& o) noexcept;
  FuseCtl(const FuseCtl&) = delete;
  FuseCtl& operator=(const FuseCtl&) = delete;
  ~FuseCtl();

  bool ok() const { return dirfd_ >= 0; }
  // Every FUSE connection on the host -> the requests the kernel holds for it: its
  // `waiting` file (fuse_conn.num_waiting: sent and not ended, or waiting for a background
  // slot). A connection whose file cannot be read (it went away meanwhile) is left out.
  std::map<uint32_t, uint64_t> waiting() const;

 private:
  explicit FuseCtl(int dirfd) : dirfd_(dirfd) {}
  int dirfd_ = -1;
};

}  // namespace efuse::bpf
