#include "telemetry/metrics_server.h"

#include <netinet/in.h>
#include <prometheus/exposer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <thread>
#include <vector>

#include "common/log.h"
#include "telemetry/collector.h"

namespace efuse::telemetry {
namespace {

constexpr const char* kPath = "/metrics";
constexpr const char* kThreads = "2";
// A client that connects and sends nothing frees its HTTP thread after this long.
constexpr const char* kRequestTimeoutMs = "10000";
constexpr auto kNudgeInterval = std::chrono::milliseconds(20);
constexpr char kNudgeRequest[] = "GET /-/stop HTTP/1.0\r\n\r\n";

std::vector<std::string> civetweb_options(const ListenAddress& addr) {
  return {"listening_ports", addr.to_string(), "num_threads", kThreads,
          "request_timeout_ms", kRequestTimeoutMs};
}

// civetweb reports every failure as "null context when constructing CivetServer"; say why.
std::string explain_start_failure(const ListenAddress& addr, const std::exception& e) {
  std::string probe = probe_bind(addr);
  if (!probe.empty()) return probe;
  if (addr.family == AF_INET6)
    return "the civetweb library efused links was built without IPv6 support; use an IPv4 "
           "address";
  return std::string("civetweb could not start: ") + e.what();
}

// Connects to the server and sends a request it answers with 404 at once, without a scrape.
void nudge(const ListenAddress& peer) {
  struct sockaddr_storage ss;
  socklen_t len = to_sockaddr(peer, &ss);
  int fd = socket(peer.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&ss), len) == 0)
    (void)!write(fd, kNudgeRequest, sizeof kNudgeRequest - 1);
  close(fd);
}

// Destroys `exposer`. civetweb 1.15's mg_stop() waits for its master thread, which sees the
// stop flag only when poll() on the listening socket returns: after up to 2 s
// (SOCKET_TIMEOUT_QUANTUM) on an idle socket. Connecting meanwhile wakes it, so a stop, and
// a rebuild on reload, takes milliseconds. Should the nudger not start, the stop is slow but
// still correct.
void stop_exposer(std::unique_ptr<prometheus::Exposer> exposer, const ListenAddress& peer) {
  std::atomic<bool> stopped{false};
  std::thread nudger;
  try {
    nudger = std::thread([&stopped, peer] {
      while (!stopped.load()) {
        nudge(peer);
        std::this_thread::sleep_for(kNudgeInterval);
      }
    });
  } catch (const std::exception&) {
  }
  exposer.reset();
  stopped = true;
  if (nudger.joinable()) nudger.join();
}

}  // namespace

MetricsServer::MetricsServer(const std::string& listen, const MetricsSource& source)
    : listen_(listen),
      address_(parse_listen_address(listen)),
      collector_(std::make_shared<Collector>(source)) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(civetweb_options(address_));
  } catch (const std::exception& e) {
    throw ListenError(listen_, explain_start_failure(address_, e));
  }
  std::vector<int> ports = exposer_->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0)
    throw ListenError(listen_, "civetweb reported no listening port");
  port_ = static_cast<uint16_t>(ports.front());
  exposer_->RegisterCollectable(collector_, kPath);
  LOG_INFO("metrics: serving %s", url().c_str());
}

MetricsServer::~MetricsServer() {
  ListenAddress peer = local_peer(address_);
  peer.port = port_;
  stop_exposer(std::move(exposer_), peer);
}

std::string MetricsServer::url() const {
  ListenAddress bound = address_;
  bound.port = port_;
  return "http://" + bound.to_string() + kPath;
}

}  // namespace efuse::telemetry
