// Manual end-to-end check of fuse::UringChannel on a real mount (root, Linux >= 6.14 with
// CONFIG_FUSE_IO_URING). Not part of the default build:
//
//   g++ -std=c++20 -O2 -I service/src tests/manual/uring_smoke.cpp
//       build/service/libefuse_core.a -o /tmp/uring_smoke
//       -luring -lsystemd -lyaml-cpp -lprometheus-cpp-pull -lprometheus-cpp-core -lpthread
//   sudo /tmp/uring_smoke [--mode uring|drop|fail-setup|register-fail|abort] [--depth N] [--passthrough]
//                         [--script FILE]   (bash; $M is the mount, $S its source directory,
//                                            $N a native scratch dir, $SMOKE_MODE the mode)
//
// Modes:
//   uring       rings on every CPU; the workload must reach every queue (default)
//   drop        INIT grants io_uring, then drop_kernel_uring() + start_classic(): the mount
//               must work over /dev/fuse alone
//   fail-setup  start() fails in its setup phase (address-space limit); the fallback must
//               leave a working classic mount
//   register-fail  start() fails in its registration phase (the kernel refuses REGISTER:
//               io_uring dropped and enable_uring set to N for a moment, then Y again); the
//               fallback must leave a working classic mount
//   abort       rings on; the connection is aborted through fusectl mid-way; every thread
//               must stop without an unmount
//
// The workload (cp, cat, dd, fio randrw with crc32c verification on 2 jobs pinned to
// different CPUs, ls -lR, tar, flock contention, an interrupted blocking lock) runs in child
// processes; data is compared against a native copy. Exit status 0 means every check held.
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>

#include "common/log.h"
#include "common/system.h"
#include "fs/passthrough/passthrough_fs.h"
#include "fuse/mount.h"
#include "fuse/opcodes.h"
#include "fuse/session.h"
#include "fuse/uring_channel.h"

