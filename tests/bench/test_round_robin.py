"""Round-robin timing: order shuffled per round with the baseline in every round, speedups as
the median of per-round ratios (a fake clock stands in for time)."""

import pytest
import torch

from diffspeed.bench.timing import round_robin


def test_round_robin_order_and_per_round_ratios():
    now = [0.0]
    order = []
    cost = {"base": 10.0, "fast": 2.0, "slow": 20.0}
    load = [1.0]  # the machine's slowdown, drifting between rounds

    def call(name):
        def fn():
            order.append(name)
            now[0] += cost[name] * load[0]

        return fn

    calls = {name: call(name) for name in cost}
    rounds = 4

    def clock():
        # the load changes after every three timed calls, i.e. once per round
        load[0] = 1.0 + (len(order) // 3)
        return now[0]

    timed = round_robin(calls, baseline="base", device=torch.device("cpu"), warmup=1,
                        rounds=rounds, seed=3, clock=clock)  # fmt: skip
    warm, timed_order = order[:3], order[3:]
    assert warm == list(cost)  # one warm-up call each, in the given order
    per_round = [timed_order[3 * r : 3 * r + 3] for r in range(rounds)]
    assert all(sorted(r) == sorted(cost) for r in per_round)  # every row, baseline included
    assert len({tuple(r) for r in per_round}) > 1  # the order is shuffled between rounds
    # each round's ratio is taken within that round, so the drifting load cancels
    assert timed["fast"].ratios == (5.0,) * rounds and timed["fast"].speedup == 5.0
    assert timed["slow"].speedup == 0.5 and timed["base"].speedup == 1.0
    assert len(timed["slow"].runs_s) == rounds


def test_round_robin_is_deterministic_given_the_seed():
    def orders(seed):
        seen = []
        calls = {n: (lambda n=n: seen.append(n)) for n in "abcde"}
        round_robin(calls, baseline="a", device=torch.device("cpu"), warmup=0, rounds=3,
                    seed=seed)  # fmt: skip
        return seen

    assert orders(1) == orders(1) and orders(1) != orders(2)


def test_self_timed_calls_report_their_own_seconds():
    base = iter([9.0, 2.0, 2.0, 2.0])  # the warm-up call's time is not used
    fast = iter([9.0, 1.0, 0.5, 1.0])
    got = round_robin(
        {"base": lambda: next(base), "fast": lambda: next(fast)}, baseline="base",
        device=torch.device("cpu"), warmup=1, rounds=3, self_timed=True,
    )  # fmt: skip
    assert got["base"].speedup == 1.0 and got["base"].runs_s == (2.0, 2.0, 2.0)
    assert got["fast"].speedup == 2.0 and got["fast"].median_s == 1.0


def test_cpu_time_ratios_ignore_time_other_processes_hold_the_core():
    wall, cpu = [0.0], [0.0]
    cost = {"base": 10.0, "fast": 2.0}
    stolen = iter([0.0, 0.0, 30.0, 0.0, 0.0, 5.0, 9.0, 0.0])  # another process's time slices

    def call(name):
        def fn():
            cpu[0] += cost[name]
            wall[0] += cost[name] + next(stolen, 0.0)

        return fn

    got = round_robin(
        {n: call(n) for n in cost}, baseline="base", device=torch.device("cpu"), warmup=0,
        rounds=4, clock=lambda: wall[0], cpu_clock=lambda: cpu[0],
    )  # fmt: skip
    assert got["fast"].cpu_ratios == (5.0,) * 4 and got["fast"].cpu_speedup == 5.0
    assert got["fast"].cpu_spread == 0.0 and got["fast"].cpu_median_s == 2.0
    assert set(got["fast"].ratios) != {5.0}  # the wall ratios moved with the stolen time


def test_short_calls_repeat_and_spread_adds_rounds():
    now, calls = [0.0], {"base": 0, "tiny": 0}
    noise = iter([0.0, 0.0, 0.0, 0.0, 6.0, 0.0] + [0.0] * 100)  # one disturbed measurement

    def call(name, cost):
        def fn():
            calls[name] += 1
            now[0] += cost + (next(noise) if name == "tiny" else 0.0)

        return fn

    got = round_robin(
        {"base": call("base", 1.0), "tiny": call("tiny", 0.01)}, baseline="base",
        device=torch.device("cpu"), warmup=1, rounds=3, max_rounds=6, spread_limit=0.05,
        min_call_s=0.1, clock=lambda: now[0],
    )  # fmt: skip
    # tiny: 1 warm-up call, then 10 calls per measurement (0.1 s / 0.01 s)
    assert calls["tiny"] == 1 + 10 * len(got["tiny"].runs_s)
    assert calls["base"] == 1 + len(got["base"].runs_s)
    # the disturbed round spreads the ratios, so rounds were added beyond the first 3
    assert len(got["tiny"].runs_s) > 3
    assert got["tiny"].median_s == pytest.approx(0.01)
