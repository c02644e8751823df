// DbusService end to end over a private dbus-daemon: every method, the properties, the
// signals, the errno -> error name mapping, bad input and authorization.
#include "control/dbus_service.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "control/bus.h"
#include "control/client.h"
#include "control/dbus_api.h"
#include "fake_manager.h"
#include "private_bus.h"

namespace efuse::control {
namespace {

using testing::FakeManager;
using testing::PrivateBus;

constexpr uid_t kNobody = 65534;
constexpr uint64_t kWaitUsec = 100 * 1000;
constexpr auto kSignalTimeout = std::chrono::seconds(5);

bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

struct Reply {
  std::string error;  // D-Bus error name, "" on success
  std::string message;
  std::string text;   // the "s" a method returned, if any
};

Reply to_reply(int r, const sd_bus_error& error, sd_bus_message* message) {
  Reply out;
  if (r < 0) {
    out.error = sd_bus_error_is_set(&error) ? error.name : "local:" + std::to_string(-r);
    out.message = error.message != nullptr ? error.message : "";
    return out;
  }
  const char* text = nullptr;
  if (message != nullptr && sd_bus_message_peek_type(message, nullptr, nullptr) > 0 &&
      sd_bus_message_read(message, "s", &text) > 0) {
    out.text = text;
  }
  return out;
}

// Calls member with no argument (arg == nullptr) or one string.
Reply call(sd_bus* bus, const char* member, const char* arg = nullptr) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  const int r = arg == nullptr
                    ? sd_bus_call_method(bus, kBusName, kObjectPath, kInterface, member, &error,
                                         &reply, "")
                    : sd_bus_call_method(bus, kBusName, kObjectPath, kInterface, member, &error,
                                         &reply, "s", arg);
  Reply out = to_reply(r, error, reply);
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  return out;
}

// Calls member with one int32 argument (a wrong signature for every method).
Reply call_with_int(sd_bus* bus, const char* member) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  const int r = sd_bus_call_method(bus, kBusName, kObjectPath, kInterface, member, &error,
                                   &reply, "i", 42);
  Reply out = to_reply(r, error, reply);
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  return out;
}

// Processes the bus until done() or the timeout.
bool pump_until(sd_bus* bus, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + kSignalTimeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    int r;
    while ((r = sd_bus_process(bus, nullptr)) > 0) {
      if (done()) return true;
    }
    if (r < 0) return false;
    sd_bus_wait(bus, kWaitUsec);
  }
  return true;
}

struct StateSignal {
  int count = 0;
  std::string name, state;
};

int on_state_changed(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* got = static_cast<StateSignal*>(userdata);
  const char* name = nullptr;
  const char* state = nullptr;
  if (sd_bus_message_read(m, "ss", &name, &state) < 0) return 0;
  ++got->count;
  got->name = name;
  got->state = state;
  return 0;
}

// The MountCount values seen in PropertiesChanged signals of our interface.
int on_properties_changed(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* counts = static_cast<std::vector<uint32_t>*>(userdata);
  const char* iface = nullptr;
  if (sd_bus_message_read(m, "s", &iface) < 0 || std::string(iface) != kInterface) return 0;
  if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0) return 0;
  while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
    const char* prop = nullptr;
    uint32_t value = 0;
    if (sd_bus_message_read(m, "s", &prop) < 0) return 0;
    if (std::string(prop) == "MountCount" && sd_bus_message_read(m, "v", "u", &value) >= 0) {
      counts->push_back(value);
    } else {
      sd_bus_message_skip(m, "v");
    }
    sd_bus_message_exit_container(m);
  }
  return 0;
}

