"""gofer9p.stats: latency buckets, Rlerror attribution, the error table's bound, quantiles."""

from __future__ import annotations

import pytest

from gofer9p import stats
from gofer9p.connection import rlerror
from gofer9p.protocol import constants as C
from gofer9p.protocol._wire import HEADER

T = C.MsgType


def _conn() -> stats.ConnStats:
    return stats.ConnStats("c", lambda: (0, 0, 0))


@pytest.mark.parametrize(
    ("dt", "bucket"),
    [(0, 0), (1023, 0), (1024, 1), (2047, 1), (2048, 2), (2**34 - 1, 24), (2**34, 25), (10**12, 25), (2**100, 25)],
)
def test_latency_bucket(monkeypatch: pytest.MonkeyPatch, dt: int, bucket: int) -> None:
    monkeypatch.setattr(stats, "_clock", lambda: 10**15 + dt)
    cs = _conn()
    cs.replied([HEADER.pack(7, T.RCLUNK, 1)], 10**15)
    rows = [b for b, row in enumerate(cs.hist) if row is not None and row[T.TCLUNK]]
    assert rows == [bucket]
    assert cs.lsum[T.TCLUNK] == dt
    assert stats.bucket_bounds()[min(bucket, stats.BUCKETS - 2)] >= min(dt, 2**34 - 1) / 1e9


def test_an_rlerror_counts_under_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "_clock", lambda: 5000)
    cs = _conn()
    cs.errk.extend([T.TWALK, T.TWALK])
    out = [rlerror(1, 2), HEADER.pack(7, T.RCLUNK, 2), rlerror(3, 2)]
    cs.replied(out, 0)
    row = cs.hist[3]
    assert row is not None
    assert (row[T.TWALK], row[T.TCLUNK], row[T.TLERROR]) == (2, 1, 0)
    assert (cs.lsum[T.TWALK], cs.lsum[T.TLERROR]) == (10000, 0)
    assert cs.errk == []


def test_the_error_table_is_bounded() -> None:
    cs = _conn()
    for e in range(stats.MAX_ERROR_KEYS + 50):
        cs.error(T.TWALK, e + 1)
    cs.error(300, 5)  # a type past the columns: "other", and errno 0 (the table is full)
    assert len(cs.errors) == stats.MAX_ERROR_KEYS + 2  # at most one errno-0 key per type more
    assert cs.errors[(T.TWALK, 0)] == 50
    reg = stats.Registry()
    reg.add(cs)
    assert reg.snapshot()["ops"]["other"]["errors"] == {"0": 1}
    cs2 = _conn()
    cs2.error(300, 5)
    reg.add(cs2)
    assert reg.snapshot()["ops"]["other"]["errors"] == {"0": 1, "EIO": 1}


def test_quantile_interpolates_in_the_bucket() -> None:
    bounds = stats.bucket_bounds()
    lat = [0] * stats.BUCKETS
    assert stats.quantile(lat, bounds, 0.5) is None
    lat[1] = 4  # all between 1.024 and 2.048 us
    assert stats.quantile(lat, bounds, 0.5) == pytest.approx(1.536e-6)
    assert stats.quantile(lat, bounds, 1.0) == pytest.approx(2.048e-6)
    lat[stats.BUCKETS - 1] = 100  # the unbounded bucket answers its lower bound
    assert stats.quantile(lat, bounds, 0.99) == bounds[-1]


def test_op_names() -> None:
    assert stats.op_name(T.TWALK) == "Twalk"
    assert stats.op_name(T.TXATTRWALK) == "Txattrwalk"
    assert stats.op_name(0) == "other"
    assert stats.op_name(99) == "type 99"
