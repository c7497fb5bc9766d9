"""Fixtures of the worker tests that more than one file uses: the test PKI (made once per file)
and a worker that runs only signed messages."""

from __future__ import annotations

import pytest

from testkit.pki import make_pki, start_signed_worker


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
