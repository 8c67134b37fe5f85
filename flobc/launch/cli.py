"""The ``flobc`` command line: keys, local testnets, running a validator, checking one.

Every failure a user can cause (a bad file, an unreachable validator, data that does
not verify) ends as one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from flobc import __version__
from flobc.config import (
    ConsensusParams,
    Genesis,
    load_key,
    save_key,
)
from flobc.consensus.light import VerificationError, verify_block, verify_state
from flobc.consensus.messages import CheckpointCertificate, CommitCertificate
from flobc.crypto import PrivateKey
from flobc.errors import FlobcError, LaunchError
from flobc.launch.project import FRAMEWORKS, SETTINGS_FILE, Project, load_project, new_project
from flobc.launch.testnet import (
    DEFAULT_BASE_PORT,
    FLGenesis,
    FLOptions,
    make_fl_genesis,
    testnet_peers,
    write_fl_genesis_files,
    write_testnet,
)
from flobc.ml.data import DATASETS
from flobc.ml.models import MODELS
from flobc.ml.partition import parse_partition, partition_help
from flobc.protocol.aggregation import AGGREGATORS
from flobc.protocol.settings import ADMISSIONS
from flobc.protocol.sync import SYNC_SCHEMES
from flobc.protocol.validation import VALIDATION_RULES
from flobc.trainer.byzantine import BEHAVIOURS

HTTP_TIMEOUT_S = 10.0


def _checked_host(text: str, flag: str) -> str:
    if not text or not all(c.isascii() and (c.isalnum() or c in ".-_:") for c in text):
        raise LaunchError(f"{flag}: {text!r} is not a host name or IP address")
    return text


def validator_hosts(spec: str, validators: int) -> list[str]:
    """The hosts ``--hosts`` names: one per validator, comma-separated, or a single
    template in which ``{i}`` stands for the validator's index (``validator{i}``)."""
    if "{i}" in spec:
        hosts = [spec.replace("{i}", str(i)) for i in range(validators)]
    else:
        hosts = [h.strip() for h in spec.split(",")]
        if len(hosts) != validators:
            raise LaunchError(f"--hosts names {len(hosts)} host(s) for {validators} "
                           "validator(s); give one per validator, or a template with {i}")
    return [_checked_host(h, "--hosts") for h in hosts]


def _consensus_params(args: argparse.Namespace) -> ConsensusParams:
    """Genesis defaults, except that the window grows with a larger checkpoint interval
    (it must span two), so that ``--checkpoint-interval`` alone always works."""
    given = {f.name: getattr(args, f.name) for f in fields(ConsensusParams)
             if getattr(args, f.name) is not None}
    if "window" not in given:
        defaults = ConsensusParams()
        given["window"] = max(defaults.window,
                              2 * given.get("checkpoint_interval", defaults.checkpoint_interval),
                              given.get("max_in_flight", defaults.max_in_flight))
    return ConsensusParams(**given)


# --- talking to a validator ---------------------------------------------------------


def base_url(text: str) -> str:
    """Accept ``host:port`` as well as a full URL; return it without a trailing slash."""
    url = text if "://" in text else f"http://{text}"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise LaunchError(f"{text!r} is not a validator URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise LaunchError(f"{text!r} is not an http(s) URL of a validator")
    return url.rstrip("/")


def request(method: str, base: str, path: str, *, allow_404: bool = False,
            **kwargs: Any) -> Any:
    """Call a validator's API and return its JSON answer (None for an allowed 404)."""
    try:
        response = httpx.request(method, base + path, timeout=HTTP_TIMEOUT_S, **kwargs)
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise LaunchError(f"cannot reach validator at {base}: {reason}") from exc
    except httpx.HTTPError as exc:
        raise LaunchError(f"{base}{path}: {exc or type(exc).__name__}") from exc
    if response.status_code == 404 and allow_404:
        return None
    try:
        data = response.json()
    except ValueError as exc:
        raise LaunchError(f"{base}{path}: HTTP {response.status_code}, answer is not JSON") from exc
    if response.is_error:
        detail = data.get("detail", data) if isinstance(data, dict) else data
        raise LaunchError(f"{base}{path}: HTTP {response.status_code}: {detail}")
    return data


def _field(data: Any, name: str, what: str) -> Any:
    if not isinstance(data, dict) or name not in data:
        raise LaunchError(f"{what}: the validator's answer lacks {name!r}")
    return data[name]


def _hex_field(data: Any, name: str, what: str) -> bytes:
    value = _field(data, name, what)
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError) as exc:
        raise LaunchError(f"{what}: {name!r} in the validator's answer is not hex") from exc


