"""What the kubelet-side stand-ins share: a gRPC server on a unix socket, run as a context.

The kubelet serves its APIs (Registration, PodResources) from thread-pool gRPC
servers on unix sockets; each stand-in does the same, so tests drive them from
plain synchronous code and `with` makes sure a failing test stops them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc


def serve_unix(
    socket_path: Path, add_servicers: Callable[[grpc.Server], None], *, workers: int, name: str
) -> grpc.Server:
    """A started gRPC server on `unix:<socket_path>` whose handlers run on `workers` threads."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"standin-{name}")
    )
    add_servicers(server)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    return server


class StandIn(ABC):
    """Started on `with`, stopped on leaving it, also when the test fails."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
