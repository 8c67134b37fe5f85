"""The dashboard every validator serves at ``/``, in a real browser (Debian's Chromium
driven by Playwright) against real clusters on loopback.

A learning cluster (four validator processes with their evaluator workers, two trainer
processes) runs for a few rounds while one page stays open: the round it shows rises,
the metrics plot gains points (a regression cluster's plot shows its own metrics), the
trainer table and the trust history agree with the chain, the votes of a decided round
are shown per validator, and the model carries the "verified by 2f+1" mark only as far
as the light client's own check of ``/fl/models/{v}/proof`` goes. A key-value cluster
shows the chain and hides the learning panels. No page may log a console error. The two
computations behind the page are also checked on their own: the trust history rebuilt
from the round records (against the trust the chain stored, through accepts, rejects, an
exclusion and a newcomer), and the verification behind the mark (refusing a certificate
one signature short of 2f+1, a forged signature, and weights other than the certified
ones).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import Cluster, Validator, failure_report_plugin, run_flobc
from test_fl_app import A, B, C, Chain, delta_of, make_config

from flobc.config import Genesis
from flobc.consensus.application import CommittedState
from flobc.consensus.light import VerificationError, verify_state
from flobc.consensus.messages import CheckpointCertificate
from flobc.crypto import PrivateKey
from flobc.launch.cluster import ClusterOptions, Trainers
from flobc.launch.localnet import free_port_range
from flobc.protocol.reputation import penalised, rewarded
from flobc.protocol.state import model_key
from flobc.validator.fl.dashboard import TrustHistory, verify_served_model

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
VALIDATORS = 4
QUORUM = 3
TRAINERS = 2
TRUST_INITIAL = 500_000
"""The genesis default ``trust_initial``."""
DEADLINE_MS = 30_000
ROUND_TIMEOUT_MS = 180_000
"""Bound of a wait on the cluster's progress (trainers and evaluator workers import
TensorFlow first)."""
PAGE_TIMEOUT_MS = 45_000
HTTP_TIMEOUT_S = 10.0


@dataclass
class Page:
    """A browser page on a validator's dashboard and the errors it logged."""

    page: Any
    errors: list[str]

    def number(self, element_id: str) -> int:
        return int(self.page.inner_text(f"#{element_id}"))

    def wait(self, expression: str, what: str, timeout_ms: int = PAGE_TIMEOUT_MS,
             arg: Any = None) -> Any:
        """Wait until the JavaScript ``expression`` (a function of ``arg``) is truthy."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            return self.page.wait_for_function(expression, arg=arg, timeout=timeout_ms,
                                               polling=100).json_value()
        except PlaywrightTimeout as exc:
            raise AssertionError(f"timed out after {timeout_ms / 1000:g} s waiting for {what}; "
                                 f"page status: {self.page.inner_text('#live')!r}; "
                                 f"console errors: {self.errors}") from exc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM} is missing): "
                    "`apt-get install -y chromium`, as .ci/run does")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, url: str) -> Page:
    """A fresh page on ``url``/ that records console errors and uncaught exceptions."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.text} ({m.location.get('url')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    response = page.goto(url + "/")
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    return Page(page, errors)


# --- a learning cluster ------------------------------------------------------------------


