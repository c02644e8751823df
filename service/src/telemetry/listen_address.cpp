#include "telemetry/listen_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace efuse::telemetry {
namespace {

constexpr std::string_view kLocalhost = "localhost";
constexpr std::string_view kLocalhostV4 = "127.0.0.1";
constexpr uint32_t kMaxPort = 65535;

uint16_t parse_port(std::string_view text, std::string_view whole) {
  uint32_t port = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || port > kMaxPort)
    throw ListenError(std::string(whole), "port must be a number from 0 to 65535");
  return static_cast<uint16_t>(port);
}

ListenAddress parse_host(std::string_view host, std::string_view whole) {
  ListenAddress a;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    a.family = AF_INET6;
    a.host = std::string(host.substr(1, host.size() - 2));
    struct in6_addr v6 {};
    if (inet_pton(AF_INET6, a.host.c_str(), &v6) != 1)
      throw ListenError(std::string(whole), "\"" + a.host + "\" is not an IPv6 address");
    return a;
  }
  a.family = AF_INET;
  a.host = std::string(host == kLocalhost ? kLocalhostV4 : host);
  struct in_addr v4 {};
  if (host.empty() || inet_pton(AF_INET, a.host.c_str(), &v4) != 1)
    throw ListenError(std::string(whole),
                      "host must be an IPv4 address, [IPv6 address] or localhost "
                      "(0.0.0.0 for every IPv4 interface)");
  return a;
}

}  // namespace

ListenError::ListenError(std::string address, std::string reason)
    : std::runtime_error("metrics: cannot listen on \"" + address + "\": " + reason),
      address_(std::move(address)),
      reason_(std::move(reason)) {}

std::string ListenAddress::to_string() const {
  std::string h = family == AF_INET6 ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

ListenAddress parse_listen_address(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos)
    throw ListenError(std::string(text), "expected HOST:PORT");
  ListenAddress a = parse_host(text.substr(0, colon), text);
  a.port = parse_port(text.substr(colon + 1), text);
  return a;
}

socklen_t to_sockaddr(const ListenAddress& addr, struct sockaddr_storage* out) {
  *out = {};
  if (addr.family == AF_INET6) {
    auto* sa = reinterpret_cast<struct sockaddr_in6*>(out);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(addr.port);
    inet_pton(AF_INET6, addr.host.c_str(), &sa->sin6_addr);
    return sizeof *sa;
  }
  auto* sa = reinterpret_cast<struct sockaddr_in*>(out);
  sa->sin_family = AF_INET;
  sa->sin_port = htons(addr.port);
  inet_pton(AF_INET, addr.host.c_str(), &sa->sin_addr);
  return sizeof *sa;
}

ListenAddress local_peer(const ListenAddress& addr) {
  ListenAddress peer = addr;
  if (addr.family == AF_INET && addr.host == "0.0.0.0") peer.host = kLocalhostV4;
  if (addr.family == AF_INET6 && addr.host == "::") peer.host = "::1";
  return peer;
}

std::string probe_bind(const ListenAddress& addr) {
  struct sockaddr_storage ss;
  socklen_t len = to_sockaddr(addr, &ss);
  int fd = socket(addr.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("socket: ") + strerror(errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  std::string reason;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&ss), len) != 0) reason = strerror(errno);
  close(fd);
  return reason;
}

}  // namespace efuse::telemetry
