#include "daemon/config_checks.h"

#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

#include "bpf/handler_file.h"
#include "daemon/mount_instance.h"
#include "telemetry/listen_address.h"

namespace efuse::daemon {
namespace {

YamlPath mount_path(size_t index, const char* key) {
  return {"mounts", std::to_string(index), key};
}

std::string at_line(const YamlDocument& doc, const YamlPath& path) {
  return "(line " + std::to_string(line_of(doc.value_mark(path))) + ")";
}

// The schema checks the shape of HOST:PORT; the metrics server's own parser has the last
// word (it alone knows a valid IPv6 address), so the config accepts exactly what it serves.
void check_listen(const YamlDocument& doc, const std::string& listen) {
  if (listen.empty()) return;
  try {
    (void)telemetry::parse_listen_address(listen);
  } catch (const telemetry::ListenError& e) {
    doc.fail(doc.value_mark({"metrics", "listen"}),
             "metrics.listen '" + listen + "' is not valid: " + e.reason());
  }
}

void check_unique_names(const YamlDocument& doc, const Config& config) {
  std::map<std::string, size_t> first_use;
  for (size_t i = 0; i < config.mounts.size(); ++i) {
    auto [it, inserted] = first_use.emplace(config.mounts[i].name, i);
    if (inserted) continue;
    doc.fail(doc.value_mark(mount_path(i, "name")),
             "duplicate mount name '" + it->first +
                 "': " + doc.describe({"mounts", std::to_string(it->second)}) + " " +
                 at_line(doc, mount_path(it->second, "name")) + " has it too");
  }
}

// Whether `inner` is `outer` or lies below it.
bool within(const std::string& inner, const std::string& outer) {
  if (inner == outer || outer == "/") return true;
  return inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
         inner[outer.size()] == '/';
}

// One of a mount's two paths, with where it is in the file.
struct PathRef {
  const char* key;  // "mountpoint" or "source"
  const std::string& path;
  size_t mount;
};

// Fails when `a` (of a mount at or after b's) overlaps `b`. Never called with two sources:
// several mounts may serve one directory.
void check_overlap(const YamlDocument& doc, const Config& config, const PathRef& a,
                   const PathRef& b) {
  const char* relation = a.path == b.path         ? "is the same as"
                         : within(a.path, b.path) ? "is inside"
                         : within(b.path, a.path) ? "contains"
                                                  : nullptr;
  if (relation == nullptr) return;
  bool both_mountpoints = std::strcmp(a.key, b.key) == 0;
  std::string owner =
      a.mount == b.mount ? "this mount" : "mount '" + config.mounts[b.mount].name + "'";
  std::string why = !both_mountpoints  ? "efused must not serve its own mounts"
                    : a.path == b.path ? "mountpoints must be unique"
                                       : "mounts must not nest";
  doc.fail(doc.value_mark(mount_path(a.mount, a.key)),
           std::string(a.key) + " '" + a.path + "' " + relation + " the " + b.key + " '" + b.path +
               "' of " + owner + " " + at_line(doc, mount_path(b.mount, b.key)) + "; " + why);
}

void check_paths(const YamlDocument& doc, const Config& config) {
  for (size_t i = 0; i < config.mounts.size(); ++i) {
    const MountConfig& m = config.mounts[i];
    PathRef mountpoint{"mountpoint", m.mountpoint, i};
    PathRef source{"source", m.source, i};
    bool has_source = !m.source.empty();  // a memory mount has none
    if (has_source) check_overlap(doc, config, source, mountpoint);
    for (size_t j = 0; j < i; ++j) {
      const MountConfig& other = config.mounts[j];
      check_overlap(doc, config, mountpoint, {"mountpoint", other.mountpoint, j});
      if (!other.source.empty())
        check_overlap(doc, config, mountpoint, {"source", other.source, j});
      if (has_source) check_overlap(doc, config, source, {"mountpoint", other.mountpoint, j});
    }
  }
}

// The object must be one efused would load for that opcode: a root-owned file nobody else
// can write, reached without symlinks, built for efused's handler ABI and declaring the
// opcode (bpf::open_handler, the same checks as at mount time and on a swap).
void check_bpf_object(const YamlDocument& doc, const YamlPath& where, const std::string& opcode,
                      const std::string& file) {
  std::string why;
  bpf::OpenedHandler o = bpf::open_handler(file, handler_opcode(opcode), true, 0, &why);
  const bool usable = o.obj != nullptr;
  bpf_object__close(o.obj);
  if (!usable)
    doc.fail(doc.value_mark(where), doc.describe(where) + ": cannot use '" + file + "': " + why);
}

void check_bpf_handlers(const YamlDocument& doc, const Config& config) {
  for (size_t i = 0; i < config.mounts.size(); ++i) {
    YamlPath handlers = mount_path(i, "bpf_handlers");
    for (const auto& opcode : doc.keys(handlers)) {
      YamlPath where = handlers;
      where.push_back(opcode);
      check_bpf_object(doc, where, opcode, config.mounts[i].bpf_handlers.at(opcode));
    }
  }
}

// Without default_permissions the kernel checks nothing and leaves permissions to the file
// system; efused opens, unlinks and renames with its own (root) credentials, so with
// allow_other every user could read and delete every file of the source tree.
void check_permissions(const YamlDocument& doc, const Config& config) {
  for (size_t i = 0; i < config.mounts.size(); ++i) {
    const MountFlags& o = config.mounts[i].options;
    if (o.default_permissions || !o.allow_other) continue;
    doc.fail(doc.value_mark({"mounts", std::to_string(i), "options", "default_permissions"}),
             "mount '" + config.mounts[i].name +
                 "': default_permissions: false together with allow_other: true would let "
                 "every user act with efused's credentials (efused does not check "
                 "permissions itself); keep default_permissions, or set allow_other: false");
  }
}

// What each backend needs and refuses: passthrough serves a `source` and has no `memory`;
// memory has no source, valid limits, and needs the kernel to check permissions (it keeps
// no credentials of its own to check with).
void check_backends(const YamlDocument& doc, const Config& config) {
  for (size_t i = 0; i < config.mounts.size(); ++i) {
    const MountConfig& m = config.mounts[i];
    std::string who = "mount '" + m.name + "'";
    if (m.backend == "passthrough") {
      if (m.source.empty())
        doc.fail(doc.value_mark({"mounts", std::to_string(i)}),
                 who + ": backend passthrough needs 'source', the directory it serves");
      if (doc.has(mount_path(i, "memory")))
        doc.fail(doc.key_mark(mount_path(i, "memory")),
                 who + ": 'memory' applies to backend memory only, not passthrough");
    } else if (m.backend == "memory") {
      if (doc.has(mount_path(i, "source")))
        doc.fail(doc.key_mark(mount_path(i, "source")),
                 who + ": backend memory serves no directory; remove 'source'");
      YamlPath max_bytes{"mounts", std::to_string(i), "memory", "max_bytes"};
      if (doc.has(max_bytes)) {
        uint64_t bytes = 0;
        std::string why;
        if (!parse_size(doc.text(max_bytes), &bytes, &why))
          doc.fail(doc.value_mark(max_bytes),
                   doc.describe(max_bytes) + " '" + doc.text(max_bytes) + "' is not valid: " + why);
      }
      if (!m.options.default_permissions)
        doc.fail(doc.value_mark({"mounts", std::to_string(i), "options", "default_permissions"}),
                 who + ": backend memory needs default_permissions: true (the kernel checks "
                       "permissions for it, with POSIX ACLs)");
    }
  }
}

// max_threads is the ceiling of the worker count that starts at threads.
void check_workers(const YamlDocument& doc, const Config& config) {
  for (size_t i = 0; i < config.mounts.size(); ++i) {
    const MountConfig& m = config.mounts[i];
    if (m.max_threads == 0 || m.max_threads >= m.threads) continue;
    YamlPath where = doc.has(mount_path(i, "max_threads")) ? mount_path(i, "max_threads")
                                                            : YamlPath{"defaults", "max_threads"};
    doc.fail(doc.value_mark(where),
             "mount '" + m.name + "': max_threads (" + std::to_string(m.max_threads) +
                 ") is below threads (" + std::to_string(m.threads) +
                 "), the workers that start with the mount; raise max_threads or lower threads");
  }
}

}  // namespace

std::string normalize_path(std::string_view path) {
  std::string out;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(pos, end - pos);
    if (!part.empty() && part != ".") out.append("/").append(part);
    pos = end + 1;
  }
  return out.empty() ? "/" : out;
}

void check_semantics(const YamlDocument& doc, const Config& config) {
  check_listen(doc, config.metrics_listen);
  check_unique_names(doc, config);
  check_paths(doc, config);
  check_bpf_handlers(doc, config);
  check_permissions(doc, config);
  check_backends(doc, config);
  check_workers(doc, config);
}

}  // namespace efuse::daemon
