// efused: serves FUSE file systems. This stage: passthrough mounts given on the command line.
#include <getopt.h>
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "daemon/mount_instance.h"

namespace {

using efuse::daemon::MountInstance;
using MountSpec = efuse::daemon::MountConfig;

constexpr const char* kUsage = R"(Usage: efused --mount SOURCE:MOUNTPOINT [--mount ...] [OPTIONS]

Serves each SOURCE directory at MOUNTPOINT as a passthrough FUSE file system, in the
foreground, until SIGTERM or SIGINT; then unmounts everything (lazily when busy) and exits.

Options:
  -m, --mount SOURCE:MOUNTPOINT  serve SOURCE at MOUNTPOINT (repeatable; both must be
                                 existing directories, neither inside the other)
  -t, --threads N                worker threads per mount, each on its own /dev/fuse clone
                                 (default: max(4, 2 x CPUs))
      --io-path MODE             passthrough: let the kernel do reads/writes/mmap on the
                                 backing file directly when it supports FUSE passthrough
                                 (Linux >= 6.9, needs root); cache: serve all I/O in efused
                                 (default: passthrough)
      --entry-timeout SECONDS    how long the kernel may cache names (default 1)
      --attr-timeout SECONDS     how long the kernel may cache attributes (default 1)
      --writeback-cache          let the kernel cache writes (ignored with passthrough I/O)
      --no-allow-other           only the mounting user may access the mount (the
                                 default when not running as root)
      --read-only                mount read-only
      --log-level LEVEL          debug, info, warning or error (default info)
  -V, --version                  print the version and exit
  -h, --help                     print this help and exit

efused prints "efused: ready" on standard output once every mount is live.
Exit status: 0 after a clean stop, 1 when a mount could not start, 2 on bad usage.
)";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "efused: %s\nTry 'efused --help'.\n", msg.c_str());
  std::exit(2);
}

bool parse_seconds(const char* s, double* out) {
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || v < 0 || v > 86400.0 * 365) return false;
  *out = v;
  return true;
}

std::string absolute(const std::string& p) {
  char buf[PATH_MAX];
  if (realpath(p.c_str(), buf) != nullptr) return buf;
  return p;  // validate() reports why it does not resolve
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> mount_args;
  unsigned hw = std::thread::hardware_concurrency();
  MountSpec defaults;
  defaults.threads = std::max(4u, 2 * (hw == 0 ? 1 : hw));
  defaults.backend = "passthrough";
  // Without root, allow_other needs user_allow_other in /etc/fuse.conf: off unless root.
  defaults.options.allow_other = geteuid() == 0;

  enum { kIoPath = 256, kEntryTimeout, kAttrTimeout, kWriteback, kNoAllowOther, kReadOnly, kLogLevel };
  static const option kOptions[] = {
      {"mount", required_argument, nullptr, 'm'},
      {"threads", required_argument, nullptr, 't'},
      {"io-path", required_argument, nullptr, kIoPath},
      {"entry-timeout", required_argument, nullptr, kEntryTimeout},
      {"attr-timeout", required_argument, nullptr, kAttrTimeout},
      {"writeback-cache", no_argument, nullptr, kWriteback},
      {"no-allow-other", no_argument, nullptr, kNoAllowOther},
      {"read-only", no_argument, nullptr, kReadOnly},
      {"log-level", required_argument, nullptr, kLogLevel},
      {"version", no_argument, nullptr, 'V'},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0},
  };
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:t:Vh", kOptions, nullptr)) != -1) {
    switch (c) {
      case 'm': mount_args.emplace_back(optarg); break;
      case 't': {
        char* end = nullptr;
        long v = std::strtol(optarg, &end, 10);
        if (*end != '\0' || v < 1 || v > 256) usage_error("--threads must be 1..256");
        defaults.threads = static_cast<unsigned>(v);
        break;
      }
      case kIoPath:
        if (std::strcmp(optarg, "passthrough") == 0) defaults.io_path = efuse::daemon::IoPath::Passthrough;
        else if (std::strcmp(optarg, "cache") == 0) defaults.io_path = efuse::daemon::IoPath::Cache;
        else usage_error(std::string("--io-path must be passthrough or cache, not '") + optarg + "'");
        break;
      case kEntryTimeout:
        if (!parse_seconds(optarg, &defaults.cache.entry_timeout)) usage_error("bad --entry-timeout");
        break;
      case kAttrTimeout:
        if (!parse_seconds(optarg, &defaults.cache.attr_timeout)) usage_error("bad --attr-timeout");
        break;
      case kWriteback: defaults.cache.writeback = true; break;
      case kNoAllowOther: defaults.options.allow_other = false; break;
      case kReadOnly: defaults.options.read_only = true; break;
      case kLogLevel: {
        efuse::log::Level l;
        if (!efuse::log::parse_level(optarg, &l)) usage_error(std::string("unknown log level '") + optarg + "'");
        efuse::log::set_level(l);
        break;
      }
      case 'V': std::printf("efused %s\n", EFUSE_VERSION); return 0;
      case 'h': std::fputs(kUsage, stdout); return 0;
      case ':': usage_error(std::string("option '") + argv[optind - 1] + "' needs a value");
      default: usage_error(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  if (optind < argc) usage_error(std::string("unexpected argument '") + argv[optind] + "'");
  if (mount_args.empty()) usage_error("nothing to serve: give at least one --mount SOURCE:MOUNTPOINT");

  std::vector<MountSpec> specs;
  for (const auto& arg : mount_args) {
    auto colon = arg.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == arg.size())
      usage_error("--mount wants SOURCE:MOUNTPOINT, got '" + arg + "'");
    MountSpec s = defaults;
    s.source = absolute(arg.substr(0, colon));
    s.mountpoint = absolute(arg.substr(colon + 1));
    s.name = s.mountpoint;
    std::string problem = efuse::daemon::check_paths(s);
    if (!problem.empty()) usage_error(problem);
    for (const auto& other : specs)
      if (other.mountpoint == s.mountpoint) usage_error("mountpoint " + s.mountpoint + " given twice");
    specs.push_back(s);
  }

  // Signals are taken synchronously by the main thread; workers never see them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<std::unique_ptr<MountInstance>> mounts;
  for (const auto& s : specs) {
    auto m = std::make_unique<MountInstance>(s);
    std::string error;
    if (!m->start(&error).ok()) {
      LOG_ERROR("cannot serve %s at %s: %s", s.source.c_str(), s.mountpoint.c_str(), error.c_str());
      mounts.clear();  // unmounts what already started
      return 1;
    }
    LOG_INFO("serving %s at %s (%u threads)", s.source.c_str(), s.mountpoint.c_str(), s.threads);
    mounts.push_back(std::move(m));
  }
  std::printf("efused: ready\n");
  std::fflush(stdout);

  for (;;) {
    struct timespec tick{1, 0};
    int sig = sigtimedwait(&sigs, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      LOG_INFO("%s: unmounting %zu mount(s)", strsignal(sig), mounts.size());
      break;
    }
    if (sig == SIGHUP) {
      LOG_INFO("SIGHUP: nothing to reload when mounts come from the command line");
      continue;
    }
    bool all_lost = true;
    for (auto& m : mounts) all_lost = all_lost && m->lost();
    if (all_lost) {
      LOG_WARN("every mount was unmounted from outside; exiting");
      break;
    }
  }
  mounts.clear();
  return 0;
}
