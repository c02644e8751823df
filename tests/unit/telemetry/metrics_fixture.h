// Test support for the telemetry tests: a real fuse::Session over a tiny in-memory
// filesystem, driven by real requests; a fake MetricsSource; a parser for the Prometheus
// text format; a minimal HTTP GET client.
//
// Not a test source itself (the unit CMakeLists globs *_test.cpp).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "fs/filesystem.h"
#include "fuse/kernel.h"
#include "fuse/session.h"
#include "fuse/stats.h"
#include "telemetry/source.h"

namespace efuse::telemetry::testing {

namespace k = fuse::kernel;

// lookup("present") finds a file, lookup("secret") is EACCES, anything else ENOENT;
// getattr always succeeds. Every other operation keeps the ENOSYS default.
class TinyFs final : public fs::Filesystem {
 public:
  Result<fs::Entry> lookup(const fs::Context&, uint64_t, std::string_view name) override {
    if (name == "secret") return Errno{EACCES};
    if (name != "present") return Errno{ENOENT};
    fs::Entry e;
    e.ino = 2;
    e.attr.st_ino = 2;
    e.attr.st_mode = S_IFREG | 0644;
    e.attr.st_nlink = 1;
    return e;
  }
  Result<fs::Attr> getattr(const fs::Context&, uint64_t ino, const uint64_t*) override {
    fs::Attr a;
    a.attr.st_ino = ino;
    a.attr.st_mode = S_IFDIR | 0755;
    a.attr.st_nlink = 2;
    return a;
  }
};

// Counts replies and drops them. The session has no connection, so passthrough backing
// files are refused as an unprivileged daemon's kernel would.
class CountingTransport final : public fuse::Transport {
 public:
  int send(const struct iovec*, int) override {
    ++replies;
    return 0;
  }
  std::atomic<int> replies{0};
};

template <class T>
std::string pod(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

inline std::string request(uint32_t opcode, uint64_t nodeid, uint64_t unique,
                           std::string_view body) {
  k::fuse_in_header h{};
  h.len = static_cast<uint32_t>(sizeof h + body.size());
  h.opcode = opcode;
  h.unique = unique;
  h.nodeid = nodeid;
  h.uid = getuid();
  h.gid = getgid();
  h.pid = static_cast<uint32_t>(getpid());
  return pod(h) + std::string(body);
}

// What the test kernel offers at INIT: passthrough, io_uring and writeback cache among
// others, but not flock locks.
inline constexpr uint64_t kOffered = [] {
  using namespace k::init;
  return kAsyncRead | kPosixLocks | kBigWrites | kAutoInvalData | kDoReaddirplus |
         kReaddirplusAuto | kAsyncDio | kWritebackCache | kParallelDirops | kMaxPages |
         kCacheSymlinks | kInitExt | kPassthrough | kOverIoUring;
}();

// A Session over TinyFs, with helpers to send it requests.
class DrivenSession {
 public:
  explicit DrivenSession(fuse::SessionOptions opts = default_options())
      : session_(fs_, opts), scratch_(opts.max_write + 4096) {}
  ~DrivenSession() { session_.shutdown(); }

  static fuse::SessionOptions default_options() {
    fuse::SessionOptions o;
    o.passthrough = true;
    o.writeback_cache = true;  // requested, but passthrough wins: granted = 0
    o.max_write = 128 * 1024;
    return o;
  }

  const fuse::Session& session() const { return session_; }

  void send(uint32_t opcode, uint64_t nodeid, std::string_view body) {
    send_raw(request(opcode, nodeid, unique_++, body));
  }
  void send_raw(std::string_view req) {
    session_.handle(std::span<const char>(req.data(), req.size()), transport_,
                    std::span<char>(scratch_));
  }
  void init(uint64_t offered = kOffered) {
    k::fuse_init_in in{};
    in.major = k::kVersion;
    in.minor = k::kMinorVersion;
    in.max_readahead = 128 * 1024;
    in.flags = static_cast<uint32_t>(offered);
    in.flags2 = static_cast<uint32_t>(offered >> 32);
    send(static_cast<uint32_t>(k::Opcode::Init), 0, pod(in));
  }
  void lookup(std::string_view name) {
    std::string body(name);
    body.push_back('\0');
    send(static_cast<uint32_t>(k::Opcode::Lookup), k::kRootId, body);
  }
  void getattr() {
    send(static_cast<uint32_t>(k::Opcode::Getattr), k::kRootId, pod(k::fuse_getattr_in{}));
  }

 private:
  TinyFs fs_;
  CountingTransport transport_;
  fuse::Session session_;
  std::vector<char> scratch_;
  uint64_t unique_ = 1;
};

// A MetricsSource over views the test owns.
class FakeSource final : public MetricsSource {
 public:
  void visit_mounts(const std::function<void(const MountView&)>& fn) const override {
    for (const MountView& m : mounts) fn(m);
  }
  DaemonView daemon() const override { return daemon_view; }

  std::vector<MountView> mounts;
  DaemonView daemon_view;
};

// ---- the Prometheus text format --------------------------------------------------------------

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::vector<Sample> samples;
  std::map<std::string, std::string> help;  // family -> HELP text
  std::map<std::string, std::string> type;  // family -> TYPE

  // The samples named `name` whose labels include all of `match`.
  std::vector<Sample> find(const std::string& name,
                           const std::map<std::string, std::string>& match = {}) const {
    std::vector<Sample> out;
    for (const Sample& s : samples) {
      if (s.name != name) continue;
      bool all = true;
      for (const auto& [k, v] : match) {
        auto it = s.labels.find(k);
        if (it == s.labels.end() || it->second != v) all = false;
      }
      if (all) out.push_back(s);
    }
    return out;
  }
  // The value of the one sample with exactly these labels; nullopt if there is none.
  std::optional<double> value(const std::string& name,
                              const std::map<std::string, std::string>& labels = {}) const {
    for (const Sample& s : samples)
      if (s.name == name && s.labels == labels) return s.value;
    return std::nullopt;
  }
};

// Parses `name{k="v",...} value` lines and # HELP / # TYPE comments; a line it cannot
// parse is a test failure.
inline Exposition parse_exposition(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      std::string rest = line.substr(7);
      size_t sp = rest.find(' ');
      auto& map = line[2] == 'H' ? e.help : e.type;
      map[rest.substr(0, sp)] = sp == std::string::npos ? "" : rest.substr(sp + 1);
      continue;
    }
    if (line[0] == '#') continue;
    Sample s;
    size_t i = line.find_first_of("{ ");
    s.name = line.substr(0, i);
    if (i != std::string::npos && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        std::string key = line.substr(i, eq - i);
        std::string val;
        size_t j = eq + 2;  // past ="
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            val.push_back(line[j] == 'n' ? '\n' : line[j]);
          } else {
            val.push_back(line[j]);
          }
        }
        s.labels[key] = val;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // past }
    }
    std::string value = line.substr(line.find_first_not_of(' ', i));
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);
    if (end == value.c_str()) ADD_FAILURE() << "unparsable sample line: " << line;
    e.samples.push_back(std::move(s));
  }
  return e;
}

