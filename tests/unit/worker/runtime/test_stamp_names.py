"""The names an instance is known by on a shared broker: its queue carries it, and nothing else
reads as an instance's queue - not a worker process's own queue, which is named after its node."""

from __future__ import annotations

from worker.runtime.stamp import instance_of, instance_of_node, node_name, queue


def test_an_instances_queue_names_it_and_a_pinned_queue_names_none():
    assert instance_of(queue("taiga-b")) == "taiga-b"
    pinned = f"{node_name('taiga', 'vm')}.8e6a4d52178b4860.pinned"  # worker.celery_app's per-process queue
    assert instance_of(pinned) is None
    for other in ("celery", "taiga-backup.", "taiga-backup.Taiga", "taiga-backup.a@b", "taiga-backup.a.b", None, 3):
        assert instance_of(other) is None, other


def test_two_instances_workers_on_one_host_have_two_node_names():
    assert node_name("taiga", "vm") != node_name("taiga-b", "vm")
    assert node_name("taiga-b", "vm").endswith("@vm")
    assert instance_of_node(node_name("taiga-b", "vm")) == "taiga-b"
    for other in ("celery@vm", "taiga-backup@vm", "taiga-backup-Bad@vm", "taiga-backup-a", None):
        assert instance_of_node(other) is None, other
