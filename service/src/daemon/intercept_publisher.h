// Publishes a mount with `intercept: true` for libefuse_intercept.so (common/intercept_abi.h
// has the files and their layout) and reads the counters the library keeps for it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/intercept_abi.h"
#include "daemon/config.h"
#include "fs/filesystem.h"

namespace efuse::daemon {

// $EFUSE_INTERCEPT_DIR, else /run/efuse/intercept.
std::string intercept_dir();

class InterceptPublisher {
 public:
  InterceptPublisher() = default;
  ~InterceptPublisher() { withdraw(); }
  InterceptPublisher(const InterceptPublisher&) = delete;
  InterceptPublisher& operator=(const InterceptPublisher&) = delete;

  // Writes the mount's record (live) and maps its counters; `conn_id` is the FUSE
  // connection, whose device 0:conn_id the mount reports. A failure is logged and leaves
  // the mount unpublished (every call then goes through the kernel).
  void publish(const MountConfig& cfg, unsigned conn_id);
  // Marks the record not live (libraries stop serving at once), removes both files.
  void withdraw();
  bool published() const { return record_ != nullptr; }
  // efuse_intercept_calls_total{op,path} while published.
  std::vector<fs::Metric> metrics() const;

 private:
  efuse_intercept_record* record_ = nullptr;
  efuse_intercept_counters* counters_ = nullptr;
  std::string record_path_;
  std::string counters_path_;
  uint64_t generation_ = 0;
};

}  // namespace efuse::daemon
