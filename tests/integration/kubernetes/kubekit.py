"""Helpers for the Kubernetes tests: an admin client, an event recorder, a cuttable link."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount

from smesh.kubernetes.backoff import Backoff
from smesh.kubernetes.client import PODS, KubeApi, Selection
from smesh.kubernetes.informer import Informer
from smesh.kubernetes.store import Event, EventType, Synced
from smesh.lab.controlplane import ControlPlane


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def admin(plane: ControlPlane) -> AsyncClient:
    return AsyncClient(config=KubeConfig.from_file(plane.kubeconfig))


async def make_namespace(client: AsyncClient, name: str) -> None:
    """A namespace with its default ServiceAccount (no controller manager creates it here)."""
    await client.create(Namespace(metadata=ObjectMeta(name=name)))
    await client.create(ServiceAccount(metadata=ObjectMeta(name="default", namespace=name)))


def pod(name: str, namespace: str, node: str, **labels: str) -> Pod:
    """A Pod bound to *node* directly: no scheduler or kubelet needed to create it."""
    return Pod(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=labels or None),
        spec=PodSpec(
            nodeName=node,
            automountServiceAccountToken=False,
            containers=[Container(name="main", image="none")],
        ),
    )


async def delete_now(client: AsyncClient, name: str, namespace: str) -> None:
    """Delete at once: a bound pod's graceful deletion would wait for a kubelet."""
    await client.delete(Pod, name, namespace=namespace, grace_period=0)


def rv(obj: Pod) -> str:
    assert obj.metadata is not None
    assert obj.metadata.resourceVersion is not None
    return obj.metadata.resourceVersion


def summary(item: Event[Pod] | Synced) -> tuple[str, str]:
    """(type, pod name), or ("SYNCED", "relist"|"list")."""
    if isinstance(item, Synced):
        return ("SYNCED", "relist" if item.relist else "list")
    return (str(item.type), item.key[1])


@dataclass
class Recorder:
    """Runs an informer in a task and keeps everything it yields."""

    informer: Informer[Pod]
    items: list[Event[Pod] | Synced] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def run() -> None:
            async for item in self.informer.events():
                self.items.append(item)

        self.task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.informer.api.aclose()

    async def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.task is not None and self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; saw {self.summaries()}")
            await asyncio.sleep(0.02)

    async def wait_for(self, kind: EventType | str, name: str, timeout: float = 60) -> None:
        await self.wait(f"{kind} {name}", lambda: (str(kind), name) in self.summaries(), timeout)

    def summaries(self) -> list[tuple[str, str]]:
        return [summary(item) for item in self.items]

    def events(self) -> list[Event[Pod]]:
        return [item for item in self.items if isinstance(item, Event)]


def informer(
    kubeconfig: Path, node: str, labels: str | None = None, watch_timeout: int | None = None
) -> Informer[Pod]:
    return Informer(
        KubeApi.from_kubeconfig(kubeconfig),
        PODS,
        Selection(field_selector=f"spec.nodeName={node}", label_selector=labels),
        backoff=Backoff(initial=0.1, cap=1.0),
        watch_timeout=(watch_timeout, watch_timeout) if watch_timeout else (300, 600),
    )


async def api_state(client: AsyncClient, node: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(namespace, name): (uid, resourceVersion)} of the node's pods, as the API lists them."""
    state = {}
    async for obj in client.list(Pod, namespace="*", fields={"spec.nodeName": node}):
        assert obj.metadata is not None
        key = (obj.metadata.namespace or "", obj.metadata.name or "")
        state[key] = (obj.metadata.uid or "", rv(obj))
    return state


def store_state(inf: Informer[Pod]) -> dict[tuple[str, str], tuple[str, str]]:
    state = {}
    for key, obj in inf.snapshot().items():
        assert obj.metadata is not None
        state[key] = (obj.metadata.uid or "", rv(obj))
    return state


class Link:
    """A TCP relay on 127.0.0.1 that the test can cut: the informer's only way to the API."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop accepting and reset every open connection: the watch drops mid-stream."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
