"""Wall time per round of one federated training, in one process and on the ledger.

Both runs train the genesis model (mnist_cnn) from the same version 0
(``genesis-model.bin``), on the same IID partition of the embedded sample across 4
trainers, with the same seeds, local epochs and batch size: the in-process loop reads
the very trainer homes that ``flobc testnet init --app fl`` wrote for the cluster, and
trains with the trainers' own ``local_data`` and ``train_round``.

    python benchmarks/round_overhead.py [--rounds 8] [--epochs 1] \
        [--validation chance_bound,influence]

(a) In process: one Python process, one Keras model. Each round every trainer in turn
trains from the global weights and computes its delta; ``flobc/protocol/aggregation.fedavg``
(weighted by samples, deltas in trainer-key order as validators sum them) makes the
next global model. Nothing is signed, sent, voted on or stored.

(b) On the cluster: 4 validator and 4 trainer processes on loopback (``flobc.launch.localnet``,
``flobc.launch.cluster``; BSP, FedAvg, genesis defaults). A round is every trainer's update,
voted on by every validator, aggregated in the block that decides the last vote.

Timing: round 1 is a warm-up for both (TensorFlow's first trace; the cluster's start,
registration and imports); rounds 2..R+1 are measured. In process: ``perf_counter``
around those rounds. On the cluster: block times of the model records, version R+1's
minus version 1's, over R (the block committing version r ends round r and opens
round r+1). Block time is the proposing validator's clock; every process shares this
machine's clock.

``vote_commit_*``: for each update of the measured rounds, from the time of the block
carrying the update transaction to the time of the block whose vote decided it (the
(n - f)-th accept or the (f + 1)-th reject, counted in chain order from the blocks'
own vote transactions). It covers the validators' evaluation of the update (and of
any updates queued before it), the vote's way through the mempool and into a block;
not the commit of that last block (tens of ms, docs/benchmarks.md).

``cluster_phases_ms`` (means over measured rounds, from block times):
``to_first_update`` from the version that opens a round to the block of its first
update (trainers noticing the round, fetching and verifying the model, training),
``first_to_last_update`` (training spread over shared cores), ``last_update_to_version``
(the last update's votes; the version is aggregated in the deciding block).
``cluster_trainer_phases_ms`` splits a trainer's part (means over trainers and measured
rounds): ``to_verified_base`` from the version's block to the moment the trainer had
fetched and verified it (the mtime of its cached copy in the trainer's home: noticing
the round through a held status request, proof and weights over HTTP, verification),
``to_update_block`` from then to its update's block (training, submission, inclusion in
a block).

``--validation``: the cluster runs once per validation rule named, each on a testnet
written alike but for its ``[app.validation]``, against the one in-process loop; one
JSON line per rule, so the rules' costs compare side by side in one run.
``judge_ms_per_update_per_validator``: the wall time each validator's evaluator worker
spent judging updates during the measured rounds, over the updates it judged
(``flobc_fl_judge_seconds_total`` and ``flobc_fl_updates_judged_total`` from every
validator's /metrics), averaged over validators: the vote's own cost.

``identical_models``: rounds whose in-process model has the cluster's version hash
(training is seeded and both sum the same deltas in the same order, so they agree until
the validators reject an update the loop keeps); ``cluster_updates_not_accepted`` lists
each such update (round, trainer index) with its votes ([accept, score_milli]).

``*_cpu_s_per_round``: CPU seconds (user + system) spent during the measured rounds,
per round: for (a) this process (getrusage); for (b) by role, from /proc, each process
with its descendants (a validator's evaluator worker is its child). ``cpu_ratio`` is
the cluster's total over the loop's; unlike ``ratio`` it hardly depends on what else
runs on the machine. ``inprocess_cores_used`` (CPU over wall time of the loop) well
under 1 means the loop was starved by other work, and wall times are not to be trusted.
``others_cpu_s_per_round``: CPU the rest of the machine used per round in each window
(from /proc/stat, less this benchmark's processes); near 0 means a clean measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from flobc.config import Genesis, load_key
from flobc.consensus.messages import Block
from flobc.crypto import sha256
from flobc.launch.cluster import ClusterOptions, Trainers, init_testnet
from flobc.launch.localnet import LocalNet
from flobc.launch.testnet import GENESIS_MODEL
from flobc.ml.data import load_dataset, split
from flobc.ml.learner import Learner, learner_for
from flobc.ml.weights import decode_weights, encode_weights
from flobc.protocol.aggregation import fedavg
from flobc.protocol.settings import FLConfig
from flobc.protocol.txs import Vote, decode_tx
from flobc.trainer.config import TrainerConfig
from flobc.trainer.loop import local_data, train_round
from flobc.trainer.verify import CACHE_DIR, VerifiedModel

WARMUP_ROUNDS = 1
POLL_S = 0.1
START_TIMEOUT_S = 300.0
ROUND_TIMEOUT_S = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROLES = ("validator_nodes", "validator_evaluators", "trainers")


@dataclass(frozen=True)
class Chain:
    """What both runs read from the testnet folder."""

    genesis: Genesis
    fl: FLConfig
    configs: list[TrainerConfig]
    keys: list[bytes]
    v0: list[np.ndarray]


def load_chain(workdir: Path, epochs: int) -> Chain:
    """Genesis, its settings, the trainers' configurations and keys, and version 0."""
    genesis = Genesis.load(workdir / "genesis.toml")
    fl = FLConfig.from_genesis(genesis, workdir / "genesis.toml")
    homes = sorted(workdir.glob("trainer-*"), key=lambda p: int(p.name.split("-")[1]))
    configs = [TrainerConfig.load(home, local_epochs=epochs) for home in homes]
    keys = [load_key(c.key_path).public_key for c in configs]
    v0 = decode_weights((workdir / GENESIS_MODEL).read_bytes(), max_bytes=fl.max_blob_bytes)
    return Chain(genesis, fl, configs, keys, v0)


