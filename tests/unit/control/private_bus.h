// A private dbus-daemon for one test: its own config (everyone may own, send and receive
// anything; EXTERNAL auth so uids are real), socket in a temp dir that any user can reach,
// killed by PID at destruction.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace efuse::control::testing {

class PrivateBus {
 public:
  static constexpr int kStartTimeoutMs = 10000;

  PrivateBus() {
    make_dir();
    write_config();
    spawn();
  }
  ~PrivateBus() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  PrivateBus(const PrivateBus&) = delete;
  PrivateBus& operator=(const PrivateBus&) = delete;

  const std::string& address() const { return address_; }
  const std::string& dir() const { return dir_; }

 private:
  void make_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                        "/efuse-dbus-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = templ;
    ::chmod(dir_.c_str(), 0755);  // a client dropped to another uid must reach the socket
  }

  void write_config() {
    std::ofstream f(dir_ + "/bus.conf");
    f << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n"
         " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
         "<busconfig>\n"
         "  <type>custom</type>\n"
         "  <listen>unix:path=" << dir_ << "/bus</listen>\n"
         "  <auth>EXTERNAL</auth>\n"
         "  <policy context=\"default\">\n"
         "    <allow user=\"*\"/>\n"
         "    <allow own=\"*\"/>\n"
         "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
         "    <allow receive_sender=\"*\"/>\n"
         "  </policy>\n"
         "</busconfig>\n";
    if (!f) throw std::runtime_error("cannot write dbus-daemon config");
  }

  void spawn() {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    const std::string config = "--config-file=" + dir_ + "/bus.conf";
    const std::string log = dir_ + "/dbus-daemon.log";
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (log_fd >= 0) ::dup2(log_fd, STDERR_FILENO);  // its warnings are noise here
      ::execlp("dbus-daemon", "dbus-daemon", config.c_str(), "--nofork", "--nopidfile",
               "--print-address", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(out[1]);
    address_ = read_address(out[0]);
    ::close(out[0]);
    if (address_.empty()) throw std::runtime_error("dbus-daemon did not start");
  }

  // The first line dbus-daemon prints (bounded wait).
  static std::string read_address(int fd) {
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kStartTimeoutMs);
    while (line.find('\n') == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now()).count();
      pollfd p{fd, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return "";
      char buf[256];
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) return "";
      line.append(buf, static_cast<size_t>(n));
    }
    return line.substr(0, line.find('\n'));
  }

  std::string dir_;
  std::string address_;
  pid_t pid_ = -1;
};

}  // namespace efuse::control::testing
