// efusectl: the operator's client of efused's D-Bus API (org.efuse.Manager1).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/bus.h"
#include "control/client.h"
#include "control/dbus_api.h"
#include "control/mount_table.h"

namespace efuse::efusectl {

namespace {

using control::CallError;
using control::Client;

// Exit codes (documented in --help).
constexpr int kExitOk = 0;
constexpr int kExitRefused = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitDenied = 4;
constexpr int kExitNotLive = 5;

constexpr const char* kBusEnv = "EFUSE_BUS_ADDRESS";

constexpr const char* kUsage = R"(Usage: efusectl [--json] [--bus system|session|ADDRESS] COMMAND

Control efused through its D-Bus API (org.efuse.Manager1).

Commands:
  status [NAME]   daemon version, mount count, /metrics, the eBPF telemetry
                  level running and the mount table; with NAME, every detail
                  of that mount. Exits 5 when a mount (with NAME: that mount)
                  is not mounted: usable as a health check
  mounts          the mount table (name, state, mountpoint, transport, error)
  mount NAME      mount a configured mount that is not live (root only)
  unmount NAME    unmount a live mount; it stays configured (root only)
  reload          re-read efused's config file and apply it; returns once applied,
                  fails with file:line:column: message on an invalid config (root only)
  handler list NAME
                  the eBPF handlers of a mount on the kernel module tier, by opcode:
                  program id, tag, handler ABI, when loaded, from which object
  handler stats NAME
                  per handler: answers and fallbacks, swaps and failed swaps, runs
                  and mean run time (run times need kernel.bpf_stats_enabled=1)
  handler swap NAME OPCODE PATH
                  replace (or add) the handler of OPCODE (shipped: lookup, getattr,
                  getxattr, listxattr) with the object at PATH, atomically; a
                  refused object (owner, mode, symlink, ABI, verifier: its log is
                  printed) leaves the old one in place (root only)
  handler remove NAME OPCODE
                  remove the handler of OPCODE: those requests go to efused (root only)
                  On a mount served by the stock kernel FUSE (no efuse.ko) every handler
                  command fails and says which tier is in effect and why.

Options:
  --json          print JSON (status, mounts, handler list|stats) instead of tables
  --bus BUS       "system" (default), "session", or a D-Bus address such as
                  unix:path=/run/efuse/bus; default from $EFUSE_BUS_ADDRESS if set
  -h, --help      show this help
  --version       show efusectl's version

Exit status:
  0  success
  1  efused refused or failed the request (no such mount, invalid config, ...)
  2  usage error
  3  efused is not running or not reachable on the bus
  4  permission denied (changes need root)
  5  status: a configured mount (with NAME: that mount) is not mounted
)";

struct Options {
  bool json = false;
  std::string bus;
  std::string command;
  std::vector<std::string> args;
};

int usage_error(const std::string& message) {
  std::fprintf(stderr, "efusectl: %s\nTry 'efusectl --help'.\n", message.c_str());
  return kExitUsage;
}

// Returns -1 when parsing succeeded, else the exit code to leave with.
int parse_args(int argc, char** argv, Options* opts) {
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (options_done || arg.empty() || arg[0] != '-' || arg == "-") {
      (opts->command.empty() ? opts->command : opts->args.emplace_back()) = arg;
    } else if (arg == "--") {
      options_done = true;
    } else if (arg == "--json") {
      opts->json = true;
    } else if (arg == "--bus") {
      if (++i == argc) return usage_error("--bus needs a value");
      opts->bus = argv[i];
    } else if (arg.starts_with("--bus=")) {
      opts->bus = arg.substr(6);
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    } else if (arg == "--version") {
      std::printf("efusectl %s\n", EFUSE_VERSION);
      return kExitOk;
    } else {
      return usage_error("unknown option " + arg);
    }
  }
  return -1;
}

int check_arity(const Options& opts, size_t min, size_t max) {
  if (opts.args.size() < min) return usage_error(opts.command + ": missing mount name");
  if (opts.args.size() > max) {
    return usage_error(opts.command + ": unexpected argument " + opts.args[max]);
  }
  return -1;
}

std::string bus_spec(const Options& opts) {
  if (!opts.bus.empty()) return opts.bus;
  const char* env = std::getenv(kBusEnv);
  return env != nullptr && *env != '\0' ? env : "system";
}