// ---- HTTP --------------------------------------------------------------------------------

struct HttpResponse {
  int status = 0;
  std::string headers;
  std::string body;
};

// GET `path` from 127.0.0.1:port (or [::1]:port) with HTTP/1.0; throws std::runtime_error
// when the connection fails.
inline HttpResponse http_get(uint16_t port, const std::string& path = "/metrics",
                             bool ipv6 = false) {
  int fd = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + strerror(errno));
  struct timeval tv {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int rc;
  if (ipv6) {
    struct sockaddr_in6 sa {};
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons(port);
    sa.sin6_addr = in6addr_loopback;
    rc = connect(fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa);
  } else {
    struct sockaddr_in sa {};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = connect(fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa);
  }
  if (rc != 0) {
    int err = errno;
    close(fd);
    throw std::runtime_error("connect to port " + std::to_string(port) + ": " + strerror(err));
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    throw std::runtime_error("short write");
  }
  std::string raw;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) raw.append(buf, static_cast<size_t>(n));
  close(fd);
  HttpResponse r;
  size_t split = raw.find("\r\n\r\n");
  if (split == std::string::npos) throw std::runtime_error("no HTTP header in: " + raw);
  r.headers = raw.substr(0, split);
  r.body = raw.substr(split + 4);
  if (r.headers.rfind("HTTP/1.", 0) == 0) r.status = std::atoi(r.headers.c_str() + 9);
  return r;
}

}  // namespace efuse::telemetry::testing