// Runs `action` on a bus connection of a thread whose credentials are uid/gid `id`; returns
// the error name it returns ("" = ok). The credentials are changed by raw system calls,
// which (unlike glibc's wrappers) change the calling thread's only: the bus daemon takes the
// peer's uid from SO_PEERCRED at connect, i.e. from this thread. A forked child would do
// the same work in a copy of a multi-threaded process (the service's bus thread, ASan's
// allocator), where a lock held by another thread at fork() is never released: such a child
// hung in CI, and an empty pipe read as success.
std::string run_as(uid_t id, const std::string& address,
                   const std::function<std::string(BusPtr bus)>& action) {
  std::string result = "thread did not run";
  std::thread t([&] {
    if (::syscall(SYS_setgroups, 0, nullptr) != 0 ||
        ::syscall(SYS_setresgid, id, id, id) != 0 ||
        ::syscall(SYS_setresuid, id, id, id) != 0) {
      result = std::string("setuid failed: ") + std::strerror(errno);
      return;
    }
    std::string err;
    Result<BusPtr> bus = open_bus(address, &err);
    result = bus.ok() ? action(std::move(bus).value()) : "connect: " + err;
  });
  t.join();  // an action that hangs is ended by ctest's timeout, not read as an answer
  return result;
}

std::string call_as(uid_t id, const std::string& address, const char* member, const char* arg) {
  return run_as(id, address, [&](BusPtr bus) { return call(bus.get(), member, arg).error; });
}

class DbusServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::system("command -v dbus-daemon >/dev/null 2>&1") != 0) {
      if (in_ci()) FAIL() << "dbus-daemon is not installed (CI=true)";
      GTEST_SKIP() << "dbus-daemon is not installed";
    }
    bus_ = std::make_unique<PrivateBus>();
    service_ = std::make_unique<DbusService>(manager_, connect());
    // As non-root, this test's own uid plays root.
    if (::geteuid() != 0) service_->set_privileged_uid_for_testing(::geteuid());
    std::string error;
    ASSERT_TRUE(service_->start(&error).ok()) << error;
    client_ = connect();
  }

  BusPtr connect() {
    std::string error;
    Result<BusPtr> bus = open_bus(bus_->address(), &error);
    if (!bus.ok()) ADD_FAILURE() << error;
    return bus.ok() ? std::move(bus).value() : nullptr;
  }

  void expect_no_mutating_calls() {
    for (const std::string& c : manager_.calls()) {
      EXPECT_TRUE(c.starts_with("ListMounts") || c.starts_with("GetMount") ||
                  c.starts_with("ListHandlers"))
          << c;
    }
  }

  sd_bus* client() { return client_.get(); }

  std::unique_ptr<PrivateBus> bus_;
  FakeManager manager_;
  std::unique_ptr<DbusService> service_;
  BusPtr client_;
};

TEST_F(DbusServiceTest, ListMountsReturnsTheManagersJson) {
  const Reply r = call(client(), "ListMounts");
  ASSERT_EQ(r.error, "") << r.message;
  EXPECT_EQ(nlohmann::json::parse(r.text), manager_.canned().mounts);
}

TEST_F(DbusServiceTest, GetMountReturnsOneMount) {
  const Reply r = call(client(), "GetMount", "b");
  ASSERT_EQ(r.error, "") << r.message;
  EXPECT_EQ(nlohmann::json::parse(r.text), manager_.canned().mounts[1]);
  EXPECT_EQ(manager_.calls(), std::vector<std::string>{"GetMount b"});
}

TEST_F(DbusServiceTest, GetMountOfUnknownNameIsNoSuchMount) {
  const Reply r = call(client(), "GetMount", "zzz");
  EXPECT_EQ(r.error, kErrorNoSuchMount);
  EXPECT_NE(r.message.find("zzz"), std::string::npos) << r.message;
}

TEST_F(DbusServiceTest, MalformedNamesAreInvalidArgsAndNeverReachTheManager) {
  const std::string long_name(kMaxMountNameLength + 1, 'x');
  for (const char* member : {"GetMount", "Mount", "Unmount"}) {
    for (const std::string& name :
         {std::string(""), std::string("a/b"), std::string("../etc"), std::string("a b"),
          std::string("caf\xC3\xA9"), std::string("a\nb"), long_name}) {
      const Reply r = call(client(), member, name.c_str());
      EXPECT_EQ(r.error, SD_BUS_ERROR_INVALID_ARGS) << member << "(" << name << ")";
    }
  }
  EXPECT_TRUE(manager_.calls().empty());
}

