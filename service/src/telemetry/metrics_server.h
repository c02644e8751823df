// telemetry::MetricsServer: serves GET /metrics (Prometheus text format) on one listen
// address through prometheus-cpp's civetweb-based Exposer, with a Collector over the
// daemon's MetricsSource.
//
// To move to another address, destroy the server and construct a new one: the old socket
// is closed and its threads joined when the destructor returns. The destructor waits for a
// scrape in progress, and a scrape waits for the lock MetricsSource::visit_mounts() takes:
// never destroy (or replace) the server while holding that lock.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "telemetry/listen_address.h"
#include "telemetry/source.h"

namespace prometheus {
class Exposer;
}

namespace efuse::telemetry {

class Collector;

class MetricsServer {
 public:
  // Listens on `listen` ("HOST:PORT", see listen_address.h) and starts serving. `source`
  // must outlive the server. Throws ListenError (a std::runtime_error) with the address and
  // the reason: bad syntax, address in use, address not local, no IPv6 in civetweb...
  MetricsServer(const std::string& listen, const MetricsSource& source);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port actually bound: the configured one, or the ephemeral one for port 0.
  uint16_t port() const { return port_; }
  // The address as configured.
  const std::string& listen_address() const { return listen_; }
  // "http://127.0.0.1:PORT/metrics" with the bound port.
  std::string url() const;

 private:
  std::string listen_;
  ListenAddress address_;
  uint16_t port_ = 0;
  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;  // destroyed first: stops scrapes
};

}  // namespace efuse::telemetry
