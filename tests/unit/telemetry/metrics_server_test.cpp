// telemetry::MetricsServer: /metrics over HTTP on port 0, listen errors, restarts, and the
// scraped text checked by promtool.
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

#include "metrics_fixture.h"
#include "telemetry/listen_address.h"
#include "telemetry/metrics_server.h"

namespace efuse::telemetry::testing {
namespace {

// One live mount over a driven session, one failed mount.
class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    session_.init();
    for (int i = 0; i < 4; ++i) session_.lookup("present");
    session_.lookup("secret");
    MountView live;
    live.name = "data";
    live.mountpoint = "/srv/data";
    live.backend = "passthrough";
    live.transport = "classic";
    live.io_path = "auto";
    live.up = true;
    live.session = &session_.session();
    live.workers = {&worker_};
    MountView failed;
    failed.name = "broken";
    failed.mountpoint = "/srv/with \"quotes\" and \\";
    failed.backend = "passthrough";
    failed.io_path = "cache";
    failed.start_failures = 2;
    source_.mounts = {live, failed};
    source_.daemon_view.start_timestamp = 1690000000;
  }

  DrivenSession session_;
  fuse::WorkerStats worker_;
  FakeSource source_;
};

// A socket listening on an ephemeral 127.0.0.1 port, closed with the object.
class Squatter {
 public:
  Squatter() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa {};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    EXPECT_EQ(bind(fd_, reinterpret_cast<struct sockaddr*>(&sa), len), 0);
    EXPECT_EQ(listen(fd_, 1), 0);
    EXPECT_EQ(getsockname(fd_, reinterpret_cast<struct sockaddr*>(&sa), &len), 0);
    port_ = ntohs(sa.sin_port);
  }
  ~Squatter() { close(fd_); }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

TEST_F(MetricsServerTest, ServesMetricsOnAnEphemeralPort) {
  MetricsServer server("127.0.0.1:0", source_);
  ASSERT_GT(server.port(), 0);
  EXPECT_EQ(server.listen_address(), "127.0.0.1:0");
  EXPECT_EQ(server.url(), "http://127.0.0.1:" + std::to_string(server.port()) + "/metrics");

  HttpResponse r = http_get(server.port());
  EXPECT_EQ(r.status, 200) << r.headers;
  EXPECT_NE(r.headers.find("text/plain"), std::string::npos) << r.headers;
  Exposition e = parse_exposition(r.body);
  EXPECT_EQ(e.value("efuse_requests_total", {{"mount", "data"}, {"opcode", "lookup"}}), 5);
  EXPECT_EQ(e.value("efuse_request_errors_total",
                    {{"mount", "data"}, {"opcode", "lookup"}, {"errno", "EACCES"}}),
            1);
  EXPECT_EQ(e.value("efuse_request_duration_seconds_count",
                    {{"mount", "data"}, {"opcode", "lookup"}}),
            5);
  EXPECT_EQ(e.value("efuse_mount_up", {{"mount", "broken"}, {"backend", "passthrough"}}), 0);
  // Label values are escaped on the wire and come back intact.
  EXPECT_EQ(e.find("efuse_mount_info", {{"mountpoint", "/srv/with \"quotes\" and \\"}}).size(),
            1u);
  EXPECT_EQ(e.type["efuse_request_duration_seconds"], "histogram");
  EXPECT_FALSE(e.help["efuse_mount_up"].empty());

  // Counters move between scrapes: nothing is cached.
  session_.lookup("present");
  Exposition again = parse_exposition(http_get(server.port()).body);
  EXPECT_EQ(again.value("efuse_requests_total", {{"mount", "data"}, {"opcode", "lookup"}}), 6);

  EXPECT_EQ(http_get(server.port(), "/other").status, 404);
}