TEST_F(DbusServiceTest, MountAndUnmountCallTheManager) {
  EXPECT_EQ(call(client(), "Unmount", "a").error, "");
  EXPECT_EQ(call(client(), "Mount", "a").error, "");
  EXPECT_EQ(manager_.calls(), (std::vector<std::string>{"Unmount a", "Mount a"}));
}

TEST_F(DbusServiceTest, ReloadRepliesAfterTheManagerReturns) {
  FakeManager::Canned c = manager_.canned();
  c.reload_delay_ms = 200;
  manager_.set(c);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(call(client(), "Reload").error, "");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(200));
  EXPECT_EQ(manager_.calls(), std::vector<std::string>{"Reload"});
}

struct ErrnoCase {
  const char* member;
  const char* arg;
  int err;
  const char* detail;
  const char* error_name;
  const char* message_part;
};

TEST_F(DbusServiceTest, ErrnoMapsToNamedErrors) {
  const ErrnoCase cases[] = {
      {"Mount", "a", ENOENT, "", kErrorNoSuchMount, "'a'"},
      {"Mount", "a", EALREADY, "", kErrorAlreadyMounted, "already mounted"},
      {"Mount", "a", EIO, "mountpoint /m: Permission denied", kErrorFailed, "/m: Permission"},
      {"Mount", "a", EIO, "", kErrorFailed, "Input/output error"},
      {"Unmount", "a", ENOENT, "", kErrorNoSuchMount, "'a'"},
      {"Unmount", "a", ENOTCONN, "", kErrorNotMounted, "not mounted"},
      {"Unmount", "a", EALREADY, "", kErrorNotMounted, "not mounted"},
      {"Unmount", "a", EBUSY, "target is busy", kErrorFailed, "target is busy"},
      {"Reload", nullptr, EINVAL, "/etc/efuse/mounts.yaml:3:5: unknown key 'x'",
       kErrorInvalidConfig, "/etc/efuse/mounts.yaml:3:5: unknown key 'x'"},
      {"Reload", nullptr, ENOENT, "/etc/efuse/mounts.yaml: No such file or directory",
       kErrorInvalidConfig, "mounts.yaml: No such file"},
      {"Reload", nullptr, EIO, "mount b failed", kErrorFailed, "mount b failed"},
  };
  for (const ErrnoCase& tc : cases) {
    FakeManager::Canned c;
    c.mount_errno = c.unmount_errno = c.reload_errno = tc.err;
    c.detail = tc.detail;
    manager_.set(c);
    const Reply r = call(client(), tc.member, tc.arg);
    EXPECT_EQ(r.error, tc.error_name) << tc.member << " errno " << tc.err;
    EXPECT_NE(r.message.find(tc.message_part), std::string::npos)
        << tc.member << ": '" << r.message << "' lacks '" << tc.message_part << "'";
  }
}

TEST_F(DbusServiceTest, InvalidConfigMessageIsExactlyTheManagersText) {
  FakeManager::Canned c;
  c.reload_errno = EINVAL;
  c.detail = "/etc/efuse/mounts.yaml:7:3: mountpoint must be absolute";
  manager_.set(c);
  EXPECT_EQ(call(client(), "Reload").message, c.detail);
}

TEST_F(DbusServiceTest, Properties) {
  Client cl(connect());
  CallError error;
  std::string version;
  uint32_t count = 0;
  ASSERT_TRUE(cl.version(&version, &error)) << error.message;
  ASSERT_TRUE(cl.mount_count(&count, &error)) << error.message;
  EXPECT_EQ(version, "9.8.7-test");
  EXPECT_EQ(count, 2u);
}

TEST_F(DbusServiceTest, StateListenerEmitsMountStateChanged) {
  StateSignal got;
  ASSERT_GE(sd_bus_match_signal(client(), nullptr, kBusName, kObjectPath, kInterface,
                                "MountStateChanged", on_state_changed, &got),
            0);
  ASSERT_TRUE(manager_.has_listener());
  std::thread other([this] { manager_.fire("b", "mounted"); });  // any thread
  other.join();
  ASSERT_TRUE(pump_until(client(), [&] { return got.count > 0; }));
  EXPECT_EQ(got.name, "b");
  EXPECT_EQ(got.state, "mounted");
}