int report(const CallError& error, const std::string& command, const std::string& bus) {
  switch (error.kind) {
    case CallError::Kind::NotRunning:
      std::fprintf(stderr, "efusectl: efused is not running (nobody owns %s on %s)\n",
                   control::kBusName, control::describe_bus(bus).c_str());
      return kExitUnreachable;
    case CallError::Kind::Unreachable:
      std::fprintf(stderr, "efusectl: %s: no answer from efused on %s: %s\n", command.c_str(),
                   control::describe_bus(bus).c_str(), error.message.c_str());
      return kExitUnreachable;
    case CallError::Kind::Denied:
      // The bus policy's rejection text is long and says nothing an operator needs.
      std::fprintf(stderr, "efusectl: %s: permission denied: only root may mount, unmount, "
                   "reload or change handlers%s\n", command.c_str(),
                   geteuid() != 0 ? " (run as root)" : "");
      return kExitDenied;
    case CallError::Kind::Refused:
      break;
  }
  if (error.name == control::kErrorInvalidConfig) {
    std::fprintf(stderr, "efusectl: reload failed, configuration unchanged: %s\n",
                 error.message.c_str());
  } else {
    std::fprintf(stderr, "efusectl: %s: %s\n", command.c_str(), error.message.c_str());
  }
  return kExitRefused;
}

void print(const std::string& text) { std::fputs(text.c_str(), stdout); }

void print_json(const nlohmann::json& value) { print(value.dump(2) + "\n"); }

// kExitNotLive when any of `mounts` is not mounted.
int health(const nlohmann::json& mounts) {
  for (const auto& m : mounts)
    if (m.value("state", "") != "mounted") return kExitNotLive;
  return kExitOk;
}

int status_all(Client& client, const Options& opts, CallError* error) {
  std::string version, text, daemon_text, telemetry_text;
  uint32_t count = 0;
  if (!client.version(&version, error) || !client.mount_count(&count, error) ||
      !client.list_mounts(&text, error) || !client.telemetry(&telemetry_text, error)) {
    return -1;
  }
  const nlohmann::json mounts = nlohmann::json::parse(text);
  const nlohmann::json telemetry = nlohmann::json::parse(telemetry_text, nullptr, false);
  // An efused older than GetStatus answers the rest; leave the daemon part out then.
  CallError ignored;
  const nlohmann::json daemon = client.get_status(&daemon_text, &ignored)
                                    ? nlohmann::json::parse(daemon_text)
                                    : nlohmann::json::object();
  if (opts.json) {
    print_json({{"version", version}, {"mount_count", count}, {"daemon", daemon},
                {"telemetry", telemetry}, {"mounts", mounts}});
  } else {
    print(control::format_status(version, count, mounts, daemon, telemetry));
  }
  return health(mounts);
}

int status_one(Client& client, const Options& opts, CallError* error) {
  std::string text;
  if (!client.get_mount(opts.args[0], &text, error)) return -1;
  const nlohmann::json mount = nlohmann::json::parse(text);
  if (opts.json) {
    print(text + "\n");
  } else {
    print(control::format_mount_details(mount));
  }
  return health(nlohmann::json::array({mount}));
}

int mounts(Client& client, const Options& opts, CallError* error) {
  std::string text;
  if (!client.list_mounts(&text, error)) return -1;
  if (opts.json) {
    print(text + "\n");
  } else {
    print(control::format_mount_table(nlohmann::json::parse(text)));
  }
  return kExitOk;
}

std::string text_of(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

// handler list|stats NAME: one row per opcode.
int handler_table(Client& client, const Options& opts, CallError* error) {
  std::string text;
  if (!client.list_handlers(opts.args[1], &text, error)) return -1;
  if (opts.json) {
    print(text + "\n");
    return kExitOk;
  }
  const nlohmann::json rows = nlohmann::json::parse(text);
  const bool stats = opts.args[0] == "stats";
  std::vector<std::vector<std::string>> table;
  if (stats)
    table.push_back({"OPCODE", "ANSWERED", "FALLBACKS", "SWAPS", "FAILED", "RUNS", "MEAN_NS"});
  else
    table.push_back({"OPCODE", "PROG_ID", "TAG", "ABI", "LOADED_AT", "PATH"});
  for (const auto& r : rows) {
    const bool loaded = r.value("loaded", false);
    if (stats) {
      uint64_t runs = r.value("run_count", uint64_t{0}), ns = r.value("run_ns", uint64_t{0});
      table.push_back({text_of(r["opcode"]), text_of(r["answered"]), text_of(r["fallbacks"]),
                       text_of(r["swaps"]), text_of(r["failed_swaps"]), std::to_string(runs),
                       runs ? std::to_string(ns / runs) : "-"});
    } else {
      char when[32] = "-";
      if (loaded) {
        time_t t = static_cast<time_t>(r.value("loaded_at", 0.0));
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
      }
      table.push_back({text_of(r["opcode"]), loaded ? text_of(r["prog_id"]) : "-",
                       loaded ? text_of(r["tag"]) : "-", loaded ? text_of(r["abi"]) : "-", when,
                       loaded ? text_of(r["path"]) : "(none: requests go to efused)"});
    }
  }
  std::vector<size_t> width(table[0].size());
  for (const auto& row : table)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  for (const auto& row : table) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i)
      line += i + 1 == row.size() ? row[i] : row[i] + std::string(width[i] - row[i].size() + 2, ' ');
    print(line + "\n");
  }
  if (stats) {
    FILE* f = std::fopen("/proc/sys/kernel/bpf_stats_enabled", "r");
    int on = 0;
    if (f != nullptr) {
      if (std::fscanf(f, "%d", &on) != 1) on = 0;
      std::fclose(f);
    }
    if (!on)
      print("run times: kernel.bpf_stats_enabled is 0 here, so the kernel does not count runs "
            "(sysctl -w kernel.bpf_stats_enabled=1 turns it on)\n");
  }
  return kExitOk;
}