def _when(time_ms: int) -> str:
    """'3.2 s ago (2025-01-01 12:00:00 UTC)' for a wall-clock millisecond stamp."""
    if not time_ms:
        return "never"
    stamp = datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{max(0.0, time.time() - time_ms / 1000):.1f} s ago ({stamp})"


# --- commands -----------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        if not args.force:
            raise LaunchError(f"{out} exists; pass --force to overwrite it")
        out.unlink()  # so the new file is created with owner-only permissions
    key = PrivateKey.generate()
    try:
        save_key(out, key)
    except OSError as exc:
        raise LaunchError(f"cannot write {out}: {exc.strerror}") from exc
    print(key.public_key.hex())
    return 0


def cmd_testnet_init(args: argparse.Namespace) -> int:
    out = Path(args.out)
    hosts = (validator_hosts(args.hosts, args.validators) if args.hosts is not None
             else [args.host] * args.validators)
    listen_host = (_checked_host(args.listen_host, "--listen-host")
                   if args.listen_host is not None else None)
    fl = _fl_genesis(args)
    configs = write_testnet(out, args.validators, chain_id=args.chain_id, host=args.host,
                            base_port=args.base_port, params=_consensus_params(args),
                            force=args.force, app=fl.app if fl else None, hosts=hosts,
                            listen_host=listen_host)
    reached = testnet_peers(hosts, args.base_port)
    print(f"wrote testnet {args.chain_id!r} with {len(configs)} validator(s) to {out}")
    for c, at in zip(configs, reached, strict=True):
        listening = f" (listening on {listen_host})" if listen_host else ""
        print(f"  {c.home}: peers at {at.peer_address}, API at http://{at.api_address}"
              f"{listening}")
    if fl is not None:
        for home in write_fl_genesis_files(out, configs, fl,
                                           api_addresses=[p.api_address for p in reached]):
            print(f"  {home}: trainer")
        print(f"  model {fl.options.model} (seed {fl.options.seed}), version 0 hash "
              f"{fl.app['model_v0_hash']}")
        print(f"  dataset {fl.options.dataset}"
              + (f" at {fl.options.dataset_file}" if fl.options.dataset_file else ""))
        if args.project is not None:
            print(f"  every node imports the project: start each with "
                  f"PYTHONPATH={load_project(args.project).folder}")
    return 0


FL_OPTIONS = ("trainers", "model", "dataset", "dataset_file", "max_blob_bytes", "partition",
              "seed", "sync", "aggregator", "validation", "admission", "round_deadline_ms")


def _fl_genesis(args: argparse.Namespace) -> FLGenesis | None:
    """The learning chain's genesis parts for ``--app fl``, else None."""
    given = {name: getattr(args, name) for name in (*FL_OPTIONS, "project")
             if getattr(args, name) is not None}
    if args.app != "fl":
        if given:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            raise LaunchError(f"{flags} only apply with --app fl")
        return None
    if "project" in given:
        given.update(_project_options(load_project(given.pop("project")), given))
    return make_fl_genesis(FLOptions(**given))


def _project_options(project: Project, given: dict[str, Any]) -> dict[str, Any]:
    """What a project's settings file sets for testnet init; the project goes on the
    import path (the model and the loader are built here, to check them)."""
    clash = [f"--{name}" for name in ("model", "dataset") if name in given]
    if clash:
        raise LaunchError(f"{', '.join(clash)} and --project: the project's {SETTINGS_FILE} "
                          "names the model and the dataset")
    project.activate()
    options: dict[str, Any] = {"model": project.model, "dataset": project.dataset,
                               "dataset_options": project.dataset_options}
    if project.trainers is not None:
        options["trainers"] = given.get("trainers", project.trainers)
    return options


def cmd_validator_start(args: argparse.Namespace) -> int:
    from flobc.validator.node import main_node

    return main_node(Path(args.home), args.log_format)


def cmd_trainer_join(args: argparse.Namespace) -> int:
    from flobc.trainer.config import TrainerConfig
    from flobc.trainer.loop import TrainerError, run_trainer

    config = TrainerConfig.load(
        args.home, model=args.model, local_epochs=args.epochs, batch_size=args.batch_size,
        behaviour=args.behaviour, behaviour_scale=args.behaviour_scale, rounds=args.rounds)
    try:
        return run_trainer(config)
    except TrainerError as exc:
        raise LaunchError(str(exc)) from exc


