// FUSE mounts from /proc/self/mountinfo, keyed by the connection id the BPF programs see
// (the super block's device number in the kernel's encoding, major << 20 | minor; equal to
// the name of /sys/fs/fuse/connections/<id>). Used to label BPF metrics with the mountpoint
// and file system type of each connection.
#pragma once

#include <cstdint>
#include <map>
#include <set>
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

// Live FUSE connections: the entries of /sys/fs/fuse/connections when the fusectl file
// system is mounted there (host-wide, every mount namespace), else the connections of
// read_fuse_mounts(). `*host_wide` tells which.
std::set<uint32_t> live_connections(bool* host_wide = nullptr);

}  // namespace efuse::bpf
