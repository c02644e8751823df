// efused: serves the FUSE file systems of /etc/efuse/mounts.yaml (or of --mount arguments).
#include <getopt.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bpf/telemetry.h"
#include "common/log.h"
#include "daemon/config.h"
#include "daemon/mount_instance.h"
#include "daemon/service.h"
#include "telemetry/listen_address.h"

namespace {

using efuse::daemon::Config;
using efuse::daemon::ConfigError;
using efuse::daemon::MountConfig;

constexpr const char* kDefaultConfig = "/etc/efuse/mounts.yaml";

constexpr const char* kUsage = R"(Usage: efused [--config FILE | --demo | --mount [SOURCE|memory]:MOUNTPOINT ...] [OPTIONS]
       efused --check-config FILE

Serves FUSE file systems in the foreground (as systemd runs it) until SIGTERM or SIGINT,
then unmounts everything (lazily when busy) and exits. SIGHUP re-reads the config file and
applies the difference. With systemd (Type=notify) it reports READY=1 once every mount
was attempted, STATUS=, RELOADING=1 and STOPPING=1, and feeds the watchdog.
Under systemd each mount's FUSE connection and restart state stay in the unit's file
descriptor store: on SIGTERM from a restart job (systemctl restart, a package upgrade)
efused leaves its mounts mounted, and the next efused (also after a crash and
Restart=on-failure) resumes them without remounting: clients see a pause, open files keep
working. Mounts on FUSE over io_uring are remounted instead (transport: classic keeps
them). A stop unmounts as above. EFUSE_FDSTORE=0 in the environment turns this off.

Where the mounts come from (one of):
  -c, --config FILE              YAML config (default /etc/efuse/mounts.yaml); schema and a
                                 commented example in config/
      --demo                     the embedded demo config: a passthrough mount of
                                 /tmp/efuse-demo/source at /tmp/efuse-demo/mnt, metrics on
                                 127.0.0.1:19567 (directories are created)
  -m, --mount SOURCE:MOUNTPOINT  serve SOURCE at MOUNTPOINT with default settings
                                 (repeatable; no config file, no metrics unless --metrics)
  -m, --mount memory:MOUNTPOINT  serve an in-memory file system at MOUNTPOINT (its files
                                 are lost when it is unmounted; a directory named
                                 "memory" is given as ./memory)
      --check-config FILE        validate FILE, print the first error as
                                 FILE:LINE:COLUMN: message, exit 0 if valid, 1 if not;
                                 warns about what a valid file cannot do here (an IPv6
                                 metrics.listen); mounts nothing

Options:
      --metrics HOST:PORT        serve /metrics here (overrides the config's metrics.listen;
                                 "" turns it off)
      --telemetry LEVEL          eBPF telemetry of every FUSE request on the host: full
                                 (with the context switches requests cost), requests
                                 (counts, errors, latency; cheaper) or off (overrides the
                                 config's telemetry:, default full; docs/bpf.md has the
                                 cost of each). EFUSE_BPF=0 in the environment turns it
                                 off whatever this says
      --telemetry-sample-every N time the FUSE requests sent in sampling windows that
                                 cover 1 in N of the time (1..65536; 1: every request):
                                 latency histograms come from those, counts are exact
                                 (overrides the config's telemetry_sample_every, default 16)
      --bus ADDRESS              D-Bus to offer org.efuse.Manager1 on: "system" (default
                                 with --config/--demo), "none" (default with --mount), or
                                 an address such as unix:path=/run/x/bus
With --mount (a config file sets these per mount):
  -t, --threads N                /dev/fuse worker threads per mount that start with it
                                 (default 4)
      --max-threads N            most /dev/fuse workers per mount: one more starts when
                                 every worker is busy, and leaves again when idle
                                 (default the larger of --threads and 16)
      --offload-threads N        threads per mount that serve requests that may block
                                 (fsync, fallocate, a truncating create or setattr) off the
                                 queue that read them, 1..64 (default 4)
      --transport MODE           auto, classic or uring (default auto: FUSE over
                                 io_uring, one queue per CPU, when the kernel offers it;
                                 under systemd /dev/fuse, which a restart can keep)
      --queue-depth N            io_uring entries per CPU queue (default 8)
      --io-path MODE             auto, passthrough or cache (default auto: FUSE
                                 passthrough when the kernel grants it, the page cache
                                 for read-only opens of files up to 64 KiB)
      --kernel-module MODE       auto, on or off (default auto: serve through the efuse
                                 kernel module, /dev/efuse, when it is loaded and efused
                                 is root, with eBPF handlers answering GETATTR and negative
                                 LOOKUP in the kernel; on: fail when it is not; off: the
                                 kernel's own FUSE)
      --entry-timeout SECONDS    how long the kernel may cache names (default 60;
                                 memory mounts 31536000)
      --attr-timeout SECONDS     how long the kernel may cache attributes (default 60;
                                 memory mounts 31536000)
      --negative-timeout SECONDS how long the kernel may cache "no such name" (default 1)
      --keep-cache               keep file pages cached across opens even when outside
                                 changes cannot be invalidated exactly
      --writeback-cache          let the kernel cache writes (excludes passthrough)
      --memory-max-bytes SIZE    memory mounts: data limit, bytes or a number with K, M,
                                 G or T, or a percentage of RAM (default 50%)
      --memory-max-inodes N      memory mounts: inode limit (default one per 4 KiB of
                                 --memory-max-bytes)
      --read-only                mount read-only
      --no-xattr                 serve no extended attributes (ENOTSUP; no POSIX ACLs):
                                 spares the kernel's security.capability lookup
                                 before each write and chown (2 round trips per file
                                 tar extracts)
      --create-mountpoint        create a missing MOUNTPOINT (0755, with parents)
      --intercept                publish the mounts for libefuse_intercept.so, so that
                                 programs run with efuse-run are served without FUSE
                                 round trips (in $EFUSE_INTERCEPT_DIR, default
                                 /run/efuse/intercept)
      --stack                    mount even where another live FUSE mount sits, on top of
                                 it (without it such a mountpoint is refused, naming the
                                 file system there and the process serving it)

Common:
      --log-level LEVEL          debug, info, warning or error (default info)
  -V, --version                  print the version and exit
  -h, --help                     print this help and exit

efused prints "efused: ready" on standard output once every mount was attempted.

Exit status:
  0   stopped cleanly (SIGTERM or SIGINT), or left the mounts for a restart
  1   no mount could be started (with --mount: a mount could not be started), or the
      D-Bus given with --bus cannot be used
  2   bad usage
  75  another efused already serves this config file (it holds the lock in /run/efuse)
      or owns the D-Bus name org.efuse.Manager1; nothing was mounted
  78  the config file is invalid or unreadable; the message says FILE:LINE:COLUMN
efused.service lists 75 and 78 in RestartPreventExitStatus=: systemd does not restart
efused over a broken config or an efused already running. --check-config exits 1 for an
invalid file.
)";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "efused: %s\nTry 'efused --help'.\n", msg.c_str());
  std::exit(2);
}

// Seconds as the config allows them: 0 .. one year.
unsigned parse_count(const char* s, const char* option, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi)
    usage_error(std::string(option) + " must be " + std::to_string(lo) + ".." +
                std::to_string(hi) + ", not '" + s + "'");
  return static_cast<unsigned>(v);
}