def cmd_status(args: argparse.Namespace) -> int:
    base = base_url(args.validator)
    status = request("GET", base, "/status")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    what = f"{base}/status"
    view = _field(status, "view", what)
    primary = _field(status, "primary", what)
    peers = _field(status, "peers_connected", what)
    view_note = " (view change in progress)" if _field(status, "in_view_change", what) else ""
    rows = [
        ("chain", _field(status, "chain_id", what)),
        ("validator", _field(status, "index", what)),
        ("height", _field(status, "height", what)),
        ("view", f"{view} (primary {primary}){view_note}"),
        ("peers", f"{len(peers)} connected: {', '.join(map(str, peers)) or 'none'}"),
        ("last commit", _when(_field(status, "last_commit_time_ms", what))),
        ("mempool", f"{_field(status, 'mempool_size', what)} txs"),
        ("checkpoint", f"{_field(status, 'stable_checkpoint', what) or 'none'} (stable)"),
        ("state root", _field(status, "state_root", what)),
    ]
    for name, value in rows:
        print(f"{name:<12} {value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    genesis = Genesis.load(args.genesis)
    base = base_url(args.validator)
    n = len(genesis.validators)
    what = f"{base}/blocks/{args.height}"
    served = request("GET", base, f"/blocks/{args.height}", allow_404=True)
    if served is None:
        raise LaunchError(f"{base} has no block at height {args.height}")
    block_bytes = _hex_field(served, "block", what)
    certificate_bytes = _hex_field(served, "certificate", what)
    block = verify_block(genesis, block_bytes, certificate_bytes, height=args.height)
    certificate = CommitCertificate.decode(certificate_bytes)
    print(f"block {block.height} verified: committed by {len(certificate.signatures)} of {n} "
          f"validators of chain {genesis.chain_id!r} in view {certificate.view}")
    stamped = f"time {_when(block.time_ms)}" if block.time_ms else "a null block (no time)"
    print(f"  hash {certificate.digest.hex()}, {len(block.txs)} txs, "
          f"proposed by validator {block.proposer}, {stamped}")
    if args.key is not None:
        _verify_key(genesis, base, args.key)
    return 0


def _verify_key(genesis: Genesis, base: str, key_hex: str) -> None:
    try:
        key = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise LaunchError(f"--key {key_hex!r} is not hex") from exc
    what = f"{base}/state/proof"
    served = request("GET", base, "/state/proof", params={"key": key.hex()}, allow_404=True)
    if served is None:
        raise LaunchError(f"{base} has no stable checkpoint yet to prove state against")
    if _field(served, "value", what) is None or _field(served, "proof", what) is None:
        raise VerificationError(
            f"{base} reports state key {key.hex()} absent; proofs cover present keys only, "
            "so absence cannot be verified")
    value = _hex_field(served, "value", what)
    proof_bytes = _hex_field(served, "proof", what)
    checkpoint_bytes = _hex_field(_field(served, "checkpoint", what), "certificate",
                                  f"{what} checkpoint")
    height = verify_state(genesis, checkpoint_bytes, key, value, proof_bytes)
    checkpoint = CheckpointCertificate.decode(checkpoint_bytes)
    print(f"state key {key.hex()} = {value.hex()} ({_printable(value)}): "
          f"verified at checkpoint {height}, state root "
          f"{checkpoint.state_root.hex()} signed by {len(checkpoint.signatures)} of "
          f"{len(genesis.validators)} validators")


def _printable(value: bytes) -> str:
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return f"{len(value)} bytes"
    return repr(text) if text.isprintable() else f"{len(value)} bytes"


def cmd_tx_send(args: argparse.Namespace) -> int:
    from flobc.consensus.kvstore import KV_PREFIX, make_tx

    k, sep, v = args.set.partition("=")
    if not sep or not k:
        raise LaunchError(f"--set expects KEY=VALUE, got {args.set!r}")
    base = base_url(args.validator)
    key = load_key(args.key)
    nonce = args.nonce if args.nonce is not None else time.time_ns()
    tx = make_tx(key, nonce, k.encode(), v.encode())
    answer = request("POST", base, "/txs", content=tx,
                     headers={"content-type": "application/octet-stream"})
    tx_hash = _field(answer, "tx_hash", f"{base}/txs")
    print(f"accepted tx {tx_hash} (nonce {nonce}); state key {(KV_PREFIX + k.encode()).hex()}")
    if args.wait:
        found = _wait_committed(tx, tx_hash, base, [base_url(u) for u in args.also or []],
                                args.wait)
        result = _field(found, "result", f"/txs/{tx_hash}")
        print(f"committed at height {found.get('height')}, index {found.get('index')}: "
              f"{'ok' if result is None else result}")
    return 0


def _tx_status(base: str, tx_hash: str) -> dict[str, Any] | None:
    """What ``base`` says of ``tx_hash``; None if it does not know it or cannot answer."""
    try:
        found = request("GET", base, f"/txs/{tx_hash}", allow_404=True)
    except LaunchError:
        return None
    return found if isinstance(found, dict) else None


def _wait_committed(tx: bytes, tx_hash: str, holder: str, others: list[str],
                    wait_s: float) -> dict[str, Any]:
    """Wait for ``tx`` to commit; when the validator holding it loses it (or goes away)
    and no other one has it for RESUBMIT_AFTER_S, send the same bytes to the next one."""
    from flobc.trainer.resubmit import RESUBMIT_AFTER_S

    deadline = time.monotonic() + wait_s
    lost_since: float | None = None
    while True:
        seen = [_tx_status(holder, tx_hash)]
        if seen[0] is None or seen[0].get("status") != "pending":
            seen += [_tx_status(u, tx_hash) for u in others if u != holder]
        states = [f.get("status") for f in seen if f is not None]
        if "committed" in states:
            return next(f for f in seen if f is not None and f.get("status") == "committed")
        if "pending" in states:
            lost_since = None
        elif lost_since is None:
            lost_since = time.monotonic()
        elif time.monotonic() - lost_since >= RESUBMIT_AFTER_S:
            holder = _resubmit_tx(tx, tx_hash, holder, others)
            lost_since = None
        if time.monotonic() > deadline:
            raise LaunchError(f"tx {tx_hash} not committed within {wait_s:g} s")
        time.sleep(0.1)


def _resubmit_tx(tx: bytes, tx_hash: str, lost_by: str, others: list[str]) -> str:
    """POST the same signed ``tx`` to the first other validator that takes it."""
    for url in others:
        if url == lost_by:
            continue
        try:
            request("POST", url, "/txs", content=tx,
                    headers={"content-type": "application/octet-stream"})
        except LaunchError as exc:
            print(f"resubmitting tx {tx_hash} to {url} failed: {exc}", file=sys.stderr)
            continue
        print(f"tx {tx_hash} unknown to {lost_by} and committed nowhere: resubmitted the "
              f"same signed tx to {url}")
        return url
    return lost_by


def cmd_demo(args: argparse.Namespace) -> int:
    from flobc.launch.demo import run_demo

    return run_demo(validators=args.validators, seconds=args.seconds, rate=args.rate,
                    keep=args.keep)


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from flobc.launch.cluster import ClusterOptions, run_cluster

    behaviours = dict(args.byzantine or [])
    project = None if args.project is None else load_project(args.project)
    counts = {}  # a flag wins over the project's settings, which win over the defaults
    for name in ("trainers", "rounds", "epochs"):
        value = getattr(args, name)
        if value is None and project is not None:
            value = getattr(project, name)
        if value is not None:
            counts[name] = value
    return run_cluster(ClusterOptions(
        validators=args.validators, history=args.history, sync=args.sync,
        aggregator=args.aggregator, validation=args.validation,
        round_deadline_ms=args.round_deadline_ms, behaviours=behaviours,
        workdir=args.keep, model=args.model, dataset=args.dataset,
        dataset_file=args.dataset_file, max_blob_bytes=args.max_blob_bytes,
        partition=args.partition, project=project, **counts))


def cmd_new(args: argparse.Namespace) -> int:
    written = new_project(args.name, args.framework)
    print(f"wrote a {args.framework} project to {args.name}:")
    for path in written:
        print(f"  {path}")
    print(f"run it on a local cluster: flobc cluster up --project {args.name}")
    return 0


def _list(text: str) -> list[str]:
    """A comma-separated list of names; empty items are an error."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item")
    return items


def _int_list(text: str) -> list[int]:
    return [_nonnegative_int(item) for item in _list(text)]


def cmd_experiment(args: argparse.Namespace) -> int:
    from flobc.launch.experiment import make_grid, run_experiment

    grid = make_grid(args.grid, model=args.model, trainers=args.trainers, rounds=args.rounds,
                     seed=args.seed, sync=args.sync, epochs=args.epochs,
                     partitions=args.partitions, attacks=args.attacks,
                     attackers=args.attackers, defences=args.defences)
    run_experiment(grid, docs=args.docs, name=args.name, keep=args.keep,
                   command=_experiment_command(args))
    return 0


def _experiment_command(args: argparse.Namespace) -> str:
    """The command line that runs this grid again (the flags given, in a fixed order)."""
    words = ["flobc", "experiment"]
    for name in ("grid", "model", "trainers", "rounds", "seed", "sync", "epochs",
                 "partitions", "attacks", "attackers", "defences", "docs", "name"):
        value = getattr(args, name)
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            words += [f"--{name}", text]
    return " ".join(words)


def cmd_model_pull(args: argparse.Namespace) -> int:
    from flobc.launch.model_pull import pull_model

    urls = [base_url(u) for u in args.validator]
    pulled = pull_model(Path(args.genesis), urls, args.version, Path(args.out))
    print(f"model version {pulled.version} verified against {args.genesis}: SHA-256 "
          f"{pulled.hash.hex()}, certified at checkpoint {pulled.checkpoint}")
    print(f"wrote {pulled.path} ({pulled.model})")
    return 0


# --- parser -------------------------------------------------------------------------


T = TypeVar("T", int, float)


def _parsed(text: str, kind: type[T], what: str) -> T:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _positive_int(text: str) -> int:
    value = _parsed(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _partition(text: str) -> str:
    """``NAME[:VALUE]``, checked against the partitioner registry and kept as written."""
    try:
        parse_partition(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_float(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _byzantine(text: str) -> tuple[int, str]:
    """``INDEX:NAME``: a trainer index and a registered behaviour."""
    index, sep, name = text.partition(":")
    if not sep or not index.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not INDEX:BEHAVIOUR, e.g. 3:sign_flip")
    if name not in BEHAVIOURS:
        raise argparse.ArgumentTypeError(f"unknown behaviour {name!r} in {text!r}; known: "
                                         f"{', '.join(BEHAVIOURS)}")
    return int(index), name


def _behaviour_scale_help() -> str:
    return "; ".join(f"{name}: {kind.scale_help} (default {kind.default_scale:g})"
                     for name in BEHAVIOURS if (kind := BEHAVIOURS.get(name)).scale_help)


def _nonnegative_int(text: str) -> int:
    value = _parsed(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _model_version(text: str) -> int | None:
    """A version number, or None for ``latest``."""
    if text == "latest":
        return None
    try:
        return _nonnegative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a version number nor 'latest'") from None


def _add_fl_options(group: argparse._ArgumentGroup) -> None:
    defaults = FLOptions()
    group.add_argument("--trainers", type=_positive_int, metavar="N",
                       help=f"trainer homes to write (default: {defaults.trainers})")
    _add_model_options(group)
    group.add_argument("--seed", type=_nonnegative_int, metavar="S",
                       help="seed of version 0 and of the data split "
                       f"(default: {defaults.seed})")
    group.add_argument("--sync", choices=SYNC_SCHEMES.names(),
                       help=f"sync scheme (default: {defaults.sync})")
    group.add_argument("--aggregator", choices=AGGREGATORS.names(),
                       help=f"aggregation rule (default: {defaults.aggregator})")
    group.add_argument("--validation", choices=VALIDATION_RULES.names(),
                       help="the validators' rule for votes, with its default settings "
                       f"(default: {defaults.validation})")
    group.add_argument("--admission", choices=ADMISSIONS,
                       help="allowlist (the trainers written here) or open "
                       f"(default: {defaults.admission})")
    group.add_argument("--round-deadline-ms", type=_positive_int, metavar="MS",
                       help="block time a round may stay open "
                       f"(default: {defaults.round_deadline_ms})")


def _add_model_options(group: argparse._ActionsContainer) -> None:
    """The model and dataset a learning chain's genesis names."""
    defaults = FLOptions()
    group.add_argument("--model", metavar="NAME",
                       help=f"a model of the zoo ({', '.join(sorted(MODELS))}) or a builder "
                       "package.module:function that every node can import "
                       f"(default: {defaults.model})")
    group.add_argument("--dataset", choices=DATASETS.names(),
                       help="the dataset every trainer and validator splits alike; file: an "
                       f".npz with x and y, csv: a table (default: {defaults.dataset})")
    group.add_argument("--dataset-file", metavar="FILE",
                       help="the file of --dataset file or csv, written into every node's "
                       "config as an absolute path")
    group.add_argument("--max-blob-bytes", type=_positive_int, metavar="N",
                       help="the largest update blob the chain accepts; the model's weights "
                       f"must fit (default: {defaults.max_blob_bytes})")
    group.add_argument("--partition", type=_partition, metavar="NAME[:VALUE]",
                       help="how the dataset is split among the trainers: "
                       f"{partition_help()} (default: {defaults.partition})")
    group.add_argument("--project", metavar="DIR",
                       help=f"a project folder (flobc new): its {SETTINGS_FILE} names the "
                       "model and the dataset (and the trainers), and the folder goes on "
                       "every node's import path; --dataset-file still gives a file "
                       "dataset's file")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; README examples are checked against it."""
    parser = argparse.ArgumentParser(
        prog="flobc", description="Blockchain-backed federated learning over a PBFT ledger.")
    parser.add_argument("--version", action="version", version=f"flobc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="manage Ed25519 keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND")
    gen = keys.add_parser("generate", help="write a new key file (owner-only permissions) "
                          "and print its public key")
    gen.add_argument("--out", required=True, metavar="FILE", help="key file to write")
    gen.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    gen.set_defaults(func=cmd_keys_generate)

    testnet = commands.add_parser("testnet", help="local test networks").add_subparsers(
        dest="testnet_command", required=True, metavar="COMMAND")
    init = testnet.add_parser(
        "init", help="write keys, a genesis and one home folder per validator",
        description="Write DIR/genesis.toml and DIR/validator-i/{config.toml, genesis.toml, "
        "validator_key.json} for each validator i. Validator i listens for peers on "
        "HOST:BASE_PORT+2i and serves its HTTP API on HOST:BASE_PORT+2i+1.")
    init.add_argument("--validators", type=int, required=True, metavar="N",
                      help="number of validators (n = 3f+1 tolerates f faults)")
    init.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    init.add_argument("--chain-id", default="flobc-testnet", help="default: %(default)s")
    where = init.add_mutually_exclusive_group()
    where.add_argument("--host", default="127.0.0.1", help="address validators listen on "
                       "and reach each other at (default: %(default)s)")
    where.add_argument("--hosts", metavar="H0,H1,...", help="the address each validator is "
                       "reached at by its peers and trainers, one per validator, or one "
                       "template where {i} stands for the index, e.g. validator{i} (hosts "
                       "of their own, as containers)")
    init.add_argument("--listen-host", metavar="ADDR", help="address every validator "
                      "listens on, e.g. 0.0.0.0 (default: the address it is reached at)")
    init.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                      help="first port (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="write into a non-empty DIR, "
                      "replacing its genesis files and every validator-* and trainer-* folder")
    init.add_argument("--app", choices=("kv", "fl"), default="kv",
                      help="the application: kv (a key-value store) or fl (federated "
                      "learning; also writes genesis-model.bin and DIR/trainer-i homes) "
                      "(default: %(default)s)")
    _add_fl_options(init.add_argument_group(
        "federated learning (with --app fl; genesis [app] table)"))
    params = init.add_argument_group("consensus parameters (genesis [consensus] table)")
    defaults = ConsensusParams()
    for f in fields(ConsensusParams):
        default = ("max(64, 2 x checkpoint interval)" if f.name == "window"
                   else getattr(defaults, f.name))
        params.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=int,
                            metavar="N", help=f"default: {default}")
    init.set_defaults(func=cmd_testnet_init)

    validator = commands.add_parser("validator", help="run a validator").add_subparsers(
        dest="validator_command", required=True, metavar="COMMAND")
    start = validator.add_parser("start", help="run one PBFT validator until interrupted")
    start.add_argument("--home", required=True, metavar="DIR",
                       help="validator home folder (as written by testnet init)")
    start.add_argument("--log-format", choices=("text", "json"),
                       help="log lines on stderr as human-readable text or as one JSON object "
                            "per line (default: log_format in the home's config.toml)")
    start.set_defaults(func=cmd_validator_start)

    trainer = commands.add_parser("trainer", help="run a trainer").add_subparsers(
        dest="trainer_command", required=True, metavar="COMMAND")
    join = trainer.add_parser(
        "join", help="train on local data and submit updates every round until interrupted",
        description="Register with the chain (once), then each round: fetch the latest "
        "model, verify its certificate against genesis, train on this trainer's data "
        "partition and submit the signed update. Settings come from DIR/trainer.toml; "
        "the flags override them.")
    join.add_argument("--home", required=True, metavar="DIR",
                      help="trainer home folder (as written by testnet init --app fl)")
    join.add_argument("--model", metavar="NAME",
                      help="the model you expect; an error unless it is genesis's model")
    join.add_argument("--epochs", type=_positive_int, metavar="N",
                      help="local epochs per round (default: local_epochs in trainer.toml)")
    join.add_argument("--batch-size", type=_positive_int, metavar="N",
                      help="default: batch_size in trainer.toml")
    join.add_argument("--behaviour", choices=BEHAVIOURS.names(),
                      help="a Byzantine behaviour, for experiments (default: honest)")
    join.add_argument("--behaviour-scale", type=_positive_float, metavar="X",
                      help=_behaviour_scale_help())
    join.add_argument("--rounds", type=_positive_int, metavar="N",
                      help="leave after submitting updates in N rounds (default: never)")
    join.set_defaults(func=cmd_trainer_join)

    status = commands.add_parser("status", help="show a validator's consensus status")
    status.add_argument("--validator", required=True, metavar="URL",
                        help="validator API, e.g. http://127.0.0.1:26601")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=cmd_status)

    verify = commands.add_parser(
        "verify", help="verify a block (and a state value) against the genesis keys only",
        description="Light verification: trusts only GENESIS. Checks that a quorum of its "
        "validators signed block HEIGHT; with --key, also checks the value of that state "
        "key against the latest stable checkpoint's certified state root.")
    verify.add_argument("--genesis", required=True, metavar="FILE", help="genesis.toml")
    verify.add_argument("--validator", required=True, metavar="URL", help="validator API")
    verify.add_argument("--height", type=_positive_int, required=True,
                        help="block height to verify")
    verify.add_argument("--key", metavar="HEX", help="state key to verify, in hex")
    verify.set_defaults(func=cmd_verify)

    tx = commands.add_parser("tx", help="submit transactions").add_subparsers(
        dest="tx_command", required=True, metavar="COMMAND")
    send = tx.add_parser("send", help="sign and submit a key-value transaction")
    send.add_argument("--validator", required=True, metavar="URL", help="validator API")
    send.add_argument("--key", required=True, metavar="FILE", help="signer's key file")
    send.add_argument("--set", required=True, metavar="K=V", help="key and value to write")
    send.add_argument("--nonce", type=int, help="default: the current time in nanoseconds")
    send.add_argument("--wait", type=_positive_float, metavar="SECONDS",
                      help="wait up to SECONDS for the transaction to be committed")
    send.add_argument("--also", action="append", metavar="URL",
                      help="with --wait: another validator to resubmit the same "
                           "transaction to if --validator loses it (repeatable)")
    send.set_defaults(func=cmd_tx_send)

    demo = commands.add_parser(
        "demo", help="run a local testnet under signed transaction load for a while",
        description="Start a testnet of validator processes in a temporary folder, drive "
        "signed key-value transactions at them, print height, committed tx/s and view "
        "every second, then stop them all (also on Ctrl-C).")
    demo.add_argument("--validators", type=_positive_int, default=4,
                      help="default: %(default)s")
    demo.add_argument("--seconds", type=_positive_float, default=20.0,
                      help="how long to drive load (default: %(default)s)")
    demo.add_argument("--rate", type=_positive_float, default=500.0,
                      help="transactions per second to submit (default: %(default)s)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary testnet folder and the validators' logs")
    demo.set_defaults(func=cmd_demo)

    cluster = commands.add_parser("cluster", help="run a whole local learning cluster"
                                  ).add_subparsers(dest="cluster_command", required=True,
                                                   metavar="COMMAND")
    up = cluster.add_parser(
        "up", help="validators and trainers on loopback, with a live table of rounds",
        description="Write a learning testnet, start its validators and trainers as "
        "processes on loopback (by default on the embedded MNIST sample: no network "
        "needed), and print one row per committed round: updates accepted and rejected, "
        "accuracy on the test "
        "split no trainer or validator uses, round time, height and model hash. Stops "
        "on Ctrl-C or after --rounds.")
    up.add_argument("--validators", type=_positive_int, default=4, help="default: %(default)s")
    up.add_argument("--trainers", type=_positive_int,
                    help="default: the project's, else 4")
    up.add_argument("--rounds", type=_positive_int,
                    help="stop after this many rounds (default: the project's, else never)")
    up.add_argument("--history", type=Path, metavar="FILE",
                    help="write the rounds to FILE as JSON as they commit")
    up.add_argument("--sync", choices=SYNC_SCHEMES.names(), default="bsp")
    up.add_argument("--aggregator", choices=AGGREGATORS.names(), default="fedavg",
                    help="aggregation rule (default: %(default)s)")
    up.add_argument("--validation", choices=VALIDATION_RULES.names(),
                    help="the validators' rule for votes, with its default settings "
                    f"(default: {FLOptions().validation})")
    up.add_argument("--round-deadline-ms", type=_positive_int, default=60_000,
                    help="block time after which a round closes without the missing "
                    "updates (default: %(default)s)")
    up.add_argument("--epochs", type=_positive_int,
                    help="local epochs per round (default: the project's, else 1)")
    up.add_argument("--byzantine", action="append", type=_byzantine, metavar="INDEX:BEHAVIOUR",
                    help="make trainer INDEX misbehave "
                    f"({', '.join(n for n in BEHAVIOURS if n != 'honest')}); repeatable")
    _add_model_options(up)
    up.add_argument("--keep", type=Path, metavar="DIR",
                    help="write the testnet to DIR and keep it (default: a temporary folder)")
    up.set_defaults(func=cmd_cluster_up)

    new = commands.add_parser(
        "new", help="write a project folder: a model, a data loader and their settings",
        description="Write folder NAME with a model builder (NAME/<package>/model.py), a "
        f"data loader (data.py) and a settings file ({SETTINGS_FILE}), ready to run "
        "offline with flobc cluster up --project NAME; the package is NAME in lower case "
        "with - as _.")
    new.add_argument("name", metavar="NAME", help="the folder to write (new or empty)")
    new.add_argument("--framework", choices=FRAMEWORKS, default="keras",
                     help="the model's framework (default: %(default)s)")
    new.set_defaults(func=cmd_new)

    _add_experiment(commands)

    model = commands.add_parser("model", help="committed model versions").add_subparsers(
        dest="model_command", required=True, metavar="COMMAND")
    pull = model.add_parser(
        "pull", help="fetch a committed model version, verify it and save it as a model file",
        description="Fetch model version V's weights from a validator, check its checkpoint "
        "certificate and Merkle proof against the keys in GENESIS and the weights' SHA-256 "
        "against the proven record (always; nothing a validator says is believed), then "
        "build the model genesis names, give it the weights and save it in its framework's "
        "format: a .keras file for keras.models.load_model, or for a PyTorch model a .pt "
        "file of its builder's name and state_dict for torch.load. A validator that fails "
        "or serves something that does not verify is skipped for the next --validator.")
    pull.add_argument("--validator", action="append", required=True, metavar="URL",
                      help="validator API; repeat it to fail over to others")
    pull.add_argument("--genesis", required=True, metavar="FILE",
                      help="the chain's genesis.toml (genesis-model.bin beside it is used "
                      "for version 0 when present)")
    pull.add_argument("--version", type=_model_version, default=None, metavar="V|latest",
                      help="model version (default: the latest a validator reports)")
    pull.add_argument("--out", required=True, metavar="FILE",
                      help="model file to write: FILE.keras, or FILE.pt for a PyTorch model")
    pull.add_argument("--verify", action="store_true",
                      help="verification is always on; the flag is accepted for scripts "
                      "that spell it out")
    pull.set_defaults(func=cmd_model_pull)
    return parser


def _add_experiment(commands: argparse._SubParsersAction) -> None:
    from flobc.launch.experiment.grid import DEFAULT_VOTE, NO_VOTE, Grid

    defaults = Grid()
    attacks = ", ".join(n for n in BEHAVIOURS if n != "honest")
    experiment = commands.add_parser(
        "experiment", help="federated training under a grid of partitions, attacks and "
        "defences, in one process, with the chain's own rules",
        description="Run every cell of a grid (partitions x attacks x attacker counts x "
        "defences) in this process: a ledger and the learning application executing blocks "
        "of signed transactions, trainers training on their own partitions with their "
        "registered behaviours, four validators voting with the genesis validation rule "
        "on their own hold-out shards. Prints JSON (one record per cell: updates accepted, "
        "rejected, left out and refused, honest and attacker; trust at the end; test "
        "accuracy and loss per round); with --docs, also a markdown table and PNG plots. "
        "Flags override the grid file.")
    experiment.add_argument("--grid", type=Path, metavar="FILE",
                            help="a TOML grid file (see benchmarks/grids/)")
    experiment.add_argument("--model", choices=sorted(MODELS),
                            help=f"default: {defaults.model}")
    experiment.add_argument("--trainers", type=_positive_int, metavar="N",
                            help=f"default: {defaults.trainers}")
    experiment.add_argument("--rounds", type=_positive_int, metavar="N",
                            help=f"default: {defaults.rounds}")
    experiment.add_argument("--seed", type=_nonnegative_int, metavar="S",
                            help=f"default: {defaults.seed}")
    experiment.add_argument("--sync", choices=SYNC_SCHEMES.names(),
                            help=f"default: {defaults.sync}")
    experiment.add_argument("--epochs", type=_positive_int, metavar="N",
                            help=f"local epochs per round (default: {defaults.epochs})")
    experiment.add_argument("--partitions", type=_list, metavar="P,...",
                            help=f"partitions, NAME[:VALUE] each: {partition_help()} "
                            "(default: iid)")
    experiment.add_argument("--attacks", type=_list, metavar="A,...",
                            help=f"attacks, NAME[:SCALE] each: none (the clean run), {attacks}"
                            " (default: none)")
    experiment.add_argument("--attackers", type=_int_list, metavar="K,...",
                            help="how many of the trainers (the last K) attack "
                            f"(default: {','.join(map(str, defaults.attackers))})")
    experiment.add_argument("--defences", type=_list, metavar="D,...",
                            help="defences, VOTE[+AGGREGATOR] each: the vote is none "
                            "(every validator accepts: plain aggregation) or "
                            f"{', '.join(VALIDATION_RULES)}; the aggregator one of "
                            f"{', '.join(AGGREGATORS)} (default: fedavg). "
                            f"Default: {NO_VOTE},{DEFAULT_VOTE}")
    experiment.add_argument("--docs", type=Path, metavar="DIR",
                            help="write DIR/NAME.md (a results table) and DIR/NAME/*.png")
    experiment.add_argument("--name", default="experiment",
                            help="name of the results page (default: %(default)s)")
    experiment.add_argument("--keep", type=Path, metavar="DIR",
                            help="keep every cell's ledger in DIR/cell-N")
    experiment.set_defaults(func=cmd_experiment)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line to stderr and return 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("flobc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``flobc status --json | head``): not an error
        # worth a message, but Python must not complain again when flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except FlobcError as exc:
        print(f"flobc: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"flobc: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