@dataclass
class FLNet:
    cluster: Cluster
    genesis: Genesis
    client: httpx.Client

    def get(self, path: str) -> Any:
        response = self.client.get(self.cluster.validators[0].url + path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        return response.json()


@contextlib.contextmanager
def learning_net(out: Path, pytestconfig: pytest.Config, *init: str) -> Iterator[FLNet]:
    """A learning testnet written by ``testnet init`` (with ``init``'s extra flags), its
    validators and trainers running."""
    base = free_port_range(2 * VALIDATORS)
    done = run_flobc("testnet", "init", "--app", "fl", "--validators", VALIDATORS,
                     "--trainers", TRAINERS, "--out", out, "--base-port", base,
                     "--round-deadline-ms", DEADLINE_MS, *init)
    assert done.returncode == 0, done.stderr
    cluster = Cluster(out, [Validator(i, out / f"validator-{i}",
                                      f"http://127.0.0.1:{base + 2 * i + 1}",
                                      out / f"validator-{i}.log") for i in range(VALIDATORS)])
    trainers = Trainers(out, ClusterOptions(epochs=1))
    plugin = failure_report_plugin(cluster, out.parent.name)
    pytestconfig.pluginmanager.register(plugin)
    try:
        cluster.start_all()
        cluster.wait_connected()
        trainers.start_all()
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
            yield FLNet(cluster, Genesis.load(out / "genesis.toml"), client)
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        trainers.stop_all()
        cluster.close()


@pytest.fixture(scope="module")
def fl_net(tmp_path_factory: pytest.TempPathFactory,
           pytestconfig: pytest.Config) -> Iterator[FLNet]:
    with learning_net(tmp_path_factory.mktemp("dashboard-fl") / "net", pytestconfig) as net:
        yield net


@pytest.fixture(scope="module")
def fl_page(browser: Any, fl_net: FLNet) -> Iterator[Page]:
    page = open_page(browser, fl_net.cluster.validators[0].url)
    yield page
    page.page.close()


@pytest.mark.slow
def test_the_shown_round_rises(fl_page: Page) -> None:
    first = fl_page.wait("() => /^\\d+$/.test(document.getElementById('round').textContent)"
                         " && Number(document.getElementById('round').textContent)",
                         "the page to show the open round")
    assert first >= 1
    shown = fl_page.wait("(first) => Number(document.getElementById('round').textContent)"
                         " > first && Number(document.getElementById('round').textContent)",
                         f"the shown round to rise above {first}", ROUND_TIMEOUT_MS,
                         arg=first)
    assert shown > first
    assert fl_page.page.is_visible("#model-panel")
    assert fl_page.number("height") >= 1


@pytest.mark.slow
def test_votes_of_a_decided_round_are_shown_per_validator(fl_page: Page) -> None:
    accepted = fl_page.wait(
        "(quorum) => [...document.querySelectorAll('.round[data-open=false] tbody tr')]"
        ".filter(r => r.querySelector('.status.accepted')"
        " && r.querySelectorAll('.vote.yes').length >= quorum).length",
        "a closed round with an update accepted by 2f+1 shown votes", ROUND_TIMEOUT_MS,
        arg=QUORUM)
    assert accepted >= 1
    headers = fl_page.page.locator(".round[data-open=false] thead th").all_inner_texts()
    assert headers[-VALIDATORS:] == [f"V{i}" for i in range(VALIDATORS)]


def plotted_metrics(page: Page, net: FLNet, names: list[str]) -> list[float]:
    """Wait for two evaluated versions in the metrics plot; check that it shows each of
    ``names`` as /fl/evaluations serves them, and return the plotted values."""
    points = page.wait("(n) => document.querySelectorAll('#metrics-plot circle.point')"
                       ".length >= 2 * n && document.querySelectorAll("
                       "'#metrics-plot circle.point').length",
                       "two versions in the metrics plot", ROUND_TIMEOUT_MS, arg=len(names))
    evaluations = net.get("/fl/evaluations?limit=100")
    assert evaluations["split"] == "test"
    assert {k for e in evaluations["versions"] for k in e} == {"version", "loss", *names}
    shown = page.page.locator("#metrics-plot circle.point")
    titles = [shown.nth(i).locator("title").text_content() or "" for i in range(points)]
    assert {t.split(",")[0] for t in titles} == set(names)
    xs = [int(shown.nth(i).get_attribute("data-x")) for i in range(points)]
    ys = [float(shown.nth(i).get_attribute("data-y")) for i in range(points)]
    served = {(name, e["version"]): e[name] for e in evaluations["versions"] for name in names}
    for title, x, y in zip(titles, xs, ys, strict=True):
        assert served[(title.split(",")[0], x)] == y
    assert page.page.is_hidden("#metrics-empty")
    assert page.page.locator("#metrics-title").inner_text() == (
        f"Test {' and '.join(names)} per model version")
    return ys


@pytest.mark.slow
def test_accuracy_plot_has_a_point_per_evaluated_version(fl_page: Page, fl_net: FLNet) -> None:
    ys = plotted_metrics(fl_page, fl_net, ["accuracy"])
    assert all(0.0 <= y <= 1.0 for y in ys)


@pytest.mark.slow
def test_a_regression_task_plots_its_own_metrics(browser: Any, tmp_path: Path,
                                                 pytestconfig: pytest.Config) -> None:
    """A task without accuracy: the plot shows what the validators score it by."""
    with learning_net(tmp_path / "net", pytestconfig, "--model", "diabetes_mlp",
                      "--dataset", "diabetes") as net:
        page = open_page(browser, net.cluster.validators[0].url)
        try:
            ys = plotted_metrics(page, net, ["mae", "rmse"])
            assert all(y > 0.0 for y in ys)
            ticks = page.page.locator("#metrics-plot text.tick").all_text_contents()
            assert ticks and not any("%" in t for t in ticks), ticks  # errors, not shares
            assert not page.errors, page.errors
        finally:
            page.page.close()


@pytest.mark.slow
def test_trainer_table_and_trust_history_agree_with_the_chain(fl_page: Page,
                                                              fl_net: FLNet) -> None:
    rows = fl_page.wait(f"() => document.querySelectorAll('#trainers tbody tr').length"
                        f" === {TRAINERS} && document.querySelectorAll("
                        f"'#trust-plot polyline').length >= 1 && {TRAINERS}",
                        "every trainer in the table and a trust line", ROUND_TIMEOUT_MS)
    assert rows == TRAINERS
    trusts = [float(t) for t in fl_page.page.locator("#trainers td.trust").all_inner_texts()]
    assert all(0.0 < t <= 1.0 for t in trusts), trusts
    state = fl_net.get("/dashboard/state")["learning"]
    on_chain = {t["trainer"]: t for t in fl_net.get("/fl/trainers")["trainers"]}
    assert {t["trainer"] for t in state["trainers"]} == set(on_chain)
    rounds = [r["round"] for r in state["rounds"]]
    assert rounds == list(range(1, state["round"] + 1))
    for trainer in state["trainers"]:
        history = trainer["trust_history"]
        assert len(history) == len(rounds)
        # Rebuilt from the round records, the history must end at the chain's own trust.
        assert history[-1] == trainer["trust_micro"]
        if trainer["accepted"] and not trainer["rejected"]:
            known = [t for t in history if t is not None]
            assert known == sorted(known) and known[-1] > TRUST_INITIAL


@pytest.mark.slow
def test_verified_mark_matches_the_light_client(fl_page: Page, fl_net: FLNet) -> None:
    verified_by = fl_page.wait(
        "(quorum) => { const m = document.getElementById('verified');"
        " return m.classList.contains('ok') && Number(m.dataset.verifiedBy) >= quorum"
        " && Number(m.dataset.version) >= 1 && Number(m.dataset.verifiedBy); }",
        "the verified mark on a trained model version", ROUND_TIMEOUT_MS, arg=QUORUM)
    version = int(fl_page.page.get_attribute("#verified", "data-version"))
    mark = fl_page.page.inner_text("#verified")
    assert f"verified by {verified_by} of {VALIDATORS} validators" in mark
    # The light client's own check of what the proof endpoint serves, with genesis alone.
    proof = fl_net.get(f"/fl/models/{version}/proof")
    certificate = bytes.fromhex(proof["checkpoint"]["certificate"])
    verify_state(fl_net.genesis, certificate, model_key(version),
                 bytes.fromhex(proof["value"]), bytes.fromhex(proof["proof"]))
    signatures = CheckpointCertificate.decode(certificate).signatures
    assert verified_by <= len(signatures) and len(signatures) >= QUORUM
    record = fl_net.get(f"/fl/models/{version}")
    weights = fl_net.client.get(f"{fl_net.cluster.validators[0].url}/fl/models/{version}"
                                "/weights").content
    assert verify_served_model(fl_net.genesis, version, proof,
                               lambda _: weights).hex() == record["hash"]


@pytest.mark.slow
def test_a_certificate_short_of_2f_plus_1_or_other_weights_do_not_verify(
        fl_net: FLNet) -> None:
    """The mark's check itself: fewer than 2f+1 signatures, or weights that are not the
    certified ones, and the model is not verified."""
    version = fl_net.get("/fl/models/latest")["version"]
    proof = fl_net.cluster.wait_until(
        lambda: (r := fl_net.cluster.get(0, f"/fl/models/{version}/proof")).status_code == 200
        and r.json(), f"a checkpoint to cover version {version}")
    weights = fl_net.client.get(f"{fl_net.cluster.validators[0].url}/fl/models/{version}"
                                "/weights").content
    assert verify_served_model(fl_net.genesis, version, proof, lambda _: weights)
    cert = CheckpointCertificate.decode(bytes.fromhex(proof["checkpoint"]["certificate"]))
    short = CheckpointCertificate(cert.seq, cert.state_root, cert.signatures[:QUORUM - 1])
    cut = {**proof, "checkpoint": {**proof["checkpoint"], "certificate": short.encode().hex()}}
    with pytest.raises(VerificationError, match=f"{QUORUM - 1} signatures, {QUORUM} needed"):
        verify_served_model(fl_net.genesis, version, cut, lambda _: weights)
    replica, signature = cert.signatures[0]
    forged = CheckpointCertificate(cert.seq, cert.state_root, (
        (replica, bytes([signature[0] ^ 1]) + signature[1:]), *cert.signatures[1:]))
    bad = {**proof, "checkpoint": {**proof["checkpoint"], "certificate": forged.encode().hex()}}
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_served_model(fl_net.genesis, version, bad, lambda _: weights)
    with pytest.raises(VerificationError, match="weights do not match"):
        verify_served_model(fl_net.genesis, version, proof, lambda _: weights + b"\0")


@pytest.mark.slow
def test_validators_are_listed_with_links_and_signers(fl_page: Page) -> None:
    fl_page.wait(f"() => document.querySelectorAll('#validators .dot.up').length"
                 f" === {VALIDATORS}", "every validator shown as linked")
    signed = fl_page.page.locator("#validators td.yes").count()
    assert QUORUM <= signed <= VALIDATORS
    assert fl_page.page.locator("#validators .badge.primary").count() == 1
    assert "this node" in fl_page.page.inner_text("#validators tr[data-index='0']")


@pytest.mark.slow
def test_no_console_errors_and_a_screenshot(fl_page: Page, tmp_path: Path) -> None:
    fl_page.wait("() => document.getElementById('live').classList.contains('up')",
                 "the page to show a live answer")
    shot = tmp_path / "dashboard.png"
    fl_page.page.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert fl_page.errors == []


# --- the trust history, against the chain's own records ------------------------------------


def test_trust_history_rebuilt_from_rounds_is_the_trust_the_chain_wrote(tmp_path: Path) -> None:
    """Accepted, rejected and undecided updates, a newcomer and an exclusion: after every
    round the rebuilt history ends at each trainer's stored trust, and a short window
    that slides over the rounds shows the same trusts as the full history."""
    chain = Chain(tmp_path / "ledger", make_config())
    incremental, window = TrustHistory(chain.app.config), TrustHistory(chain.app.config, 2)
    after: dict[int, dict[bytes, int]] = {}

    def stored() -> dict[bytes, int]:
        return {bytes.fromhex(t["trainer"]): t["trust_micro"]
                for t in chain.query("trainers")["trainers"]}

    def view(history: TrustHistory) -> tuple[list[int], dict[bytes, list[int | None]]]:
        state = CommittedState(chain.ledger)
        registered = {bytes.fromhex(t["trainer"]): t["registered_round"]
                      for t in chain.query("trainers")["trainers"]}
        rounds, series = history.view(state, chain.meta, registered)
        assert {k: v[-1] for k, v in series.items()} == stored()
        return [r["round"] for r in rounds], series

    def play(verdicts: dict[PrivateKey, list[bool]]) -> None:
        """One round: each trainer's update gets these votes; then it closes."""
        round_ = chain.meta.round
        for i, trainer in enumerate(verdicts):
            chain.submit(trainer, delta_of(10 * round_ + i))
        chain.block([vote for i, (trainer, votes) in enumerate(verdicts.items())
                     for vote in chain.votes(trainer, delta_of(10 * round_ + i), votes)])
        if chain.meta.round == round_:
            chain.close(at=chain.meta.deadline_ms)
        assert chain.meta.round == round_ + 1
        after[round_] = stored()
        view(incremental)

    accept, reject, undecided = [True] * 3, [False] * 2, [True]
    chain.register(A, B)
    play({A: accept, B: reject})
    chain.register(C)
    play({A: accept, B: reject, C: undecided})
    play({A: undecided, B: reject, C: accept})
    assert stored()[B.public_key] < chain.app.config.trust_threshold  # B is excluded now
    play({A: accept, C: reject})
    chain.submit(A, delta_of(99))
    chain.block(chain.votes(A, delta_of(99), accept))  # decided in the open round 5
    assert chain.meta.round == 5
    after[5] = stored()

    for history, first in ((incremental, 1), (TrustHistory(chain.app.config), 1), (window, 3)):
        rounds, series = view(history)
        assert rounds == list(range(first, 6))
        for trainer in (A, B, C):
            since = 2 if trainer is C else 1
            assert series[trainer.public_key] == [
                after[r].get(trainer.public_key) if r >= since else None for r in rounds]
    assert after[1][A.public_key] == rewarded(TRUST_INITIAL, chain.app.config.trust_reward)
    assert after[2][B.public_key] == penalised(penalised(TRUST_INITIAL, 500_000), 500_000)


# --- a key-value cluster -----------------------------------------------------------------


@pytest.fixture(scope="module")
def kv_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster.create(tmp_path_factory.mktemp("dashboard-kv") / "net",
                        validators=VALIDATORS) as cluster:
        cluster.start_all()
        cluster.wait_connected()
        cluster.wait_committed(cluster.submit_kv({"greeting": "hello"}))
        yield cluster


@pytest.mark.slow
def test_a_key_value_chain_shows_the_chain_and_hides_learning(browser: Any,
                                                              kv_cluster: Cluster) -> None:
    page = open_page(browser, kv_cluster.validators[1].url)
    try:
        page.wait("() => document.getElementById('live').classList.contains('up')"
                  " && /^\\d+$/.test(document.getElementById('height').textContent)",
                  "the page to show the chain")
        assert page.number("height") >= 1
        assert "key-value" in page.page.inner_text("#chain-id")
        assert page.page.locator("#validators tbody tr").count() == VALIDATORS
        assert "this node" in page.page.inner_text("#validators tr[data-index='1']")
        for panel in page.page.locator("[data-learning]").all():
            assert panel.is_hidden()
        assert page.errors == []
    finally:
        page.page.close()
    state = kv_cluster.get(1, "/dashboard/state").json()
    assert state["learning"] is None and state["chain"]["app"] == "kv"
    assert state["chain"]["quorum"] == QUORUM
    assert len(state["chain"]["last_commit_signers"]) >= QUORUM
    assert kv_cluster.get(1, "/dashboard/missing.js").status_code == 404
    assert kv_cluster.get(1, "/fl/evaluations").status_code == 404
