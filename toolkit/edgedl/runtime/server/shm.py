"""Triton's system shared memory extension: a client process on the same machine (a camera or sensor reader)
registers a POSIX shared memory object (``/dev/shm/KEY``, as ``tritonclient.utils.shared_memory`` creates
them) under a region name; infer requests then name the region, offset and size where an input's bytes are, or
where an output's bytes are to be written, instead of sending them over HTTP or gRPC.

An input in a region is not copied: the tensor handed to onnxruntime views the mapping. Before every access
the region's object is checked to still be as large as registered (a client that shrinks it would otherwise
make the server fault on the next read); the client owns the memory and its contents while it is registered.
"""

from __future__ import annotations

import mmap
import os
import re
import sys
from dataclasses import dataclass

from edgedl.runtime.server.protocol import HTTPError

SHM_ROOT = "/dev/shm"
MAX_REGIONS = 256  # registered at once: each holds a mapping and its descriptor
_KEY = re.compile(r"^/*([A-Za-z0-9_.-]{1,255})$")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SystemSharedMemory:
    """The registered regions of one server (HTTP and gRPC share them)."""

    def __init__(self, max_regions: int = MAX_REGIONS):
        self.regions: dict[str, Region] = {}
        self.max_regions = max_regions

    def register(self, name, key, offset, byte_size) -> None:
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "a shared memory region needs a non-empty name")
        if not isinstance(key, str) or not (m := _KEY.match(key)) or m.group(1) in (".", ".."):
            raise HTTPError(400, f"shared memory key {key!r} is not a POSIX shared memory name: give '/NAME' "
                                 "as the client created it (letters, digits, '_', '-', '.')")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if type(value) is not int or value < 0:
                raise HTTPError(400, f"shared memory '{field}' must be a non-negative integer, got {value!r}")
        if byte_size == 0:
            raise HTTPError(400, "shared memory 'byte_size' must be at least 1")
        if name in self.regions:
            raise HTTPError(400, f"shared memory region '{name}' already in manager; unregister it first")
        if len(self.regions) >= self.max_regions:
            raise HTTPError(400, f"{len(self.regions)} shared memory regions are registered (limit "
                                 f"{self.max_regions}); unregister some first")
        if not sys.platform.startswith("linux"):
            raise HTTPError(400, "system shared memory is served on Linux only")
        path = os.path.join(SHM_ROOT, m.group(1))
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise HTTPError(400, f"Unable to open shared memory region: '{name}' (key {key}: "
                                 f"{exc.strerror}); create it before registering it") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise HTTPError(400, f"Invalid offset + byte size for shared memory region: '{name}' "
                                     f"({offset} + {byte_size} > the {size} bytes of {key})")
            memory = mmap.mmap(fd, offset + byte_size)  # mmap keeps its own descriptor
        finally:
            os.close(fd)
        self.regions[name] = Region(name, key, offset, byte_size, memory)

    def unregister(self, name: str | None = None) -> None:
        """Unregister ``name`` (every region when None); an unknown name is not an error (as in Triton)."""
        for region in [self.regions.pop(name, None)] if name is not None else list(self.regions.values()):
            if region is None:
                continue
            self.regions.pop(region.name, None)
            try:
                region.memory.close()
            except BufferError:  # a request still views it; the mapping goes when the request is done
                pass

    def status(self, name: str | None = None) -> list[dict]:
        if name is None:
            return [r.status() for r in self.regions.values()]
        return [self._region(name).status()]

    def _region(self, name) -> Region:
        region = self.regions.get(name) if isinstance(name, str) else None
        if region is None:
            raise HTTPError(400, f"Unable to find system shared memory region: '{name}'")
        return region

    def slice(self, name, offset, byte_size) -> tuple[Region, int, int]:
        """(region, start, end) in the region's mapping for ``byte_size`` bytes at ``offset`` into the region."""
        region = self._region(name)
        if offset is None:
            offset = 0
        if type(offset) is not int or type(byte_size) is not int or offset < 0 or byte_size < 0:
            raise HTTPError(400, f"shared memory offset and byte size for region '{name}' must be non-negative "
                                 "integers")
        if offset + byte_size > region.byte_size:
            raise HTTPError(400, f"Invalid offset + byte size for shared memory region: '{name}' ({offset} + "
                                 f"{byte_size} > its {region.byte_size} registered bytes)")
        start = region.offset + offset
        if region.memory.closed or region.memory.size() < start + byte_size:
            raise HTTPError(400, f"shared memory region '{name}' ({region.key}) is now smaller than registered; "
                                 "unregister it and register it again")
        return region, start, start + byte_size

    def view(self, name, offset, byte_size) -> memoryview:
        region, start, end = self.slice(name, offset, byte_size)
        return memoryview(region.memory)[start:end]

    def write(self, name, offset, byte_size, data) -> None:
        """Copy ``data`` (bytes-like) into the region; it must fit the ``byte_size`` the request gave."""
        region, start, end = self.slice(name, offset, byte_size)
        if len(data) > end - start:
            raise HTTPError(400, f"shared memory size specified with the request ({end - start} bytes of region "
                                 f"'{name}') should be at least {len(data)} bytes to hold the results")
        region.memory[start:start + len(data)] = data

    def close(self) -> None:
        self.unregister()
