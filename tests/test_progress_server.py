"""The rank-0 progress endpoint: /progress, /metrics and /healthz of a real (toy) training run."""

from __future__ import annotations

import io
import json
import math
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

from dream_trainer.callbacks import (
    AsyncCheckpointCallback,
    Callback,
    CheckpointCallback,
    ProgressCallback,
    ProgressServerCallback,
)
from dream_trainer.callbacks.progress_server import prometheus_text
from dream_trainer.checkpoint.layout import checkpoint_name
from dream_trainer.configs import CheckpointParameters
from dream_trainer.contract import JOB_NAME, PROGRESS_PORT, RESTART_COUNT, TERMINATION_LOG
from toy import ToyTrainer, toy_config

GAUGES = {"dream_trainer_step": "step", "dream_trainer_epoch": "epoch",
          "dream_trainer_loss": "loss", "dream_trainer_restart_count": "restart_count",
          "dream_trainer_last_update_timestamp_seconds": "updated"}


def get(port: int, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


class Probe(Callback):
    """After every optimizer step, fetches every endpoint of the server over HTTP."""

    def __init__(self, server: ProgressServerCallback) -> None:
        self.server = server
        self.progress: list[dict[str, Any]] = []
        self.metrics: list[str] = []
        self.health: list[str] = []

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        if self.trainer.is_accumulating_gradients:
            return
        assert self.server.port is not None
        status, kind, body = get(self.server.port, "/progress")
        assert (status, kind) == (200, "application/json")
        self.progress.append(json.loads(body))
        status, kind, body = get(self.server.port, "/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        self.metrics.append(body)
        self.health.append(get(self.server.port, "/healthz")[2])


def parse_prometheus(text: str) -> dict[str, tuple[dict[str, str], float]]:
    """A strict little parser of the exposition format for unlabelled-or-simple-label gauges."""
    samples: dict[str, tuple[dict[str, str], float]] = {}
    described: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            kind, name, rest = line[2:].split(" ", 2)
            assert kind in ("HELP", "TYPE"), line
            described.setdefault(name, set()).add(kind)
            if kind == "TYPE":
                assert rest == "gauge", line
            continue
        series, value = line.rsplit(" ", 1)
        name, labels = series.split("{", 1)
        assert labels.endswith("}"), line
        pairs = dict(pair.split("=", 1) for pair in labels[:-1].split(",") if pair)
        assert all(v.startswith('"') and v.endswith('"') for v in pairs.values()), line
        assert described.get(name) == {"HELP", "TYPE"}, f"{name}: HELP/TYPE before the sample"
        samples[name] = ({k: v[1:-1] for k, v in pairs.items()}, float(value))
    return samples


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_serves_step_loss_and_metrics_while_training(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(JOB_NAME, "llama-7b")
    monkeypatch.setenv(TERMINATION_LOG, str(tmp_path / "termination-log"))
    monkeypatch.setenv(RESTART_COUNT, "3")
    server = ProgressServerCallback(port=0, every_n_steps=2)
    printer = ProgressCallback(every_n_steps=2, stream=io.StringIO())
    probe = Probe(server)
    config = toy_config(steps=4, accumulation=2, callbacks=[printer, server, probe])
    trainer = ToyTrainer(config)
    trainer.fit()
    losses = config.callbacks["LossRecorder"].losses  # per step, mean over micro-batches

    assert [p["step"] for p in probe.progress] == [1, 2, 3, 4]
    assert {p["phase"] for p in probe.progress} == {"training"}
    assert {(p["job"], p["restart_count"], p["epoch"]) for p in probe.progress} == {
        ("llama-7b", 3, 0)}
    # The loss is refreshed every 2 steps, as the mean of the steps since the last refresh.
    assert probe.progress[0]["loss"] is None
    assert probe.progress[1]["loss"] == pytest.approx(mean(losses[:2]), rel=1e-6)
    assert probe.progress[2]["loss"] == probe.progress[1]["loss"]
    assert probe.progress[3]["loss"] == pytest.approx(mean(losses[2:]), rel=1e-6)
    assert all(p["last_checkpoint"] is None for p in probe.progress)
    assert probe.health == ["ok"] * 4

    for progress, text in zip(probe.progress, probe.metrics, strict=True):
        samples = parse_prometheus(text)
        assert set(samples) == set(GAUGES)
        for name, key in GAUGES.items():
            labels, value = samples[name]
            assert labels == {"job": "llama-7b"}
            want = progress[key]
            if want is None:
                assert math.isnan(value)
            else:
                assert value == pytest.approx(want, rel=1e-9)

    final = server.snapshot()
    assert set(final) == {"step", "epoch", "loss", "last_checkpoint", "restart_count", "job",
                          "phase", "updated"}
    assert final["step"] == trainer.global_step == 4
    assert final["phase"] == "finished"
    assert final["loss"] == pytest.approx(printer.summary["loss"], rel=1e-6)
    assert server.port is None  # shut down with fit()
    # The final snapshot is the container's termination message (the operator reads it).
    assert json.loads((tmp_path / "termination-log").read_text()) == final


@pytest.mark.parametrize("kind", [CheckpointCallback, AsyncCheckpointCallback])
def test_reports_the_last_committed_checkpoint(tmp_path, kind) -> None:
    params = CheckpointParameters(root_dir=str(tmp_path), checkpoint_every_n_steps=2)
    checkpoints = kind(params)
    server = ProgressServerCallback(port=0)
    probe = Probe(server)
    # The server comes first, so at the end of fit() the "last" save happens after its post_fit.
    trainer = ToyTrainer(toy_config(steps=5, callbacks=[server, checkpoints, probe]))
    trainer.fit()
    url = checkpoints.store.url_of
    seen = [p["last_checkpoint"] for p in probe.progress]
    if kind is CheckpointCallback:  # the save after step 2 is committed before step 3 runs
        assert seen == [None, None, url(checkpoint_name(2)), url(checkpoint_name(2)),
                        url(checkpoint_name(4))]
    else:  # committed in the background: at the latest by the next save
        assert seen[:2] == [None, None] and seen[-1] in (url(checkpoint_name(2)),
                                                         url(checkpoint_name(4)))
    assert sorted(r.step for r in checkpoints.store.committed()) == [2, 4, 5]
    assert server.snapshot()["last_checkpoint"] == url(checkpoint_name(5))

    # A restarted job reports the checkpoint it resumed from before it commits a new one.
    server = ProgressServerCallback(port=0)
    resumed = ToyTrainer(toy_config(steps=5, callbacks=[server, kind(params)]))
    resumed.fit()
    assert server.snapshot()["last_checkpoint"] == url(checkpoint_name(5))
    assert server.snapshot()["step"] == 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_added_from_the_environment(monkeypatch) -> None:
    port = free_port()
    monkeypatch.setenv(PROGRESS_PORT, str(port))
    trainer = ToyTrainer(toy_config(steps=2))
    server = trainer.callbacks["ProgressServerCallback"]
    assert isinstance(server, ProgressServerCallback) and server.requested_port == port
    probe = Probe(server)
    trainer.callbacks.add(probe)
    trainer.fit()
    assert server.port is None and [p["step"] for p in probe.progress] == [1, 2]

    # A config that has one already (under any name) keeps it and gets no second one.
    mine = ProgressServerCallback(port=0)
    config = toy_config(steps=1)
    config.callbacks.add(mine, "progress")
    trainer = ToyTrainer(config)
    assert [c for c in trainer.callbacks.values() if isinstance(c, ProgressServerCallback)] == [
        mine]

    monkeypatch.delenv(PROGRESS_PORT)
    assert "ProgressServerCallback" not in ToyTrainer(toy_config(steps=1)).callbacks


def test_a_busy_port_does_not_stop_training(caplog) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        server = ProgressServerCallback(port=busy.getsockname()[1])
        trainer = ToyTrainer(toy_config(steps=2, callbacks=[server]))
        trainer.fit()
    assert trainer.global_step == 2 and server.snapshot()["step"] == 2
    assert "progress endpoint not started" in caplog.text


def test_unknown_paths_are_404_and_bad_ports_are_refused() -> None:
    server = ProgressServerCallback(port=0)

    class Ask404(Callback):
        def pre_fit(self) -> None:
            with pytest.raises(urllib.error.HTTPError) as err:
                get(server.port, "/nope")
            assert err.value.code == 404
            self.done = True

    asker = Ask404()
    ToyTrainer(toy_config(steps=1, callbacks=[server, asker])).fit()
    assert asker.done
    with pytest.raises(ValueError, match="65535"):
        ProgressServerCallback(port=70000)


def test_prometheus_text_escapes_the_job_and_writes_nan_for_no_loss() -> None:
    text = prometheus_text({"step": 7, "epoch": 1, "loss": None, "restart_count": 0,
                            "job": 'a"b\\c', "updated": 1.5})
    assert 'dream_trainer_step{job="a\\"b\\\\c"} 7.0' in text.splitlines()
    assert "dream_trainer_loss{job=\"a\\\"b\\\\c\"} NaN" in text.splitlines()
    assert text.endswith("\n") and text.count("# TYPE") == 5
