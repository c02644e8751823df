// Publishes a mount with `intercept: true` for libefuse_intercept.so (common/intercept_abi.h
// has the files and their layout) and reads the counters the library keeps for it.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/intercept_abi.h"
#include "daemon/config.h"
#include "daemon/intercept_server.h"
#include "fs/filesystem.h"

namespace efuse::daemon {

// $EFUSE_INTERCEPT_DIR, else /run/efuse/intercept.
std::string intercept_dir();

class InterceptPublisher {
 public:
  InterceptPublisher() = default;
  ~InterceptPublisher() { withdraw(false); }
  InterceptPublisher(const InterceptPublisher&) = delete;
  InterceptPublisher& operator=(const InterceptPublisher&) = delete;

  // Writes the mount's record (live) and maps its counters; `conn_id` is the FUSE
  // connection, whose device 0:conn_id the mount reports. A failure is logged and leaves
  // the mount unpublished (every call then goes through the kernel). Where `fs` takes the
  // library's writes (and the mount is writable) the intercept socket is started with the
  // first publication and kept until the mount stops (EFUSE_IR_WRITES).
  void publish(const MountConfig& cfg, unsigned conn_id, fs::Filesystem* fs = nullptr);
  // Marks the record not live (libraries stop serving at once) and removes both files.
  // `mount_goes_on` (intercept turned off, the mount stays): descriptors the libraries
  // already opened keep working until the mount stops (a later withdraw(false)); else
  // they fail with ENOTCONN from now on, as the mount's own files will.
  void withdraw(bool mount_goes_on);
  // The mount is left to the next efused (restart): its records say the mount goes on and
  // stay so (the next efused publishes its own); nothing is withdrawn later.
  void leave_for_restart();
  bool published() const { return record_ != nullptr; }
  // The intercept socket while it runs (null otherwise).
  const InterceptServer* server() const { return server_.get(); }
  // efuse_intercept_calls_total{op,path} while published: the sum over the per-user
  // counter files of this publication, each counted only as far as it ever went (a user
  // can reset or remove their own file, never make the sum go down or count for others).
  std::vector<fs::Metric> metrics() const;

 private:
  efuse_intercept_record* record_ = nullptr;
  std::vector<efuse_intercept_record*> withdrawn_;  // FILES_GO_ON records, until the stop
  std::string record_path_;
  std::string counts_dir_;     // <dir>/counts
  std::string counts_prefix_;  // m-<hash>-<pid>-<generation>. (then the uid)
  uint64_t generation_ = 0;
  using Calls = std::array<uint64_t, 2 * EFUSE_IOP_COUNT>;
  mutable std::mutex counts_mu_;
  mutable std::map<uint32_t, Calls> counts_seen_;  // per uid: the highest values read
  // m-<hash>-<pid>.sock: from the first publication with writes until withdraw(false) or
  // leave_for_restart (descriptors opened while published may still write after a
  // withdrawal that keeps the mount: their marks must still be swept).
  std::unique_ptr<InterceptServer> server_;
};

}  // namespace efuse::daemon
