"""Counting a process's connections to a Redis: its sockets (from /proc), as CLIENT LIST sees them."""

from __future__ import annotations

import os
from pathlib import Path

from redis.asyncio import Redis


def _ports_of(pid: int, server_port: int) -> set[int]:
    """The local ports of ``pid``'s established TCP connections to ``server_port`` on this host."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


async def connections_of(pid: int, redis: Redis, server_port: int) -> list[dict[str, str]]:
    """The entries of CLIENT LIST (of ``redis``, the server on ``server_port``) that are ``pid``'s connections."""
    ports = _ports_of(pid, server_port)
    return [c for c in await redis.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]
