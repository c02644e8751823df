"""A minimal FUSE server speaking the protocol over a device node (guest side, stdlib only).

Used to check that the efuse module (kmod/) serves a mount of type `efuse` through
/dev/efuse before efused can be pointed at that device: it mounts, answers INIT, and
answers GETATTR of the root with attributes nothing else would produce; every other
request gets ENOSYS. Layouts from include/uapi/linux/fuse.h.
"""
import ctypes
import errno
import os
import select
import struct
import threading

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (rest unused here)
# major minor max_readahead flags max_background congestion_threshold max_write time_gran
# max_pages map_alignment flags2 max_stack_depth unused[6]
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
# attr_valid attr_valid_nsec dummy | ino size blocks atime mtime ctime atimensec mtimensec
# ctimensec mode nlink uid gid rdev blksize flags
ATTR_OUT = struct.Struct("<QII" "QQQQQQIIIIIIIIII")
OP_GETATTR, OP_INIT = 3, 26
ROOT_SIZE = 4242  # the root's size as this server reports it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class RawServer:
    """Mounts `fstype` at `mnt` through `device` and serves it from a thread."""

    def __init__(self, device, mnt, fstype):
        self.mnt, self.seen, self.error = mnt, [], None
        self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0".encode()
        if _libc.mount(b"efuse-raw", mnt.encode(), fstype.encode(), MS_NOSUID | MS_NODEV, opts):
            e = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(e, f"mount -t {fstype} through {device}: {os.strerror(e)}")
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _reply(self, unique, error=0, body=b""):
        os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)

    def _serve(self):
        try:
            while True:
                ready, _, _ = select.select([self.fd, self.stop_r], [], [])
                if self.stop_r in ready:
                    return
                try:
                    req = os.read(self.fd, 1 << 20 | 4096)
                except OSError as e:
                    if e.errno == errno.ENODEV:  # unmounted
                        return
                    raise
                _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(req)
                self.seen.append(opcode)
                body = req[IN_HEADER.size:]
                if opcode == OP_INIT:
                    major, minor, readahead, _ = INIT_IN.unpack_from(body)
                    self._reply(unique, 0, INIT_OUT.pack(7, min(minor, 41), readahead, 0, 0, 0,
                                                         4096, 1, 0, 0, 0, 0))
                elif opcode == OP_GETATTR and nodeid == 1:
                    self._reply(unique, 0, ATTR_OUT.pack(0, 0, 0, 1, ROOT_SIZE, 0, 0, 0, 0, 0, 0,
                                                         0, 0o40755, 2, 0, 0, 0, 4096, 0))
                else:
                    self._reply(unique, -errno.ENOSYS)
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        _libc.umount2(self.mnt.encode(), MNT_DETACH)
        os.write(self.stop_w, b"x")
        self.thread.join(30)
        for fd in (self.fd, self.stop_r, self.stop_w):
            os.close(fd)
        if self.error:
            raise AssertionError(f"raw server failed: {self.error!r}")