TEST_F(MetricsServerTest, PortInUseIsAClearError) {
  Squatter squatter;
  std::string address = "127.0.0.1:" + std::to_string(squatter.port());
  try {
    MetricsServer server(address, source_);
    FAIL() << "listening on a port in use must fail";
  } catch (const ListenError& e) {
    EXPECT_EQ(e.address(), address);
    EXPECT_EQ(e.reason(), strerror(EADDRINUSE));
    EXPECT_NE(std::string(e.what()).find(address), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
}

TEST_F(MetricsServerTest, SecondServerOnTheSamePortFails) {
  MetricsServer first("127.0.0.1:0", source_);
  std::string address = "127.0.0.1:" + std::to_string(first.port());
  EXPECT_THROW(MetricsServer(address, source_), std::runtime_error);
  EXPECT_EQ(http_get(first.port()).status, 200) << "the first server is unaffected";
}

TEST_F(MetricsServerTest, AddressNotOnThisHostIsAClearError) {
  // 192.0.2.0/24 is TEST-NET-1: never a local address.
  try {
    MetricsServer server("192.0.2.1:19567", source_);
    FAIL() << "a non-local address must fail";
  } catch (const ListenError& e) {
    EXPECT_EQ(e.reason(), strerror(EADDRNOTAVAIL)) << e.what();
  }
}

TEST_F(MetricsServerTest, BadSyntaxIsAClearError) {
  for (const char* bad : {"", "19567", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536",
                          "127.0.0.1:95x", "example.com:80", ":19567", "[::1:19567", "[zz]:1",
                          "1.2.3:80"}) {
    try {
      MetricsServer server(bad, source_);
      ADD_FAILURE() << "\"" << bad << "\" was accepted";
    } catch (const ListenError& e) {
      EXPECT_EQ(e.address(), bad);
      EXPECT_FALSE(e.reason().empty());
      EXPECT_NE(std::string(e.what()).find("\"" + std::string(bad) + "\""), std::string::npos)
          << e.what();
    }
  }
}

TEST_F(MetricsServerTest, RestartsOnADifferentAddressAndOnTheSamePort) {
  auto server = std::make_unique<MetricsServer>("127.0.0.1:0", source_);
  uint16_t first = server->port();
  EXPECT_EQ(http_get(first).status, 200);

  server.reset();
  EXPECT_THROW(http_get(first), std::runtime_error) << "the old socket is closed";
  server = std::make_unique<MetricsServer>("localhost:0", source_);
  EXPECT_NE(server->port(), 0);
  EXPECT_EQ(http_get(server->port()).status, 200);

  // Back to the first port (the supervisor rebuilding on a reload that changed it back).
  server.reset();
  server = std::make_unique<MetricsServer>("127.0.0.1:" + std::to_string(first), source_);
  EXPECT_EQ(server->port(), first);
  EXPECT_EQ(http_get(first).status, 200);
}

TEST_F(MetricsServerTest, Ipv6EitherServesOrSaysWhy) {
  std::unique_ptr<MetricsServer> server;
  try {
    server = std::make_unique<MetricsServer>("[::1]:0", source_);
  } catch (const ListenError& e) {
    // Debian 12's civetweb is built without IPv6; hosts without ::1 cannot bind it.
    EXPECT_EQ(e.address(), "[::1]:0");
    EXPECT_FALSE(e.reason().empty());
    std::printf("IPv6 listen refused, as expected here: %s\n", e.what());
    return;
  }
  EXPECT_EQ(http_get(server->port(), "/metrics", /*ipv6=*/true).status, 200);
}

// ---- promtool ----------------------------------------------------------------------------

std::string find_in_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = dirs.substr(start, end - start) + "/" + program;
    if (end > start && access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

TEST_F(MetricsServerTest, PromtoolAcceptsTheScrape) {
  std::string promtool = find_in_path("promtool");
  if (promtool.empty()) {
    if (in_ci()) FAIL() << "promtool not found (Debian package prometheus); CI=true forbids skipping";
    GTEST_SKIP() << "promtool not found (install the Debian package prometheus)";
  }
  MetricsServer server("127.0.0.1:0", source_);
  HttpResponse r = http_get(server.port());
  ASSERT_EQ(r.status, 200);

  char path[] = "/tmp/efuse-metrics-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, r.body.data(), r.body.size()), static_cast<ssize_t>(r.body.size()));
  close(fd);
  std::string cmd = promtool + " check metrics < " + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, n);
  int status = pclose(p);
  unlink(path);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  EXPECT_EQ(output, "") << "promtool check metrics complained about:\n" << r.body;
}

// ---- listen addresses --------------------------------------------------------------------

TEST(MetricsListenAddress, Parses) {
  ListenAddress a = parse_listen_address("127.0.0.1:19567");
  EXPECT_EQ(a.family, AF_INET);
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 19567);
  EXPECT_EQ(a.to_string(), "127.0.0.1:19567");

  ListenAddress local = parse_listen_address("localhost:0");
  EXPECT_EQ(local.host, "127.0.0.1");
  EXPECT_EQ(local.port, 0);

  ListenAddress any = parse_listen_address("0.0.0.0:65535");
  EXPECT_EQ(any.port, 65535);

  ListenAddress v6 = parse_listen_address("[::1]:19567");
  EXPECT_EQ(v6.family, AF_INET6);
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.to_string(), "[::1]:19567");
  EXPECT_EQ(parse_listen_address("[fe80::1:2]:80").host, "fe80::1:2");
}

TEST(MetricsListenAddress, RejectsWithReasons) {
  EXPECT_THROW(parse_listen_address("nocolon"), ListenError);
  try {
    (void)parse_listen_address("127.0.0.1:70000");
    FAIL();
  } catch (const ListenError& e) {
    EXPECT_NE(e.reason().find("0 to 65535"), std::string::npos) << e.what();
  }
  try {
    (void)parse_listen_address("metrics.example:80");
    FAIL();
  } catch (const ListenError& e) {
    EXPECT_NE(e.reason().find("IPv4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_listen_address("[::1]"), ListenError);
  EXPECT_THROW(parse_listen_address("::1:80"), ListenError) << "IPv6 needs brackets";
  EXPECT_THROW(parse_listen_address("127.0.0.1:-1"), ListenError);
  EXPECT_THROW(parse_listen_address("127.0.0.1: 80"), ListenError);
}

}  // namespace
}  // namespace efuse::telemetry::testing
