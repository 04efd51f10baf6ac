"""Every proxy of the bench weighs as the lab's agents do: the same nice value, and an
autogroup of its own at that nice (a proxy in the bench's session would weigh as much as
the whole session, whatever its nice value). The apps stay in the bench's session."""

from __future__ import annotations

from pathlib import Path

from smesh.bench import processes, variants
from smesh.bench.processes import Started
from smesh.lab import agents, api
from smesh.linux import cgroups
from tests.integration.labkit import Lab, LabFactory

#: Where the kernel has no autogroups (CONFIG_SCHED_AUTOGROUP off) the nice value is all.
AUTOGROUPS = agents.AUTOGROUP.exists()
AGENTS_WEIGHT = {
    "nice": agents.AGENT_NICE,
    "autogroup_nice": agents.AGENT_NICE if AUTOGROUPS else None,
    "own_autogroup": AUTOGROUPS,
}


def _tasks(pid: int) -> list[Path]:
    return list(Path(f"/proc/{pid}/task").iterdir())


def test_each_process_of_a_pair_has_the_agents_weight(lab: Lab, tmp_path: Path) -> None:
    ctx = variants.Context(lab.name, api.load(lab.name)[1], cgroups.v2_root(), tmp_path)
    pair = variants.build("haproxy")
    bench_group = processes.autogroup_of("self")  # None in the root autogroup (CI's runner)
    app = None
    try:
        pair.start(ctx)
        app = Started(lab.name, variants.CLIENT_POD, ["sleep", "60"], tmp_path / "app.log")
        pids = [
            int(pid)
            for cgroup in pair.proxy_cgroups(ctx)
            for pid in (cgroup / "cgroup.procs").read_text().split()
        ]
        assert len(pids) == 2, pids  # one haproxy per node
        groups = set()
        for pid in pids:
            assert Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy"
            for task in _tasks(pid):  # haproxy's threads too
                assert processes.stat_nice((task / "stat").read_text()) == agents.AGENT_NICE
            if AUTOGROUPS:
                found = processes.autogroup_of(pid)
                assert found is not None, pid
                assert found[1] == agents.AGENT_NICE, found
                groups.add(found[0])
        if AUTOGROUPS:
            assert bench_group is None or bench_group[0] not in groups
            assert len(groups) == 2  # a session of its own each, as each agent has
        assert processes.cgroup_weights(pair.proxy_cgroups(ctx)) == [AGENTS_WEIGHT]

        # the apps are the same for every variant: left in the bench's session and weight
        (app_weight,) = processes.weights([app.pid])
        assert not app_weight.own_autogroup
        assert processes.autogroup_of(app.pid) == bench_group
    finally:
        if app is not None:
            app.stop()
        pair.stop()


def test_the_agents_are_read_back_at_the_same_weight(lab_factory: LabFactory) -> None:
    """The other side of the comparison: smesh's proxies are the lab's agents."""
    meshed = lab_factory()
    ctx = variants.Context(meshed.name, api.load(meshed.name)[1], cgroups.v2_root(), Path())
    assert processes.cgroup_weights(variants.build("smesh").proxy_cgroups(ctx)) == [AGENTS_WEIGHT]