TEST_F(DbusServiceTest, ManyStateChangesFromManyThreadsAllArriveInOrderPerThread) {
  StateSignal got;
  ASSERT_GE(sd_bus_match_signal(client(), nullptr, kBusName, kObjectPath, kInterface,
                                "MountStateChanged", on_state_changed, &got),
            0);
  constexpr int kThreads = 4, kEach = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      std::string mount("m");  // not "m" + to_string(t): GCC 12 -O3 false -Wrestrict
      mount += std::to_string(t);
      for (int i = 0; i < kEach; ++i) manager_.fire(mount, std::to_string(i));
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(pump_until(client(), [&] { return got.count == kThreads * kEach; }))
      << "got " << got.count;
}

TEST_F(DbusServiceTest, MountCountChangeEmitsPropertiesChanged) {
  std::vector<uint32_t> counts;
  ASSERT_GE(sd_bus_match_signal(client(), nullptr, kBusName, kObjectPath,
                                "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                on_properties_changed, &counts),
            0);
  // Through a method: the reload grew the config.
  manager_.set_count(3);
  ASSERT_EQ(call(client(), "Reload").error, "");
  ASSERT_TRUE(pump_until(client(), [&] { return !counts.empty(); }));
  EXPECT_EQ(counts, std::vector<uint32_t>{3});
  // Through the state listener (a SIGHUP reload happens outside D-Bus).
  manager_.set_count(1);
  manager_.fire("b", "unmounted");
  ASSERT_TRUE(pump_until(client(), [&] { return counts.size() == 2; }));
  EXPECT_EQ(counts, (std::vector<uint32_t>{3, 1}));
  // No change, no signal: a state change alone does not repeat MountCount.
  StateSignal got;
  sd_bus_match_signal(client(), nullptr, kBusName, kObjectPath, kInterface,
                      "MountStateChanged", on_state_changed, &got);
  manager_.fire("a", "mounted");
  ASSERT_TRUE(pump_until(client(), [&] { return got.count == 1; }));
  EXPECT_EQ(counts.size(), 2u);
}

TEST_F(DbusServiceTest, WrongSignaturesAreInvalidArgsAndTheServiceKeepsServing) {
  for (const char* member : {"ListMounts", "GetMount", "Mount", "Unmount", "Reload"}) {
    EXPECT_EQ(call_with_int(client(), member).error, SD_BUS_ERROR_INVALID_ARGS) << member;
  }
  EXPECT_EQ(call(client(), "GetMount").error, SD_BUS_ERROR_INVALID_ARGS);  // no argument
  EXPECT_EQ(call(client(), "NoSuchMethod").error, SD_BUS_ERROR_UNKNOWN_METHOD);
  EXPECT_TRUE(manager_.calls().empty());
  EXPECT_EQ(call(client(), "ListMounts").error, "");
}

TEST_F(DbusServiceTest, ExceptionsInTheManagerBecomeErrorsNotCrashes) {
  FakeManager::Canned c;
  c.throw_in_list = true;
  manager_.set(c);
  const Reply r = call(client(), "ListMounts");
  EXPECT_EQ(r.error, kErrorFailed);
  EXPECT_EQ(r.message.find("exploded"), std::string::npos) << "internals leak: " << r.message;
  c.throw_in_list = false;
  c.bad_alloc_in_list = true;
  manager_.set(c);
  EXPECT_EQ(call(client(), "ListMounts").error, SD_BUS_ERROR_NO_MEMORY);
  manager_.set(FakeManager::Canned{});
  EXPECT_EQ(call(client(), "ListMounts").error, "");
}

TEST_F(DbusServiceTest, InvalidUtf8FromTheManagerIsReplaced) {
  FakeManager::Canned c;
  c.mounts = nlohmann::json::array({{{"name", "a"}, {"mountpoint", "/mnt/\xFF\xFE"}}});
  c.mount_errno = EIO;
  c.detail = "bad \xC0 byte";
  manager_.set(c);
  const Reply list = call(client(), "ListMounts");
  ASSERT_EQ(list.error, "") << list.message;
  EXPECT_NE(list.text.find("/mnt/\xEF\xBF\xBD"), std::string::npos) << list.text;
  const Reply mount = call(client(), "Mount", "a");
  EXPECT_EQ(mount.error, kErrorFailed);
  EXPECT_NE(mount.message.find("bad \xEF\xBF\xBD byte"), std::string::npos) << mount.message;
  manager_.fire("a\xFF", "mounted");  // the signal is sent sanitized, not dropped
  StateSignal got;
  sd_bus_match_signal(client(), nullptr, kBusName, kObjectPath, kInterface,
                      "MountStateChanged", on_state_changed, &got);
  manager_.fire("b\xFF", "failed");
  ASSERT_TRUE(pump_until(client(), [&] { return got.name.starts_with("b"); }));
  EXPECT_EQ(got.name, "b\xEF\xBF\xBD");
}

TEST_F(DbusServiceTest, IntrospectionDescribesTheInterface) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  ASSERT_GE(sd_bus_call_method(client(), kBusName, kObjectPath,
                               "org.freedesktop.DBus.Introspectable", "Introspect", &error,
                               &reply, ""),
            0);
  const char* xml = nullptr;
  ASSERT_GE(sd_bus_message_read(reply, "s", &xml), 0);
  const std::string text = xml;
  for (const char* part : {"ListMounts", "GetMount", "Unmount", "Reload", "MountStateChanged",
                           "name=\"Version\"", "name=\"MountCount\"", "name=\"state\""}) {
    EXPECT_NE(text.find(part), std::string::npos) << part;
  }
  sd_bus_message_unref(reply);
}

