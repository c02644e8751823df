// One efused per config file: while it runs, efused holds an flock() on a file in its
// runtime directory (/run/efuse, or $XDG_RUNTIME_DIR/efuse when not root) named after the
// config file's real path, with its PID inside (removed when efused exits). A second efused for the same file finds the
// lock taken and exits before mounting anything.
#pragma once

#include <string>

namespace efuse::daemon {

class ConfigLock {
 public:
  ConfigLock() = default;
  ~ConfigLock();
  ConfigLock(const ConfigLock&) = delete;
  ConfigLock& operator=(const ConfigLock&) = delete;

  enum class Outcome { Held, InUse, Unavailable };
  // Takes the lock for `config_path`. InUse: another process holds it, *message names it
  // ("... is in use by pid 123 (efused --config ...)"). Unavailable: the runtime directory
  // cannot be used (*message says why); efused runs unlocked then.
  Outcome acquire(const std::string& config_path, std::string* message);

  // Where the lock of `config_path` lives (for tests and messages).
  static std::string lock_path(const std::string& config_path);

 private:
  int fd_ = -1;
  std::string path_;  // removed on destruction, while still locked
};

}  // namespace efuse::daemon
