"""The pod informer against a real kube-apiserver and etcd.

Each test ends with a sentinel pod: watch events arrive in resourceVersion order, so once the
sentinel's ADDED is seen, any duplicate or stray event of the steps before it would have been
seen too -- "exactly once" is checked without sleeping.
"""

from __future__ import annotations

import asyncio

from lightkube.resources.core_v1 import Pod

from smesh.lab.controlplane import ControlPlane, write_kubeconfig
from tests.integration.kubernetes.kubekit import (
    Link,
    Recorder,
    admin,
    api_state,
    delete_now,
    informer,
    make_namespace,
    pod,
    rv,
    store_state,
    unique,
)


def test_pods_are_seen_exactly_once_each_in_order(control_plane: ControlPlane) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns, node, other = unique("ns"), unique("node"), unique("node")
        await make_namespace(client, ns)
        every = Recorder(informer(control_plane.kubeconfig, node))
        web = Recorder(informer(control_plane.kubeconfig, node, labels="tier=web"))
        every.start()
        web.start()
        try:
            for rec in (every, web):
                await rec.wait("the first list", lambda rec=rec: bool(rec.items))
            a = await client.create(pod("a", ns, node, tier="web"))
            b = await client.create(pod("b", ns, node, tier="db"))
            await client.create(pod("c", ns, other, tier="web"))  # another node: never seen
            a2 = await client.patch(Pod, "a", {"metadata": {"labels": {"v": "2"}}}, namespace=ns)
            await delete_now(client, "b", ns)
            await client.create(pod("z", ns, node, tier="web"))
            await every.wait_for("ADDED", "z")
            await web.wait_for("ADDED", "z")

            assert every.summaries() == [
                ("SYNCED", "list"),
                ("ADDED", "a"),
                ("ADDED", "b"),
                ("MODIFIED", "a"),
                # Even with gracePeriodSeconds=0 the API server first marks the pod deleted.
                ("MODIFIED", "b"),
                ("DELETED", "b"),
                ("ADDED", "z"),
            ]
            added_a, added_b, modified_a, _, deleted_b, _ = every.events()
            assert (rv(added_a.obj), rv(added_b.obj), rv(modified_a.obj)) == (rv(a), rv(b), rv(a2))
            assert deleted_b.obj.metadata is not None
            assert b.metadata is not None
            assert deleted_b.obj.metadata.uid == b.metadata.uid
            # The label selector is passed through: the db pod is never seen.
            assert web.summaries() == [
                ("SYNCED", "list"),
                ("ADDED", "a"),
                ("MODIFIED", "a"),
                ("ADDED", "z"),
            ]
            assert store_state(every.informer) == await api_state(client, node)
        finally:
            await every.stop()
            await web.stop()

    asyncio.run(scenario())


def test_watches_resume_from_the_last_version_they_saw(control_plane: ControlPlane) -> None:
    """The server ends each watch after 1 s; every new one starts where the last stopped.

    Resuming from an older version would replay events: an old state of "a" would come back
    as a MODIFIED, and the sequence below would not match.
    """

    async def scenario() -> None:
        client = admin(control_plane)
        ns, node = unique("ns"), unique("node")
        await make_namespace(client, ns)
        rec = Recorder(informer(control_plane.kubeconfig, node, watch_timeout=1))
        rec.start()
        try:
            await rec.wait_for("SYNCED", "list")
            await client.create(pod("a", ns, node))
            for version in range(3):
                watches = rec.informer.stats.watches
                await rec.wait("a new watch", lambda w=watches: rec.informer.stats.watches > w)
                await client.patch(
                    Pod, "a", {"metadata": {"labels": {"v": str(version)}}}, namespace=ns
                )
            await client.create(pod("z", ns, node))
            await rec.wait_for("ADDED", "z")
            assert rec.summaries() == [
                ("SYNCED", "list"),
                ("ADDED", "a"),
                ("MODIFIED", "a"),
                ("MODIFIED", "a"),
                ("MODIFIED", "a"),
                ("ADDED", "z"),
            ]
            assert rec.informer.stats.lists == 1
            assert store_state(rec.informer) == await api_state(client, node)
        finally:
            await rec.stop()

    asyncio.run(scenario())


