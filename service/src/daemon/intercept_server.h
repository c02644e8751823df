// The socket through which libefuse_intercept.so tells efused, before its call returns,
// about backing files it opened for writing or whose attributes it changed, and asks
// efused to open a backing file it cannot open itself, with its own credentials (the
// hand-over) (common/intercept_abi.h: EFUSE_IREQ_*; docs/intercept.md has the contract).
// One per mount with writes or hand-overs through the library, owned by its
// InterceptPublisher; one thread answers every connection and sweeps the backend's marks
// once a second while there are any.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/intercept_abi.h"
#include "fs/filesystem.h"

namespace efuse::daemon {

class InterceptServer {
 public:
  struct Options {
    // false: only efused's user and root are answered, as the mount lets only them in.
    bool allow_other = true;
    bool writes = false;  // EFUSE_IREQ_WRITING and _CHANGED are taken (else EROFS)
    bool opens = false;   // EFUSE_IREQ_OPEN is taken (else EOPNOTSUPP)
    // EFUSE_IREQ_OPEN_NODE is taken instead (a memory mount, no backing directory): the
    // descriptor sent must be one of the mount's, whose device is `mount_dev`.
    bool nodes = false;
    dev_t mount_dev = 0;
    // The mountpoint's parent, which a hand-over's caller must be able to search.
    std::string mount_parent;
  };
  // Listens on `path` (mode 0666; a file left there is replaced) for `fs`. Null with *why
  // when the socket cannot be had.
  static std::unique_ptr<InterceptServer> start(const std::string& path, fs::Filesystem& fs,
                                                const Options& options, std::string* why);
  ~InterceptServer();  // stops the thread, closes every connection, removes the socket
  InterceptServer(const InterceptServer&) = delete;
  InterceptServer& operator=(const InterceptServer&) = delete;

  const std::string& path() const { return path_; }
  // Requests answered, by outcome (tests, /metrics).
  uint64_t accepted() const { return accepted_.load(); }
  uint64_t refused() const { return refused_.load(); }
  uint64_t malformed() const { return malformed_.load(); }
  // Hand-overs (EFUSE_IREQ_OPEN): descriptors passed, and opens refused (the caller's
  // credentials do not allow it, not a regular file, missing, root, ...: the library then
  // lets the kernel answer). Malformed ones count in malformed().
  uint64_t handed_over() const { return handed_over_.load(); }
  uint64_t handover_refused() const { return handover_refused_.load(); }
  const Options& options() const { return options_; }

  // Connections served at once; past it a new one is closed at once (its library lets the
  // kernel serve).
  static constexpr size_t kMaxConnections = 256;

 private:
  InterceptServer(std::string path, fs::Filesystem& fs, const Options& options, int listen_fd,
                  int wake_fd);
  void run();
  void take_connections();
  // Reads and answers one request; false when the connection is to be closed.
  bool answer(int conn);
  // EFUSE_IREQ_OPEN (node_fd -1) or EFUSE_IREQ_OPEN_NODE (node_fd: the file, opened O_PATH
  // through the mount) from `conn`: the descriptor (error 0) or the errno of the refusal.
  int hand_over(int conn, const efuse_intercept_open& req, int node_fd, int* fd);

  const std::string path_;
  fs::Filesystem& fs_;
  const Options options_;
  const uid_t owner_;
  int listen_fd_;
  int wake_fd_;  // eventfd: stop
  std::vector<int> conns_;  // the thread's only
  std::atomic<uint64_t> accepted_{0}, refused_{0}, malformed_{0};
  std::atomic<uint64_t> handed_over_{0}, handover_refused_{0};
  std::thread thread_;
};

}  // namespace efuse::daemon
