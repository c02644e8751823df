// efused's configuration model (/etc/efuse/mounts.yaml) and its loader.
//
// The JSON Schema in config/mounts.schema.json is the one specification: load_config()
// validates the YAML document against it (valijson) and reports errors with file, line
// and column. Duplicate keys (which yaml-cpp accepts silently) and unknown keys (with a
// did-you-mean) are errors.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "accel/engine.h"

namespace efuse::daemon {

enum class Transport { Auto, Classic, Uring };
enum class IoPath { Auto, Passthrough, Cache };
// Whether a mount is served through the efuse kernel module (/dev/efuse, kmod/).
enum class KernelModule { Auto, On, Off };

const char* to_string(Transport t);
const char* to_string(IoPath p);
const char* to_string(KernelModule m);

// Kernel caching policy; every field can change on reload without remounting.
struct CachePolicy {
  double entry_timeout = 60.0;    // seconds the kernel may cache names (exact invalidation)
  double attr_timeout = 60.0;     // seconds the kernel may cache attributes
  double negative_timeout = 1.0;  // seconds the kernel may cache "no such name"
  bool writeback = false;         // kernel writeback cache (needs a remount to change)
  bool keep_cache = false;        // keep page cache across opens (FOPEN_KEEP_CACHE)
  double statfs_timeout = 1.0;    // module tier: seconds a STATFS reply is answered in the kernel
  bool operator==(const CachePolicy&) const = default;
};

// Mount options; changing any of them needs a remount.
struct MountFlags {
  bool allow_other = true;
  bool default_permissions = true;
  bool read_only = false;
  bool stack = false;  // mount even where another live FUSE mount sits (on top of it)
  // Serve extended attributes. false answers every xattr request with ENOSYS, after which
  // the kernel sends none for the mount (no security.capability GETXATTR before each
  // write and chown) and the mount has no xattrs and no POSIX ACLs.
  bool xattr = true;  // mount even where another live FUSE mount sits (on top of it)
  bool operator==(const MountFlags&) const = default;
};

// Limits of a memory mount (`memory:`); 0 = the backend's default. Live on reload.
struct MemoryConfig {
  uint64_t max_bytes = 0;
  uint64_t max_inodes = 0;
  bool operator==(const MemoryConfig&) const = default;
};

// memory.max_bytes as written: bytes, a number with K, M, G or T (binary), or a percentage
// of RAM ("25%"); rounded down to whole 4 KiB blocks. False (and *why) when it is not
// valid: no number, a percentage outside 1..100, less than 4096 bytes, too large.
bool parse_size(std::string_view text, uint64_t* bytes, std::string* why);

struct MountConfig {
  std::string name;        // unique, [A-Za-z0-9_.-]{1,64}: used in metric labels and D-Bus
  std::string mountpoint;  // absolute path
  std::string backend;     // "passthrough" or "memory"
  std::string source;      // passthrough: absolute path of the backing directory; memory: ""
  MemoryConfig memory;     // memory: its limits
  bool create_mountpoint = false;  // create a missing mountpoint (0755, with parents)
  bool intercept = false;  // publish it for libefuse_intercept.so (efuse-run); live on reload
  unsigned threads = 4;       // /dev/fuse workers started with the mount (the minimum)
  unsigned max_threads = 0;   // most /dev/fuse workers (grown when all are busy); 0: default
  unsigned queue_depth = 8;  // io_uring entries per CPU queue
  // The offload pool of requests that may block (fuse/offload_pool.h); live on reload.
  unsigned offload_threads = 4;
  unsigned offload_queue = 256;
  // max_threads in effect: as set, else max(threads, 16) (accel/workers.h).
  unsigned workers_max() const;
  Transport transport = Transport::Auto;
  IoPath io_path = IoPath::Auto;
  accel::Settings adaptive;  // the adaptive schedulers (live on reload)
  KernelModule kernel_module = KernelModule::Auto;
  // Bytes of the kernel module tier's READ block cache (efuse_read_blocks); remount.
  uint64_t handler_cache_bytes = 8u << 20;
  CachePolicy cache;
  MountFlags options;
  // eBPF handler programs by opcode name ("lookup" -> "/path/prog.bpf.o"); validated now,
  // attached by the BPF layer.
  std::map<std::string, std::string> bpf_handlers;
  bool operator==(const MountConfig&) const = default;
};

// The cache timeouts of a memory mount where neither the mount nor `defaults:` (nor, with
// --mount, --entry-timeout / --attr-timeout) set them: every change of a memory mount goes
// through the kernel, so its names and attributes can be cached as long as a timeout can be.
inline constexpr double kMemoryCacheTimeout = 31536000.0;  // a year, the schema's maximum
void apply_memory_cache_defaults(MountConfig& mount, bool entry_timeout_set, bool attr_timeout_set);

struct Config {
  std::string path;                             // where it was loaded from
  std::string metrics_listen = "127.0.0.1:19567";  // HOST:PORT; "" disables /metrics
  std::string telemetry = "full";  // eBPF telemetry level: "full", "requests", "off"
  unsigned telemetry_sample_every = 16;  // timing windows cover 1 in N of the time (bpf::kDefaultSampleEvery)
  std::vector<MountConfig> mounts;
};

// A configuration error, located in its file.
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string file, int line, int column, const std::string& message);
  const std::string& file() const { return file_; }
  int line() const { return line_; }      // 1-based; 0 when not tied to a place
  int column() const { return column_; }  // 1-based; 0 when not tied to a place
  const std::string& message() const { return message_; }

 private:
  std::string file_;
  int line_;
  int column_;
  std::string message_;
};

// Reads and validates a config file. Throws ConfigError with "FILE:LINE:COLUMN: message".
Config load_config(const std::string& path);
// Same for text already in memory; `origin` names it in errors.
Config parse_config(std::string_view text, const std::string& origin);

// The configuration `efused --demo` runs: one passthrough mount of a demo directory under
// /tmp/efuse-demo (see embedded_config.cpp).
std::string_view embedded_default_config();

}  // namespace efuse::daemon
