"""Hostile input to a running validator, over HTTP and over the peer port.

Three validators of four run as real processes (``flobc validator start``); the test
holds the fourth validator's key, so it can also speak on the peer port as an
authenticated but misbehaving validator. Every bad request must get a 4xx naming the
problem, and leave every validator's height and state root exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cluster import Cluster

from flobc import codec
from flobc.config import Genesis, NodeConfig, load_key, split_address
from flobc.consensus.kvstore import make_tx
from flobc.consensus.messages import Prepare, encode_message
from flobc.crypto import PrivateKey
from flobc.storage.ledger import Ledger

RUNNING = [0, 1, 2]
CHECKPOINT_INTERVAL = 2
MAX_TX_BYTES = 8192
MAX_REQUEST_BYTES = 1024 * 1024
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    net = tmp_path_factory.mktemp("api") / "net"
    with Cluster.create(net, validators=4, checkpoint_interval=CHECKPOINT_INTERVAL,
                        empty_block_interval_ms=50, max_tx_bytes=MAX_TX_BYTES) as cluster:
        for i in RUNNING:
            cluster.start(i, wait=False)
        cluster.wait_serving(RUNNING)
        cluster.wait_connected(RUNNING)
        cluster.wait_committed(cluster.submit_kv({"seed": "value"}))
        yield cluster


@pytest.fixture
def client(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.validators[0].url, timeout=TIMEOUT_S) as client:
        yield client


def settled(cluster: Cluster) -> dict[int, tuple[int, str]]:
    """Wait until the running validators agree at a checkpoint height with empty mempools.

    With nothing to propose the primary stops at a checkpoint height, so from then on
    height and state root change only if a transaction gets in.
    """
    def idle() -> dict[int, tuple[int, str]] | None:
        sts = cluster.statuses(RUNNING)
        points = {i: (st["height"], st["state_root"]) for i, st in sts.items()}
        if (len(set(points.values())) == 1 and points[0][0] % CHECKPOINT_INTERVAL == 0
                and all(st["mempool_size"] == 0 for st in sts.values())):
            return points
        return None
    return cluster.wait_until(idle, "validators to settle at a checkpoint height")


@contextlib.contextmanager
def nothing_changes(cluster: Cluster) -> Iterator[None]:
    """Assert that what runs inside admits nothing: heights, roots and mempools stay put."""
    before = settled(cluster)
    yield
    sts = cluster.statuses(RUNNING)
    assert {i: (st["height"], st["state_root"]) for i, st in sts.items()} == before
    assert [st["mempool_size"] for st in sts.values()] == [0] * len(RUNNING)


def api_address(cluster: Cluster, index: int = 0) -> tuple[str, int]:
    return split_address(cluster.validators[index].url.removeprefix("http://"))


def raw_http(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw request bytes; return the status and JSON body of the response."""
    with socket.create_connection(address, timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside the response body"
            body += chunk
        return int(lines[0].split()[1]), json.loads(body)


def assert_refused(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"], response.json()


# --- HTTP: submitting transactions ----------------------------------------------------


@pytest.mark.parametrize(("path", "limit"), [("/txs", MAX_TX_BYTES),
                                             ("/txs/batch", MAX_REQUEST_BYTES)])
def test_oversized_body_with_content_length_is_refused_before_it_is_sent(
        cluster: Cluster, path: str, limit: int) -> None:
    with nothing_changes(cluster):
        status, body = raw_http(api_address(cluster), (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: 1000000000\r\n\r\n").encode())
        assert status == 413
        assert body["detail"] == f"body of 1000000000 bytes exceeds the limit of {limit} bytes"


def test_oversized_body_just_over_the_limit_is_refused(client: httpx.Client,
                                                       cluster: Cluster) -> None:
    with nothing_changes(cluster):
        assert_refused(client.post("/txs", content=b"x" * (MAX_TX_BYTES + 1)), 413,
                       f"body of {MAX_TX_BYTES + 1} bytes exceeds the limit of {MAX_TX_BYTES}")


def test_chunked_body_is_cut_off_at_the_limit(cluster: Cluster) -> None:
    """No Content-Length: the server answers 413 before the body even ends."""
    chunk = b"y" * 1024
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                      for _ in range(MAX_TX_BYTES // len(chunk) + 2))
    with nothing_changes(cluster):
        status, body = raw_http(api_address(cluster), (
            b"POST /txs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks))
        assert status == 413
        assert body["detail"] == f"body exceeds the limit of {MAX_TX_BYTES} bytes"


@pytest.mark.parametrize(("body", "detail"), [
    (b"", "empty body"),
    (b"\xc1" + bytes(range(60)), "tx is not valid msgpack"),
    (codec.pack(["kv"]) + b"trailing", "tx is not valid msgpack"),
    (codec.pack({"not": "a tx"}), "tx must be an array"),
    (codec.pack([1, 2, 3, 4, 5]), "public_key must be 32 bytes"),
    (codec.pack([bytes(32), 1, b"k" * 300, b"v", bytes(64)]), "key is 300 bytes"),
])
def test_garbage_transactions_are_refused(client: httpx.Client, cluster: Cluster, body: bytes,
                                          detail: str) -> None:
    with nothing_changes(cluster):
        assert_refused(client.post("/txs", content=body), 400, detail)


def test_wrong_signature_is_refused(client: httpx.Client, cluster: Cluster) -> None:
    fields = codec.unpack(make_tx(PrivateKey.generate(), 1, b"k", b"honest"))
    fields[3] = b"forged"
    with nothing_changes(cluster):
        assert_refused(client.post("/txs", content=codec.pack(fields)), 400, "bad signature")


def test_replayed_transaction_is_refused_after_commit(client: httpx.Client,
                                                      cluster: Cluster) -> None:
    key = PrivateKey.generate()
    tx = make_tx(key, 42, b"replayed", b"once")
    response = client.post("/txs", content=tx)
    assert response.status_code == 202, response.text
    cluster.wait_committed([response.json()["tx_hash"]])
    with nothing_changes(cluster):
        for i in RUNNING:
            assert_refused(cluster.client.post(cluster.validators[i].url + "/txs", content=tx),
                           400, "transaction already committed")
        assert_refused(client.post("/txs", content=make_tx(key, 42, b"replayed", b"twice")),
                       400, "nonce 42 already used")
    assert client.get("/kv/replayed").json()["value"] == b"once".hex()


def test_bad_batches_are_refused_and_good_ones_answered_per_tx(client: httpx.Client,
                                                                cluster: Cluster) -> None:
    with nothing_changes(cluster):
        assert_refused(client.post("/txs/batch", content=b"\xc1\xc1"), 400,
                       "batch is not valid msgpack")
        assert_refused(client.post("/txs/batch", content=codec.pack([b"ok", 5])), 400,
                       "batch must be a msgpack array of non-empty byte strings")
        assert_refused(client.post("/txs/batch", content=codec.pack([b"t"] * 2001)), 413,
                       "batch of 2001 transactions exceeds the limit of 2000")
        answer = client.post("/txs/batch", content=codec.pack([b"junk", b"\x93\x01\x02\x03"]))
        assert answer.status_code == 200
        assert answer.json()["accepted"] == 0
        errors = [r["error"] for r in answer.json()["results"]]
        assert errors[0].startswith("tx is not valid msgpack")
        assert errors[1] == "tx must be an array [public_key, nonce, key, value, signature]"
    good = make_tx(PrivateKey.generate(), 1, b"batched", b"yes")
    answer = client.post("/txs/batch", content=codec.pack([good, b"junk"])).json()
    assert answer["accepted"] == 1 and answer["results"][1]["error"] is not None
    assert cluster.wait_committed([answer["results"][0]["tx_hash"]]) > 0


# --- HTTP: reads ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "status", "detail"), [
    ("/blocks/abc", 422, "height must be an integer"),
    ("/blocks/-1", 422, "height must be an integer"),
    ("/blocks/1.5", 422, "height must be an integer"),
    ("/blocks/" + "9" * 5000, 422, "height must be an integer"),
    ("/blocks/9223372036854775808", 422, "height must be an integer"),
    ("/blocks/9223372036854775807", 404, "no block at height 9223372036854775807"),
    ("/blocks/0", 404, "no block at height 0"),
    ("/txs/zz", 400, "64 hex digits"),
    ("/txs/" + "0" * 64, 404, "transaction not committed"),
    ("/state/proof?key=zz", 400, "key is not hex"),
    ("/state/proof?key=", 400, "key must not be empty"),
    ("/state/proof?key=" + "00" * 1025, 400, "key exceeds 1024 bytes"),
    ("/state/proof", 422, "query.key: Field required"),
    ("/kv/" + "k" * 257, 400, "key is 257 bytes"),
    ("/kv/never-written", 404, "no value stored under key 'never-written'"),
    ("/no/such/path", 404, "Not Found"),
])
def test_bad_reads_get_a_4xx_naming_the_problem(client: httpx.Client, path: str, status: int,
                                                detail: str) -> None:
    assert_refused(client.get(path), status, detail)


def test_good_reads_answer(client: httpx.Client, cluster: Cluster) -> None:
    height, root = settled(cluster)[0]
    block = client.get(f"/blocks/{height}").json()
    assert block["height"] == height and block["state_root"] == root
    assert bytes.fromhex(block["certificate"]) and bytes.fromhex(block["block"])
    assert client.get("/kv/seed").json() == {"key": "seed", "value": b"value".hex()}
    key = Cluster.state_key("seed").hex()
    cluster.wait_until(lambda: client.get("/state/proof", params={"key": key}).status_code
                       == 200, "a stable checkpoint")
    proof = client.get("/state/proof", params={"key": key}).json()
    assert proof["key"] == key and proof["value"] == b"value".hex() and proof["proof"]
    assert proof["checkpoint"]["seq"] % CHECKPOINT_INTERVAL == 0
    status = client.get("/status").json()
    assert status["index"] == 0 and sorted(status["peers_connected"]) == [1, 2]
    paths = client.get("/openapi.json").json()["paths"]
    assert "application/octet-stream" in paths["/txs"]["post"]["requestBody"]["content"]


# --- the peer port --------------------------------------------------------------------


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def recv_frame(sock: socket.socket) -> Any:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "peer closed the connection"
            data += chunk
        return data
    (length,) = struct.unpack(">I", exactly(4))
    return codec.unpack(exactly(length))


def closed_by_peer(sock: socket.socket) -> bool:
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return True


class PeerPort:
    """Validator 0's peer port, reached as validator 3 (whose key the test holds)."""

    def __init__(self, cluster: Cluster) -> None:
        home = cluster.validators[0].home
        self.address = split_address(NodeConfig.load(home).peer_listen)
        self.chain_id = Genesis.load(cluster.genesis_path).chain_id
        self.key = load_key(cluster.validators[3].home / "validator_key.json")

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=TIMEOUT_S)

    def authenticated(self) -> socket.socket:
        sock = self.connect()
        nonce = os.urandom(32)
        send_frame(sock, codec.pack(["hello", 1, self.chain_id, 3, 0, nonce]))
        challenge = recv_frame(sock)
        assert challenge[0] == "challenge", challenge
        proof = codec.pack(["flobc/transport/client", self.chain_id, 3, 0, nonce,
                            challenge[1]])
        send_frame(sock, codec.pack(["auth", self.key.sign(proof)]))
        assert recv_frame(sock) == ["welcome"]
        return sock


def commits_still(cluster: Cluster) -> None:
    hashes = cluster.submit_kv({f"after-{os.urandom(4).hex()}": "ok"})
    cluster.wait_committed(hashes)


def test_garbage_before_the_handshake_closes_only_that_connection(cluster: Cluster) -> None:
    port = PeerPort(cluster)
    for data in (os.urandom(256), struct.pack(">I", 2**32 - 1), struct.pack(">I", 10**6),
                 struct.pack(">I", 0),
                 struct.pack(">I", 4) + codec.pack(["x"]),
                 struct.pack(">I", 64) + encode_message(Prepare(0, 1, bytes(32), 3,
                                                                bytes(64)))[:64]):
        with port.connect() as sock:
            sock.sendall(data)
            assert closed_by_peer(sock)
    with port.connect() as sock:
        send_frame(sock, codec.pack(["hello", 1, port.chain_id, 3, 0, os.urandom(32)]))
        challenge = recv_frame(sock)
        send_frame(sock, codec.pack(["auth", bytes(64)]))  # not validator 3's signature
        assert challenge[0] == "challenge"
        assert recv_frame(sock) == ["reject", "handshake: bad signature for validator 3"]
        assert closed_by_peer(sock)
    commits_still(cluster)


def test_bad_frames_from_an_authenticated_peer_are_dropped(cluster: Cluster) -> None:
    port = PeerPort(cluster)
    dropped = cluster.statuses([0])[0]["dropped_frames"]
    with port.authenticated() as sock:
        send_frame(sock, codec.pack(["no-such-message", 1, 2, 3]))
        send_frame(sock, b"\xc1 not msgpack")
        send_frame(sock, codec.pack(["prepare", "wrong", "fields"]))
        forged = Prepare(0, 10**6, bytes(32), 3, bytes(64))
        send_frame(sock, encode_message(forged))  # well formed, signature invalid
        cluster.wait_until(lambda: cluster.statuses([0])[0]["dropped_frames"] >= dropped + 3,
                           "validator 0 to drop the malformed frames")
        commits_still(cluster)
        sock.sendall(struct.pack(">I", 2**31))  # a length over the frame limit
        assert closed_by_peer(sock)
    with port.authenticated() as sock:
        sock.sendall(struct.pack(">I", 1000) + b"truncated")
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_peer(sock)
    commits_still(cluster)
    for i in RUNNING:
        assert cluster.kv(i, "seed") == "value"


def test_node_stops_cleanly_and_keeps_its_ledger(cluster: Cluster) -> None:
    """SIGTERM: exit status 0, ledger closed (so reopenable) at the height it reached."""
    v = cluster.validators[2]
    height = cluster.statuses([2])[2]["height"]
    proc, v.proc = v.proc, None
    assert proc is not None
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    with Ledger(v.home / "data") as ledger:
        assert ledger.height >= height
    cluster.start(2)
    commits_still(cluster)


def test_tx_lookup_says_committed_or_unknown(cluster: Cluster, client: httpx.Client) -> None:
    """A client tells a lost transaction (unknown: resubmit it) from a committed one."""
    unknown = client.get("/txs/" + "ab" * 32)
    assert unknown.status_code == 404 and unknown.json()["status"] == "unknown"
    [tx_hash] = cluster.submit_kv({"looked-up": "yes"})
    cluster.wait_committed([tx_hash])
    found = client.get(f"/txs/{tx_hash}").json()
    assert found["status"] == "committed" and found["height"] > 0
