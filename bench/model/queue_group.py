#!/usr/bin/env python3
"""Why random queue-group delivery keeps scale-out under 4x, and what redirects do.

A closed-loop simulation of the bench's scale-out scenario: 16 clients, each sending
its next request as soon as the last is answered, to K workers that compute one
request at a time for 100 ms. NATS hands each request to a random worker. Three
policies for a worker that is already computing:

- queue:     wait in line at that worker (the workers before `--redirect-backlog`);
- refuse:    answer busy at once; the caller retries after a backoff (10 ms doubling
             to 200 ms, as the gateway does for busy replies), with no queue at all;
- redirect:  answer busy at once while one request already waits there, and only to a
             caller that offered to go elsewhere; the caller asks again at once (another
             random worker), at most twice (once with two workers, never with one), and
             the last try waits in line.

Run: python3 bench/model/queue_group.py   (standard library only; about a second)
"""
import heapq
import random

MODEL_S = 0.100
ROUND_TRIP_S = 0.0003


def simulate(workers, policy, clients=16, seconds=300.0, warmup=20.0, seed=1):
    rng = random.Random(seed)
    events, sequence = [], [0]

    def at(time, kind, data):
        sequence[0] += 1
        heapq.heappush(events, (time, sequence[0], kind, data))

    held = [0] * workers  # requests at each worker, running or waiting
    free_at = [0.0] * workers
    answered, latencies = 0, []
    for client in range(clients):
        at(rng.random() * 0.001, "send", (client, 1, 0.010, None))
    while events:
        now, _, kind, data = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "send":
            client, attempt, backoff, started = data
            started = now if started is None else started
            worker = rng.randrange(workers)
            if policy == "refuse" and held[worker] >= 1:
                at(now + ROUND_TRIP_S + backoff, "send", (client, attempt + 1, min(backoff * 2, 0.2), started))
                continue
            redirects = min(2, workers - 1)
            if policy == "redirect" and held[worker] >= 2 and attempt <= redirects:
                at(now + ROUND_TRIP_S, "send", (client, attempt + 1, backoff, started))
                continue
            held[worker] += 1
            free_at[worker] = max(now, free_at[worker]) + MODEL_S
            at(free_at[worker], "done", (client, worker, started))
        else:
            client, worker, started = data
            held[worker] -= 1
            if now > warmup:
                answered += 1
                latencies.append(now - started)
            at(now + ROUND_TRIP_S, "send", (client, 1, 0.010, None))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    return answered / (seconds - warmup), p99


if __name__ == "__main__":
    print("| policy | workers | throughput (req/s) | vs 1 worker | p99 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for policy in ("queue", "refuse", "redirect"):
        one, _ = simulate(1, policy)
        for workers in (1, 2, 4):
            runs = [simulate(workers, policy, seed=seed) for seed in range(5)]
            throughput = sum(r[0] for r in runs) / len(runs)
            p99 = max(r[1] for r in runs)
            print(f"| {policy} | {workers} | {throughput:.1f} | {throughput / one:.2f}x | {p99 * 1000:.0f} |")
