// POSIX ACLs of the memory backend, kept as the system.posix_acl_access and
// system.posix_acl_default xattrs in the kernel's binary format.
//
// With FUSE_POSIX_ACL (negotiated when the mount has default_permissions, which memory
// mounts require) the kernel checks permissions against these ACLs itself and leaves the
// rest to the file system: an ACL set must update the mode's permission bits (and is not
// kept when the mode says everything it says), a chmod must update the ACL, and a new
// inode takes its ACLs from its directory's default ACL (the umask applies only without
// one). These functions are the kernel's posix_acl_* helpers of the same names.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace efuse::fs::memory::acl {

inline constexpr std::string_view kAccess = "system.posix_acl_access";
inline constexpr std::string_view kDefault = "system.posix_acl_default";

enum Tag : uint16_t {
  kUserObj = 0x01,
  kUser = 0x02,
  kGroupObj = 0x04,
  kGroup = 0x08,
  kMask = 0x10,
  kOther = 0x20,
};

struct Entry {
  uint16_t tag;
  uint16_t perm;
  uint32_t id;
};
using Acl = std::vector<Entry>;

// The xattr value (version 2, then 8-byte entries); nullopt when malformed (EINVAL).
std::optional<Acl> parse(std::string_view value);
std::string format(const Acl& acl);

// posix_acl_equiv_mode: sets *mode's rwx bits from the ACL; true when the ACL says no more
// than the mode (then it need not be kept).
bool equiv_mode(const Acl& acl, mode_t* mode);
// posix_acl_create_masq: a directory's default ACL turned into a new inode's access ACL
// for the requested `*mode`; both are narrowed to each other. True when the result says
// more than the mode (keep it).
bool create_masq(Acl& acl, mode_t* mode);
// posix_acl_chmod: the ACL's owner, mask (or group) and other entries follow `mode`.
void chmod(Acl& acl, mode_t mode);

// Who asks, as the kernel's permission check sees a task: fsuid, fsgid, supplementary groups.
struct Caller {
  uint32_t uid;
  uint32_t gid;
  const std::vector<uint32_t>* groups;
  bool in_group(uint32_t g) const;
};
// acl_permission_check and posix_acl_permission: whether `who` may `want` (MAY_* bits: 4
// read, 2 write, 1 execute) an inode of `mode`, `owner` and `group` with access ACL `acl`
// (null: none), by the modes and the ACL alone. Capabilities are not looked at: root is
// checked as any user (what this refuses, CAP_DAC_OVERRIDE may still grant).
bool permits(const Caller& who, mode_t mode, uint32_t owner, uint32_t group, const Acl* acl,
             unsigned want);

}  // namespace efuse::fs::memory::acl