int handler(Client& client, const Options& opts, CallError* error) {
  const std::string& sub = opts.args[0];
  if (sub == "list" || sub == "stats") return handler_table(client, opts, error);
  if (sub == "remove") return client.remove_handler(opts.args[1], opts.args[2], error) ? kExitOk : -1;
  // swap: a relative path is taken from here (efused never follows symlinks in it).
  std::string path = opts.args[3];
  if (!path.empty() && path[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd) != nullptr) path = std::string(cwd) + "/" + path;
  }
  return client.swap_handler(opts.args[1], opts.args[2], path, error) ? kExitOk : -1;
}

// Runs the command; -1 means *error describes a failed call.
int dispatch(Client& client, const Options& opts, CallError* error) {
  const std::string& cmd = opts.command;
  if (cmd == "status") return opts.args.empty() ? status_all(client, opts, error)
                                                : status_one(client, opts, error);
  if (cmd == "mounts") return mounts(client, opts, error);
  if (cmd == "mount") return client.mount(opts.args[0], error) ? kExitOk : -1;
  if (cmd == "unmount") return client.unmount(opts.args[0], error) ? kExitOk : -1;
  if (cmd == "reload") return client.reload(error) ? kExitOk : -1;
  if (cmd == "handler") return handler(client, opts, error);
  return usage_error("unknown command " + cmd);
}

int validate(const Options& opts) {
  const std::string& cmd = opts.command;
  if (cmd.empty()) return usage_error("missing command");
  if (cmd == "status") return check_arity(opts, 0, 1);
  if (cmd == "mounts" || cmd == "reload") return check_arity(opts, 0, 0);
  if (cmd == "mount" || cmd == "unmount") return check_arity(opts, 1, 1);
  if (cmd == "handler") {
    const std::string sub = opts.args.empty() ? "" : opts.args[0];
    size_t want = sub == "list" || sub == "stats" ? 2 : sub == "remove" ? 3 : sub == "swap" ? 4 : 0;
    if (want == 0)
      return usage_error("handler: expected list, stats, swap or remove" +
                         (sub.empty() ? std::string() : ", not " + sub));
    if (opts.args.size() != want)
      return usage_error("handler " + sub + ": expected " +
                         (sub == "swap" ? "NAME OPCODE PATH" : sub == "remove" ? "NAME OPCODE" : "NAME"));
    return -1;
  }
  return usage_error("unknown command " + cmd);
}

int run(int argc, char** argv) {
  Options opts;
  int rc = parse_args(argc, argv, &opts);
  if (rc >= 0) return rc;
  if ((rc = validate(opts)) >= 0) return rc;
  const std::string bus = bus_spec(opts);
  std::string connect_error;
  Result<control::BusPtr> conn = control::open_bus(bus, &connect_error);
  if (!conn.ok()) {
    std::fprintf(stderr, "efusectl: %s\n", connect_error.c_str());
    return kExitUnreachable;
  }
  Client client(std::move(conn).value());
  CallError error;
  rc = dispatch(client, opts, &error);
  return rc >= 0 ? rc : report(error, opts.command, bus);
}

}  // namespace

}  // namespace efuse::efusectl

int main(int argc, char** argv) {
  try {
    return efuse::efusectl::run(argc, argv);
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "efusectl: malformed reply from efused: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "efusectl: %s\n", e.what());
  }
  return efuse::efusectl::kExitUnreachable;
}
