"""worker/backups/dump_loader.py: when a plain dump counts as whole, however the stream is chunked."""

from __future__ import annotations

import pytest

from worker.backups.dump_loader import PlainWatch


WHOLE = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET statement_timeout = 0;\n"
         b"CREATE TABLE public.t (a text);\nCOPY public.t (a) FROM stdin;\nx\ny\n\\.\n\n"
         b"ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (a);\n\n"
         b"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n")


def watched(data: bytes, chunk: int) -> PlainWatch:
    watch = PlainWatch()
    for i in range(0, len(data), chunk):
        watch(data[i:i + chunk])
    return watch


@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_a_whole_dump_is_complete_in_any_chunking(chunk):
    watch = watched(WHOLE, chunk)
    assert watch.complete() and watch.counts == {"public.t": 2} and watch.bytes == len(WHOLE)


def test_cut_dumps_are_not():
    assert not watched(WHOLE[:WHOLE.index(b"\\.\n") + 3], 100).complete()  # cleanly after the data
    assert not watched(WHOLE[:WHOLE.index(b"y\n") + 1], 100).complete()  # mid-row
    assert not watched(WHOLE[:-40], 100).complete()  # inside the trailer
    # the trailer's text as the last row of a table, cut right after it: still inside COPY data
    fake = b"COPY public.t (a) FROM stdin;\n-- PostgreSQL database dump complete\n"
    assert not watched(fake, 100).complete()
