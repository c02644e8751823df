"""efuse benchmark harness: native ext4 vs libfuse 3.14 passthrough_ll vs efused.

Entry point: bench/run (see bench/README.md). Python 3 standard library only.

Every row is measured on every side in one run, sides taking turns within each repetition:
repetitions 2k and 2k+1 run the side order rotated by k, forwards then backwards (native,
libfuse, efused, efused-nobpf; efused-nobpf, efused, libfuse, native; libfuse, efused,
efused-nobpf, native; ...), so that every pair of sides runs in both orders and no side
always runs first; reported as the median of the repetitions. Each FUSE side serves a fresh ext4 directory
under bench/work/run and the data files of a row live inside its mount. efused's eBPF
telemetry is attached only during efused's timed runs and the counted runs of fio-one, cat
and tar-subset, which give the upcalls / context switches per operation table. efused ÷
efused-nobpf (efused with no telemetry attached; on the efused mount itself in fio, tree and
cat rows, on a fresh mount per repetition in tar rows) is the telemetry's cost on every row,
and efused-nobpf ÷ libfuse is efused without telemetry against libfuse.

Telemetry on against off, every row, e.g.:
  bench/run --rows tar-subset,cat,tree,fio-one --sides libfuse,efused,efused-nobpf --reps 8
"""
