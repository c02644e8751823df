// One served mount: backend + session + channel + the kernel mount, with its lifecycle.
#pragma once

#include <memory>
#include <string>

#include "fs/filesystem.h"
#include "fuse/channel.h"
#include "fuse/mount.h"
#include "fuse/session.h"

namespace efuse::daemon {

struct MountSpec {
  std::string name;
  std::string source;      // absolute, resolved
  std::string mountpoint;  // absolute, resolved
  unsigned threads = 4;
  bool passthrough_io = true;
  bool writeback_cache = false;
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  bool allow_other = true;
  bool default_permissions = true;
  bool read_only = false;
};

// Checks a spec against the file system: source and mountpoint exist and are directories,
// and neither lies inside the other (efused must never serve its own mountpoint).
// Returns an empty string when valid, else the problem in words.
std::string validate(const MountSpec& spec);

class MountInstance {
 public:
  explicit MountInstance(MountSpec spec);
  ~MountInstance();
  MountInstance(const MountInstance&) = delete;
  MountInstance& operator=(const MountInstance&) = delete;

  // Mounts, answers INIT and starts the workers. On failure nothing stays mounted.
  Status start(std::string* error);
  // Unmounts (lazily when busy), waits for the workers, aborts the connection if clients
  // keep it alive longer than `grace_ms`.
  void stop(int grace_ms = 2000);
  // True once the connection ended without stop() (someone unmounted it).
  bool lost() const;

  const MountSpec& spec() const { return spec_; }
  const fuse::Session* session() const { return session_.get(); }

 private:
  MountSpec spec_;
  std::unique_ptr<fs::Filesystem> fs_;
  std::unique_ptr<fuse::Session> session_;
  std::unique_ptr<fuse::ClassicChannel> channel_;
  fuse::Mounted mounted_;
  bool mounted_now_ = false;
};

}  // namespace efuse::daemon
