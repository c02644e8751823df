// The /metrics listen address: "HOST:PORT" with HOST an IPv4 address, "[IPv6]" or
// "localhost" (127.0.0.1), and PORT 0..65535 (0 = an ephemeral port).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace efuse::telemetry {

// Why a metrics server could not listen. what() reads
// "metrics: cannot listen on ADDRESS: REASON".
class ListenError : public std::runtime_error {
 public:
  ListenError(std::string address, std::string reason);
  const std::string& address() const { return address_; }
  const std::string& reason() const { return reason_; }

 private:
  std::string address_;
  std::string reason_;
};

struct ListenAddress {
  int family = 0;    // AF_INET or AF_INET6
  std::string host;  // numeric, without brackets
  uint16_t port = 0;

  // "127.0.0.1:19567", "[::1]:19567": civetweb's listening_ports syntax.
  std::string to_string() const;
};

// Throws ListenError naming what is wrong with `text`.
ListenAddress parse_listen_address(std::string_view text);

// `addr` as a socket address; returns its length.
socklen_t to_sockaddr(const ListenAddress& addr, struct sockaddr_storage* out);

// Where a local client reaches a server listening on `addr`: the wildcard addresses
// (0.0.0.0, ::) become loopback.
ListenAddress local_peer(const ListenAddress& addr);

// Binds and closes a socket on `addr` (with SO_REUSEADDR, as civetweb does) to learn why a
// listen would fail. Returns "" when the bind works, else the reason ("Address already in
// use"). A diagnosis only: civetweb's own failure says nothing about the cause.
std::string probe_bind(const ListenAddress& addr);

}  // namespace efuse::telemetry
