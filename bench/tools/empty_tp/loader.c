// Loads and attaches every program of a BPF object, holds them until SIGTERM/SIGINT, then
// detaches (bench/tools/cat_telemetry_ab.py). Prints "attached N" once attached.
#include <bpf/libbpf.h>
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
static volatile int stop;
static void h(int s){stop=1;}
int main(int c, char** v){
  struct bpf_object* o = bpf_object__open_file(v[1], NULL);
  if (!o || bpf_object__load(o)) { fprintf(stderr, "load failed\n"); return 1; }
  struct bpf_program* p; int n=0;
  bpf_object__for_each_program(p, o) { if (!bpf_program__attach(p)) { fprintf(stderr,"attach failed\n"); return 1;} n++; }
  printf("attached %d\n", n); fflush(stdout);
  signal(SIGTERM,h); signal(SIGINT,h);
  while(!stop) pause();
  bpf_object__close(o); return 0;
}
