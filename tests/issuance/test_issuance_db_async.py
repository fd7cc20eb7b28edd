"""The group execution of the API's hot statements (:class:`issuance.db_async.Coalescer`):
concurrent items share a batch, each gets its own result, no key twice in a batch, a failure
reaches every caller of its batch and no other, a cancelled caller's item is still written; with
``linger``, a batch after a batch with company waits for more items, a lone call never waits."""

from __future__ import annotations

import asyncio

import pytest

from issuance.db_async import Coalescer


class Recorder:
    """A ``write`` that remembers its batches and answers each item doubled."""

    def __init__(self, fail_on: int | None = None, wrong_count: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.wrong_count = wrong_count

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0.001)  # a round trip: new items gather meanwhile
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError(f"batch with {self.fail_on}")
        out = [2 * i for i in items]
        return out[:-1] if self.wrong_count else out


def test_concurrent_items_share_batches_and_get_their_own_results() -> None:
    write = Recorder()
    group: Coalescer[int, int] = Coalescer(write)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(group(i) for i in range(100))))

    assert asyncio.run(main()) == [2 * i for i in range(100)]
    assert sorted(i for b in write.batches for i in b) == list(range(100))  # each once
    assert len(write.batches) < 100 and group.batches == len(write.batches)
    assert group.items == 100


def test_a_later_item_joins_the_next_batch_while_one_is_written() -> None:
    write = Recorder()
    group: Coalescer[int, int] = Coalescer(write)

    async def main() -> tuple[int, int]:
        first = asyncio.ensure_future(group(1))
        await asyncio.sleep(0)  # the first batch starts with item 1 alone
        second = await asyncio.gather(group(2), group(3))
        return await first, sum(second)

    assert asyncio.run(main()) == (2, 10)
    assert write.batches == [[1], [2, 3]]


def test_no_key_twice_in_a_batch_and_max_batch_holds() -> None:
    write = Recorder()
    group: Coalescer[int, int] = Coalescer(write, max_batch=4, key=lambda i: i % 3)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(group(i) for i in range(20))))

    assert asyncio.run(main()) == [2 * i for i in range(20)]
    for batch in write.batches:
        assert len(batch) <= 4
        keys = [i % 3 for i in batch]
        assert len(keys) == len(set(keys)), batch
    assert sorted(i for b in write.batches for i in b) == list(range(20))


def test_a_failed_batch_fails_its_callers_only() -> None:
    write = Recorder(fail_on=5)
    group: Coalescer[int, int] = Coalescer(write, max_batch=3)

    async def main() -> list[object]:
        return list(await asyncio.gather(*(group(i) for i in range(9)), return_exceptions=True))

    got = asyncio.run(main())
    failed = next(b for b in write.batches if 5 in b)
    for i, result in enumerate(got):
        if i in failed:
            assert isinstance(result, ConnectionError) and "batch with 5" in str(result)
        else:
            assert result == 2 * i
    assert len(failed) == 3  # the batch of item 5, and nobody else

    async def after() -> int:
        return await group(11)

    assert asyncio.run(after()) == 22  # the next call works (a new loop, too)


def test_a_write_giving_the_wrong_number_of_results_is_an_error() -> None:
    group: Coalescer[int, int] = Coalescer(Recorder(wrong_count=True))

    async def main() -> list[object]:
        return list(await asyncio.gather(group(1), group(2), return_exceptions=True))

    got = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "gave 1 results" in str(r) for r in got)


def test_a_cancelled_caller_leaves_its_item_written() -> None:
    write = Recorder()
    group: Coalescer[int, int] = Coalescer(write)

    async def main() -> int:
        gone = asyncio.ensure_future(group(7))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await group(8)

    assert asyncio.run(main()) == 16
    assert [7] in write.batches  # written, its result dropped


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Recorder(), max_batch=0)


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_a_call_the_database_does_not_answer_in_time_is_refused_and_its_connection_dropped(
    fresh_db_url: str,
) -> None:
    """A connection whose peer went silent (a dead balancer host) must not hold a request for
    ever: the call gives up after ``call_timeout`` (503 ``service_unavailable``) and the
    connection is not handed to the next caller (its answer may still come)."""
    from issuance.db import make_engine
    from issuance.db_async import AsyncPgPool, DatabaseUnavailable, dsn_from_url

    engine = make_engine(url=fresh_db_url)
    pool = AsyncPgPool(dsn_from_url(engine.url), 1, call_timeout=0.5)
    engine.dispose()

    async def main() -> tuple[float, int]:
        await pool.open()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DatabaseUnavailable, match=r"did not answer within 0\.5 s"):
            await pool.run(lambda conn: conn.execute("SELECT pg_sleep(5)"))
        waited = loop.time() - started
        # the pool's only slot is free again, on a new connection (the old one is still busy)
        one = await pool.run(lambda conn: conn.fetchval("SELECT 1"))
        await pool.close()
        return waited, one

    waited, one = asyncio.run(main())
    assert 0.5 <= waited < 2.5
    assert one == 1
    assert DatabaseUnavailable.code == "service_unavailable"


def test_linger_gathers_calls_arriving_apart_once_calls_come_together() -> None:
    """Calls arriving in pairs about a millisecond apart: without linger a batch starts at
    once (pairs); with a 5 ms linger, once a batch had company the next ones wait and gather
    more calls."""

    async def stream(group: Coalescer[int, int]) -> list[int]:
        tasks = []
        for i in range(0, 60, 2):
            tasks += [asyncio.ensure_future(group(i)), asyncio.ensure_future(group(i + 1))]
            await asyncio.sleep(0.001)
        return list(await asyncio.gather(*tasks))

    plain_write, lingering_write = Recorder(), Recorder()
    plain: Coalescer[int, int] = Coalescer(plain_write)
    lingering: Coalescer[int, int] = Coalescer(lingering_write, linger=0.005)
    assert asyncio.run(stream(plain)) == [2 * i for i in range(60)]
    assert asyncio.run(stream(lingering)) == [2 * i for i in range(60)]
    assert plain.lingered == 0
    assert lingering.lingered > 0 and lingering.items == 60
    assert sorted(i for b in lingering_write.batches for i in b) == list(range(60))  # each once
    assert len(lingering_write.batches) < len(plain_write.batches)
    assert max(map(len, lingering_write.batches)) > max(map(len, plain_write.batches))


def test_a_lone_call_after_a_lone_call_never_lingers() -> None:
    write = Recorder()
    group: Coalescer[int, int] = Coalescer(write, linger=0.05)

    async def main() -> list[int]:
        return [await group(i) for i in range(5)]  # one at a time

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert write.batches == [[0], [1], [2], [3], [4]]
    assert group.lingered == 0


def test_after_a_batch_with_company_the_next_batch_lingers_once_then_not() -> None:
    write = Recorder()
    group: Coalescer[int, int] = Coalescer(write, linger=0.005)

    async def main() -> None:
        await asyncio.gather(group(1), group(2))  # a batch with company
        assert group.lingered == 0
        await group(3)  # waits the linger for company that does not come
        assert group.lingered == 1
        await group(4)  # after a lone batch: at once
        assert group.lingered == 1

    asyncio.run(main())
    assert write.batches == [[1, 2], [3], [4]]


def test_a_negative_linger_is_refused() -> None:
    with pytest.raises(ValueError, match="linger"):
        Coalescer(Recorder(), linger=-0.001)
