// Memory backend: extended attributes, POSIX ACLs among them (acl.h). The namespaces are
// tmpfs's: user., trusted., security. and the two ACLs; anything else is EOPNOTSUPP. The
// values of one inode may take up to kXattrMax bytes (names included), charged to the
// block pool in whole blocks.
#include <sys/xattr.h>
#include <time.h>

#include <cstring>
#include <mutex>

#include "fs/memory/acl.h"
#include "fs/memory/memory_fs.h"

namespace efuse::fs::memory {
namespace {

constexpr size_t kXattrMax = 65536;
constexpr size_t kXattrNameMax = 255;

bool known_namespace(std::string_view name) {
  for (std::string_view prefix : {"user.", "trusted.", "security."})
    if (name.size() > prefix.size() && name.substr(0, prefix.size()) == prefix) return true;
  return name == acl::kAccess || name == acl::kDefault;
}

uint64_t xattr_bytes(const Node& node) {
  uint64_t n = 0;
  for (const auto& [k, v] : node.xattrs) n += k.size() + v.size();
  return n;
}

}  // namespace

void MemoryFs::recharge_xattrs(Node& node, uint64_t want_blocks) {
  if (want_blocks < node.xattr_blocks) pool_.release(node.xattr_blocks - want_blocks);
  node.xattr_blocks = want_blocks;
}

Status MemoryFs::store_xattr(Node& node, std::string_view name, std::string value) {
  auto it = node.xattrs.find(name);
  uint64_t bytes = xattr_bytes(node) + name.size() + value.size();
  if (it != node.xattrs.end()) bytes -= it->first.size() + it->second.size();
  if (bytes > kXattrMax) return Errno{ENOSPC};
  uint64_t want = blocks_for(bytes);
  if (want > node.xattr_blocks && !pool_.reserve(want - node.xattr_blocks)) return Errno{ENOSPC};
  if (it != node.xattrs.end())
    it->second = std::move(value);
  else
    node.xattrs.emplace(std::string(name), std::move(value));
  recharge_xattrs(node, want);
  return {};
}

void MemoryFs::erase_xattr(Node& node, std::string_view name) {
  auto it = node.xattrs.find(name);
  if (it == node.xattrs.end()) return;
  node.xattrs.erase(it);
  recharge_xattrs(node, blocks_for(xattr_bytes(node)));
}

void MemoryFs::chmod_acl(Node& node) {
  auto it = node.xattrs.find(acl::kAccess);
  if (it == node.xattrs.end()) return;
  auto parsed = acl::parse(it->second);
  if (!parsed) return;
  acl::chmod(*parsed, node.mode);
  it->second = acl::format(*parsed);  // same size: the charge stays
}

Status MemoryFs::setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                          std::span<const char> value, int flags) {
  if (name.size() > kXattrNameMax) return Errno{ERANGE};
  if (!known_namespace(name)) return Errno{EOPNOTSUPP};
  if (value.size() > kXattrMax) return Errno{E2BIG};
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::unique_lock nl(node->mu);
  bool exists = node->xattrs.count(name) != 0;
  if ((flags & XATTR_CREATE) && exists) return Errno{EEXIST};
  if ((flags & XATTR_REPLACE) && !exists) return Errno{ENODATA};
  std::string v(value.data(), value.size());
  if (name == acl::kAccess || name == acl::kDefault) {
    auto parsed = acl::parse(v);
    if (!parsed) return Errno{EINVAL};
    if (name == acl::kDefault && !node->is_dir()) return Errno{EACCES};
    if (name == acl::kAccess) {
      // The mode follows the ACL; an ACL the mode says in full is not kept.
      mode_t mode = node->mode;
      bool equiv = acl::equiv_mode(*parsed, &mode);
      if (ctx.kill_sgid) mode &= ~S_ISGID;
      node->mode = mode;
      if (equiv) {
        erase_xattr(*node, name);
        clock_gettime(CLOCK_REALTIME, &node->ctime);
        return {};
      }
    }
  }
  Status s = store_xattr(*node, name, std::move(v));
  if (!s.ok()) return s;
  clock_gettime(CLOCK_REALTIME, &node->ctime);
  return {};
}

Result<size_t> MemoryFs::getxattr(const Context&, uint64_t ino, std::string_view name,
                                  std::span<char> buf) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::shared_lock nl(node->mu);
  auto it = node->xattrs.find(name);
  if (it == node->xattrs.end()) return known_namespace(name) ? Errno{ENODATA} : Errno{EOPNOTSUPP};
  if (buf.empty()) return it->second.size();
  if (buf.size() < it->second.size()) return Errno{ERANGE};
  std::memcpy(buf.data(), it->second.data(), it->second.size());
  return it->second.size();
}

Result<size_t> MemoryFs::listxattr(const Context&, uint64_t ino, std::span<char> buf) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::shared_lock nl(node->mu);
  size_t need = 0;
  for (const auto& [k, v] : node->xattrs) need += k.size() + 1;
  if (buf.empty()) return need;
  if (buf.size() < need) return Errno{ERANGE};
  size_t off = 0;
  for (const auto& [k, v] : node->xattrs) {
    std::memcpy(buf.data() + off, k.c_str(), k.size() + 1);
    off += k.size() + 1;
  }
  return need;
}

Status MemoryFs::removexattr(const Context&, uint64_t ino, std::string_view name) {
  if (!known_namespace(name)) return Errno{EOPNOTSUPP};
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::unique_lock nl(node->mu);
  if (!node->xattrs.count(name)) return Errno{ENODATA};
  erase_xattr(*node, name);
  clock_gettime(CLOCK_REALTIME, &node->ctime);
  return {};
}

}  // namespace efuse::fs::memory
