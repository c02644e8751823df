// The config loader: the schema (embedded copy, defaults, opcodes), the shipped examples,
// and every kind of error with its exact FILE:LINE:COLUMN: message.
#include "daemon/config.h"
#include "daemon/mount_instance.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "daemon/config_checks.h"
#include "daemon/config_schema.h"
#include "efuse_handler.h"
#include "fuse/kernel.h"
#include "fuse/opcodes.h"

namespace efuse::daemon {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// tests/unit/daemon/ -> the repository root (CMake compiles with absolute source paths).
const fs::path kRepo = fs::path(__FILE__).parent_path().parent_path().parent_path().parent_path();
const fs::path kData = fs::path(__FILE__).parent_path() / "data";

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// A private directory, removed with its contents.
class ScratchDir {
 public:
  ScratchDir() {
    std::string templ = (fs::temp_directory_path() / "efuse-config-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name, const std::string& contents = "") const {
    std::ofstream(path_ / name) << contents;
    return (path_ / name).string();
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

// The full what() of the ConfigError that parsing `text` (named "t.yaml") throws.
std::string error_of(const std::string& text) {
  try {
    parse_config(text, "t.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no error>";
}

const char* kMount = R"(mounts:
  - name: a
    mountpoint: /mnt/a
    backend: passthrough
    source: /srv/a
)";

// kMount with `extra` appended to its (only) mount.
std::string with_mount_keys(const std::string& extra) { return kMount + extra; }

// ---------------------------------------------------------------------------------------
// The schema

TEST(ConfigSchema, EmbeddedCopyMatchesFile) {
  EXPECT_EQ(mounts_schema_text(), slurp(kRepo / "config/mounts.schema.json"))
      << "run config/embed_schema.sh after changing config/mounts.schema.json";
}

TEST(ConfigSchema, IsDraft7) {
  EXPECT_EQ(mounts_schema().at("$schema"), "http://json-schema.org/draft-07/schema#");
}

// Every object in the schema forbids keys it does not list.
void expect_closed_objects(const json& schema, const std::string& where) {
  if (!schema.is_object()) return;
  if (schema.contains("type") && schema["type"] == "object") {
    EXPECT_EQ(schema.value("additionalProperties", json(true)), json(false)) << where;
  }
  for (const auto& [key, child] : schema.items()) {
    if (child.is_object()) expect_closed_objects(child, where + "/" + key);
  }
}

TEST(ConfigSchema, AdditionalPropertiesFalseEverywhere) {
  expect_closed_objects(mounts_schema(), "");
}

const json& default_at(const YamlPath& path) {
  const json* schema = subschema_at(path);
  EXPECT_NE(schema, nullptr);
  const json* value = schema ? schema_keyword(*schema, "default") : nullptr;
  static const json kNone;
  return value ? *value : kNone;
}

TEST(ConfigSchema, DocumentedDefaultsAreTheModelsDefaults) {
  const MountConfig m;
  EXPECT_EQ(default_at({"metrics", "listen"}), Config().metrics_listen);
  EXPECT_EQ(default_at({"telemetry"}), Config().telemetry);
  EXPECT_EQ(default_at({"telemetry_sample_every"}), Config().telemetry_sample_every);
  EXPECT_EQ(default_at({"defaults", "threads"}), m.threads);
  EXPECT_EQ(default_at({"defaults", "transport"}), to_string(m.transport));
  EXPECT_EQ(default_at({"defaults", "io_path"}), to_string(m.io_path));
  EXPECT_EQ(default_at({"defaults", "kernel_module"}), to_string(m.kernel_module));
  EXPECT_EQ(default_at({"defaults", "handler_cache_bytes"}), m.handler_cache_bytes);
  EXPECT_EQ(default_at({"defaults", "adaptive", "probe"}), m.adaptive.probe);
  EXPECT_EQ(default_at({"defaults", "adaptive", "round"}), m.adaptive.round);
  EXPECT_EQ(default_at({"defaults", "adaptive", "reprobe_interval"}), m.adaptive.reprobe_interval);
  EXPECT_EQ(default_at({"defaults", "cache", "entry_timeout"}), m.cache.entry_timeout);
  EXPECT_EQ(default_at({"defaults", "cache", "attr_timeout"}), m.cache.attr_timeout);
  EXPECT_EQ(default_at({"defaults", "cache", "negative_timeout"}), m.cache.negative_timeout);
  EXPECT_EQ(default_at({"defaults", "cache", "writeback"}), m.cache.writeback);
  EXPECT_EQ(default_at({"defaults", "cache", "keep_cache"}), m.cache.keep_cache);
  EXPECT_EQ(default_at({"defaults", "options", "allow_other"}), m.options.allow_other);
  EXPECT_EQ(default_at({"defaults", "options", "default_permissions"}),
            m.options.default_permissions);
  EXPECT_EQ(default_at({"defaults", "options", "read_only"}), m.options.read_only);
  EXPECT_EQ(default_at({"defaults", "options", "stack"}), m.options.stack);
  EXPECT_EQ(default_at({"defaults", "options", "xattr"}), m.options.xattr);
  EXPECT_EQ(default_at({"mounts", "0", "create_mountpoint"}), m.create_mountpoint);
  EXPECT_EQ(default_at({"mounts", "0", "intercept"}), m.intercept);
}

// intercept: parsed per mount, and applied live (publish or withdraw) without a remount.
TEST(ConfigLoad, InterceptIsLive) {
  Config a = parse_config(with_mount_keys(""), "t.yaml");
  Config b = parse_config(with_mount_keys("    intercept: true\n"), "t.yaml");
  EXPECT_FALSE(a.mounts[0].intercept);
  EXPECT_TRUE(b.mounts[0].intercept);
  EXPECT_FALSE(a.mounts[0] == b.mounts[0]);
  EXPECT_FALSE(needs_remount(a.mounts[0], b.mounts[0]));
}

// options.xattr: on unless turned off; a change remounts (the kernel's xattr switch-off
// lasts as long as the connection).
TEST(ConfigLoad, XattrIsOnByDefaultAndRemounts) {
  Config a = parse_config(with_mount_keys(""), "t.yaml");
  Config b = parse_config(with_mount_keys("    options: {xattr: false}\n"), "t.yaml");
  EXPECT_TRUE(a.mounts[0].options.xattr);
  EXPECT_FALSE(b.mounts[0].options.xattr);
  EXPECT_TRUE(needs_remount(a.mounts[0], b.mounts[0]));
  EXPECT_EQ(
      error_of(with_mount_keys("    options: {xattr: off}\n")),
      "t.yaml:6:22: mounts[0].options.xattr must be a boolean (true or false), not a string");
}

TEST(ConfigLoad, StackAndCreateMountpoint) {
  Config c = parse_config(
      with_mount_keys("    create_mountpoint: true\n    options: {stack: true}\n"), "t.yaml");
  ASSERT_EQ(c.mounts.size(), 1u);
  EXPECT_TRUE(c.mounts[0].create_mountpoint);
  EXPECT_TRUE(c.mounts[0].options.stack);
  EXPECT_FALSE(parse_config(with_mount_keys(""), "t.yaml").mounts[0].create_mountpoint);
}

TEST(ConfigLoad, HandlerCacheBytes) {
  Config c = parse_config("defaults:\n  handler_cache_bytes: 65536\n" +
                              with_mount_keys("    handler_cache_bytes: 0\n"), "t.yaml");
  ASSERT_EQ(c.mounts.size(), 1u);
  EXPECT_EQ(c.mounts[0].handler_cache_bytes, 0u);
  EXPECT_EQ(parse_config("defaults:\n  handler_cache_bytes: 65536\n" + with_mount_keys(""),
                         "t.yaml").mounts[0].handler_cache_bytes, 65536u);
  EXPECT_EQ(parse_config(with_mount_keys(""), "t.yaml").mounts[0].handler_cache_bytes, 8u << 20);
  EXPECT_EQ(error_of(with_mount_keys("    handler_cache_bytes: -1\n")),
            "t.yaml:6:26: mounts[0].handler_cache_bytes must be between 0 and 1073741824, not -1");
  EXPECT_EQ(error_of(with_mount_keys("    handler_cache_bytes: 2147483648\n")),
            "t.yaml:6:26: mounts[0].handler_cache_bytes must be between 0 and 1073741824, "
            "not 2147483648");
  EXPECT_EQ(error_of(with_mount_keys("    handler_cache_bytes: 8M\n")),
            "t.yaml:6:26: mounts[0].handler_cache_bytes must be an integer, not a string");
  MountConfig a, b;
  b.handler_cache_bytes = 0;
  EXPECT_TRUE(needs_remount(a, b)) << "the block cache is created with the handlers";
}

TEST(ConfigLoad, KernelModule) {
  Config c = parse_config("defaults:\n  kernel_module: off\n" +
                              with_mount_keys("    kernel_module: on\n"), "t.yaml");
  ASSERT_EQ(c.mounts.size(), 1u);
  EXPECT_EQ(c.mounts[0].kernel_module, KernelModule::On);
  EXPECT_EQ(parse_config("defaults:\n  kernel_module: off\n" + with_mount_keys(""), "t.yaml")
                .mounts[0].kernel_module, KernelModule::Off);
  EXPECT_EQ(parse_config(with_mount_keys(""), "t.yaml").mounts[0].kernel_module,
            KernelModule::Auto);
  EXPECT_STREQ(to_string(KernelModule::On), "on");
  MountConfig a, b;
  b.kernel_module = KernelModule::Off;
  EXPECT_TRUE(needs_remount(a, b)) << "the tier is chosen at mount time";
}

TEST(ConfigSchema, BpfHandlersAreFuseOpcodes) {
  std::set<std::string> opcodes;
  for (uint32_t op = 0; op <= fuse::kernel::kMaxOpcode; ++op) opcodes.insert(fuse::opcode_name(op));
  const json* handlers =
      schema_keyword(*subschema_at({"mounts", "0", "bpf_handlers"}), "properties");
  ASSERT_NE(handlers, nullptr);
  EXPECT_EQ(handlers->size(), 12u);
  for (const auto& [name, _] : handlers->items()) EXPECT_TRUE(opcodes.count(name)) << name;
}

// ---------------------------------------------------------------------------------------
// Valid configurations

TEST(ConfigLoad, ExampleFileLoads) {
  Config c = load_config((kRepo / "config/mounts.yaml").string());
  EXPECT_EQ(c.metrics_listen, "127.0.0.1:19567");
  ASSERT_EQ(c.mounts.size(), 3u);

  MountConfig plain;
  plain.name = "home";
  plain.mountpoint = "/srv/efuse/home";
  plain.backend = "passthrough";
  plain.source = "/home";
  EXPECT_EQ(c.mounts[0], plain);  // the example's `defaults` are the built-in ones

  const MountConfig& full = c.mounts[1];
  EXPECT_EQ(full.name, "build-cache");
  EXPECT_EQ(full.threads, 16u);
  EXPECT_EQ(full.transport, Transport::Uring);
  EXPECT_EQ(full.io_path, IoPath::Passthrough);
  EXPECT_EQ(full.cache, (CachePolicy{60, 60, 0, true, true}));
  EXPECT_EQ(full.options, (MountFlags{false, true, true}));
  EXPECT_TRUE(full.bpf_handlers.empty());

  const MountConfig& memory = c.mounts[2];
  EXPECT_EQ(memory.backend, "memory");
  EXPECT_EQ(memory.source, "");
  EXPECT_EQ(memory.memory.max_inodes, 3145728u);
  EXPECT_GT(memory.memory.max_bytes, 0u);  // "50%" of this machine's RAM
}

TEST(ConfigLoad, ExamplesDirectoryLoads) {
  for (const auto& entry : fs::directory_iterator(kRepo / "config/examples")) {
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(load_config(entry.path().string()));
  }
}

TEST(ConfigLoad, EmbeddedDemoConfig) {
  Config c = parse_config(embedded_default_config(), "<demo>");
  EXPECT_EQ(c.path, "<demo>");
  EXPECT_EQ(c.metrics_listen, "127.0.0.1:19567");
  ASSERT_EQ(c.mounts.size(), 1u);
  EXPECT_EQ(c.mounts[0].name, "demo");
  EXPECT_EQ(c.mounts[0].backend, "passthrough");
  EXPECT_EQ(c.mounts[0].source, "/tmp/efuse-demo/source");
  EXPECT_EQ(c.mounts[0].mountpoint, "/tmp/efuse-demo/mnt");
}

TEST(ConfigLoad, MinimalMountGetsBuiltInDefaults) {
  Config c = parse_config(kMount, "t.yaml");
  EXPECT_EQ(c.metrics_listen, "127.0.0.1:19567");
  ASSERT_EQ(c.mounts.size(), 1u);
  MountConfig expected;
  expected.name = "a";
  expected.mountpoint = "/mnt/a";
  expected.backend = "passthrough";
  expected.source = "/srv/a";
  EXPECT_EQ(c.mounts[0], expected);
}

TEST(ConfigLoad, NoMountsIsValid) {
  EXPECT_TRUE(parse_config("mounts: []\n", "t.yaml").mounts.empty());
}

TEST(ConfigLoad, DefaultsApplyKeyByKey) {
  Config c = parse_config(R"(defaults:
  threads: 8
  transport: classic
  cache: {attr_timeout: 5, writeback: true, statfs_timeout: 0}
  options: {read_only: true}
mounts:
  - {name: a, mountpoint: /mnt/a, backend: passthrough, source: /srv/a}
  - name: b
    mountpoint: /mnt/b
    backend: passthrough
    source: /srv/b
    threads: 2
    io_path: cache
    cache: {attr_timeout: 0.5, statfs_timeout: 2.5}
    options: {allow_other: false}
)",
                          "t.yaml");
  ASSERT_EQ(c.mounts.size(), 2u);
  const MountConfig& a = c.mounts[0];
  EXPECT_EQ(a.threads, 8u);
  EXPECT_EQ(a.transport, Transport::Classic);
  EXPECT_EQ(a.io_path, IoPath::Auto);
  EXPECT_EQ(a.cache, (CachePolicy{60, 5, 1, true, false, 0}));
  EXPECT_EQ(a.options, (MountFlags{true, true, true}));
  const MountConfig& b = c.mounts[1];
  EXPECT_EQ(b.threads, 2u);
  EXPECT_EQ(b.transport, Transport::Classic);
  EXPECT_EQ(b.io_path, IoPath::Cache);
  EXPECT_EQ(b.cache, (CachePolicy{60, 0.5, 1, true, false, 2.5}));
  EXPECT_EQ(b.options, (MountFlags{false, true, true}));
}

TEST(ConfigLoad, AdaptiveSettingsFallBackKeyByKey) {
  Config c = parse_config(R"(defaults:
  adaptive: {probe: 8, reprobe_interval: 0.5}
mounts:
  - {name: a, mountpoint: /mnt/a, backend: passthrough, source: /srv/a}
  - name: b
    mountpoint: /mnt/b
    backend: passthrough
    source: /srv/b
    adaptive: {round: 16}
)",
                          "t.yaml");
  ASSERT_EQ(c.mounts.size(), 2u);
  EXPECT_EQ(c.mounts[0].adaptive, (accel::Settings{8, 256, 0.5}));
  EXPECT_EQ(c.mounts[1].adaptive, (accel::Settings{8, 16, 0.5}));
  EXPECT_EQ(MountConfig().adaptive, accel::Settings{});
}

TEST(ConfigError, AdaptiveValues) {
  EXPECT_EQ(error_of(with_mount_keys("    adaptive: {probe: 0}\n")),
            "t.yaml:6:23: mounts[0].adaptive.probe must be between 1 and 64, not 0");
  EXPECT_EQ(error_of(with_mount_keys("    adaptive: {round: 2000000}\n")),
            "t.yaml:6:23: mounts[0].adaptive.round must be between 1 and 1000000, not 2000000");
  EXPECT_EQ(error_of(with_mount_keys("    adaptive: {reprobe_interval: 0}\n")),
            "t.yaml:6:34: mounts[0].adaptive.reprobe_interval must be between 0.1 and 86400, not 0");
  EXPECT_EQ(error_of(with_mount_keys("    adaptive: {probe: many}\n")),
            "t.yaml:6:23: mounts[0].adaptive.probe must be an integer, not a string");
  std::string typo = error_of(with_mount_keys("    adaptive: {probes: 4}\n"));
  EXPECT_NE(typo.find("t.yaml:6:16:"), std::string::npos) << typo;
  EXPECT_NE(typo.find("did you mean 'probe'"), std::string::npos) << typo;
}

TEST(ConfigLoad, PathsAreNormalized) {
  Config c = parse_config(R"(mounts:
  - {name: a, mountpoint: "/mnt//a/./", backend: passthrough, source: "/srv/a/"}
  - {name: b, mountpoint: /mnt/b, backend: passthrough, source: "/srv//b"}
)",
                          "t.yaml");
  EXPECT_EQ(c.mounts[0].mountpoint, "/mnt/a");
  EXPECT_EQ(c.mounts[0].source, "/srv/a");
  EXPECT_EQ(c.mounts[1].source, "/srv/b");
  EXPECT_EQ(normalize_path("/"), "/");
  EXPECT_EQ(normalize_path("//a//b/."), "/a/b");
  EXPECT_EQ(normalize_path("/a..b/c."), "/a..b/c.");
}

TEST(ConfigLoad, OverlappingSourcesAreFine) {
  EXPECT_NO_THROW(parse_config(R"(mounts:
  - {name: a, mountpoint: /mnt/a, backend: passthrough, source: /srv}
  - {name: b, mountpoint: /mnt/b, backend: passthrough, source: /srv/b}
  - {name: c, mountpoint: /mnt/ab, backend: passthrough, source: /srv}
)",
                               "t.yaml"));
}

TEST(ConfigLoad, MetricsListenForms) {
  for (const char* listen : {"", "localhost:0", "127.0.0.1:19567", "0.0.0.0:65535", "[::1]:19567",
                             "[::]:80", "[2001:db8::1]:443", "[::ffff:10.0.0.1]:1"}) {
    std::string text = std::string("metrics: {listen: \"") + listen + "\"}\n" + kMount;
    EXPECT_EQ(parse_config(text, "t.yaml").metrics_listen, listen);
  }
  for (const char* listen : {"127.0.0.1", "127.0.0.1:65536", "256.0.0.1:80", "example.com:80",
                             "::1:80", "[::1]", "127.0.0.1:080", " 127.0.0.1:80"}) {
    std::string text = std::string("metrics: {listen: \"") + listen + "\"}\n" + kMount;
    EXPECT_EQ(error_of(text).rfind("t.yaml:1:19: metrics.listen '", 0), 0u)
        << listen << ": " << error_of(text);
  }
}

TEST(ConfigLoad, ScalarsFollowYaml12CoreSchema) {
  Config c = parse_config(
      with_mount_keys("    threads: 0x10\n    cache: {entry_timeout: 1e2, attr_timeout: .5, "
                      "keep_cache: True}\n"),
      "t.yaml");
  EXPECT_EQ(c.mounts[0].threads, 16u);
  EXPECT_EQ(c.mounts[0].cache.entry_timeout, 100.0);
  EXPECT_EQ(c.mounts[0].cache.attr_timeout, 0.5);
  EXPECT_TRUE(c.mounts[0].cache.keep_cache);
  // A quoted name that looks like a number stays a string.
  EXPECT_EQ(
      parse_config(R"(mounts: [{name: "1", mountpoint: /m, backend: passthrough, source: /s}])",
                   "t.yaml")
          .mounts[0]
          .name,
      "1");
}

// A copy of a built handler object in `dir`, mode 0644 (bpf_handlers refuses group- or
// other-writable files).
std::string handler_copy(const ScratchDir& dir, const std::string& from, const std::string& name) {
  std::ifstream in(from, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  std::string path = dir.file(name, bytes.str());
  ::chmod(path.c_str(), 0644);
  return path;
}

TEST(ConfigLoad, BpfHandlerWithShippedObjects) {
  ScratchDir dir;
  std::string lookup = handler_copy(dir, EFUSE_BPF_HANDLER_DIR "/efuse_lookup.bpf.o", "l.bpf.o");
  std::string getattr = handler_copy(dir, EFUSE_BPF_HANDLER_DIR "/efuse_getattr.bpf.o", "g.bpf.o");
  Config c = parse_config(with_mount_keys("    bpf_handlers:\n      lookup: " + lookup +
                                          "\n      getattr: " + getattr + "\n"),
                          "t.yaml");
  EXPECT_EQ(c.mounts[0].bpf_handlers,
            (std::map<std::string, std::string>{{"lookup", lookup}, {"getattr", getattr}}));
}

// The shipped ACCESS handler is loaded only where the kernel sends ACCESS (mounts without
// default_permissions); one named in bpf_handlers is loaded anyway.
TEST(ConfigLoad, HandlerTableHasAccessOnlyWithoutDefaultPermissions) {
  MountConfig m;
  auto table = handler_table(m, "/h");
  EXPECT_FALSE(table.contains(34)) << "default_permissions: the kernel never sends ACCESS";
  EXPECT_EQ(table.at(3), "/h/efuse_getattr.bpf.o");
  m.options.default_permissions = false;
  EXPECT_EQ(handler_table(m, "/h").at(34), "/h/efuse_access.bpf.o");
  m.options.default_permissions = true;
  m.bpf_handlers["access"] = "/x/a.bpf.o";
  EXPECT_EQ(handler_table(m, "/h").at(34), "/x/a.bpf.o");
}

TEST(ConfigLoad, EnumNames) {
  EXPECT_STREQ(to_string(Transport::Auto), "auto");
  EXPECT_STREQ(to_string(Transport::Classic), "classic");
  EXPECT_STREQ(to_string(Transport::Uring), "uring");
  EXPECT_STREQ(to_string(IoPath::Auto), "auto");
  EXPECT_STREQ(to_string(IoPath::Passthrough), "passthrough");
  EXPECT_STREQ(to_string(IoPath::Cache), "cache");
}

// ---------------------------------------------------------------------------------------
// Errors: the file itself

TEST(ConfigError, WhatIsFileLineColumnMessage) {
  ConfigError e("f.yaml", 3, 7, "boom");
  EXPECT_STREQ(e.what(), "f.yaml:3:7: boom");
  EXPECT_EQ(e.file(), "f.yaml");
  EXPECT_EQ(e.line(), 3);
  EXPECT_EQ(e.column(), 7);
  EXPECT_EQ(e.message(), "boom");
}

TEST(ConfigError, NonexistentFile) {
  try {
    load_config("/nonexistent/efuse/mounts.yaml");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "/nonexistent/efuse/mounts.yaml:0:0: cannot read the configuration: No such file "
                 "or directory");
    EXPECT_EQ(e.line(), 0);
    EXPECT_EQ(e.column(), 0);
  }
}

TEST(ConfigError, DirectoryInsteadOfFile) {
  ScratchDir dir;
  try {
    load_config(dir.path());
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.message(), "cannot read the configuration: Is a directory");
  }
}