double parse_seconds(const char* s, const char* option) {
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || !(v >= 0 && v <= 31536000))
    usage_error(std::string(option) + " wants seconds between 0 and 31536000, not '" + s + "'");
  return v;
}

std::string absolute(const std::string& p) {
  char buf[PATH_MAX];
  if (realpath(p.c_str(), buf) != nullptr) return buf;
  // start-up reports why it does not resolve (or creates it: --create-mountpoint)
  if (!p.empty() && p[0] != '/' && getcwd(buf, sizeof buf) != nullptr)
    return std::string(buf) + "/" + p;
  return p;
}

// Mount names must be [A-Za-z0-9_.-]{1,64}; derive one from the mountpoint.
std::string name_for(const std::string& mountpoint, const std::vector<MountConfig>& taken) {
  std::string base;
  for (char c : mountpoint.substr(mountpoint.find_last_of('/') + 1))
    base += (isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-') ? c : '_';
  if (base.empty()) base = "root";
  base = base.substr(0, 56);
  std::string name = base;
  for (int i = 2;; ++i) {
    bool clash = false;
    for (const auto& m : taken) clash = clash || m.name == name;
    if (!clash) return name;
    name = base + "-" + std::to_string(i);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> mount_args;
  std::string config_path, check_path, bus = "", metrics;
  bool demo = false, have_metrics = false;
  std::optional<std::string> telemetry;
  std::optional<unsigned> sample_every;
  MountConfig cli_defaults;
  bool entry_timeout_set = false, attr_timeout_set = false;  // memory mounts have their own
  cli_defaults.backend = "passthrough";
  cli_defaults.options.allow_other = geteuid() == 0;

  enum { kDemo = 256, kCheck, kMetrics, kBus, kIoPath, kKernelModule, kLogLevel, kEntryTimeout, kAttrTimeout,
         kNegativeTimeout, kKeepCache, kWriteback, kReadOnly, kNoXattr, kTransport, kQueueDepth, kStack,
         kCreateMountpoint, kIntercept, kTelemetry, kSampleEvery, kMemoryMaxBytes, kMemoryMaxInodes,
         kMaxThreads, kOffloadThreads };
  static const option kOptions[] = {
      {"config", required_argument, nullptr, 'c'},
      {"demo", no_argument, nullptr, kDemo},
      {"mount", required_argument, nullptr, 'm'},
      {"check-config", required_argument, nullptr, kCheck},
      {"metrics", required_argument, nullptr, kMetrics},
      {"bus", required_argument, nullptr, kBus},
      {"telemetry", required_argument, nullptr, kTelemetry},
      {"telemetry-sample-every", required_argument, nullptr, kSampleEvery},
      {"threads", required_argument, nullptr, 't'},
      {"max-threads", required_argument, nullptr, kMaxThreads},
      {"offload-threads", required_argument, nullptr, kOffloadThreads},
      {"io-path", required_argument, nullptr, kIoPath},
      {"kernel-module", required_argument, nullptr, kKernelModule},
      {"log-level", required_argument, nullptr, kLogLevel},
      {"entry-timeout", required_argument, nullptr, kEntryTimeout},
      {"attr-timeout", required_argument, nullptr, kAttrTimeout},
      {"negative-timeout", required_argument, nullptr, kNegativeTimeout},
      {"keep-cache", no_argument, nullptr, kKeepCache},
      {"writeback-cache", no_argument, nullptr, kWriteback},
      {"read-only", no_argument, nullptr, kReadOnly},
      {"no-xattr", no_argument, nullptr, kNoXattr},
      {"stack", no_argument, nullptr, kStack},
      {"create-mountpoint", no_argument, nullptr, kCreateMountpoint},
      {"intercept", no_argument, nullptr, kIntercept},
      {"transport", required_argument, nullptr, kTransport},
      {"queue-depth", required_argument, nullptr, kQueueDepth},
      {"memory-max-bytes", required_argument, nullptr, kMemoryMaxBytes},
      {"memory-max-inodes", required_argument, nullptr, kMemoryMaxInodes},
      {"version", no_argument, nullptr, 'V'},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0},
  };
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":c:m:t:Vh", kOptions, nullptr)) != -1) {
    switch (c) {
      case 'c': config_path = optarg; break;
      case kDemo: demo = true; break;
      case 'm': mount_args.emplace_back(optarg); break;
      case kCheck: check_path = optarg; break;
      case kMetrics: metrics = optarg; have_metrics = true; break;
      case kBus: bus = optarg; break;
      case kTelemetry:
        if (!efuse::bpf::parse_level(optarg))
          usage_error(std::string("--telemetry must be full, requests or off, not '") + optarg + "'");
        telemetry = optarg;
        break;
      case kSampleEvery:
        sample_every =
            parse_count(optarg, "--telemetry-sample-every", 1, efuse::bpf::kMaxSampleEvery);
        break;
      case 't': cli_defaults.threads = parse_count(optarg, "--threads", 1, 256); break;
      case kMaxThreads: cli_defaults.max_threads = parse_count(optarg, "--max-threads", 1, 256); break;
      case kOffloadThreads:
        cli_defaults.offload_threads = parse_count(optarg, "--offload-threads", 1, 64);
        break;
      case kIoPath:
        if (std::strcmp(optarg, "auto") == 0) cli_defaults.io_path = efuse::daemon::IoPath::Auto;
        else if (std::strcmp(optarg, "passthrough") == 0) cli_defaults.io_path = efuse::daemon::IoPath::Passthrough;
        else if (std::strcmp(optarg, "cache") == 0) cli_defaults.io_path = efuse::daemon::IoPath::Cache;
        else usage_error(std::string("--io-path must be auto, passthrough or cache, not '") + optarg + "'");
        break;
      case kKernelModule:
        if (std::strcmp(optarg, "auto") == 0) cli_defaults.kernel_module = efuse::daemon::KernelModule::Auto;
        else if (std::strcmp(optarg, "on") == 0) cli_defaults.kernel_module = efuse::daemon::KernelModule::On;
        else if (std::strcmp(optarg, "off") == 0) cli_defaults.kernel_module = efuse::daemon::KernelModule::Off;
        else usage_error(std::string("--kernel-module must be auto, on or off, not '") + optarg + "'");
        break;
      case kLogLevel: {
        efuse::log::Level l;
        if (!efuse::log::parse_level(optarg, &l)) usage_error(std::string("unknown log level '") + optarg + "'");
        efuse::log::set_level(l);
        break;
      }
      case kEntryTimeout:
        cli_defaults.cache.entry_timeout = parse_seconds(optarg, "--entry-timeout");
        entry_timeout_set = true;
        break;
      case kAttrTimeout:
        cli_defaults.cache.attr_timeout = parse_seconds(optarg, "--attr-timeout");
        attr_timeout_set = true;
        break;
      case kNegativeTimeout: cli_defaults.cache.negative_timeout = parse_seconds(optarg, "--negative-timeout"); break;
      case kKeepCache: cli_defaults.cache.keep_cache = true; break;
      case kTransport:
        if (std::strcmp(optarg, "auto") == 0) cli_defaults.transport = efuse::daemon::Transport::Auto;
        else if (std::strcmp(optarg, "classic") == 0) cli_defaults.transport = efuse::daemon::Transport::Classic;
        else if (std::strcmp(optarg, "uring") == 0) cli_defaults.transport = efuse::daemon::Transport::Uring;
        else usage_error(std::string("--transport must be auto, classic or uring, not '") + optarg + "'");
        break;
      case kQueueDepth: cli_defaults.queue_depth = parse_count(optarg, "--queue-depth", 1, 1024); break;
      case kMemoryMaxBytes: {
        std::string why;
        if (!efuse::daemon::parse_size(optarg, &cli_defaults.memory.max_bytes, &why))
          usage_error(std::string("--memory-max-bytes '") + optarg + "' is not valid: " + why);
        break;
      }
      case kMemoryMaxInodes: {
        char* end = nullptr;
        unsigned long long v = std::strtoull(optarg, &end, 10);
        if (*optarg < '0' || *optarg > '9' || *end != '\0' || v < 1)
          usage_error(std::string("--memory-max-inodes wants a positive number, not '") + optarg + "'");
        cli_defaults.memory.max_inodes = v;
        break;
      }
      case kWriteback: cli_defaults.cache.writeback = true; break;
      case kReadOnly: cli_defaults.options.read_only = true; break;
      case kNoXattr: cli_defaults.options.xattr = false; break;
      case kStack: cli_defaults.options.stack = true; break;
      case kCreateMountpoint: cli_defaults.create_mountpoint = true; break;
      case kIntercept: cli_defaults.intercept = true; break;
      case 'V': std::printf("efused %s\n", EFUSE_VERSION); return 0;
      case 'h': std::fputs(kUsage, stdout); return 0;
      case ':': usage_error(std::string("option '") + argv[optind - 1] + "' needs a value");
      default: usage_error(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  if (optind < argc) usage_error(std::string("unexpected argument '") + argv[optind] + "'");

  if (!check_path.empty()) {
    try {
      Config cfg = efuse::daemon::load_config(check_path);
      std::printf("%s: valid (%zu mount(s))\n", check_path.c_str(), cfg.mounts.size());
      if (!cfg.metrics_listen.empty() &&
          efuse::telemetry::parse_listen_address(cfg.metrics_listen).family == AF_INET6)
        std::fprintf(stderr,
                     "%s: warning: metrics.listen \"%s\" is an IPv6 address: the civetweb in "
                     "Debian 12's prometheus-cpp is built without IPv6, so efused would serve "
                     "no /metrics; use 127.0.0.1 or localhost\n",
                     check_path.c_str(), cfg.metrics_listen.c_str());
      return 0;
    } catch (const ConfigError& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
  }
  int sources = (!config_path.empty()) + demo + (!mount_args.empty());
  if (sources > 1) usage_error("--config, --demo and --mount exclude each other");

  Config cfg;
  std::string reload_path;
  try {
    if (demo) {
      cfg = efuse::daemon::parse_config(efuse::daemon::embedded_default_config(), "<embedded demo config>");
      for (const auto& m : cfg.mounts) {
        std::string cmd = "mkdir -p '" + m.source + "' '" + m.mountpoint + "'";
        if (std::system(cmd.c_str()) != 0) usage_error("cannot create the demo directories");
        std::string hello = m.source + "/hello.txt";
        if (FILE* f = std::fopen(hello.c_str(), "wx")) {
          std::fputs("hello from efuse\n", f);
          std::fclose(f);
        }
      }
    } else if (!mount_args.empty()) {
      if (cli_defaults.max_threads != 0 && cli_defaults.max_threads < cli_defaults.threads)
        usage_error("--max-threads (" + std::to_string(cli_defaults.max_threads) +
                    ") must not be below --threads (" + std::to_string(cli_defaults.threads) + ")");
      cfg.metrics_listen = "";
      for (const auto& arg : mount_args) {
        auto colon = arg.find(':');
        if (colon == std::string::npos || colon == 0 || colon + 1 == arg.size())
          usage_error("--mount wants SOURCE:MOUNTPOINT, got '" + arg + "'");
        MountConfig m = cli_defaults;
        if (arg.substr(0, colon) == "memory") {
          m.backend = "memory";
          m.options.default_permissions = true;
          efuse::daemon::apply_memory_cache_defaults(m, entry_timeout_set, attr_timeout_set);
        } else {
          m.source = absolute(arg.substr(0, colon));
          m.memory = {};
        }
        m.mountpoint = absolute(arg.substr(colon + 1));
        std::string problem = efuse::daemon::check_paths(m);
        if (!problem.empty()) usage_error(problem);
        for (const auto& other : cfg.mounts)
          if (other.mountpoint == m.mountpoint) usage_error("mountpoint " + m.mountpoint + " given twice");
        m.name = name_for(m.mountpoint, cfg.mounts);
        cfg.mounts.push_back(m);
      }
    } else {
      reload_path = config_path.empty() ? kDefaultConfig : config_path;
      cfg = efuse::daemon::load_config(reload_path);
    }
  } catch (const ConfigError& e) {
    return efuse::daemon::exit_with(efuse::daemon::kExitConfig, e.what());
  }
  if (have_metrics) cfg.metrics_listen = metrics;
  if (bus.empty()) bus = mount_args.empty() ? "system" : "none";

  efuse::daemon::ServiceOptions so;
  so.config_path = reload_path;
  so.bus = bus;
  so.metrics_override = have_metrics ? std::optional<std::string>(metrics) : std::nullopt;
  so.telemetry_override = telemetry;
  so.sample_every_override = sample_every;
  so.strict = !mount_args.empty();
  return efuse::daemon::run_service(std::move(cfg), so);
}
