// The socket through which libefuse_intercept.so tells efused, before its call returns,
// about backing files it opened for writing or whose attributes it changed
// (common/intercept_abi.h: EFUSE_IREQ_*; docs/intercept.md has the contract). One per
// mount with writes through the library, owned by its InterceptPublisher; one thread
// answers every connection and sweeps the backend's marks once a second while there are any.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fs/filesystem.h"

namespace efuse::daemon {

class InterceptServer {
 public:
  // Listens on `path` (mode 0666; a file left there is replaced) for `fs`. With
  // `allow_other` false only efused's user and root are answered, as the mount lets only
  // them in. Null with *why when the socket cannot be had.
  static std::unique_ptr<InterceptServer> start(const std::string& path, fs::Filesystem& fs,
                                                bool allow_other, std::string* why);
  ~InterceptServer();  // stops the thread, closes every connection, removes the socket
  InterceptServer(const InterceptServer&) = delete;
  InterceptServer& operator=(const InterceptServer&) = delete;

  const std::string& path() const { return path_; }
  // Requests answered, by outcome (tests, /metrics).
  uint64_t accepted() const { return accepted_.load(); }
  uint64_t refused() const { return refused_.load(); }
  uint64_t malformed() const { return malformed_.load(); }

  // Connections served at once; past it a new one is closed at once (its library lets the
  // kernel serve).
  static constexpr size_t kMaxConnections = 256;

 private:
  InterceptServer(std::string path, fs::Filesystem& fs, bool allow_other, int listen_fd,
                  int wake_fd);
  void run();
  void take_connections();
  // Reads and answers one request; false when the connection is to be closed.
  bool answer(int conn);

  const std::string path_;
  fs::Filesystem& fs_;
  const bool allow_other_;
  const uid_t owner_;
  int listen_fd_;
  int wake_fd_;  // eventfd: stop
  std::vector<int> conns_;  // the thread's only
  std::atomic<uint64_t> accepted_{0}, refused_{0}, malformed_{0};
  std::thread thread_;
};

}  // namespace efuse::daemon