TEST(ConfigError, EmptyFile) {
  std::string path = (kData / "empty.yaml").string();
  try {
    load_config(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ":1:1: the configuration is empty; expected a map with a 'mounts' list");
  }
  EXPECT_EQ(error_of("# only a comment\n"),
            "t.yaml:1:1: the configuration is empty; expected a map with a 'mounts' list");
}

TEST(ConfigError, NotAMap) {
  std::string path = (kData / "not_a_map.yaml").string();
  try {
    load_config(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ":2:1: the configuration must be a map with a 'mounts' list, not a list");
  }
  EXPECT_EQ(error_of("just text\n"),
            "t.yaml:1:1: the configuration must be a map with a 'mounts' list, not a scalar");
}

TEST(ConfigError, YamlSyntax) {
  EXPECT_EQ(error_of("mounts: [\n  {name: a\n"),
            "t.yaml:3:1: YAML syntax error: end of map flow not found");
  EXPECT_EQ(error_of("metrics:\n  listen: x\n   bad: 1\n"),
            "t.yaml:3:7: YAML syntax error: illegal map value");
  EXPECT_EQ(error_of("mounts: *nowhere\n"),
            "t.yaml:1:9: YAML syntax error: the referenced anchor is not defined");
}

TEST(ConfigError, SecondDocument) {
  EXPECT_EQ(error_of(std::string(kMount) + "---\nmounts: []\n"),
            "t.yaml:7:1: a second YAML document; the file must hold exactly one");
}

