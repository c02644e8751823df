#include "fs/memory/acl.h"

#include <sys/stat.h>

#include <cstring>

namespace efuse::fs::memory::acl {
namespace {

constexpr uint32_t kVersion = 2;
constexpr size_t kHeader = 4;
constexpr size_t kEntry = 8;

uint32_t get32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // little endian: x86 and every Debian architecture this runs on
}
uint16_t get16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

}  // namespace

std::optional<Acl> parse(std::string_view value) {
  if (value.size() < kHeader || (value.size() - kHeader) % kEntry != 0) return std::nullopt;
  if (get32(value.data()) != kVersion) return std::nullopt;
  Acl acl;
  for (size_t off = kHeader; off < value.size(); off += kEntry) {
    Entry e{get16(value.data() + off), get16(value.data() + off + 2),
            get32(value.data() + off + 4)};
    switch (e.tag) {
      case kUserObj: case kUser: case kGroupObj: case kGroup: case kMask: case kOther:
        break;
      default:
        return std::nullopt;
    }
    if (e.perm & ~7u) return std::nullopt;
    acl.push_back(e);
  }
  return acl;
}

std::string format(const Acl& acl) {
  std::string out(kHeader + acl.size() * kEntry, '\0');
  std::memcpy(out.data(), &kVersion, 4);
  size_t off = kHeader;
  for (const Entry& e : acl) {
    std::memcpy(out.data() + off, &e.tag, 2);
    std::memcpy(out.data() + off + 2, &e.perm, 2);
    std::memcpy(out.data() + off + 4, &e.id, 4);
    off += kEntry;
  }
  return out;
}

bool equiv_mode(const Acl& acl, mode_t* mode) {
  mode_t m = 0;
  bool not_equiv = false;
  for (const Entry& e : acl) {
    switch (e.tag) {
      case kUserObj: m |= (e.perm & 7) << 6; break;
      case kGroupObj: m |= (e.perm & 7) << 3; break;
      case kOther: m |= e.perm & 7; break;
      case kMask:
        m = (m & ~S_IRWXG) | ((e.perm & 7) << 3);
        not_equiv = true;
        break;
      default: not_equiv = true; break;
    }
  }
  *mode = (*mode & ~(S_IRWXU | S_IRWXG | S_IRWXO)) | m;
  return !not_equiv;
}

bool create_masq(Acl& acl, mode_t* mode_p) {
  mode_t mode = *mode_p;
  Entry* group_obj = nullptr;
  Entry* mask = nullptr;
  bool not_equiv = false;
  for (Entry& e : acl) {
    switch (e.tag) {
      case kUserObj:
        e.perm &= (mode >> 6) & 7;
        mode &= (static_cast<mode_t>(e.perm) << 6) | ~S_IRWXU;
        break;
      case kUser: case kGroup: not_equiv = true; break;
      case kGroupObj: group_obj = &e; break;
      case kOther:
        e.perm &= mode & 7;
        mode &= static_cast<mode_t>(e.perm) | ~S_IRWXO;
        break;
      case kMask: mask = &e; not_equiv = true; break;
    }
  }
  Entry* g = mask != nullptr ? mask : group_obj;
  if (g != nullptr) {
    g->perm &= (mode >> 3) & 7;
    mode &= (static_cast<mode_t>(g->perm) << 3) | ~S_IRWXG;
  }
  *mode_p = (*mode_p & ~(S_IRWXU | S_IRWXG | S_IRWXO)) | (mode & (S_IRWXU | S_IRWXG | S_IRWXO));
  return not_equiv;
}

void chmod(Acl& acl, mode_t mode) {
  Entry* group_obj = nullptr;
  Entry* mask = nullptr;
  for (Entry& e : acl) {
    switch (e.tag) {
      case kUserObj: e.perm = (mode & S_IRWXU) >> 6; break;
      case kGroupObj: group_obj = &e; break;
      case kMask: mask = &e; break;
      case kOther: e.perm = mode & S_IRWXO; break;
      default: break;
    }
  }
  Entry* g = mask != nullptr ? mask : group_obj;
  if (g != nullptr) g->perm = (mode & S_IRWXG) >> 3;
}

bool Caller::in_group(uint32_t g) const {
  if (g == gid) return true;
  for (uint32_t s : *groups)
    if (s == g) return true;
  return false;
}

bool permits(const Caller& who, mode_t mode, uint32_t owner, uint32_t group, const Acl* acl,
             unsigned want) {
  want &= 7;
  if (who.uid == owner) return ((mode >> 6) & want) == want;
  // As the kernel: an ACL is looked at only while the group bits (its mask) grant anything.
  if (acl == nullptr || acl->empty() || (mode & S_IRWXG) == 0) {
    unsigned bits = who.in_group(group) ? (mode >> 3) & 7 : mode & 7;
    return (bits & want) == want;
  }
  // The entries in the order the kernel keeps them (user_obj, users, group_obj, groups,
  // mask, other); the first that names the caller decides, masked by the mask entry.
  const Entry* match = nullptr;
  bool found = false;  // in a group entry, none of which grants all of `want`
  for (const Entry& e : *acl) {
    switch (e.tag) {
      case kUserObj:
        break;  // the owner was handled above
      case kUser:
        if (e.id == who.uid) match = &e;
        break;
      case kGroupObj:
      case kGroup:
        if (who.in_group(e.tag == kGroupObj ? group : e.id)) {
          found = true;
          if ((e.perm & want) == want) match = &e;
        }
        break;
      case kMask:
        break;
      case kOther:
        if (found) return false;
        return (e.perm & want) == want;
    }
    if (match != nullptr) break;
  }
  if (match == nullptr) return false;  // no other entry: malformed, refuse
  for (const Entry& e : *acl)
    if (e.tag == kMask) return (match->perm & e.perm & want) == want;
  return (match->perm & want) == want;
}

}  // namespace efuse::fs::memory::acl
