"""Fixtures of the worker tests that more than one file uses: the test PKI (made once per file),
a worker that runs only signed messages, and a second instance on the broker."""

from __future__ import annotations

import pytest

from testkit.pki import make_pki, start_signed_worker
from testkit.site import another_instance


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def signed_worker(repos, pki, tmp_path):
    worker = start_signed_worker(repos, pki, tmp_path)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def site_b(repos, tmp_path):
    """A second Taiga, `taiga-b`, on the same broker as `repos` (instance `taiga`)."""
    return another_instance(repos, tmp_path / "site-b", "taiga-b")