TEST(ConfigError, RecursiveAlias) {
  EXPECT_EQ(error_of("mounts: &x [*x]\n"),
            "t.yaml:1:9: more than 16 levels of nesting (a recursive alias?)");
}

TEST(ConfigError, AliasesExpandingTooFar) {
  std::string text = "a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n";
  for (char c = 'b'; c <= 'f'; ++c) {
    std::string prev(1, static_cast<char>(c - 1));
    text += std::string(1, c) + ": &" + c + " [*" + prev + ", *" + prev + ", *" + prev + ", *" +
            prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev +
            ", *" + prev + "]\n";
  }
  EXPECT_EQ(error_of(text).rfind("t.yaml:", 0), 0u);
  EXPECT_NE(error_of(text).find(": more than 100000 values (aliases expanding too far?)"),
            std::string::npos);
}

TEST(ConfigError, NonStringKey) {
  EXPECT_EQ(error_of("? [a, b]\n: 1\n"), "t.yaml:1:3: map keys must be strings, not a list");
}

// ---------------------------------------------------------------------------------------
// Errors: duplicate and unknown keys

TEST(ConfigError, DuplicateTopLevelKey) {
  EXPECT_EQ(error_of("metrics: {listen: \"\"}\n" + std::string(kMount) + "metrics: {}\n"),
            "t.yaml:7:1: duplicate key 'metrics' at the top level (first defined at line 1)");
}

