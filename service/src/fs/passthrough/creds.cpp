#include "fs/passthrough/creds.h"

#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

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
}

CredScope::~CredScope() {
  if (!active_) return;
  // Back to fsuid 0: the kernel restores the file system capabilities from the permitted set.
  setfsuid(0);
  setfsgid(0);
}

}  // namespace efuse::fs::passthrough
