"""The few bpf(2) commands the guest tests need, through ctypes (stdlib only; x86-64).

Objects are loaded and pinned with bpftool (`bpftool prog load OBJ PIN pinmaps DIR`);
bpftool 7.1 cannot attach a raw tracepoint, so raw_tracepoint_open() does that here: the
program stays attached while the returned descriptor is open.
"""
import ctypes
import os
import struct

NR_BPF = 321  # x86-64
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_GET, MAP_GET_FD_BY_ID, RAW_TRACEPOINT_OPEN = 7, 14, 17
ATTR_SIZE = 128  # zero-filled bpf_attr; every field after the ones set must be zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]


def _bpf(cmd, fmt, *fields):
    attr = ctypes.create_string_buffer(struct.pack(fmt, *fields), ATTR_SIZE)
    ret = _libc.syscall(NR_BPF, cmd, attr, ATTR_SIZE)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return ret


def _addr(buf):
    return ctypes.addressof(buf)


def obj_get(path):
    """Descriptor of a pinned program or map."""
    p = ctypes.create_string_buffer(path.encode())
    return _bpf(OBJ_GET, "<QII", _addr(p), 0, 0)


def raw_tracepoint_open(name, prog_fd):
    """Attaches prog_fd to the raw tracepoint name; closing the result detaches it."""
    n = ctypes.create_string_buffer(name.encode())
    return _bpf(RAW_TRACEPOINT_OPEN, "<QII", _addr(n), prog_fd, 0)


def map_update(map_fd, key, value):
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    _bpf(MAP_UPDATE_ELEM, "<IIQQQ", map_fd, 0, _addr(k), _addr(v), 0)


def map_delete(map_fd, key):
    k = ctypes.create_string_buffer(key, len(key))
    _bpf(MAP_DELETE_ELEM, "<IIQ", map_fd, 0, _addr(k))


def map_fd_by_id(map_id):
    """Descriptor of the map with kernel id map_id (bpftool map show lists them)."""
    return _bpf(MAP_GET_FD_BY_ID, "<I", map_id)


def map_items(map_fd, key_size, value_size):
    """{key: value} of a hash map, as bytes."""
    items, key = {}, None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        k = ctypes.create_string_buffer(key, key_size) if key is not None else None
        try:
            _bpf(MAP_GET_NEXT_KEY, "<IIQQ", map_fd, 0, _addr(k) if k is not None else 0,
                 _addr(nxt))
        except OSError:
            return items  # ENOENT: no key after the last one
        key = nxt.raw
        kb, v = ctypes.create_string_buffer(key, key_size), ctypes.create_string_buffer(value_size)
        _bpf(MAP_LOOKUP_ELEM, "<IIQQQ", map_fd, 0, _addr(kb), _addr(v), 0)
        items[key] = v.raw
