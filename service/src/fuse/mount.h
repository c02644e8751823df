// Mounting and unmounting FUSE file systems: mount(2) as root, fusermount3 otherwise.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace fuse {

struct MountOptions {
  std::string fsname;      // shown as the source in mountinfo
  std::string subtype = "efuse";
  std::string mountpoint;  // absolute
  bool allow_other = true;
  bool default_permissions = true;
  bool read_only = false;
  // Through the efuse kernel module (kmod/): /dev/efuse, file system type efuse.<subtype>,
  // connections under /sys/fs/efuse/connections. Root only (no fusermount3 for it).
  bool efuse_module = false;
};

struct Mounted {
  int fd = -1;          // /dev/fuse (/dev/efuse) fd of the new connection
  unsigned conn_id = 0;  // /sys/fs/fuse/connections/<id> (/sys/fs/efuse/connections/<id>)
  bool via_fusermount = false;
  bool efuse_module = false;
};

// Whether the efuse kernel module is loaded (/proc/filesystems lists efuse and /dev/efuse
// exists). When not, *why says what is missing.
bool efuse_module_loaded(std::string* why);

// If `mountpoint` holds a dead FUSE mount ("Transport endpoint is not connected"), detaches
// it. Returns true when it did.
bool detach_stale(const std::string& mountpoint);

efuse::Result<Mounted> mount(const MountOptions& opts, std::string* error);

// The topmost mount at `mountpoint` when it is a FUSE mount (fuse, fuse.*, fuseblk, and the
// efuse module's efuse, efuse.*, efuseblk), from /proc/self/mountinfo.
struct FuseMountAt {
  std::string fstype;    // "fuse.efuse", "fuse.sshfs", ...
  std::string source;    // the mount's source (fsname)
  unsigned conn_id = 0;  // the FUSE connection: the minor of the mount's anonymous device
};
std::optional<FuseMountAt> fuse_mount_at(const std::string& mountpoint);
// Where FUSE connection `conn_id` is mounted (the last such mount), "" when nowhere.
std::string mountpoint_of(unsigned conn_id);

// The processes holding a /dev/fuse descriptor of connection `conn_id` (the servers), found
// by the "fuse_connection:" line of /proc/PID/fdinfo (empty on kernels that do not show it).
std::vector<pid_t> fuse_servers(unsigned conn_id);

// "fuse.efuse mount of /src (FUSE connection 40, served by pid 12 (efused --config /x))":
// what holds a mountpoint, for an operator.
std::string describe_holder(const FuseMountAt& at);

// Unmounts; when busy, detaches lazily (the mountpoint is free at once, open files keep the
// connection until they close). Returns "unmounted" / "detached" for the log.
efuse::Result<const char*> unmount(const std::string& mountpoint, bool via_fusermount);

// Aborts a connection through fusectl (/sys/fs/fuse/connections/<id>/abort; with
// `efuse_module`, the module's efusectl at /sys/fs/efuse/connections).
bool abort_connection(unsigned conn_id, bool efuse_module = false);

}  // namespace fuse
