// The one opcode table, libfuse's fuse_ll_ops[] way: each opcode's enumerator, number and
// name are written once, here. Everything else is generated from this list: the
// kernel::Opcode enum and kMaxOpcode (kernel.h), opcode_name() for logs and the `opcode`
// metric label (opcodes.cpp), and the Session's dispatch table (session.cpp), where a
// served opcode `name` is handled by Session::do_<name>. Adding an opcode is one line here
// (and its handler); the telemetry layer checks at compile time that every opcode has a
// slot of its own in the BPF side's per-opcode maps (EFUSE_BPF_OPCODE_SLOTS).
//
// SERVED(Enumerator, number, name): efused answers it (FORGET, BATCH_FORGET and INTERRUPT
//   take no reply). KNOWN(Enumerator, number, name): named in logs and metrics, answered
//   ENOSYS. Numbers absent here (7, 19) were never used by the kernel.
#pragma once

#define EFUSE_FUSE_OPCODES(SERVED, KNOWN)         \
  SERVED(Lookup, 1, lookup)                       \
  SERVED(Forget, 2, forget)                       \
  SERVED(Getattr, 3, getattr)                     \
  SERVED(Setattr, 4, setattr)                     \
  SERVED(Readlink, 5, readlink)                   \
  SERVED(Symlink, 6, symlink)                     \
  SERVED(Mknod, 8, mknod)                         \
  SERVED(Mkdir, 9, mkdir)                         \
  SERVED(Unlink, 10, unlink)                      \
  SERVED(Rmdir, 11, rmdir)                        \
  SERVED(Rename, 12, rename)                      \
  SERVED(Link, 13, link)                          \
  SERVED(Open, 14, open)                          \
  SERVED(Read, 15, read)                          \
  SERVED(Write, 16, write)                        \
  SERVED(Statfs, 17, statfs)                      \
  SERVED(Release, 18, release)                    \
  SERVED(Fsync, 20, fsync)                        \
  SERVED(Setxattr, 21, setxattr)                  \
  SERVED(Getxattr, 22, getxattr)                  \
  SERVED(Listxattr, 23, listxattr)                \
  SERVED(Removexattr, 24, removexattr)            \
  SERVED(Flush, 25, flush)                        \
  SERVED(Init, 26, init)                          \
  SERVED(Opendir, 27, opendir)                    \
  SERVED(Readdir, 28, readdir)                    \
  SERVED(Releasedir, 29, releasedir)              \
  SERVED(Fsyncdir, 30, fsyncdir)                  \
  SERVED(Getlk, 31, getlk)                        \
  SERVED(Setlk, 32, setlk)                        \
  SERVED(Setlkw, 33, setlkw)                      \
  SERVED(Access, 34, access)                      \
  SERVED(Create, 35, create)                      \
  SERVED(Interrupt, 36, interrupt)                \
  KNOWN(Bmap, 37, bmap)                           \
  SERVED(Destroy, 38, destroy)                    \
  KNOWN(Ioctl, 39, ioctl)                         \
  KNOWN(Poll, 40, poll)                           \
  KNOWN(NotifyReply, 41, notify_reply)            \
  SERVED(BatchForget, 42, batch_forget)           \
  SERVED(Fallocate, 43, fallocate)                \
  SERVED(Readdirplus, 44, readdirplus)            \
  SERVED(Rename2, 45, rename2)                    \
  SERVED(Lseek, 46, lseek)                        \
  SERVED(CopyFileRange, 47, copy_file_range)      \
  KNOWN(Setupmapping, 48, setupmapping)           \
  KNOWN(Removemapping, 49, removemapping)         \
  KNOWN(Syncfs, 50, syncfs)                       \
  KNOWN(Tmpfile, 51, tmpfile)                     \
  KNOWN(Statx, 52, statx)                         \
  KNOWN(CopyFileRange64, 53, copy_file_range_64)
