// load_config: YAML (syntax, duplicate keys) -> JSON Schema (types, enums, ranges, unknown
// and missing keys) -> model (defaults applied, paths normalized) -> semantic checks
// (names, overlapping paths, BPF objects). Each stage throws ConfigError located in the file.
#include "daemon/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <nlohmann/json.hpp>

#include "accel/workers.h"
#include "daemon/config_checks.h"
#include "daemon/config_schema.h"
#include "daemon/config_yaml.h"

namespace efuse::daemon {

void apply_memory_cache_defaults(MountConfig& mount, bool entry_timeout_set,
                                 bool attr_timeout_set) {
  if (!entry_timeout_set) mount.cache.entry_timeout = kMemoryCacheTimeout;
  if (!attr_timeout_set) mount.cache.attr_timeout = kMemoryCacheTimeout;
}

unsigned MountConfig::workers_max() const {
  if (max_threads != 0) return max_threads;
  return threads > accel::WorkerCountPolicy::kDefaultMax ? threads
                                                          : accel::WorkerCountPolicy::kDefaultMax;
}
namespace {

using nlohmann::json;

constexpr std::pair<Transport, const char*> kTransports[] = {
    {Transport::Auto, "auto"}, {Transport::Classic, "classic"}, {Transport::Uring, "uring"}};
constexpr std::pair<IoPath, const char*> kIoPaths[] = {
    {IoPath::Auto, "auto"}, {IoPath::Passthrough, "passthrough"}, {IoPath::Cache, "cache"}};
constexpr std::pair<KernelModule, const char*> kKernelModules[] = {
    {KernelModule::Auto, "auto"}, {KernelModule::On, "on"}, {KernelModule::Off, "off"}};

// The enum value named `name`; the schema has already rejected every other name.
template <typename Enum, size_t N>
Enum from_name(const std::pair<Enum, const char*> (&table)[N], const std::string& name) {
  for (const auto& [value, text] : table) {
    if (name == text) return value;
  }
  return table[0].first;
}

template <typename Enum, size_t N>
const char* name_of(const std::pair<Enum, const char*> (&table)[N], Enum value) {
  for (const auto& [v, text] : table) {
    if (v == value) return text;
  }
  return "?";
}

template <typename T>
void set_if_present(const json& object, const char* key, T& out) {
  if (auto it = object.find(key); it != object.end()) out = it->get<T>();
}

void apply_cache(const json& cache, CachePolicy& out) {
  set_if_present(cache, "entry_timeout", out.entry_timeout);
  set_if_present(cache, "attr_timeout", out.attr_timeout);
  set_if_present(cache, "negative_timeout", out.negative_timeout);
  set_if_present(cache, "statfs_timeout", out.statfs_timeout);
  set_if_present(cache, "writeback", out.writeback);
  set_if_present(cache, "keep_cache", out.keep_cache);
}

void apply_options(const json& options, MountFlags& out) {
  set_if_present(options, "allow_other", out.allow_other);
  set_if_present(options, "default_permissions", out.default_permissions);
  set_if_present(options, "read_only", out.read_only);
  set_if_present(options, "stack", out.stack);
  set_if_present(options, "xattr", out.xattr);
}

void apply_adaptive(const json& adaptive, accel::Settings& out) {
  set_if_present(adaptive, "probe", out.probe);
  set_if_present(adaptive, "round", out.round);
  set_if_present(adaptive, "reprobe_interval", out.reprobe_interval);
}

// The keys `defaults:` and a mount share; inside cache and options each key falls back alone.
void apply_settings(const json& settings, MountConfig& out) {
  set_if_present(settings, "threads", out.threads);
  set_if_present(settings, "max_threads", out.max_threads);
  set_if_present(settings, "offload_threads", out.offload_threads);
  set_if_present(settings, "offload_queue", out.offload_queue);
  set_if_present(settings, "queue_depth", out.queue_depth);
  if (auto it = settings.find("transport"); it != settings.end())
    out.transport = from_name(kTransports, it->get<std::string>());
  if (auto it = settings.find("io_path"); it != settings.end())
    out.io_path = from_name(kIoPaths, it->get<std::string>());
  if (auto it = settings.find("kernel_module"); it != settings.end())
    out.kernel_module = from_name(kKernelModules, it->get<std::string>());
  set_if_present(settings, "handler_cache_bytes", out.handler_cache_bytes);
  if (auto it = settings.find("adaptive"); it != settings.end()) apply_adaptive(*it, out.adaptive);
  if (auto it = settings.find("cache"); it != settings.end()) apply_cache(*it, out.cache);
  if (auto it = settings.find("options"); it != settings.end()) apply_options(*it, out.options);
}

// Whether `cache.KEY` is set in `settings` (a mount, or defaults:).
bool cache_key_set(const json* settings, const char* key) {
  if (settings == nullptr) return false;
  auto cache = settings->find("cache");
  return cache != settings->end() && cache->contains(key);
}

MountConfig build_mount(const json& mount, const MountConfig& defaults,
                        const json* defaults_json) {
  MountConfig out = defaults;
  apply_settings(mount, out);
  out.name = mount.at("name").get<std::string>();
  out.mountpoint = normalize_path(mount.at("mountpoint").get<std::string>());
  out.backend = mount.at("backend").get<std::string>();
  if (auto it = mount.find("source"); it != mount.end())
    out.source = normalize_path(it->get<std::string>());
  if (auto it = mount.find("memory"); it != mount.end()) {
    if (auto b = it->find("max_bytes"); b != it->end()) {
      std::string why;  // check_semantics reports it
      if (!parse_size(b->is_string() ? b->get<std::string>() : b->dump(), &out.memory.max_bytes, &why))
        out.memory.max_bytes = 0;
    }
    set_if_present(*it, "max_inodes", out.memory.max_inodes);
  }
  if (out.backend == "memory")
    apply_memory_cache_defaults(
        out, cache_key_set(&mount, "entry_timeout") || cache_key_set(defaults_json, "entry_timeout"),
        cache_key_set(&mount, "attr_timeout") || cache_key_set(defaults_json, "attr_timeout"));
  set_if_present(mount, "create_mountpoint", out.create_mountpoint);
  set_if_present(mount, "intercept", out.intercept);
  if (auto it = mount.find("bpf_handlers"); it != mount.end()) {
    for (const auto& [opcode, file] : it->items())
      out.bpf_handlers[opcode] = normalize_path(file.get<std::string>());
  }
  return out;
}

// `document` matches the schema, so every key has the right type.
Config build_config(const json& document, const std::string& origin) {
  Config config;
  config.path = origin;
  if (auto metrics = document.find("metrics"); metrics != document.end()) {
    set_if_present(*metrics, "listen", config.metrics_listen);
  }
  set_if_present(document, "telemetry", config.telemetry);  // the schema's enum checked it
  set_if_present(document, "telemetry_sample_every", config.telemetry_sample_every);  // 1..65536
  MountConfig defaults;
  const json* defaults_json = nullptr;
  if (auto it = document.find("defaults"); it != document.end()) {
    apply_settings(*it, defaults);
    defaults_json = &*it;
  }
  for (const auto& mount : document.at("mounts"))
    config.mounts.push_back(build_mount(mount, defaults, defaults_json));
  return config;
}

std::string read_file(const std::string& path) {
  auto fail = [&path](int err) {
    return ConfigError(path, 0, 0,
                       std::string("cannot read the configuration: ") + std::strerror(err));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(errno);
  std::string text;
  char buffer[16384];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof buffer)) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw fail(err);
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

}  // namespace

const char* to_string(Transport t) { return name_of(kTransports, t); }
const char* to_string(IoPath p) { return name_of(kIoPaths, p); }
const char* to_string(KernelModule m) { return name_of(kKernelModules, m); }

ConfigError::ConfigError(std::string file, int line, int column, const std::string& message)
    : std::runtime_error(file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " +
                         message),
      file_(std::move(file)),
      line_(line),
      column_(column),
      message_(message) {}

Config parse_config(std::string_view text, const std::string& origin) {
  YamlDocument doc(text, origin);
  json document = doc.to_json();
  validate_against_schema(doc, document);
  Config config = build_config(document, origin);
  check_semantics(doc, config);
  return config;
}

Config load_config(const std::string& path) { return parse_config(read_file(path), path); }

bool parse_size(std::string_view text, uint64_t* bytes, std::string* why) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view suffix = text.substr(digits);
  if (digits == 0 || suffix.size() > 1) {
    *why = "want bytes, a number with K, M, G or T, or a percentage of RAM";
    return false;
  }
  constexpr uint64_t kMax = uint64_t{1} << 62;
  uint64_t n = 0;
  for (char c : text.substr(0, digits)) {
    n = n * 10 + static_cast<uint64_t>(c - '0');
    if (n > kMax) {
      *why = "too large";
      return false;
    }
  }
  uint64_t v = n;
  if (suffix == "%") {
    if (n < 1 || n > 100) {
      *why = "a percentage of RAM must be between 1% and 100%";
      return false;
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
    v = ram / 100 * n;
  } else if (!suffix.empty()) {
    int shift = suffix == "K" ? 10 : suffix == "M" ? 20 : suffix == "G" ? 30 : suffix == "T" ? 40 : -1;
    if (shift < 0) {
      *why = "the unit must be K, M, G, T or %";
      return false;
    }
    if (n > (kMax >> shift)) {
      *why = "too large";
      return false;
    }
    v = n << shift;
  }
  v -= v % 4096;
  if (v < 4096) {
    *why = "less than one 4 KiB block";
    return false;
  }
  *bytes = v;
  return true;
}

}  // namespace efuse::daemon
