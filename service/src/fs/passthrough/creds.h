// Runs a creation (create, mkdir, mknod, symlink) with the caller's fsuid/fsgid so new
// objects get the caller's ownership and the backing file system's rules (setgid
// directories, quotas) apply. Per-thread: setfsuid/setfsgid and capset act on the calling
// thread only. The kernel has already checked permissions (default_permissions), so
// CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, which the switch clears, are raised again: the
// caller's supplementary groups are not known here.
//
// The second form switches to a caller's whole file system identity (fsuid, fsgid and
// supplementary groups) with no capability raised again, for an open whose permission
// check the backing file system makes itself (libefuse_intercept.so's hand-over,
// passthrough_library.cpp): fsuid other than 0 clears CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
// CAP_FOWNER and the other file system capabilities from the thread's effective set.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <vector>

namespace efuse::fs::passthrough {

class CredScope {
 public:
  CredScope(bool enabled, uid_t uid, gid_t gid, bool keep_dac_override = true);
  // Not for uid 0 (ok() is false: the caller's capabilities are not known here).
  CredScope(uid_t uid, gid_t gid, const gid_t* groups, size_t ngroups);
  ~CredScope();  // back to fsuid/fsgid 0 and the thread's own groups; aborts if it cannot
  CredScope(const CredScope&) = delete;
  CredScope& operator=(const CredScope&) = delete;

  // The thread now has the identity asked for.
  bool ok() const { return ok_; }

 private:
  bool active_ = false;
  bool ok_ = false;
  bool groups_set_ = false;
  std::vector<gid_t> own_groups_;
};

}  // namespace efuse::fs::passthrough