TEST_F(DbusServiceTest, CallersOtherThanThePrivilegedUidAreRefused) {
  // Works without root: pretend only some other uid may change things.
  service_->set_privileged_uid_for_testing(::geteuid() + 1);
  for (const auto& [member, arg] : {std::pair<const char*, const char*>{"Mount", "a"},
                                    {"Unmount", "a"}, {"Reload", nullptr}}) {
    const Reply r = call(client(), member, arg);
    EXPECT_EQ(r.error, SD_BUS_ERROR_ACCESS_DENIED) << member;
    EXPECT_NE(r.message.find("only root"), std::string::npos) << r.message;
  }
  EXPECT_EQ(call(client(), "ListMounts").error, "");
  EXPECT_EQ(call(client(), "GetMount", "a").error, "");
  expect_no_mutating_calls();
}

TEST_F(DbusServiceTest, UnprivilegedUserIsRefusedAndNothingIsHarmed) {
  if (::geteuid() != 0) {
    if (in_ci()) FAIL() << "needs root to run a client as uid 65534 (CI=true)";
    GTEST_SKIP() << "needs root to run a client as uid 65534";
  }
  for (const auto& [member, arg] : {std::pair<const char*, const char*>{"Mount", "a"},
                                    {"Unmount", "a"}, {"Reload", nullptr}}) {
    EXPECT_EQ(call_as(kNobody, bus_->address(), member, arg), SD_BUS_ERROR_ACCESS_DENIED)
        << member;
  }
  // Reading is for everyone.
  EXPECT_EQ(call_as(kNobody, bus_->address(), "ListMounts", nullptr), "");
  EXPECT_EQ(call_as(kNobody, bus_->address(), "GetMount", "a"), "");
  expect_no_mutating_calls();
  // Root still may.
  EXPECT_EQ(call(client(), "Unmount", "a").error, "");
}

// Handlers (issue 20): ListHandlers for everyone, SwapHandler and RemoveHandler for root,
// each Manager errno as a named error with the Manager's text.
TEST_F(DbusServiceTest, HandlerMethodsCallTheManager) {
  Client c(connect());
  CallError error;
  std::string text;
  ASSERT_TRUE(c.list_handlers("a", &text, &error)) << error.message;
  EXPECT_EQ(nlohmann::json::parse(text)[0]["opcode"], "lookup");
  EXPECT_TRUE(c.swap_handler("a", "lookup", "/h/new.bpf.o", &error)) << error.message;
  EXPECT_TRUE(c.remove_handler("a", "getattr", &error)) << error.message;
  EXPECT_EQ(manager_.calls(),
            (std::vector<std::string>{"ListHandlers a", "SwapHandler a lookup /h/new.bpf.o",
                                      "RemoveHandler a getattr"}));
}