TEST(ConfigError, NoDefaultPermissionsWithAllowOtherIsRefused) {
  std::string e = error_of(
      with_mount_keys("    options: {allow_other: true, default_permissions: false}\n"));
  EXPECT_EQ(e.rfind("t.yaml:6:55: mount 'a': ", 0), 0u) << e;
  EXPECT_NE(e.find("default_permissions: false together with allow_other: true"),
            std::string::npos)
      << e;
  // Only the mount's owner can reach it without allow_other: that is allowed.
  EXPECT_NO_THROW(parse_config(
      with_mount_keys("    options: {allow_other: false, default_permissions: false}\n"), "t.yaml"));
}

TEST(ConfigError, DuplicateNestedKey) {
  EXPECT_EQ(
      error_of(with_mount_keys("    cache:\n      attr_timeout: 1\n      entry_timeout: 2\n"
                               "      attr_timeout: 3\n")),
      "t.yaml:9:7: duplicate key 'attr_timeout' in mounts[0].cache (first defined at line 7)");
  EXPECT_EQ(error_of("mounts: [{name: a, name: b}]\n"),
            "t.yaml:1:20: duplicate key 'name' in mounts[0] (first defined at line 1)");
}

TEST(ConfigError, UnknownKeyDidYouMean) {
  EXPECT_EQ(error_of("mounts:\n  - name: a\n    mountpont: /mnt/a\n    backend: passthrough\n    "
                     "source: /srv/a\n"),
            "t.yaml:3:5: unknown key 'mountpont' in mounts[0]; did you mean 'mountpoint'?");
  EXPECT_EQ(
      error_of(with_mount_keys("    cache: {atr_timeout: 2}\n")),
      "t.yaml:6:13: unknown key 'atr_timeout' in mounts[0].cache; did you mean 'attr_timeout'?");
  EXPECT_EQ(error_of(std::string("mount:\n") + kMount),
            "t.yaml:1:1: unknown key 'mount' at the top level; did you mean 'mounts'?");
}

