// Runs a creation (create, mkdir, mknod, symlink) with the caller's fsuid/fsgid so new
// objects get the caller's ownership and the backing file system's rules (setgid
// directories, quotas) apply. Per-thread: setfsuid/setfsgid and capset act on the calling
// thread only. The kernel has already checked permissions (default_permissions), so
// CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, which the switch clears, are raised again: the
// caller's supplementary groups are not known here.
#pragma once

#include <sys/types.h>

namespace efuse::fs::passthrough {

class CredScope {
 public:
  CredScope(bool enabled, uid_t uid, gid_t gid, bool keep_dac_override = true);
  ~CredScope();
  CredScope(const CredScope&) = delete;
  CredScope& operator=(const CredScope&) = delete;

 private:
  bool active_ = false;
};

}  // namespace efuse::fs::passthrough