TEST_F(DbusServiceTest, HandlerErrnosMapToNamedErrors) {
  const struct {
    int err;
    const char* detail;
    const char* name;
  } cases[] = {
      {ENOENT, "", kErrorNoSuchMount},
      {ENOTCONN, "", kErrorNotMounted},
      {EOPNOTSUPP, "mount 'a' is served on the stock tier (the kernel's own FUSE)",
       kErrorNoHandlers},
      {ECANCELED, "the kernel refused /h/x.bpf.o (Permission denied); verifier log:\nR0 invalid",
       kErrorHandlerRefused},
      {ENODATA, "no handler is loaded for opcode 1", kErrorNoSuchHandler},
      {EINVAL, "no handler opcode named 'write'", SD_BUS_ERROR_INVALID_ARGS},
  };
  for (const auto& tc : cases) {
    FakeManager::Canned canned;
    canned.handler_errno = tc.err;
    canned.detail = tc.detail;
    manager_.set(canned);
    Client c(connect());
    for (int method = 0; method < 3; ++method) {
      CallError error;
      std::string text;
      bool ok = method == 0   ? c.list_handlers("a", &text, &error)
                : method == 1 ? c.swap_handler("a", "lookup", "/h/x.bpf.o", &error)
                              : c.remove_handler("a", "lookup", &error);
      EXPECT_FALSE(ok);
      EXPECT_EQ(error.name, tc.name) << "errno " << tc.err << " method " << method;
      if (*tc.detail) {
        EXPECT_EQ(error.message, tc.detail);
      }
    }
  }
}

TEST_F(DbusServiceTest, HandlerChangesNeedRootAndReadingDoesNot) {
  service_->set_privileged_uid_for_testing(::geteuid() + 1);
  Client c(connect());
  CallError error;
  EXPECT_FALSE(c.swap_handler("a", "lookup", "/h/x.bpf.o", &error));
  EXPECT_EQ(error.kind, CallError::Kind::Denied);
  EXPECT_NE(error.message.find("only root"), std::string::npos) << error.message;
  EXPECT_FALSE(c.remove_handler("a", "lookup", &error));
  EXPECT_EQ(error.kind, CallError::Kind::Denied);
  std::string text;
  EXPECT_TRUE(c.list_handlers("a", &text, &error)) << error.message;
  EXPECT_EQ(manager_.calls(), (std::vector<std::string>{"ListHandlers a"}));
}

TEST_F(DbusServiceTest, UnprivilegedUserCannotChangeHandlers) {
  if (::geteuid() != 0) {
    if (in_ci()) FAIL() << "needs root to run a client as uid 65534 (CI=true)";
    GTEST_SKIP() << "needs root to run a client as uid 65534";
  }
  for (bool swap : {true, false}) {
    EXPECT_EQ(run_as(kNobody, bus_->address(),
                     [swap](BusPtr bus) {
                       Client c(std::move(bus));
                       CallError e;
                       bool ok = swap ? c.swap_handler("a", "lookup", "/h/x.bpf.o", &e)
                                      : c.remove_handler("a", "lookup", &e);
                       return ok ? std::string() : e.name;
                     }),
              SD_BUS_ERROR_ACCESS_DENIED);
  }
  EXPECT_EQ(call_as(kNobody, bus_->address(), "ListHandlers", "a"), "");
  expect_no_mutating_calls();
}

TEST_F(DbusServiceTest, SecondServiceCannotTakeTheName) {
  FakeManager other_manager;
  DbusService other(other_manager, connect());
  std::string error;
  const Status st = other.start(&error);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.error(), EEXIST);
  // It names the owner: this process.
  EXPECT_NE(error.find("owned by pid " + std::to_string(getpid()) + " ("), std::string::npos)
      << error;
  EXPECT_FALSE(other_manager.has_listener());
  EXPECT_EQ(call(client(), "ListMounts").error, "");  // the first one is unharmed
}