TEST(ConfigError, UnknownKeyListsAllowedKeys) {
  EXPECT_EQ(error_of(std::string("metrics: {port: 80}\n") + kMount),
            "t.yaml:1:11: unknown key 'port' in metrics; expected one of listen");
  EXPECT_EQ(error_of(with_mount_keys("    options: {noexec: true}\n")),
            "t.yaml:6:15: unknown key 'noexec' in mounts[0].options; expected one of allow_other, "
            "default_permissions, read_only, stack, xattr");
}

TEST(ConfigError, UnknownBpfOpcode) {
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers:\n      lokup: /x.bpf.o\n")),
            "t.yaml:7:7: unknown key 'lokup' in mounts[0].bpf_handlers; did you mean 'lookup'?");
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers:\n      write: /x.bpf.o\n")),
            "t.yaml:7:7: unknown key 'write' in mounts[0].bpf_handlers; expected one of access, "
            "flush, getattr, "
            "getxattr, listxattr, lookup, open, read, readdir, readdirplus, release, statfs");
}

TEST(ConfigError, MisspeltKeyIsReportedBeforeTheMissingOne) {
  EXPECT_EQ(error_of("mounts:\n  - name: a\n    mountpoint: /mnt/a\n    backend: passthrough\n    "
                     "sorce: /srv/a\n"),
            "t.yaml:5:5: unknown key 'sorce' in mounts[0]; did you mean 'source'?");
}

// ---------------------------------------------------------------------------------------
// Errors: types, enums, ranges, patterns, required keys

TEST(ConfigError, WrongType) {
  EXPECT_EQ(error_of(with_mount_keys("    threads: \"4\"\n")),
            "t.yaml:6:14: mounts[0].threads must be an integer, not a string");
  EXPECT_EQ(error_of(with_mount_keys("    threads: 99999999999999999999\n")),
            "t.yaml:6:14: mounts[0].threads must be an integer, not a number");
  EXPECT_EQ(error_of(with_mount_keys("    threads: 2.5\n")),
            "t.yaml:6:14: mounts[0].threads must be an integer, not a number");
  EXPECT_EQ(
      error_of(with_mount_keys("    options: {read_only: yes}\n")),
      "t.yaml:6:26: mounts[0].options.read_only must be a boolean (true or false), not a string");
  EXPECT_EQ(error_of("mounts: {name: a}\n"), "t.yaml:1:9: mounts must be a list, not a map");
  EXPECT_EQ(error_of("metrics: {listen: 19567}\n" + std::string(kMount)),
            "t.yaml:1:19: metrics.listen must be a string, not an integer");
}

TEST(ConfigError, EmptyValueIsReportedAtItsKey) {
  EXPECT_EQ(error_of(with_mount_keys("    cache:\n    threads: 2\n")),
            "t.yaml:6:5: mounts[0].cache must be a map, not an empty value");
}

TEST(Config, TelemetryLevel) {
  EXPECT_EQ(parse_config(kMount, "t.yaml").telemetry, "full");
  for (const char* level : {"full", "requests", "off"})
    EXPECT_EQ(parse_config(std::string("telemetry: ") + level + "\n" + kMount, "t.yaml").telemetry,
              level);
  EXPECT_EQ(error_of("telemetry: on\n" + std::string(kMount)),
            "t.yaml:1:12: telemetry must be one of full, requests, off; not 'on'");
  EXPECT_EQ(error_of("telemetry: true\n" + std::string(kMount)),
            "t.yaml:1:12: telemetry must be a string, not a boolean");
  EXPECT_EQ(error_of("telemetry:\n  level: full\n" + std::string(kMount)),
            "t.yaml:2:3: telemetry must be a string, not a map");
}

TEST(Config, TelemetrySampling) {
  EXPECT_EQ(parse_config(kMount, "t.yaml").telemetry_sample_every, 16u);
  for (unsigned n : {1u, 2u, 8u, 1000u, 65536u})
    EXPECT_EQ(parse_config("telemetry_sample_every: " + std::to_string(n) + "\n" + kMount, "t.yaml")
                  .telemetry_sample_every,
              n);
  EXPECT_EQ(error_of("telemetry_sample_every: 0\n" + std::string(kMount)),
            "t.yaml:1:25: telemetry_sample_every must be between 1 and 65536, not 0");
  EXPECT_EQ(error_of("telemetry_sample_every: 65537\n" + std::string(kMount)),
            "t.yaml:1:25: telemetry_sample_every must be between 1 and 65536, not 65537");
  EXPECT_EQ(error_of("telemetry_sample_every: -1\n" + std::string(kMount)),
            "t.yaml:1:25: telemetry_sample_every must be between 1 and 65536, not -1");
  EXPECT_EQ(error_of("telemetry_sample_every: 2.5\n" + std::string(kMount)),
            "t.yaml:1:25: telemetry_sample_every must be an integer, not a number");
  EXPECT_EQ(error_of("telemetry_sample_every: eight\n" + std::string(kMount)),
            "t.yaml:1:25: telemetry_sample_every must be an integer, not a string");
  EXPECT_EQ(error_of("telemetry_sample_every:\n" + std::string(kMount)),
            "t.yaml:1:1: telemetry_sample_every must be an integer, not an empty value");
}

TEST(ConfigError, EnumViolation) {
  EXPECT_EQ(error_of(with_mount_keys("    transport: fast\n")),
            "t.yaml:6:16: mounts[0].transport must be one of auto, classic, uring; not 'fast'");
  EXPECT_EQ(error_of("defaults:\n  io_path: direct\n" + std::string(kMount)),
            "t.yaml:2:12: defaults.io_path must be one of auto, passthrough, cache; not 'direct'");
  EXPECT_EQ(error_of("mounts:\n  - {name: a, mountpoint: /m, backend: nfs, source: /s}\n"),
            "t.yaml:2:40: mounts[0].backend must be one of passthrough, memory; not 'nfs'");
}

const char* kMemory = R"(mounts:
  - name: scratch
    mountpoint: /mnt/scratch
    backend: memory
)";

TEST(ConfigLoad, MemoryMountsAndTheirLimits) {
  Config c = parse_config(kMemory, "t.yaml");
  ASSERT_EQ(c.mounts.size(), 1u);
  EXPECT_EQ(c.mounts[0].backend, "memory");
  EXPECT_EQ(c.mounts[0].source, "");
  EXPECT_EQ(c.mounts[0].memory, MemoryConfig{});  // the backend's defaults
  c = parse_config(std::string(kMemory) + "    memory: {max_bytes: 1G, max_inodes: 5000}\n", "t.yaml");
  EXPECT_EQ(c.mounts[0].memory.max_bytes, uint64_t{1} << 30);
  EXPECT_EQ(c.mounts[0].memory.max_inodes, 5000u);
  c = parse_config(std::string(kMemory) + "    memory: {max_bytes: 10000}\n", "t.yaml");
  EXPECT_EQ(c.mounts[0].memory.max_bytes, 8192u);  // whole 4 KiB blocks
  c = parse_config(std::string(kMemory) + "    memory: {max_bytes: \"512K\"}\n", "t.yaml");
  EXPECT_EQ(c.mounts[0].memory.max_bytes, 512u * 1024);
  c = parse_config(std::string(kMemory) + "    memory: {max_bytes: 10%}\n", "t.yaml");
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t ram = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  EXPECT_EQ(c.mounts[0].memory.max_bytes, (ram / 100 * 10) / 4096 * 4096);
  // A memory mount needs no source on disk and may sit anywhere (no overlap with sources).
  c = parse_config(std::string(kMemory) + R"(  - name: data
    mountpoint: /srv/data
    backend: passthrough
    source: /srv/src
)", "t.yaml");
  EXPECT_EQ(c.mounts.size(), 2u);
}

