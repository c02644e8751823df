// The machine's price of one blocking request and reply between two processes: a client
// writes one byte into a pipe and blocks reading the answer; a server blocked on the other
// pipe wakes, answers, and blocks again. A synchronous FUSE upcall has the same shape (the
// caller sleeps until the server's reply wakes it), so no FUSE server can answer a waited-for
// request in less time than this on the same machine. The bench prints it beside its
// upcall counts (bench/README.md, "Wait floor").
//
// Usage: pingpong [ROUND_TRIPS_PER_ROUND [ROUNDS]]
// Prints one JSON object: median microseconds per round trip with both processes on CPU 0
// ("same_cpu_us"), on two different CPUs ("cross_cpu_us", null with one CPU) and left to the
// scheduler ("unpinned_us").
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static cpu_set_t allowed;  // where this process may run: the unpinned case

// Pins the calling process to `cpu`, or lets it run anywhere it was allowed to (-1).
static int pin(int cpu) {
  if (cpu < 0) return sched_setaffinity(0, sizeof allowed, &allowed);
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set);
}

static void die(const char* what) {
  fprintf(stderr, "pingpong: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void xfer(int rfd, int wfd, int reply_first, long n) {
  char c = 0;
  for (long i = 0; i < n; i++) {
    if (!reply_first && write(wfd, &c, 1) != 1) die("write");
    if (read(rfd, &c, 1) != 1) die("read");
    if (reply_first && write(wfd, &c, 1) != 1) die("write");
  }
}

// Median microseconds per round trip over `rounds` rounds of `n` round trips each.
static double measure(int client_cpu, int server_cpu, long n, int rounds) {
  int req[2], rep[2];
  if (pipe(req) != 0 || pipe(rep) != 0) die("pipe");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    if (pin(server_cpu) != 0) die("sched_setaffinity");
    xfer(req[0], rep[1], 1, n * (rounds + 1));
    _exit(0);
  }
  if (pin(client_cpu) != 0) die("sched_setaffinity");
  xfer(rep[0], req[1], 0, n);  // warm-up round
  double per[64];
  for (int r = 0; r < rounds; r++) {
    double t0 = now_us();
    xfer(rep[0], req[1], 0, n);
    per[r] = (now_us() - t0) / n;
  }
  waitpid(pid, NULL, 0);
  if (pin(-1) != 0) die("sched_setaffinity");
  close(req[0]);
  close(req[1]);
  close(rep[0]);
  close(rep[1]);
  for (int i = 1; i < rounds; i++)  // insertion sort: a handful of values
    for (int j = i; j > 0 && per[j] < per[j - 1]; j--) {
      double t = per[j];
      per[j] = per[j - 1];
      per[j - 1] = t;
    }
  return per[rounds / 2];
}

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 10000;
  int rounds = argc > 2 ? atoi(argv[2]) : 5;
  if (n < 1 || rounds < 1 || rounds > 64) {
    fprintf(stderr, "usage: pingpong [ROUND_TRIPS_PER_ROUND [ROUNDS (1-64)]]\n");
    return 2;
  }
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) die("sched_getaffinity");
  int cpus[2], found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; c++)
    if (CPU_ISSET(c, &allowed)) cpus[found++] = c;
  double same = measure(cpus[0], cpus[0], n, rounds);
  double unpinned = measure(-1, -1, n, rounds);
  if (found < 2) {
    printf("{\"same_cpu_us\": %.2f, \"cross_cpu_us\": null, \"unpinned_us\": %.2f}\n", same,
           unpinned);
    return 0;
  }
  double cross = measure(cpus[0], cpus[1], n, rounds);
  printf("{\"same_cpu_us\": %.2f, \"cross_cpu_us\": %.2f, \"unpinned_us\": %.2f}\n", same, cross,
         unpinned);
  return 0;
}