TEST_F(DbusServiceTest, StopReleasesTheNameAndTheListener) {
  service_->stop();
  service_->stop();  // idempotent
  EXPECT_FALSE(manager_.has_listener());
  Client cl(connect());
  CallError error;
  std::string text;
  EXPECT_FALSE(cl.list_mounts(&text, &error));
  EXPECT_EQ(error.kind, CallError::Kind::NotRunning) << error.name << ": " << error.message;
  // The name is free again: another service takes it (on a connection the caller keeps
  // until the service is gone, as the raw-pointer constructor requires).
  BusPtr other_bus = connect();
  DbusService other(manager_, other_bus.get());
  std::string message;
  ASSERT_TRUE(other.start(&message).ok()) << message;
  EXPECT_EQ(call(client(), "ListMounts").error, "");
}

TEST_F(DbusServiceTest, ListenerCalledAfterDestructionIsHarmless) {
  const Manager::StateListener stale = manager_.listener();
  ASSERT_TRUE(stale);
  service_.reset();
  stale("a", "mounted");  // a Supervisor thread that copied the listener just before
  EXPECT_FALSE(manager_.has_listener());
}

TEST_F(DbusServiceTest, StopWaitsForACallInProgress) {
  FakeManager::Canned c;
  c.reload_delay_ms = 300;
  manager_.set(c);
  BusPtr async_client = connect();
  sd_bus_slot* slot = nullptr;
  bool replied = false;
  ASSERT_GE(sd_bus_call_method_async(
                async_client.get(), &slot, kBusName, kObjectPath, kInterface, "Reload",
                [](sd_bus_message*, void* done, sd_bus_error*) {
                  *static_cast<bool*>(done) = true;
                  return 0;
                },
                &replied, ""),
            0);
  ASSERT_GE(sd_bus_flush(async_client.get()), 0);
  // Wait until the Manager is inside reload(), then stop.
  const auto deadline = std::chrono::steady_clock::now() + kSignalTimeout;
  while (manager_.calls().empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_FALSE(manager_.calls().empty());
  service_->stop();  // joins after reload() returns; no crash, no hang
  EXPECT_TRUE(pump_until(async_client.get(), [&] { return replied; }));
  sd_bus_slot_unref(slot);
}

TEST_F(DbusServiceTest, LosingTheBusEndsTheLoopAndStopStillWorks) {
  ASSERT_TRUE(service_->serving());
  ASSERT_TRUE(manager_.has_listener());
  client_.reset();
  bus_.reset();  // kills dbus-daemon under the running service
  // The loop ends by itself (sd_bus_set_exit_on_disconnect), without a stop().
  const auto deadline = std::chrono::steady_clock::now() + kSignalTimeout;
  while (service_->serving() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_FALSE(service_->serving()) << "the bus thread's loop must end when the bus goes";
  EXPECT_TRUE(manager_.has_listener()) << "nothing is torn down before stop()";
  service_->stop();  // no hang, no crash, no exit()
  EXPECT_FALSE(service_->serving());
  EXPECT_FALSE(manager_.has_listener()) << "stop() still tears down after the loop ended";
  service_.reset();
}

TEST_F(DbusServiceTest, ClientClassifiesErrors) {
  Client cl(connect());
  CallError error;
  EXPECT_TRUE(cl.mount("a", &error));
  FakeManager::Canned c;
  c.mount_errno = ENOENT;
  manager_.set(c);
  EXPECT_FALSE(cl.mount("zzz", &error));
  EXPECT_EQ(error.kind, CallError::Kind::Refused);
  EXPECT_EQ(error.name, kErrorNoSuchMount);
  std::string text;
  EXPECT_TRUE(cl.get_mount("a", &text, &error));
  EXPECT_TRUE(cl.reload(&error));
}

}  // namespace
}  // namespace efuse::control