// Every change of a memory mount goes through the kernel: its names and attributes are
// cached as long as a timeout can be, unless the mount or defaults: set the timeout.
TEST(ConfigLoad, MemoryMountsCacheAsLongAsATimeoutCanBe) {
  Config c = parse_config(std::string(kMemory) + R"(  - name: data
    mountpoint: /srv/data
    backend: passthrough
    source: /srv/src
)", "t.yaml");
  EXPECT_EQ(c.mounts[0].cache.entry_timeout, kMemoryCacheTimeout);
  EXPECT_EQ(c.mounts[0].cache.attr_timeout, kMemoryCacheTimeout);
  EXPECT_EQ(c.mounts[0].cache.negative_timeout, 1.0);
  EXPECT_EQ(c.mounts[1].cache.entry_timeout, 60.0);  // passthrough: outside changes
  EXPECT_EQ(c.mounts[1].cache.attr_timeout, 60.0);
  c = parse_config(std::string(kMemory) + "    cache: {attr_timeout: 5}\n", "t.yaml");
  EXPECT_EQ(c.mounts[0].cache.entry_timeout, kMemoryCacheTimeout);
  EXPECT_EQ(c.mounts[0].cache.attr_timeout, 5.0);
  c = parse_config("defaults:\n  cache: {entry_timeout: 7}\n" + std::string(kMemory), "t.yaml");
  EXPECT_EQ(c.mounts[0].cache.entry_timeout, 7.0);
  EXPECT_EQ(c.mounts[0].cache.attr_timeout, kMemoryCacheTimeout);
}

// Limits change live on reload; everything that remounts a memory mount loses its files.
TEST(ConfigLoad, MemoryLimitsApplyWithoutARemount) {
  Config a = parse_config(std::string(kMemory) + "    memory: {max_bytes: 1G}\n", "t.yaml");
  Config b = parse_config(std::string(kMemory) + "    memory: {max_bytes: 2G, max_inodes: 9}\n", "t.yaml");
  EXPECT_FALSE(needs_remount(a.mounts[0], b.mounts[0]));
  EXPECT_FALSE(a.mounts[0] == b.mounts[0]);
}

TEST(ConfigError, BadMemorySettings) {
  std::string m = kMemory;
  EXPECT_EQ(error_of(m + "    memory: {max_bytes: 1X}\n"),
            "t.yaml:5:25: mounts[0].memory.max_bytes '1X' is not valid: must be a number of "
            "bytes (at least 4096), or a string: a number with K, M, G or T (binary: K = 1024), "
            "or a percentage of the machine's RAM such as \"25%\" (1% to 100%). Default "
            "\"50%\", as tmpfs.");
  EXPECT_EQ(error_of(m + "    memory: {max_bytes: 100}\n"),
            "t.yaml:5:25: mounts[0].memory.max_bytes must be at least 4096, not 100");
  EXPECT_EQ(error_of(m + "    memory: {max_bytes: 1K}\n"),
            "t.yaml:5:25: mounts[0].memory.max_bytes '1K' is not valid: less than one 4 KiB block");
  EXPECT_EQ(error_of(m + "    memory: {max_bytes: 0%}\n"),
            "t.yaml:5:25: mounts[0].memory.max_bytes '0%' is not valid: a percentage of RAM must "
            "be between 1% and 100%");
  EXPECT_EQ(error_of(m + "    memory: {max_bytes: 101%}\n"),
            "t.yaml:5:25: mounts[0].memory.max_bytes '101%' is not valid: a percentage of RAM "
            "must be between 1% and 100%");
  EXPECT_EQ(error_of(m + "    memory: {max_bytes: 99999999999T}\n"),
            "t.yaml:5:25: mounts[0].memory.max_bytes '99999999999T' is not valid: too large");
  EXPECT_EQ(error_of(m + "    memory: {max_bytes: -5}\n"),
            "t.yaml:5:25: mounts[0].memory.max_bytes must be at least 4096, not -5");
  EXPECT_EQ(error_of(m + "    memory: {max_inodes: 0}\n"),
            "t.yaml:5:26: mounts[0].memory.max_inodes must be at least 1, not 0");
  EXPECT_EQ(error_of(m + "    memory: {max_inodes: many}\n"),
            "t.yaml:5:26: mounts[0].memory.max_inodes must be an integer, not a string");
  EXPECT_EQ(error_of(m + "    memory: {max_byte: 1G}\n"),
            "t.yaml:5:14: unknown key 'max_byte' in mounts[0].memory; did you mean 'max_bytes'?");
  EXPECT_EQ(error_of(m + "    source: /srv/a\n"),
            "t.yaml:5:5: mount 'scratch': backend memory serves no directory; remove 'source'");
  EXPECT_EQ(error_of(m + "    options: {allow_other: false, default_permissions: false}\n"),
            "t.yaml:5:56: mount 'scratch': backend memory needs default_permissions: true (the "
            "kernel checks permissions for it, with POSIX ACLs)");
  EXPECT_EQ(error_of(with_mount_keys("    memory: {max_bytes: 1G}\n")),
            "t.yaml:6:5: mount 'a': 'memory' applies to backend memory only, not passthrough");
}

TEST(ConfigError, OutOfRangeShowsTheValueAsWritten) {
  EXPECT_EQ(error_of(with_mount_keys("    cache: {attr_timeout: .inf}\n")),
            "t.yaml:6:27: mounts[0].cache.attr_timeout must be between 0 and 31536000, not .inf");
  EXPECT_EQ(error_of(with_mount_keys("    threads: 0x1000\n")),
            "t.yaml:6:14: mounts[0].threads must be between 1 and 256, not 0x1000");
}

TEST(ConfigError, OutOfRange) {
  EXPECT_EQ(error_of(with_mount_keys("    threads: 0\n")),
            "t.yaml:6:14: mounts[0].threads must be between 1 and 256, not 0");
  EXPECT_EQ(error_of(with_mount_keys("    threads: 257\n")),
            "t.yaml:6:14: mounts[0].threads must be between 1 and 256, not 257");
  EXPECT_EQ(error_of(with_mount_keys("    cache: {negative_timeout: -1}\n")),
            "t.yaml:6:31: mounts[0].cache.negative_timeout must be between 0 and 31536000, not -1");
  EXPECT_EQ(error_of(with_mount_keys("    cache: {statfs_timeout: -0.5}\n")),
            "t.yaml:6:29: mounts[0].cache.statfs_timeout must be between 0 and 31536000, not -0.5");
  EXPECT_EQ(
      error_of("defaults: {cache: {entry_timeout: 31536000.5}}\n" + std::string(kMount)),
      "t.yaml:1:35: defaults.cache.entry_timeout must be between 0 and 31536000, not 31536000.5");
}

