#include "fs/passthrough/creds.h"

#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

#include "common/log.h"

namespace efuse::fs::passthrough {
namespace {

void raise_dac_caps() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (syscall(SYS_capget, &hdr, data) != 0) return;
  data[0].effective |= (1u << CAP_DAC_OVERRIDE) | (1u << CAP_DAC_READ_SEARCH);
  data[0].effective &= data[0].permitted;
  (void)syscall(SYS_capset, &hdr, data);
}

}  // namespace

CredScope::CredScope(bool enabled, uid_t uid, gid_t gid, bool keep_dac_override) {
  if (!enabled || (uid == 0 && gid == 0)) return;
  // setfsgid first: once fsuid is not 0 we may lose the right to change fsgid.
  setfsgid(gid);
  setfsuid(uid);
  if (keep_dac_override) raise_dac_caps();
  active_ = true;
  ok_ = true;
}

CredScope::CredScope(uid_t uid, gid_t gid, const gid_t* groups, size_t ngroups) {
  if (uid == 0) return;
  // glibc's setgroups() changes every thread of the process; the system call, this one.
  long n = syscall(SYS_getgroups, 0, nullptr);
  if (n < 0) return;
  own_groups_.resize(static_cast<size_t>(n));
  if (n > 0 && syscall(SYS_getgroups, n, own_groups_.data()) != n) return;
  active_ = true;
  groups_set_ = true;
  if (syscall(SYS_setgroups, ngroups, groups) != 0) return;
  setfsgid(gid);
  setfsuid(uid);
  // setfsuid/setfsgid return the previous value whatever happens: read them back.
  ok_ = static_cast<uid_t>(setfsuid(static_cast<uid_t>(-1))) == uid &&
        static_cast<gid_t>(setfsgid(static_cast<gid_t>(-1))) == gid;
}

CredScope::~CredScope() {
  if (!active_) return;
  // Back to fsuid 0: the kernel restores the file system capabilities from the permitted set.
  setfsuid(0);
  setfsgid(0);
  bool back = static_cast<uid_t>(setfsuid(static_cast<uid_t>(-1))) == 0 &&
              static_cast<gid_t>(setfsgid(static_cast<gid_t>(-1))) == 0;
  if (groups_set_)
    back = syscall(SYS_setgroups, own_groups_.size(), own_groups_.data()) == 0 && back;
  if (!back) {
    // A thread of efused that goes on with a user's identity cannot be trusted with anything.
    LOG_ERROR("cannot switch back from a caller's file system identity; stopping");
    std::abort();
  }
}

}  // namespace efuse::fs::passthrough
