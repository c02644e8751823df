#include "telemetry/metrics_server.h"

#include <netinet/in.h>
#include <prometheus/exposer.h>

#include <exception>
#include <vector>

#include "common/log.h"
#include "telemetry/collector.h"

namespace efuse::telemetry {
namespace {

constexpr const char* kPath = "/metrics";
constexpr const char* kThreads = "2";
// A client that connects and sends nothing frees its HTTP thread after this long.
constexpr const char* kRequestTimeoutMs = "10000";

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

MetricsServer::~MetricsServer() = default;

std::string MetricsServer::url() const {
  ListenAddress bound = address_;
  bound.port = port_;
  return "http://" + bound.to_string() + kPath;
}

}  // namespace efuse::telemetry