TEST(ConfigError, MissingRequiredKey) {
  EXPECT_EQ(error_of("mounts:\n  - name: a\n    mountpoint: /mnt/a\n    backend: passthrough\n"),
            "t.yaml:2:5: mount 'a': backend passthrough needs 'source', the directory it serves");
  EXPECT_EQ(error_of("mounts:\n  - name: a\n  - name: b\n    backend: passthrough\n"),
            "t.yaml:2:5: missing required keys 'mountpoint', 'backend' in mounts[0]");
  EXPECT_EQ(error_of("metrics: {}\n"),
            "t.yaml:1:1: missing required key 'mounts' at the top level");
}

TEST(ConfigError, InvalidMountName) {
  EXPECT_EQ(
      error_of(
          "mounts: [{name: \"my mount\", mountpoint: /m, backend: passthrough, source: /s}]\n"),
      "t.yaml:1:17: mounts[0].name 'my mount' is not valid: 1 to 64 characters from A-Z a-z 0-9 _ "
      ". - (it "
      "names the mount in metric labels, D-Bus and efusectl).");
  EXPECT_NE(error_of("mounts: [{name: " + std::string(65, 'x') +
                     ", mountpoint: /m, backend: passthrough, source: /s}]\n")
                .find("t.yaml:1:17: mounts[0].name 'xxx"),
            std::string::npos);
}

TEST(ConfigError, PathsMustBeAbsoluteWithoutDotDot) {
  EXPECT_EQ(error_of("mounts: [{name: a, mountpoint: mnt/a, backend: passthrough, source: /s}]\n"),
            "t.yaml:1:32: mounts[0].mountpoint 'mnt/a' is not valid: Where the filesystem is "
            "mounted: an absolute "
            "path without '..' components; repeated and trailing slashes are dropped.");
  EXPECT_EQ(
      error_of("mounts: [{name: a, mountpoint: /m, backend: passthrough, source: /srv/../etc}]\n")
          .rfind("t.yaml:1:66: mounts[0].source '/srv/../etc' is not valid: ", 0),
      0u);
  EXPECT_EQ(error_of("mounts: [{name: a, mountpoint: /m/.., backend: passthrough, source: /s}]\n")
                .rfind("t.yaml:1:32: mounts[0].mountpoint '/m/..' is not valid", 0),
            0u);
}

TEST(ConfigError, FirstProblemInFileOrder) {
  EXPECT_EQ(error_of("mounts:\n  - name: a\n    mountpoint: /mnt/a\n    backend: passthrough\n    "
                     "source: /srv/a\n"
                     "    transport: fast\n    threads: 0\n"),
            "t.yaml:6:16: mounts[0].transport must be one of auto, classic, uring; not 'fast'");
}

// ---------------------------------------------------------------------------------------
// Errors: semantic checks

TEST(ConfigError, DuplicateMountNames) {
  EXPECT_EQ(error_of(std::string(kMount) +
                     "  - {name: a, mountpoint: /mnt/b, backend: passthrough, source: /srv/b}\n"),
            "t.yaml:6:12: duplicate mount name 'a': mounts[0] (line 2) has it too");
}

TEST(ConfigError, DuplicateMountpoints) {
  EXPECT_EQ(error_of(std::string(kMount) +
                     "  - {name: b, mountpoint: /mnt/a/, backend: passthrough, source: /srv/b}\n"),
            "t.yaml:6:27: mountpoint '/mnt/a' is the same as the mountpoint '/mnt/a' of mount 'a' "
            "(line 3); "
            "mountpoints must be unique");
}

TEST(ConfigError, NestedMountpoints) {
  EXPECT_EQ(
      error_of(std::string(kMount) +
               "  - {name: b, mountpoint: /mnt/a/b, backend: passthrough, source: /srv/b}\n"),
      "t.yaml:6:27: mountpoint '/mnt/a/b' is inside the mountpoint '/mnt/a' of mount 'a' (line 3); "
      "mounts must not nest");
  EXPECT_EQ(
      error_of(std::string(kMount) +
               "  - {name: b, mountpoint: /mnt, backend: passthrough, source: /srv/b}\n"),
      "t.yaml:6:27: mountpoint '/mnt' contains the mountpoint '/mnt/a' of mount 'a' (line 3); "
      "mounts must not nest");
}

TEST(ConfigError, MountpointInsideAnotherSource) {
  EXPECT_EQ(
      error_of(std::string(kMount) +
               "  - {name: b, mountpoint: /srv/a/b, backend: passthrough, source: /srv/b}\n"),
      "t.yaml:6:27: mountpoint '/srv/a/b' is inside the source '/srv/a' of mount 'a' (line 5); "
      "efused must not serve its own mounts");
  EXPECT_EQ(error_of(std::string(kMount) +
                     "  - {name: b, mountpoint: /srv/b, backend: passthrough, source: /mnt}\n"),
            "t.yaml:6:65: source '/mnt' contains the mountpoint '/mnt/a' of mount 'a' (line 3); "
            "efused must not serve its own mounts");
  // "/" contains every path, this mount's own mountpoint first.
  EXPECT_EQ(error_of(std::string(kMount) +
                     "  - {name: b, mountpoint: /mnt/b, backend: passthrough, source: /}\n"),
            "t.yaml:6:65: source '/' contains the mountpoint '/mnt/b' of this mount (line 6); "
            "efused must not serve its own mounts");
}

TEST(ConfigError, SourceInsideAnotherMountpoint) {
  EXPECT_EQ(
      error_of(std::string(kMount) +
               "  - {name: b, mountpoint: /mnt/b, backend: passthrough, source: /mnt/a/x}\n"),
      "t.yaml:6:65: source '/mnt/a/x' is inside the mountpoint '/mnt/a' of mount 'a' (line 3); "
      "efused must not serve its own mounts");
}

TEST(ConfigError, SourceAndMountpointOfOneMountOverlap) {
  EXPECT_EQ(
      error_of(
          "mounts: [{name: a, mountpoint: /data/view, backend: passthrough, source: /data}]\n"),
      "t.yaml:1:74: source '/data' contains the mountpoint '/data/view' of this mount (line 1); "
      "efused must not serve its own mounts");
  EXPECT_EQ(
      error_of(
          "mounts: [{name: a, mountpoint: /data, backend: passthrough, source: /data/real}]\n"),
      "t.yaml:1:69: source '/data/real' is inside the mountpoint '/data' of this mount (line 1); "
      "efused must not serve its own mounts");
  EXPECT_EQ(
      error_of("mounts: [{name: a, mountpoint: /data, backend: passthrough, source: /data}]\n"),
      "t.yaml:1:69: source '/data' is the same as the mountpoint '/data' of this mount (line 1); "
      "efused must not serve its own mounts");
}

TEST(ConfigError, InvalidIpv6Address) {
  // The reason comes from the metrics server's parser (telemetry/listen_address.h).
  std::string error = error_of("metrics:\n  listen: \"[1:2]:80\"\n" + std::string(kMount));
  EXPECT_EQ(error.rfind("t.yaml:2:11: metrics.listen '[1:2]:80' is not valid: ", 0), 0u) << error;
  EXPECT_NE(error.find("IPv6"), std::string::npos) << error;
}

