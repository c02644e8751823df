// Two programs that do nothing, on the tracepoints efused's telemetry uses: what any program
// there costs (bench/tools/cat_telemetry_ab.py, docs/bpf.md "Per-event cost on the cat row").
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "Dual BSD/GPL";
SEC("tp_btf/fuse_request_send")
int BPF_PROG(empty_send) { return 0; }
SEC("tp_btf/fuse_request_end")
int BPF_PROG(empty_end) { return 0; }