def test_watch_survives_an_api_server_restart(control_plane: ControlPlane) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns, node = unique("ns"), unique("node")
        await make_namespace(client, ns)
        await client.create(pod("a", ns, node))
        await client.create(pod("b", ns, node))
        rec = Recorder(informer(control_plane.kubeconfig, node))
        rec.start()
        try:
            await rec.wait_for("SYNCED", "list")
            control_plane.stop_apiserver()
            await rec.wait("a failed reconnect", lambda: rec.informer.stats.errors > 0)
            control_plane.start_apiserver()
            client = admin(control_plane)
            # The informer is back once it sees this; whether the restarted API server could
            # resume its watch or answered 410 (its new watch cache starts at the present)
            # is up to the API server. Both are correct: a relist here adds "r" as well.
            await client.create(pod("r", ns, node))
            await rec.wait_for("ADDED", "r")
            back = len(rec.items)
            await client.patch(Pod, "a", {"metadata": {"labels": {"v": "2"}}}, namespace=ns)
            await delete_now(client, "b", ns)
            await client.create(pod("c", ns, node))
            await client.create(pod("z", ns, node))
            await rec.wait_for("ADDED", "z")
            assert [s for s in rec.summaries()[:back] if s[0] != "SYNCED"] == [
                ("ADDED", "a"),
                ("ADDED", "b"),
                ("ADDED", "r"),
            ]
            assert rec.summaries()[back:] == [
                ("MODIFIED", "a"),
                ("MODIFIED", "b"),
                ("DELETED", "b"),
                ("ADDED", "c"),
                ("ADDED", "z"),
            ]
            assert store_state(rec.informer) == await api_state(client, node)
        finally:
            await rec.stop()

    asyncio.run(scenario())


def test_relist_after_410_notices_what_changed_while_the_watch_was_down(
    control_plane: ControlPlane,
) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns, node = unique("ns"), unique("node")
        await make_namespace(client, ns)
        await client.create(pod("a", ns, node))
        await client.create(pod("b", ns, node))
        link = Link(control_plane.apiserver_port)
        await link.up()
        assert control_plane.data_dir is not None
        kubeconfig = write_kubeconfig(
            control_plane.data_dir / f"kubeconfig-{ns}",
            f"https://127.0.0.1:{link.port}",
            control_plane.pki,
        )
        rec = Recorder(informer(kubeconfig, node))
        rec.start()
        try:
            await rec.wait_for("SYNCED", "list")
            since = rec.informer.resource_version
            await link.down()
            await rec.wait("a failed reconnect", lambda: rec.informer.stats.errors > 0)
            # While the informer cannot watch: a deletion, an update and an addition...
            await delete_now(client, "b", ns)
            await client.patch(Pod, "a", {"metadata": {"labels": {"v": "2"}}}, namespace=ns)
            await client.create(pod("c", ns, node))
            # ...then etcd forgets them (compaction) and a restarted API server has no cache
            # of them: resuming from `since` can only be answered with 410 Gone.
            assert control_plane.compact() > int(since or 0)
            control_plane.stop_apiserver()
            control_plane.start_apiserver()
            client = admin(control_plane)
            await link.up()
            await rec.wait_for("SYNCED", "relist")
            await client.create(pod("z", ns, node))
            await rec.wait_for("ADDED", "z")
            assert rec.informer.stats.gone >= 1
            assert rec.summaries() == [
                ("ADDED", "a"),
                ("ADDED", "b"),
                ("SYNCED", "list"),
                ("DELETED", "b"),
                ("MODIFIED", "a"),
                ("ADDED", "c"),
                ("SYNCED", "relist"),
                ("ADDED", "z"),
            ]
            assert store_state(rec.informer) == await api_state(client, node)
        finally:
            await rec.stop()
            await link.down()

    asyncio.run(scenario())
