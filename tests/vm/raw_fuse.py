"""A minimal FUSE server speaking the protocol over a device node (guest side, stdlib only).

Used to check that the efuse module (kmod/) serves a mount of type `efuse` through
/dev/efuse before efused can be pointed at that device. It mounts, answers INIT (asking for
FUSE passthrough when the kernel offers it), GETATTR of the root with attributes nothing
else would produce, and one regular file `f` whose opens are FUSE passthrough opens of a
backing file (FUSE_DEV_IOC_BACKING_OPEN, FOPEN_PASSTHROUGH), so its reads must never reach
the server; every other request gets ENOSYS. Layouts as in service/src/fuse/kernel.h.
"""
import ctypes
import errno
import fcntl
import os
import select
import struct
import threading

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIIII")  # major minor max_readahead flags flags2 (rest unused)
# major minor max_readahead flags max_background congestion_threshold max_write time_gran
# max_pages map_alignment flags2 max_stack_depth unused[6]
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
# attr_valid attr_valid_nsec dummy | ino size blocks atime mtime ctime atimensec mtimensec
# ctimensec mode nlink uid gid rdev blksize flags
ATTR_OUT = struct.Struct("<QII" "QQQQQQIIIIIIIIII")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # the attributes alone (in attr_out, entry_out)
ATTR_VALID = struct.Struct("<QII")  # attr_out's head: attr_valid attr_valid_nsec dummy
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid nsecs; + attr
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding
OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_OPEN, OP_READ, OP_RELEASE = 1, 2, 3, 14, 15, 18
OP_FLUSH, OP_INIT, OP_INTERRUPT, OP_BATCH_FORGET = 25, 26, 36, 42
NO_REPLY = (OP_FORGET, OP_INTERRUPT, OP_BATCH_FORGET)
INIT_EXT, FLAGS2_PASSTHROUGH, FOPEN_PASSTHROUGH = 1 << 30, 1 << (37 - 32), 1 << 7
IOC_BACKING_OPEN = (1 << 30) | (BACKING_MAP.size << 16) | (229 << 8) | 1  # _IOW(229, 1, map)
IOC_BACKING_CLOSE = (1 << 30) | (4 << 16) | (229 << 8) | 2  # _IOW(229, 2, uint32_t)
ROOT_SIZE = 4242  # the root's size as this server reports it
FILE_NODE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class RawServer:
    """Mounts `fstype` at `mnt` through `device` and serves it from a thread."""

    def __init__(self, device, mnt, fstype, backing):
        self.mnt, self.seen, self.error = mnt, [], None
        self.requests = []  # (opcode, nodeid) of every request read, in order
        self.backing, self.backing_size = backing, os.stat(backing).st_size
        self.passthrough = False  # granted at INIT
        self.backing_ids = []  # registered for opens of f
        self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0".encode()
        if _libc.mount(b"efuse-raw", mnt.encode(), fstype.encode(), MS_NOSUID | MS_NODEV, opts):
            e = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(e, f"mount -t {fstype} through {device}: {os.strerror(e)}")
        self.stop_r, self.stop_w = os.pipe()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _reply(self, unique, error=0, body=b""):
        os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)

    def _serve(self):
        try:
            while True:
                fd = self.fd
                if fd < 0:  # aborted by the owner (a test "killing the server")
                    return
                try:
                    ready, _, _ = select.select([fd, self.stop_r], [], [])
                except OSError as e:
                    if e.errno == errno.EBADF and self.fd < 0:  # aborted meanwhile
                        return
                    raise
                if self.stop_r in ready:
                    return
                try:
                    req = os.read(fd, 1 << 20 | 4096)
                except OSError as e:
                    if e.errno == errno.ENODEV or self.fd < 0:  # unmounted, or aborted
                        return
                    raise
                _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(req)
                self.seen.append(opcode)
                self.requests.append((opcode, nodeid))
                body = req[IN_HEADER.size:]
                if opcode in NO_REPLY:
                    continue
                if opcode == OP_INIT:
                    major, minor, readahead, flags, flags2 = INIT_IN.unpack_from(body)
                    self.passthrough = bool(flags & INIT_EXT and flags2 & FLAGS2_PASSTHROUGH)
                    out_flags, out_flags2 = (INIT_EXT, FLAGS2_PASSTHROUGH) if self.passthrough \
                        else (0, 0)
                    self._reply(unique, 0, INIT_OUT.pack(7, min(minor, 41), readahead, out_flags,
                                                         0, 0, 4096, 1, 0, 0, out_flags2,
                                                         1 if self.passthrough else 0))
                elif opcode == OP_GETATTR and nodeid in (1, FILE_NODE):
                    self._reply(unique, 0, ATTR_VALID.pack(0, 0, 0) + self._attr(nodeid))
                elif opcode == OP_LOOKUP and nodeid == 1:
                    if body.rstrip(b"\0") == b"f":
                        self._reply(unique, 0, ENTRY_OUT.pack(FILE_NODE, 0, 0, 0, 0, 0) +
                                    self._attr(FILE_NODE))
                    else:
                        self._reply(unique, -errno.ENOENT)
                elif opcode == OP_OPEN and nodeid == FILE_NODE and self.passthrough:
                    bfd = os.open(self.backing, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        # A mutable buffer makes ioctl() return the call's result: the id.
                        arg = bytearray(BACKING_MAP.pack(bfd, 0, 0))
                        bid = fcntl.ioctl(self.fd, IOC_BACKING_OPEN, arg, True)
                    except OSError as e:
                        self._reply(unique, -e.errno)
                        raise
                    finally:
                        os.close(bfd)  # the kernel holds the backing file now
                    self.backing_ids.append(bid)
                    self._reply(unique, 0, OPEN_OUT.pack(bid, FOPEN_PASSTHROUGH, bid))
                elif opcode in (OP_FLUSH, OP_RELEASE) and nodeid == FILE_NODE:
                    self._reply(unique, 0)
                else:
                    self._reply(unique, -errno.ENOSYS)
        except Exception as e:  # reported by stop()
            self.error = e
            self.abort()  # nobody may wait for a reply that will never come

    def _attr(self, nodeid):
        # ino size blocks atime mtime ctime (3 nsecs) mode nlink uid gid rdev blksize flags
        if nodeid == 1:
            return ATTR.pack(1, ROOT_SIZE, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
        return ATTR.pack(FILE_NODE, self.backing_size, 0, 0, 0, 0, 0, 0, 0, 0o100644, 1, 0, 0, 0,
                         4096, 0)

    def abort(self):
        """End the connection: closing the device's last descriptor aborts it, and every
        request still waiting fails with ENOTCONN (a client in the kernel's uninterruptible
        wait for a reply, even a SIGKILLed one, would otherwise wait forever)."""
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def stop(self):
        _libc.umount2(self.mnt.encode(), MNT_DETACH)
        os.write(self.stop_w, b"x")
        self.thread.join(30)
        self.abort()
        for fd in (self.stop_r, self.stop_w):
            os.close(fd)
        if self.error:
            raise AssertionError(f"raw server failed: {self.error!r}")
