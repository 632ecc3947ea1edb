"""RequestStream and ClosedLoop: the invariants every stream must satisfy."""

import numpy as np
import pytest

from capsim.errors import CapsimError
from traces import ClosedLoop, RequestStream


def make(arrival=(0.0, 1.0, 2.0), prompt=(1, 2, 3), output=(4, 5, 6), **kw):
    return RequestStream(np.array(arrival), np.array(prompt), np.array(output), source="t", **kw)


def test_valid_stream_converts_dtypes_and_is_read_only():
    s = make(prompt=[1.0, 2.0, 3.0])
    assert len(s) == 3
    assert s.prompt_tokens.dtype == np.int64 and s.arrival_s.dtype == np.float64
    with pytest.raises(ValueError):
        s.arrival_s[0] = 5.0
    assert s.duration_s == 2.0
    assert s.mean_rate == pytest.approx(1.0)
    assert list(s.to_frame().columns) == ["arrival_s", "prompt_tokens", "output_tokens"]


def test_stream_copies_caller_arrays():
    arrivals = np.array([0.0, 1.0])
    s = RequestStream(arrivals, np.array([1, 1]), np.array([1, 1]), source="t")
    arrivals[1] = 99.0
    assert s.arrival_s[1] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"prompt": (1, 2)}, "differ in length"),
        ({"arrival": (0.0, 2.0, 1.0)}, "not sorted: request 2"),
        ({"arrival": (-1.0, 0.0, 1.0)}, "arrival 0"),
        ({"prompt": (1, 0, 3)}, "prompt_tokens[1] is 0"),
        ({"output": (1, 2, -3)}, "output_tokens[2] is -3"),
    ],
)
def test_invalid_streams_are_rejected_with_the_position(kwargs, needle):
    with pytest.raises(CapsimError) as err:
        make(**kwargs)
    assert needle in str(err.value)


def test_closed_loop_stream_needs_zero_arrivals_and_valid_population():
    s = make(arrival=(0.0, 0.0, 0.0), closed_loop=ClosedLoop(4, 0.5))
    assert s.closed_loop.concurrency == 4
    with pytest.raises(CapsimError, match="all arrival times 0"):
        make(closed_loop=ClosedLoop(4))
    with pytest.raises(CapsimError, match="concurrency"):
        ClosedLoop(0)
    with pytest.raises(CapsimError, match="think time"):
        ClosedLoop(2, -1.0)


def test_prefix_hashes_must_match_request_count():
    s = make(prefix_block_hashes=([1, 2], [1], [3]))
    assert s.prefix_block_hashes[0].dtype == np.int64
    with pytest.raises(CapsimError, match="prefix_block_hashes has 2 entries for 3"):
        make(prefix_block_hashes=([1], [2]))


def test_empty_stream_is_valid():
    s = make(arrival=(), prompt=(), output=())
    assert len(s) == 0 and s.duration_s == 0.0
