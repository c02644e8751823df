// systemd's file descriptor store (sd_pid_notify_with_fds FDSTORE=1, FileDescriptorStoreMax=
// in efused.service), which carries a mount's FUSE connection across a restart of efused:
//
//   efuse.NAME.conn   the connection's /dev/fuse descriptor (from mount(2))
//   efuse.NAME.clone  every other /dev/fuse descriptor of it (workers' and io_uring queues'
//                     clones): while systemd holds them, a killed efused's requests in flight
//                     stay queued on the connection instead of failing with ECONNABORTED
//   efuse.NAME.state  the mount's restart state (common/slot_file.h), a memfd
//
// systemd keeps the store while the unit restarts (systemctl restart, Restart=on-failure)
// and hands the descriptors to the next efused ($LISTEN_FDS / $LISTEN_FDNAMES); it empties
// the store when the unit stops for good. systemd 252 has no FileDescriptorStorePreserve=
// (254+): this is its default behaviour there too.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace efuse::daemon {

class FdStore {
 public:
  // Takes the descriptors systemd passed (sd_listen_fds_with_names; unsets $LISTEN_*).
  // Enabled when efused runs under systemd ($NOTIFY_SOCKET) and EFUSE_FDSTORE is not 0.
  FdStore();
  bool enabled() const { return enabled_; }

  struct Mount {
    UniqueFd conn;
    std::vector<UniqueFd> clones;
    UniqueFd state;
  };
  // What the previous efused left for mount `name` (empty when nothing), taken out.
  Mount take(const std::string& name);
  // Mount names with descriptors not taken yet (mounts no longer configured).
  std::vector<std::string> leftover() const;
  // Stored descriptors whose names efused does not know: closed, and reported here.
  size_t unknown() const { return unknown_; }

  // Puts descriptors under a name (kept besides those already stored under it).
  Status store(const std::string& mount, const char* kind, const std::vector<int>& fds) const;
  // Drops every descriptor stored under the name (systemd closes its copies).
  void remove(const std::string& mount, const char* kind) const;
  void remove_all(const std::string& mount) const;

 private:
  bool enabled_ = false;
  std::map<std::string, Mount> inherited_;
  size_t unknown_ = 0;
};

// Whether systemd is stopping efused's unit to start it again (a restart job: systemctl
// restart or try-restart, a package upgrade) rather than for good, asked over the system
// bus (the unit's Job and its JobType). *what says what was found, for the log. False when
// efused does not run in a systemd unit or the bus cannot tell.
bool restart_pending(std::string* what);

}  // namespace efuse::daemon