TEST(ConfigError, MissingBpfObject) {
  EXPECT_EQ(
      error_of(with_mount_keys("    bpf_handlers:\n      lookup: /nonexistent/lookup.bpf.o\n")),
      "t.yaml:7:15: mounts[0].bpf_handlers.lookup: cannot use '/nonexistent/lookup.bpf.o': "
      "/nonexistent: No such file or directory");
}

TEST(ConfigError, BpfObjectNotARegularFile) {
  ScratchDir dir;
  std::string object = dir.path() + "/x.bpf.o";
  ASSERT_EQ(::mkdir(object.c_str(), 0700), 0);
  EXPECT_EQ(
      error_of(with_mount_keys("    bpf_handlers: {lookup: " + object + "}\n")),
      "t.yaml:6:28: mounts[0].bpf_handlers.lookup: cannot use '" + object + "': not a regular file");
}

// bpf_handlers names objects efused would load (issue 20): each refusal with the reason,
// at the object's line and column, the same checks as at mount time and on a swap.
TEST(ConfigError, BpfObjectWritableByOthersIsRefused) {
  ScratchDir dir;
  std::string object = handler_copy(dir, EFUSE_BPF_HANDLER_DIR "/efuse_lookup.bpf.o", "l.bpf.o");
  ::chmod(object.c_str(), 0664);
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {lookup: " + object + "}\n")),
            "t.yaml:6:28: mounts[0].bpf_handlers.lookup: cannot use '" + object +
                "': writable by group or other (mode 0664)");
}

TEST(ConfigError, BpfObjectBehindASymlinkIsRefused) {
  ScratchDir dir;
  std::string object = handler_copy(dir, EFUSE_BPF_HANDLER_DIR "/efuse_lookup.bpf.o", "l.bpf.o");
  std::string link = dir.path() + "/link.bpf.o";
  ASSERT_EQ(::symlink(object.c_str(), link.c_str()), 0);
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {lookup: " + link + "}\n")),
            "t.yaml:6:28: mounts[0].bpf_handlers.lookup: cannot use '" + link + "': " + link +
                " is a symlink (handler objects are opened without following symlinks)");
}

TEST(ConfigError, BpfObjectOfAnotherOwnerIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a file to uid 65534";
  ScratchDir dir;
  std::string object = handler_copy(dir, EFUSE_BPF_HANDLER_DIR "/efuse_lookup.bpf.o", "l.bpf.o");
  ASSERT_EQ(::chown(object.c_str(), 65534, 65534), 0);
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {lookup: " + object + "}\n")),
            "t.yaml:6:28: mounts[0].bpf_handlers.lookup: cannot use '" + object +
                "': owned by uid 65534, not root");
}

TEST(ConfigError, BpfObjectOfAnotherAbiOrOpcodeIsRefused) {
  ScratchDir dir;
  std::string old = handler_copy(dir, EFUSE_VM_FIXTURE_DIR "/swap_lookup_abi1.bpf.o", "o.bpf.o");
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {lookup: " + old + "}\n")),
            "t.yaml:6:28: mounts[0].bpf_handlers.lookup: cannot use '" + old +
                "': built for handler ABI 1, efused speaks ABI " +
                std::to_string(EFUSE_HANDLER_ABI_VERSION));
  std::string getattr = handler_copy(dir, EFUSE_BPF_HANDLER_DIR "/efuse_getattr.bpf.o", "g.bpf.o");
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {lookup: " + getattr + "}\n")),
            "t.yaml:6:28: mounts[0].bpf_handlers.lookup: cannot use '" + getattr +
                "': answers opcode 3, not opcode 1");
  std::string junk = dir.file("j.bpf.o", "\x7f" "ELF");
  ::chmod(junk.c_str(), 0644);
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {read: " + junk + "}\n"))
                .rfind("t.yaml:6:26: mounts[0].bpf_handlers.read: cannot use '" + junk +
                           "': not a BPF object libbpf can open",
                       0),
            0u);
}

TEST(ConfigError, BpfObjectPathMustBeAbsoluteBpfO) {
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {read: prog.bpf.o}\n"))
                .rfind("t.yaml:6:26: mounts[0].bpf_handlers.read 'prog.bpf.o' is not valid: "
                       "Absolute path of a compiled eBPF "
                       "object (*.bpf.o)",
                       0),
            0u);
  EXPECT_EQ(error_of(with_mount_keys("    bpf_handlers: {read: /x/prog.o}\n"))
                .rfind("t.yaml:6:26: mounts[0].bpf_handlers.read '/x/prog.o' is not valid", 0),
            0u);
}

}  // namespace
}  // namespace efuse::daemon

namespace efuse::daemon {
namespace {

TEST(ConfigLoad, WorkerAndOffloadLimitsFallBackAndDefault) {
  Config c = parse_config(R"(defaults:
  max_threads: 8
  offload_threads: 2
mounts:
  - {name: a, mountpoint: /mnt/a, backend: passthrough, source: /srv/a}
  - {name: b, mountpoint: /mnt/b, backend: passthrough, source: /srv/b, threads: 32,
     max_threads: 64, offload_queue: 16}
  - {name: c, mountpoint: /mnt/c, backend: passthrough, source: /srv/c, threads: 8}
)",
                          "t.yaml");
  ASSERT_EQ(c.mounts.size(), 3u);
  EXPECT_EQ(c.mounts[0].workers_max(), 8u);
  EXPECT_EQ(c.mounts[0].offload_threads, 2u);
  EXPECT_EQ(c.mounts[0].offload_queue, 256u);
  EXPECT_EQ(c.mounts[1].workers_max(), 64u);
  EXPECT_EQ(c.mounts[1].offload_queue, 16u);
  EXPECT_EQ(c.mounts[2].workers_max(), 8u) << "the defaults' max_threads, equal to threads";
  MountConfig plain;
  EXPECT_EQ(plain.workers_max(), 16u) << "no max_threads: max(threads, 16)";
  plain.threads = 40;
  EXPECT_EQ(plain.workers_max(), 40u);
}

TEST(ConfigError, WorkerAndOffloadLimits) {
  EXPECT_EQ(error_of(with_mount_keys("    threads: 8\n    max_threads: 4\n")),
            "t.yaml:7:18: mount 'a': max_threads (4) is below threads (8), the workers that "
            "start with the mount; raise max_threads or lower threads");
  EXPECT_EQ(error_of(with_mount_keys("    max_threads: 0\n")),
            "t.yaml:6:18: mounts[0].max_threads must be between 1 and 256, not 0");
  EXPECT_EQ(error_of(with_mount_keys("    offload_threads: 65\n")),
            "t.yaml:6:22: mounts[0].offload_threads must be between 1 and 64, not 65");
  EXPECT_EQ(error_of(with_mount_keys("    offload_queue: 0\n")),
            "t.yaml:6:20: mounts[0].offload_queue must be between 1 and 65536, not 0");
}

}  // namespace
}  // namespace efuse::daemon
