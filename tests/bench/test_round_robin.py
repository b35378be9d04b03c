"""Round-robin timing: order shuffled per round with the baseline in every round, speedups as
the median of per-round ratios (a fake clock stands in for time)."""

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