def accuracies(learner: Learner, models: list[list[np.ndarray]], seed: int) -> list[float]:
    """Accuracy of each model on the test split no trainer or validator uses."""
    test = split(load_dataset(), seed=seed).test
    out = []
    for weights in models:
        learner.set_weights(weights)
        out.append(round(learner.evaluate(test.x, test.y)["accuracy"], 4))
    return out


def cpu_s(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    """CPU seconds of this process so far."""
    return cpu_s(resource.getrusage(resource.RUSAGE_SELF))


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def in_process(chain: Chain, learner: Learner, total: int) -> dict[str, Any]:
    """(a): the same rounds as a plain FedAvg loop in this process."""
    order = sorted(range(len(chain.configs)), key=lambda i: chain.keys[i])
    data = [local_data(c, chain.fl.seed) for c in chain.configs]
    weights = chain.v0
    models, seconds, train_s, cpu = [], [], [], []
    busy_from = own_from = 0.0
    for r in range(1, total + 1):
        if r == WARMUP_ROUNDS + 1:
            busy_from, own_from = machine_busy_s(), own_cpu_s()
        began, began_cpu = time.perf_counter(), own_cpu_s()
        base = VerifiedModel(r - 1, b"", weights, 0)
        updates = [train_round(learner, base, data[i], chain.configs[i], r) for i in order]
        trained = time.perf_counter()
        weights = fedavg(weights, [u.delta for u in updates], [u.samples for u in updates])
        seconds.append(time.perf_counter() - began)
        train_s.append(trained - began)
        cpu.append(own_cpu_s() - began_cpu)
        models.append(weights)
    others = (machine_busy_s() - busy_from) - (own_cpu_s() - own_from)
    measured = slice(WARMUP_ROUNDS, None)
    return {"s_per_round": statistics.fmean(seconds[measured]),
            "train_s_per_round": statistics.fmean(train_s[measured]),
            "fedavg_ms_per_round": 1000 * statistics.fmean(
                s - t for s, t in zip(seconds[measured], train_s[measured], strict=True)),
            "cpu_s_per_round": statistics.fmean(cpu[measured]),
            "warmup_s": seconds[0],
            "others_cpu_s_per_round": others / (total - WARMUP_ROUNDS),
            "samples": [len(d) for d in data],
            "hashes": [sha256(encode_weights(m)).hex() for m in models],
            "accuracy": accuracies(learner, models, chain.fl.seed)}


def cpu_by_role(validators: list[int], trainers: list[int]) -> dict[str, float]:
    """CPU seconds so far of the validator processes, of their descendants (evaluator
    workers) and of the trainers with theirs, read from /proc."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2:].split()
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)

    def tree(roots: list[int]) -> float:
        total, stack = 0.0, [p for p in roots if p in stats]
        while stack:
            pid = stack.pop()
            total += stats[pid][1]
            stack += children.get(pid, [])
        return total

    nodes = sum(stats[p][1] for p in validators if p in stats)
    return {"validator_nodes": nodes, "validator_evaluators": tree(validators) - nodes,
            "trainers": tree(trainers)}


class Watcher:
    """Polls validator 0 for new versions, snapshotting CPU use when each appears."""

    def __init__(self, client: httpx.Client, url: str, net: LocalNet,
                 trainers: Trainers) -> None:
        self.client, self.url, self.net, self.trainers = client, url, net, trainers
        self.cpu_at: dict[int, dict[str, float]] = {}
        self.judged_at: dict[int, list[tuple[float, float]]] = {}

    def cpu(self) -> dict[str, float]:
        return cpu_by_role([p.pid for p in self.net.procs if p is not None],
                           [p.pid for p in self.trainers.procs if p is not None])

    def judged(self, url: str) -> tuple[float, float]:
        """(seconds spent judging, updates judged) by one validator since it started."""
        found = {}
        for family in text_string_to_metric_families(self.client.get(f"{url}/metrics").text):
            for sample in family.samples:
                if sample.name in ("flobc_fl_judge_seconds_total",
                                   "flobc_fl_updates_judged_total"):
                    found[sample.name] = sample.value
        return found["flobc_fl_judge_seconds_total"], found["flobc_fl_updates_judged_total"]

    def wait_version(self, version: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(f"{self.url}/fl/models/latest")
            if response.status_code == 200 and response.json()["version"] >= version:
                self.cpu_at[version] = {**self.cpu(), "machine": machine_busy_s(),
                                        "benchmark": own_cpu_s()}
                self.judged_at[version] = [self.judged(u) for u in self.net.urls]
                return
            for i, proc in enumerate(self.trainers.procs):
                if proc is not None and proc.poll() is not None:
                    log = (self.trainers.homes[i] / "trainer.log").read_text()[-2000:]
                    raise RuntimeError(f"trainer {i} exited ({proc.returncode}):\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no model version {version} after {timeout:g} s:\n"
                                   f"{self.net.log_tail(0)}")
            time.sleep(POLL_S)


def decisions(blocks: dict[int, Block], chain_id: str, n: int) -> dict[tuple[int, bytes], int]:
    """(round, trainer) -> height of the block whose vote decided that update."""
    f = (n - 1) // 3
    votes: dict[tuple[int, bytes], dict[bytes, bool]] = {}
    decided: dict[tuple[int, bytes], int] = {}
    for height in sorted(blocks):
        for raw in blocks[height].txs:
            tx = decode_tx(raw, chain_id)
            if not isinstance(tx, Vote):
                continue
            key = (tx.round, tx.trainer)
            if key in decided:
                continue
            cast = votes.setdefault(key, {})
            cast.setdefault(tx.signer, tx.accept)
            accepts = sum(cast.values())
            if accepts >= n - f or len(cast) - accepts >= f + 1:
                decided[key] = height
    return decided


def on_cluster(workdir: Path, chain: Chain, learner: Learner, total: int,
               epochs: int) -> dict[str, Any]:
    """(b): the same rounds through the real validators and trainers."""
    net = LocalNet.open(workdir)
    trainers = Trainers(workdir, ClusterOptions(epochs=epochs))
    url = net.urls[0]
    try:
        net.start_all()
        trainers.start_all()
        with httpx.Client(timeout=30.0) as client:
            watcher = Watcher(client, url, net, trainers)
            watcher.wait_version(WARMUP_ROUNDS, START_TIMEOUT_S)
            for v in range(WARMUP_ROUNDS + 1, total + 1):
                watcher.wait_version(v, ROUND_TIMEOUT_S)
            trainers.stop_all()
            records = [client.get(f"{url}/fl/models/{v}").json() for v in range(total + 1)]
            rounds = [client.get(f"{url}/fl/rounds/{r}").json() for r in range(1, total + 1)]
            first = min(u["height"] for r in rounds for u in r["updates"])
            blocks = {h: Block.decode(bytes.fromhex(client.get(f"{url}/blocks/{h}").json()
                                                    ["block"]))
                      for h in range(first, records[-1]["height"] + 1)}
            models = [decode_weights(client.get(f"{url}/fl/models/{v}/weights").content,
                                     max_bytes=chain.fl.max_blob_bytes)
                      for v in range(1, total + 1)]
    finally:
        trainers.stop_all()
        net.stop_all()
    for record, weights in zip(records[1:], models, strict=True):
        assert sha256(encode_weights(weights)).hex() == record["hash"], "served weights"
    measured = total - WARMUP_ROUNDS
    decided = decisions(blocks, chain.genesis.chain_id, len(chain.genesis.validators))
    latencies, phases = [], {"to_first_update": [], "first_to_last_update": [],
                             "last_update_to_version": []}
    trainer_phases: dict[str, list[int]] = {"to_verified_base": [], "to_update_block": []}
    statuses: list[str] = []
    for info in rounds[WARMUP_ROUNDS:]:
        r = info["round"]
        opened, closed = records[r - 1]["time_ms"], records[r]["time_ms"]
        update_times = sorted(blocks[u["height"]].time_ms for u in info["updates"])
        heights = {u["trainer"]: u["height"] for u in info["updates"]}
        for home, key in zip(trainers.homes, chain.keys, strict=True):
            # A trainer caches the base version the moment it has verified it.
            cached = home / CACHE_DIR / f"v{r - 1:08d}.msgpack"
            verified_ms = cached.stat().st_mtime_ns // 1_000_000
            mine = blocks[heights[key.hex()]].time_ms
            trainer_phases["to_verified_base"].append(verified_ms - opened)
            trainer_phases["to_update_block"].append(mine - verified_ms)
        phases["to_first_update"].append(update_times[0] - opened)
        phases["first_to_last_update"].append(update_times[-1] - update_times[0])
        phases["last_update_to_version"].append(closed - update_times[-1])
        for u in info["updates"]:
            statuses.append(u["status"])
            height = decided.get((r, bytes.fromhex(u["trainer"])))
            if height is not None:
                latencies.append(blocks[height].time_ms - blocks[u["height"]].time_ms)
    index = {key.hex(): i for i, key in enumerate(chain.keys)}
    rejected = [{"round": info["round"], "trainer": index[u["trainer"]],
                 "votes": [[v["accept"], v["score_milli"]] for v in u["votes"].values()]}
                for info in rounds for u in info["updates"] if u["status"] != "accepted"]
    begin, end = watcher.cpu_at[WARMUP_ROUNDS], watcher.cpu_at[total]
    judge_ms = [1000 * (s1 - s0) / (n1 - n0) for (s0, n0), (s1, n1) in
                zip(watcher.judged_at[WARMUP_ROUNDS], watcher.judged_at[total], strict=True)
                if n1 > n0]
    q = (statistics.quantiles(latencies, n=10, method="inclusive") if len(latencies) > 1
         else [latencies[0]] * 9)
    return {
        "s_per_round": (records[total]["time_ms"] - records[WARMUP_ROUNDS]["time_ms"])
        / 1000 / measured,
        "warmup_s": (records[WARMUP_ROUNDS]["time_ms"] - records[0]["time_ms"]) / 1000,
        "judge_ms_per_update_per_validator": round(statistics.fmean(judge_ms), 1),
        "vote_commit_p50_ms": statistics.median(latencies),
        "vote_commit_p90_ms": q[8],
        "vote_commit_max_ms": max(latencies),
        "updates_measured": len(statuses),
        "accepted": statuses.count("accepted"),
        "rejected": statuses.count("rejected"),
        "blocks_per_round": (records[total]["height"] - records[WARMUP_ROUNDS]["height"])
        / measured,
        "phases_ms": {k: round(statistics.fmean(v)) for k, v in phases.items()},
        "trainer_phases_ms": {k: round(statistics.fmean(v)) for k, v in trainer_phases.items()},
        "cpu_s_per_round": {role: round((end[role] - begin[role]) / measured, 2)
                            for role in ROLES},
        "others_cpu_s_per_round": ((end["machine"] - begin["machine"])
                                   - sum(end[k] - begin[k] for k in begin if k != "machine"))
        / measured,
        "not_accepted": rejected,
        "hashes": [r["hash"] for r in records[1:]],
        "accuracy": accuracies(learner, models, chain.fl.seed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8,
                        help="rounds measured, after one warm-up round")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--validation", type=lambda v: v.split(","), default=[None],
                        metavar="RULE,...", help="run the cluster once per validation rule "
                        "(default: the testnet's default rule)")
    args = parser.parse_args(argv)
    total = WARMUP_ROUNDS + args.rounds
    with tempfile.TemporaryDirectory(prefix="flobc-bench-") as tmp:
        for rule in args.validation:
            load_before = os.getloadavg()
            workdir = Path(tmp) / f"net-{rule}"
            init_testnet(workdir, ClusterOptions(validation=rule))
            chain = load_chain(workdir, args.epochs)
            learner = learner_for(chain.fl.model, chain.fl.seed)
            local = in_process(chain, learner, total)  # trainer keys order the sum
            cluster = on_cluster(workdir, chain, learner, total, args.epochs)
            report(chain, local, cluster, total, args.rounds, load_before)
    return 0


def report(chain: Chain, local: dict[str, Any], cluster: dict[str, Any], total: int,
           measured: int, load_before: tuple[float, float, float]) -> None:
    """Print one JSON line comparing the loop with one cluster run."""
    cfg = chain.configs[0]
    same = [a == b for a, b in zip(local["hashes"], cluster["hashes"], strict=True)]
    result = {
        "model": chain.fl.model, "trainers": len(chain.configs),
        "validators": len(chain.genesis.validators), "partitioner": cfg.partitioner,
        "samples_per_trainer": local["samples"],
        "local_epochs": cfg.local_epochs, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "sync": chain.fl.sync, "aggregator": chain.fl.aggregator,
        "validation": chain.fl.validation.table()["name"],
        "warmup_rounds": WARMUP_ROUNDS, "rounds_measured": measured,
        "ratio": round(cluster["s_per_round"] / local["s_per_round"], 2),
        "inprocess_s_per_round": round(local["s_per_round"], 3),
        "cluster_s_per_round": round(cluster["s_per_round"], 3),
        "cpu_ratio": round(sum(cluster["cpu_s_per_round"].values()) / local["cpu_s_per_round"],
                           2),
        "inprocess_train_s_per_round": round(local["train_s_per_round"], 3),
        "inprocess_fedavg_ms_per_round": round(local["fedavg_ms_per_round"], 1),
        "inprocess_cpu_s_per_round": round(local["cpu_s_per_round"], 2),
        "inprocess_cores_used": round(local["cpu_s_per_round"] / local["s_per_round"], 2),
        "cluster_cpu_s_per_round": cluster["cpu_s_per_round"],
        "others_cpu_s_per_round": {"inprocess": round(local["others_cpu_s_per_round"], 2),
                                   "cluster": round(cluster["others_cpu_s_per_round"], 2)},
        "inprocess_warmup_s": round(local["warmup_s"], 2),
        "cluster_warmup_s": round(cluster["warmup_s"], 2),
        "judge_ms_per_update_per_validator": cluster["judge_ms_per_update_per_validator"],
        "vote_commit_p50_ms": cluster["vote_commit_p50_ms"],
        "vote_commit_p90_ms": round(cluster["vote_commit_p90_ms"]),
        "vote_commit_max_ms": cluster["vote_commit_max_ms"],
        "updates_measured": cluster["updates_measured"],
        "updates_accepted": cluster["accepted"], "updates_rejected": cluster["rejected"],
        "cluster_updates_not_accepted": cluster["not_accepted"],
        "cluster_blocks_per_round": round(cluster["blocks_per_round"], 1),
        "cluster_phases_ms": cluster["phases_ms"],
        "cluster_trainer_phases_ms": cluster["trainer_phases_ms"],
        "inprocess_accuracy": local["accuracy"][-1],
        "cluster_accuracy": cluster["accuracy"][-1],
        "inprocess_accuracy_by_round": local["accuracy"],
        "cluster_accuracy_by_round": cluster["accuracy"],
        "identical_models": f"{sum(same)} of {total}",
        "first_differing_round": same.index(False) + 1 if not all(same) else None,
        "cpus": os.cpu_count(),
        "load_average_1m_before_after": [round(load_before[0], 2),
                                         round(os.getloadavg()[0], 2)],
        "python": sys.version.split()[0],
    }
    json.dump(result, sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