namespace {

int failures = 0;
std::string g_mode;

void check(bool ok, const std::string& what) {
  std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

int run_shell(const std::string& script, const std::string& mnt, const std::string& nat,
              const std::string& src = {}) {
  pid_t pid = fork();
  if (pid == 0) {
    setenv("M", mnt.c_str(), 1);
    setenv("N", nat.c_str(), 1);
    setenv("SMOKE_MODE", g_mode.c_str(), 1);
    setenv("S", src.c_str(), 1);
    execl("/bin/bash", "bash", "-euo", "pipefail", "-c", script.c_str(), (char*)nullptr);
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

const char* kWorkload = R"SH(

cd "$N"
head -c 8M /dev/urandom > big.bin
head -c 3000 /dev/urandom > small.bin
mkdir -p tree/a/b tree/c
for i in $(seq 1 40); do head -c $((i * 997)) /dev/urandom > tree/a/f$i; done
for i in $(seq 1 40); do echo "line $i" > tree/c/t$i; done
ln -s ../../c/t1 tree/a/b/link
set -x

# copy in on CPU 0, read back on CPU 1
taskset -c 0 cp big.bin small.bin "$M"/
taskset -c 1 cmp big.bin "$M"/big.bin
taskset -c 1 cmp small.bin "$M"/small.bin
taskset -c 0 cat "$M"/big.bin | cmp - big.bin
# dd with odd block sizes and direct I/O both ways
taskset -c 1 dd if=big.bin of="$M"/dd.bin bs=123456 status=none
# O_DIRECT needs aligned daemon buffers (the backing file is opened O_DIRECT too): ring
# payload buffers are page aligned, the classic workers' buffers are not (EINVAL there).
idirect=; odirect=
if [ "$SMOKE_MODE" = uring ]; then idirect=iflag=direct; odirect=oflag=direct; fi
taskset -c 0 dd if="$M"/dd.bin of=dd.back bs=65536 $idirect status=none
cmp big.bin dd.back
taskset -c 0 dd if=big.bin of="$M"/direct.bin bs=1M $odirect status=none
taskset -c 1 cmp big.bin "$M"/direct.bin

# tree copy, listing, tar round trip
taskset -c 1 cp -a tree "$M"/
diff -r tree "$M"/tree
ls -lR "$M" > /dev/null
# -h: GNU tar opens with O_NOFOLLOW otherwise, which PassthroughFs answers with ELOOP.
taskset -c 0 tar -h -C "$M" -cf tar.tar tree
mkdir -p untar && tar -C untar -xf tar.tar && diff -r tree untar/tree
taskset -c 1 tar -C "$M" -xf tar.tar --transform 's/^tree/tree2/'
diff -r tree "$M"/tree2
rm -rf "$M"/tree2 && test ! -e "$M"/tree2
mv "$M"/small.bin "$M"/renamed.bin && cmp small.bin "$M"/renamed.bin

# fio: 2 jobs, one per CPU, random read/write with crc32c verification
fio --name=rw --directory="$M" --size=32M --bs=4k --rw=randrw --rwmixread=70 \
    --ioengine=psync --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --runtime=6 --time_based=0 \
    --group_reporting --output-format=terse > fio.out
cut -d';' -f3,5 fio.out

# flock contention: the second flock blocks (SETLKW answered later, from another thread)
taskset -c 0 flock "$M"/lockfile sleep 1 &
holder=$!
sleep 0.3
start=$(date +%s%N)
taskset -c 1 flock "$M"/lockfile true
waited=$(( ($(date +%s%N) - start) / 1000000 ))
wait $holder
echo "flock waited ${waited} ms"
test "$waited" -ge 300
# an interrupted blocking POSIX lock (INTERRUPT comes over /dev/fuse)
python3 - "$M"/lockfile <<'PY'
import fcntl, os, signal, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
pid = os.fork()
if pid == 0:
    class Alarm(Exception):
        pass
    def on_alarm(*_):
        raise Alarm()  # a handler that returns would make Python retry the lock (PEP 475)
    fd2 = os.open(path, os.O_RDWR)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(1)
    try:
        fcntl.lockf(fd2, fcntl.LOCK_EX)
        os._exit(2)
    except Alarm:
        os._exit(0)
_, st = os.waitpid(pid, 0)
print("interrupted lock child exit", os.waitstatus_to_exitcode(st))
sys.exit(os.waitstatus_to_exitcode(st))
PY
rm -f "$M"/lockfile
# metadata churn for FORGETs
for i in $(seq 1 200); do touch "$M"/m$i; done
rm -f "$M"/m*
echo 2 > /proc/sys/vm/drop_caches
stat "$M"/big.bin > /dev/null
)SH";

}  // namespace

int main(int argc, char** argv) {
  std::string mode = "uring";
  unsigned depth = 8;
  bool passthrough = false;
  std::string script_file;  // a workload of one's own instead of the built-in one
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--mode" && i + 1 < argc) mode = argv[++i];
    else if (a == "--depth" && i + 1 < argc) depth = static_cast<unsigned>(atoi(argv[++i]));
    else if (a == "--passthrough") passthrough = true;
    else if (a == "--script" && i + 1 < argc) script_file = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--mode uring|drop|fail-setup|register-fail|abort] [--depth N] "
                           "[--passthrough] [--script FILE]\n", argv[0]);
      return 2;
    }
  }
  g_mode = mode;
  efuse::log::set_level(efuse::log::Level::Info);
  if (geteuid() != 0) {
    std::fprintf(stderr, "run as root\n");
    return 2;
  }

  std::string why;
  efuse::Status sup = fuse::UringChannel::supported(&why);
  check(sup.ok(), "UringChannel::supported(): " + (sup.ok() ? std::string("yes") : why));
  if (!sup.ok()) return 1;

  char tmpl[] = "/tmp/uring_smoke.XXXXXX";
  std::string root = mkdtemp(tmpl);
  std::string src = root + "/src", mnt = root + "/mnt", nat = root + "/native";
  mkdir(src.c_str(), 0755);
  mkdir(mnt.c_str(), 0755);
  mkdir(nat.c_str(), 0755);

  efuse::fs::Policy policy;
  policy.passthrough_io = passthrough;
  auto fs = std::make_unique<efuse::fs::passthrough::PassthroughFs>(src, policy);
  fuse::SessionOptions so;
  so.io_uring = true;
  so.passthrough = passthrough;
  auto session = std::make_unique<fuse::Session>(*fs, so);

  fuse::MountOptions mo;
  mo.fsname = src;
  mo.mountpoint = mnt;
  std::string error;
  auto m = fuse::mount(mo, &error);
  check(m.ok(), "mount " + mnt + (m.ok() ? "" : ": " + error));
  if (!m.ok()) return 1;
  std::printf("mounted %s (conn %u)\n", mnt.c_str(), m->conn_id);

  if (mode == "fail-setup") depth = 256;
  auto conn = std::make_unique<fuse::Connection>(efuse::UniqueFd(m->fd));
  auto ch = std::make_unique<fuse::UringChannel>(*session, *conn, depth, 2);
  efuse::Status s = ch->serve_init(&error);
  check(s.ok(), "serve_init" + (s.ok() ? "" : ": " + error));
  bool granted = session->negotiated().has(fuse::kernel::init::kOverIoUring);
  check(granted, "INIT granted FUSE_OVER_IO_URING");

  bool expect_rings = mode == "uring" || mode == "abort";
  if (mode == "drop") {
    s = fuse::UringChannel::drop_kernel_uring(m->fd, &error);
    check(s.ok(), "drop_kernel_uring" + (s.ok() ? "" : ": " + error));
    s = ch->start_classic(&error);
    check(s.ok(), "start_classic" + (s.ok() ? "" : ": " + error));
  } else if (mode == "register-fail") {
    // Make every queue's first REGISTER fail in the kernel: io_uring dropped for this
    // connection and enable_uring briefly off, so REGISTER answers EOPNOTSUPP.
    s = fuse::UringChannel::drop_kernel_uring(m->fd, &error);
    check(s.ok(), "drop_kernel_uring" + (s.ok() ? "" : ": " + error));
    auto set_param = [](const char* v) {
      std::FILE* f = std::fopen(fuse::kernel::kEnableUringParam, "w");
      bool ok = f && std::fputs(v, f) >= 0;
      if (f) ok = std::fclose(f) == 0 && ok;
      return ok;
    };
    check(set_param("N"), "enable_uring=N for a moment");
    s = ch->start(&error);
    check(set_param("Y"), "enable_uring=Y again");
    check(!s.ok(), "start() fails: " + error);
    check(!ch->rings_active() && ch->queue_count() == 0, "no rings left behind");
    check(ch->classic_fallback_ready(), "classic_fallback_ready()");
    s = ch->start_classic(&error);
    check(s.ok(), "start_classic" + (s.ok() ? "" : ": " + error));
  } else if (mode == "fail-setup") {
    // Room for the queue threads but not for depth x max_write of ring buffers.
    struct rlimit old{}, lim{};
    getrlimit(RLIMIT_AS, &old);
    unsigned long pages = 0;
    if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%lu", &pages) != 1) pages = 0;
      std::fclose(f);
    }
    lim.rlim_cur = pages * 4096 + (96ul << 20);
    lim.rlim_max = old.rlim_max;
    setrlimit(RLIMIT_AS, &lim);
    s = ch->start(&error);
    setrlimit(RLIMIT_AS, &old);
    check(!s.ok(), "start() fails: " + error);
    check(!ch->rings_active() && ch->queue_count() == 0, "no rings left behind");
    check(ch->classic_fallback_ready(), "classic_fallback_ready()");
    s = ch->start_classic(&error);
    check(s.ok(), "start_classic" + (s.ok() ? "" : ": " + error));
  } else {
    s = ch->start(&error);
    check(s.ok(), "start()" + (s.ok() ? "" : ": " + error));
    check(ch->rings_active(), "rings active");
    check(ch->queue_count() == efuse::possible_cpus(),
          "one queue per possible CPU (" + std::to_string(ch->queue_count()) + ")");
  }

  auto t0 = std::chrono::steady_clock::now();
  if (mode == "abort") {
    // Keep I/O running while the connection is aborted.
    std::thread io([&] {
      run_shell("head -c 64M /dev/zero > \"$M\"/z; for i in 1 2 3 4 5 6 7 8; do "
                "cat \"$M\"/z > /dev/null || true; done", mnt, nat);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    check(fuse::abort_connection(m->conn_id), "abort connection via fusectl");
    io.join();
  } else {
    std::string script = kWorkload;
    if (!script_file.empty()) {
      std::ifstream f(script_file);
      script.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
    int rc = run_shell(script, mnt, nat, src);
    check(rc == 0, "workload (cp/cat/dd/tar/diff/fio verify/flock/interrupted lock), exit " +
                       std::to_string(rc));
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  auto stats = ch->worker_stats();
  unsigned q = ch->queue_count();
  uint64_t ring_requests = 0, classic_requests = 0;
  for (unsigned i = 0; i < stats.size(); ++i) {
    uint64_t r = stats[i]->requests.load();
    std::printf("  %s %u: requests %llu, busy %.1f ms, wait %.1f ms\n",
                i < q ? "queue" : "classic worker", i < q ? i : i - q,
                static_cast<unsigned long long>(r), stats[i]->busy_ns.load() / 1e6,
                stats[i]->wait_ns.load() / 1e6);
    if (i < q) {
      ring_requests += r;
      if (expect_rings && mode == "uring") check(r > 0, "queue " + std::to_string(i) + " served requests");
    } else {
      classic_requests += r;
    }
  }
  std::printf("  %.1f s; ring requests %llu, /dev/fuse requests %llu, channel errors %llu\n",
              secs, static_cast<unsigned long long>(ring_requests),
              static_cast<unsigned long long>(classic_requests),
              static_cast<unsigned long long>(ch->channel_errors()));
  const auto& ss = session->stats();
  for (uint32_t op = 0; op < ss.size(); ++op) {
    uint64_t n = ss[op].requests.load();
    if (n) std::printf("    %-14s %llu\n", fuse::opcode_name(op), static_cast<unsigned long long>(n));
  }
  std::printf("  passthrough opens %llu\n",
              static_cast<unsigned long long>(session->passthrough_opens()));
  if (passthrough && mode == "uring")
    check(session->passthrough_opens() > 0, "passthrough backing ids opened from ring entries");
  if (mode == "uring") {
    check(ring_requests > classic_requests, "most requests came over the rings");
    check(ch->channel_errors() == 0, "no channel errors");
  }
  if (mode == "drop" || mode == "fail-setup" || mode == "register-fail") check(ring_requests == 0 && classic_requests > 0, "all requests over /dev/fuse");

  if (mode != "abort") {
    auto how = fuse::unmount(mnt, false);
    check(how.ok(), std::string("unmount: ") + (how.ok() ? *how : strerror(how.error())));
  }
  bool stopped = ch->wait(5000);
  check(stopped, "every channel thread stopped within 5 s of the connection ending");
  if (!stopped) {
    fuse::abort_connection(m->conn_id);
    check(ch->wait(5000), "threads stopped after abort");
  }
  if (mode == "abort") (void)fuse::unmount(mnt, false);
  ch.reset();
  // Only the main thread may remain.
  size_t tasks = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/task")) (void)e, ++tasks;
  check(tasks == 1, "no threads left (" + std::to_string(tasks) + " tasks)");
  session.reset();
  fs.reset();
  std::filesystem::remove_all(root);
  std::printf("%s: %d failure(s)\n", mode.c_str(), failures);
  return failures == 0 ? 0 : 1;
}
