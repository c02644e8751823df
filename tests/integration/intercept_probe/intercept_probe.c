// efuse_intercept_probe FILE: prints what it read and stat'ed of FILE before main, in main,
// from a SIGALRM handler that interrupts the main thread's own opens, reads and stats, and
// from four threads. The output is the same whichever path serves the calls (the test
// compares a run under efuse-run with one without); any failure prints and exits 1.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static char early[64];
static dev_t early_dev;
static volatile sig_atomic_t handler_runs, handler_errors;
static const char* g_path;

static int slurp(const char* path, char* buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t n = read(fd, buf, size - 1);
  int e = errno;
  close(fd);
  if (n < 0) return -e;
  buf[n] = '\0';
  return (int)n;
}

// Before main: the library may be called before its own constructor ran.
__attribute__((constructor)) static void before_main(void) {
  const char* p = getenv("EFUSE_PROBE_FILE");
  struct stat st;
  if (p != NULL && slurp(p, early, sizeof early) >= 0 && stat(p, &st) == 0) early_dev = st.st_dev;
}

// Async-signal-safe calls only: open, read, close, fstat, stat.
static void on_alarm(int sig) {
  (void)sig;
  int saved = errno;
  char buf[64];
  struct stat st;
  int fd = open(g_path, O_RDONLY);
  if (fd < 0 || read(fd, buf, sizeof buf) <= 0 || fstat(fd, &st) != 0 || stat(g_path, &st) != 0)
    handler_errors = handler_errors + 1;
  if (fd >= 0) close(fd);
  handler_runs = handler_runs + 1;
  errno = saved;
}

static void* worker(void* arg) {
  long bad = 0;
  char buf[64], first[64];
  strcpy(first, (const char*)arg);
  for (int i = 0; i < 500; ++i) {
    struct stat st;
    if (slurp(g_path, buf, sizeof buf) < 0 || strcmp(buf, first) != 0 || stat(g_path, &st) != 0)
      ++bad;
  }
  return (void*)bad;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: efuse_intercept_probe FILE (and EFUSE_PROBE_FILE=FILE)\n");
    return 2;
  }
  g_path = argv[1];
  char buf[64];
  struct stat st;
  if (slurp(g_path, buf, sizeof buf) < 0 || stat(g_path, &st) != 0) {
    perror(g_path);
    return 1;
  }
  printf("before main: %s same as in main: %d, device the same: %d\n",
         early[0] ? "read" : "nothing", strcmp(early, buf) == 0, early_dev == st.st_dev);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = {{0, 200}, {0, 200}};  // every 200 µs of run time
  setitimer(ITIMER_REAL, &it, NULL);
  long bad = 0;
  for (int i = 0; i < 20000 && handler_runs < 200; ++i) {
    char b[64];
    struct stat s2;
    if (slurp(g_path, b, sizeof b) < 0 || strcmp(b, buf) != 0 || stat(g_path, &s2) != 0 ||
        s2.st_dev != st.st_dev)
      ++bad;
  }
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  printf("signal handler: ran %s, errors %d; main thread errors %ld\n",
         handler_runs > 0 ? "yes" : "no", (int)handler_errors, bad);

  pthread_t t[4];
  for (int i = 0; i < 4; ++i) pthread_create(&t[i], NULL, worker, buf);
  long tbad = 0;
  for (int i = 0; i < 4; ++i) {
    void* r;
    pthread_join(t[i], &r);
    tbad += (long)r;
  }
  printf("threads: errors %ld\n", tbad);
  return bad || tbad || handler_errors ? 1 : 0;
}
