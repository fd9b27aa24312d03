"""Logger mixins: one logging interface, several backends.

``LoggerMixin`` is the interface (``log_scalar``, ``log_dict``, ``log_image``, ``log_histogram``,
``log_table``, ``log_config``, ``log_code``); the backends are mixins on top of it:

- :class:`LocalLoggerMixin` (in ``DreamTrainer`` by default, needs no service) writes
  ``metrics.jsonl``, ``metrics.csv``, PNG images and, at the end of training, ``loss_curve.png``
  into a run directory;
- :class:`WandBLoggerMixin` logs to Weights & Biases (online, or offline with ``mode="offline"``).

Backends compose: ``class MyTrainer(DreamTrainer, WandBLoggerMixin)`` logs every call both
locally and to W&B. Only global rank 0 writes; on other ranks the ``log_*`` methods return at once.
``LoggerCallback`` logs training and validation results and learning rates through them.

A backend implements the ``_write_*`` hooks and calls ``super()`` in each, so that every backend
of a trainer receives every call.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import logging
import math
import numbers
import os
import re
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch.distributed.tensor import DTensor, Replicate

from dream_trainer.callbacks.callback import RankZeroCallback
from dream_trainer.configs.errors import ConfigError, require_bool
from dream_trainer.configs.wandb_parameters import WandBParameters
from dream_trainer.contract import JOB_NAME, LOG_DIR, RESTART_COUNT
from dream_trainer.trainer.abstract import AbstractTrainer

logger = logging.getLogger(__name__)

ImageLike = Any
"""A ``torch.Tensor`` or ``numpy.ndarray`` (HW, HWC, CHW, or a batch NCHW/NHWC shown as one row),
a ``PIL.Image.Image``, or the path of an image file."""

TRAIN_LOSS_KEY = "train/loss"
"""The name ``LoggerCallback`` logs the training loss under (what ``loss_curve.png`` plots)."""
VAL_LOSS_KEYS = ("val_loss", "val/loss")
"""Names plotted as validation points on ``loss_curve.png``."""


# ---------------------------------------------------------------------------------- conversions
def scalar_value(name: str, value: Any) -> float:
    """``value`` as a float: a number, a one-element tensor (a replicated DTensor too) or array.
    Raises ``TypeError`` naming ``name`` otherwise."""
    if isinstance(value, DTensor):
        if not all(isinstance(p, Replicate) for p in value.placements):
            raise TypeError(f"log: {name!r} is a DTensor sharded as {value.placements}; call "
                            ".full_tensor() on every rank before logging it")
        value = value.to_local()
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"log: {name!r} is a tensor of shape {tuple(value.shape)}; log one "
                            "number (e.g. value.mean()) or use log_histogram")
        return float(value.detach().reshape(()).float().item())
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise TypeError(f"log: {name!r} is an array of shape {value.shape}; log one number "
                            "or use log_histogram")
        return float(value.reshape(-1)[0])
    if isinstance(value, numbers.Real):  # int, float, bool, numpy scalars
        return float(value)
    raise TypeError(f"log: {name!r} is a {type(value).__name__}; log_scalar/log_dict take numbers "
                    "or one-element tensors")


def config_to_dict(value: Any) -> Any:
    """A JSON-friendly view of a config: dataclasses become dicts, dtypes and paths strings,
    callbacks their class names, anything else its ``repr``."""
    from dream_trainer.callbacks.callback import Callback

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: config_to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Callback):
        return type(value).__name__
    if isinstance(value, Mapping):
        return {str(k): config_to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [config_to_dict(v) for v in value]
    if isinstance(value, enum.Enum):
        return config_to_dict(value.value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (Path, torch.dtype, torch.device)):
        return str(value)
    text = repr(value)
    return text if len(text) <= 300 else type(value).__qualname__


def image_array(image: ImageLike) -> np.ndarray:
    """An image as a ``uint8`` array of shape HxW, HxWx3 or HxWx4.

    Tensors are channels-first (CHW, NCHW) unless their last dim is 1/3/4 and the first is not;
    arrays are channels-last unless the reverse holds. A batch becomes one row of images. Floats in
    [0, 1] are scaled by 255; other floats are min-max normalised."""
    channels_first = False
    if isinstance(image, DTensor):
        raise TypeError("log_image: the image is a DTensor; call .full_tensor() on every rank "
                        "first")
    if isinstance(image, torch.Tensor):
        channels_first = True
        image = image.detach().float().cpu().numpy() if image.is_floating_point() else (
            image.detach().cpu().numpy())
    elif type(image).__module__.startswith("PIL."):
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"log_image: got a {type(image).__name__}; pass a tensor, an array, a "
                        "PIL image or the path of an image file")
    array = image
    if array.ndim == 4:  # a batch
        if _is_channels_first(array.shape[1:], channels_first):
            array = array.transpose(0, 2, 3, 1)
        pad = np.zeros((array.shape[1], 2, array.shape[3]), dtype=array.dtype)
        parts: list[np.ndarray] = []
        for i, one in enumerate(array):
            parts += [pad, one] if i else [one]
        array = np.concatenate(parts, axis=1)
    elif array.ndim == 3 and _is_channels_first(array.shape, channels_first):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise TypeError(f"log_image: cannot read an image from shape {image.shape}; pass HW, "
                        "HWC or CHW (C = 1, 3 or 4), or a batch of those")
    return _to_uint8(array)


def _is_channels_first(shape: Sequence[int], prefer: bool) -> bool:
    first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    return prefer if first and last else first


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(values, 0, 255).astype(np.uint8)
    values = np.nan_to_num(values)
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < 0.0 or high > 1.0:
        values = (values - low) / max(high - low, 1e-12)
    return np.round(values * 255.0).astype(np.uint8)


def _safe_name(name: str) -> Path:
    """A metric name as a relative path: ``train/samples`` -> ``train/samples``, no escapes."""
    parts = [re.sub(r"[^A-Za-z0-9_.=-]+", "_", p).strip(".") or "_" for p in name.split("/")]
    return Path(*parts)


# ---------------------------------------------------------------------------------- LoggerMixin
class LoggerMixin(AbstractTrainer):
    """The logging interface. Add a backend (``LocalLoggerMixin``, ``WandBLoggerMixin``) to a
    trainer to give it somewhere to write; ``DreamTrainer`` has ``LocalLoggerMixin``.

    Every method may be called on every rank: only global rank 0 writes, the others return at
    once (so calling ``self.log_scalar("train/loss", loss)`` in ``training_step`` is fine and
    costs other ranks nothing). ``step`` defaults to ``self.global_step``, the number of optimizer
    steps completed so far. Logging a value reads it on the host (a device sync on rank 0 for a
    GPU tensor): log every few steps, as ``LoggerCallback`` does, rather than every micro-batch.
    """

    @property
    def is_logging_rank(self) -> bool:
        """True on the rank that writes logs (global rank 0)."""
        return self.world.is_global_zero

    def _step(self, step: int | None) -> int:
        return int(self.global_step if step is None else step)

    # ------------------------------------------------------------------ interface
    def log_scalar(self, name: str, value: Any, step: int | None = None) -> None:
        """Log one number (a Python number or a one-element tensor) under ``name``."""
        self.log_dict({name: value}, step=step)

    def log_dict(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Log several numbers at one step, e.g. ``{"train/loss": loss, "train/grad_norm": g}``."""
        if not self.is_logging_rank or not values:
            return
        scalars = {str(name): scalar_value(str(name), value) for name, value in values.items()}
        self._write_scalars(scalars, self._step(step))

    def log_image(self, name: str, image: ImageLike, step: int | None = None,
                  caption: str | None = None) -> None:
        """Log an image: a tensor or array (HW, HWC, CHW; a batch is shown as one row), a PIL
        image, or the path of an image file."""
        if not self.is_logging_rank:
            return
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"log_image({name!r}): no image file at {str(path)!r}")
            self._write_image(name, path, self._step(step), caption)
            return
        self._write_image(name, image_array(image), self._step(step), caption)

    def log_histogram(self, name: str, values: Any, step: int | None = None,
                      bins: int = 64) -> None:
        """Log the distribution of ``values`` (a tensor or array of any shape) as a histogram."""
        if not self.is_logging_rank:
            return
        if isinstance(values, DTensor):
            raise TypeError(f"log_histogram({name!r}): a DTensor; call .full_tensor() on every "
                            "rank first")
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().numpy()
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        array = array[np.isfinite(array)]
        counts, edges = np.histogram(array, bins=bins)
        self._write_histogram(name, counts, edges, self._step(step))

    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                  step: int | None = None) -> None:
        """Log a table: column names and rows of numbers or strings."""
        if not self.is_logging_rank:
            return
        columns = [str(c) for c in columns]
        table = [[_cell(v) for v in row] for row in rows]
        for i, row in enumerate(table):
            if len(row) != len(columns):
                raise ValueError(f"log_table({name!r}): row {i} has {len(row)} values for "
                                 f"{len(columns)} columns {columns}")
        self._write_table(name, columns, table, self._step(step))

    def log_config(self, config: Any = None) -> None:
        """Record the run's configuration (default: ``self.config``), as a dict."""
        if not self.is_logging_rank:
            return
        values = config_to_dict(self.config if config is None else config)
        if not isinstance(values, dict):
            values = {"config": values}
        self._write_config(values)

    def log_code(self, code_dir: str | os.PathLike[str]) -> None:
        """Save the Python sources under ``code_dir`` with the run."""
        if not self.is_logging_rank:
            return
        path = Path(code_dir)
        if not path.is_dir():
            raise NotADirectoryError(f"log_code: code_dir={str(code_dir)!r} is not a directory; "
                                     "pass the root of your sources, e.g. LoggerCallback("
                                     "code_dir='.')")
        self._write_code(path.resolve())

    # ------------------------------------------------------------------ lifecycle
    def configure(self) -> None:
        super().configure()
        if _LIFECYCLE not in self.callbacks:
            self.callbacks.add(_LoggerLifecycle(), _LIFECYCLE)

    def finish_logging(self, success: bool = True) -> None:
        """Flush and close every backend (the end of ``fit()`` does it; on global rank 0)."""
        if self.is_logging_rank:
            self._write_finish(success)

    # ------------------------------------------------------------------ backend hooks
    # Each backend overrides these and calls super() so that every backend gets every call.
    def _write_scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def _write_image(self, name: str, image: np.ndarray | Path, step: int,
                     caption: str | None) -> None:
        pass

    def _write_histogram(self, name: str, counts: np.ndarray, edges: np.ndarray,
                         step: int) -> None:
        pass

    def _write_table(self, name: str, columns: list[str], rows: list[list[Any]],
                     step: int) -> None:
        pass

    def _write_config(self, config: dict[str, Any]) -> None:
        pass

    def _write_code(self, code_dir: Path) -> None:
        pass

    def _write_finish(self, success: bool) -> None:
        pass


def _cell(value: Any) -> Any:
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic) \
            or (isinstance(value, np.ndarray) and value.size == 1):
        return scalar_value("table cell", value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


_LIFECYCLE = "_loggers"


class _LoggerLifecycle(RankZeroCallback[LoggerMixin]):
    """Added last by ``LoggerMixin.configure``: closes the backends after every other callback's
    ``post_fit`` (which may still log), or on ``on_interrupt``."""

    trainer: LoggerMixin

    def pre_fit(self) -> None:
        # After every other callback's pre_fit (a checkpoint callback resumes there): the step
        # this run starts from tells a fresh run (0) from a resumed one.
        self.trainer.__dict__["_log_start_step"] = self.trainer.global_step

    def post_fit(self) -> None:
        self.trainer.finish_logging(success=True)

    def on_interrupt(self) -> None:
        try:
            self.trainer.finish_logging(success=False)
        except Exception:  # never mask the error that interrupted training
            logger.exception("closing the loggers failed")


# ---------------------------------------------------------------------------------- local logger
@dataclass(kw_only=True)
class LocalLoggerConfigMixin:
    """Config fields of :class:`LocalLoggerMixin`."""

    log_dir: str | None = None
    """The run directory. None: ``$DREAM_LOG_DIR`` if set (``dream-trainer run JOB.yaml`` sets it
    to its run directory), else ``./runs/<$DREAM_JOB_NAME>`` under the operator (in a pod that is
    the container's filesystem, gone with the pod: set ``DREAM_LOG_DIR`` in ``spec.env`` to a
    mounted volume's path to keep it), else ``./runs/<experiment>``. (``runs/`` is in the
    repository's .gitignore.)"""
    plot_loss_curve: bool = True
    """Write ``loss_curve.png`` (training loss against step, validation loss as points) at the
    end of training, from what was logged (needs matplotlib)."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.log_dir is not None and (not isinstance(self.log_dir, str) or not self.log_dir):
            raise ConfigError(f"{name}.log_dir", self.log_dir, "expected a non-empty str or None",
                              "pass a directory such as './runs/my-run', or None for the default")
        require_bool(f"{name}.plot_loss_curve", self.plot_loss_curve)
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


@dataclass
class _LocalFiles:
    jsonl: TextIO | None = None
    csv: TextIO | None = None
    csv_writer: Any = None
    histograms: TextIO | None = None


class LocalLoggerMixin(LoggerMixin):
    """Logs to files in :attr:`log_dir`, with nothing to install or run:

    - ``metrics.jsonl``: one JSON object per ``log_scalar``/``log_dict`` call,
      ``{"step": 10, "time": 1735689600.0, "train/loss": 2.31, ...}`` (non-finite values are null);
    - ``metrics.csv``: the same values in long form, one ``step,time,name,value`` row per value;
    - ``config.json`` (``log_config``), ``images/<name>/step_000000010.png`` (``log_image``),
      ``histograms.jsonl``, ``tables/<name>/step_000000010.csv``, ``code.tar.gz`` (``log_code``);
    - ``loss_curve.png`` at the end of ``fit()`` (``plot_loss_curve``).

    A fresh run truncates ``metrics.*``; a resumed one (starting past step 0, e.g. from a
    checkpoint, or with ``$DREAM_RESTART_COUNT > 0``) appends, and :func:`read_metrics` keeps only
    the rows of the latest attempt at each step.
    """

    @property
    def log_dir(self) -> Path:
        """Where the files go (see ``LocalLoggerConfigMixin.log_dir``)."""
        configured = getattr(self.config, "log_dir", None) or os.environ.get(LOG_DIR)
        if configured:
            return Path(configured)
        name = os.environ.get(JOB_NAME) or getattr(self.config, "experiment", None) or "run"
        return Path("runs") / _safe_name(name.replace("/", "_"))

    def _local(self) -> _LocalFiles:
        files = self.__dict__.get("_local_files")
        if files is None:
            files = self.__dict__["_local_files"] = _LocalFiles()
        return files

    def _open_metrics(self) -> _LocalFiles:
        files = self._local()
        if files.jsonl is None:
            directory = self.log_dir
            directory.mkdir(parents=True, exist_ok=True)
            start = self.__dict__.get("_log_start_step", self.global_step)
            resumed = start > 0 or int(os.environ.get(RESTART_COUNT, "0") or 0) > 0
            mode = "a" if resumed else "w"
            files.jsonl = open(directory / "metrics.jsonl", mode, encoding="utf-8")  # noqa: SIM115
            csv_path = directory / "metrics.csv"
            new_csv = mode == "w" or not csv_path.exists() or csv_path.stat().st_size == 0
            files.csv = open(csv_path, mode, encoding="utf-8", newline="")  # noqa: SIM115
            files.csv_writer = csv.writer(files.csv)
            if new_csv:
                files.csv_writer.writerow(["step", "time", "name", "value"])
            logger.info("logging to %s (%s)", directory, "appending" if resumed else "new")
        return files

    def _write_scalars(self, values: dict[str, float], step: int) -> None:
        super()._write_scalars(values, step)
        reserved = {"step", "time"} & set(values)
        if reserved:
            raise ValueError(f"log_dict: the names {sorted(reserved)} are reserved for the "
                             "row's step and time in metrics.jsonl; rename them, e.g. 'train/time'")
        files = self._open_metrics()
        now = time.time()
        row: dict[str, Any] = {"step": step, "time": round(now, 3)}
        row.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        files.jsonl.write(json.dumps(row) + "\n")  # type: ignore[union-attr]
        files.jsonl.flush()  # type: ignore[union-attr]
        for name, value in values.items():
            files.csv_writer.writerow([step, f"{now:.3f}", name, repr(value)])
        files.csv.flush()  # type: ignore[union-attr]

    def _write_image(self, name: str, image: np.ndarray | Path, step: int,
                     caption: str | None) -> None:
        super()._write_image(name, image, step, caption)
        folder = self.log_dir / "images" / _safe_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(image, Path):
            target = folder / f"step_{step:09d}{image.suffix.lower() or '.png'}"
            target.write_bytes(image.read_bytes())
            return
        from PIL import Image

        Image.fromarray(image).save(folder / f"step_{step:09d}.png")

    def _write_histogram(self, name: str, counts: np.ndarray, edges: np.ndarray,
                         step: int) -> None:
        super()._write_histogram(name, counts, edges, step)
        files = self._local()
        if files.histograms is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            files.histograms = open(self.log_dir / "histograms.jsonl", "a",  # noqa: SIM115
                                    encoding="utf-8")
        row = {"step": step, "time": round(time.time(), 3), "name": name,
               "counts": counts.tolist(), "edges": edges.tolist()}
        files.histograms.write(json.dumps(row) + "\n")
        files.histograms.flush()

    def _write_table(self, name: str, columns: list[str], rows: list[list[Any]],
                     step: int) -> None:
        super()._write_table(name, columns, rows, step)
        folder = self.log_dir / "tables" / _safe_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"step_{step:09d}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)

    def _write_config(self, config: dict[str, Any]) -> None:
        super()._write_config(config)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n",
                                                  encoding="utf-8")

    def _write_code(self, code_dir: Path) -> None:
        super()._write_code(code_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        target = (self.log_dir / "code.tar.gz").resolve()
        count = write_code_archive(code_dir, target)
        logger.info("saved %d source files from %s to %s", count, code_dir, target)

    def _write_finish(self, success: bool) -> None:
        files = self._local()
        for handle in (files.jsonl, files.csv, files.histograms):
            if handle is not None:
                handle.close()
        self.__dict__["_local_files"] = None
        metrics = self.log_dir / "metrics.jsonl"
        if success and getattr(self.config, "plot_loss_curve", True) and metrics.is_file():
            try:
                plotted = plot_loss_curve(read_metrics(metrics), self.log_dir / "loss_curve.png",
                                          title=getattr(self.config, "experiment", None))
            except ImportError:
                logger.warning("loss_curve.png not written: matplotlib is not installed "
                               "(pip install matplotlib, or set plot_loss_curve=False)")
            else:
                if plotted:
                    logger.info("wrote %s", self.log_dir / "loss_curve.png")
        super()._write_finish(success)


def write_code_archive(code_dir: Path, target: Path, max_files: int = 2000,
                       max_bytes: int = 20 * 2**20) -> int:
    """Pack the ``*.py`` files under ``code_dir`` (skipping hidden folders, ``__pycache__``,
    virtual environments, ``target`` itself) into a ``.tar.gz``; stops with a warning past
    ``max_files`` files or ``max_bytes`` bytes. Returns how many files it packed."""
    skip = {"__pycache__", "site-packages", "node_modules", "venv", ".venv", "build", "dist"}
    count = size = 0
    with tarfile.open(target, "w:gz") as archive:
        for root, dirs, files in os.walk(code_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip)
            for file in sorted(files):
                path = Path(root) / file
                if not file.endswith(".py") or path.resolve() == target:
                    continue
                size += path.stat().st_size
                if count >= max_files or size > max_bytes:
                    logger.warning("log_code: stopped at %d files / %d bytes under %s; pass a "
                                   "smaller code_dir", count, size, code_dir)
                    return count
                archive.add(path, arcname=str(path.relative_to(code_dir)))
                count += 1
    return count


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``, in order, keeping each step's latest attempt only.

    A resumed run appends rows from the step it resumed at: when a row's step is lower than one
    already read, the earlier rows from that step on belong to an attempt that was rolled back,
    and are dropped. Null values (non-finite when logged) are read as NaN."""
    rows: list[dict[str, Any]] = []
    highest = -1
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed process
                continue
            step = int(row.get("step", 0))
            if step < highest:
                rows = [r for r in rows if r["step"] < step]
            highest = max(step, max((r["step"] for r in rows), default=-1))
            rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


def plot_loss_curve(rows: list[dict[str, Any]], path: str | os.PathLike[str],
                    train_key: str = TRAIN_LOSS_KEY, val_keys: Sequence[str] = VAL_LOSS_KEYS,
                    title: str | None = None) -> bool:
    """Plot ``train_key`` against step as a line and ``val_keys`` as points into a PNG at
    ``path`` (matplotlib's Agg canvas: no display, no global backend change). Returns False,
    writing nothing, when the rows hold none of these keys."""
    train = sorted((r["step"], r[train_key]) for r in rows if train_key in r)
    vals = {key: sorted((r["step"], r[key]) for r in rows if key in r) for key in val_keys}
    vals = {key: points for key, points in vals.items() if points}
    if not train and not vals:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label=train_key, color="tab:blue", linewidth=1.5)
    for key, points in vals.items():
        axes.plot(*zip(*points, strict=True), "o", label=key, color="tab:orange", markersize=6)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    Path(path).write_bytes(buffer.getvalue())
    return True


# ---------------------------------------------------------------------------------- wandb
@dataclass(kw_only=True)
class WandBLoggerConfigMixin:
    """Config fields of :class:`WandBLoggerMixin`."""

    wandb_parameters: WandBParameters = field(default_factory=WandBParameters)

    def __post_init__(self) -> None:
        if not isinstance(self.wandb_parameters, WandBParameters):
            raise ConfigError(f"{type(self).__name__}.wandb_parameters", self.wandb_parameters,
                              "expected a WandBParameters",
                              "pass wandb_parameters=WandBParameters(project=..., mode=...)")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise ImportError("WandBLoggerMixin needs wandb: pip install 'dream-trainer[wandb]' (or "
                          "drop WandBLoggerMixin from the trainer)") from error
    return wandb


class WandBLoggerMixin(LoggerMixin):
    """Logs to Weights & Biases, from global rank 0.

    The run starts at the first log call (``wandb.init`` with ``WandBParameters.init_kwargs``: the
    config fields, ``WANDB_*`` variables, and the trainer config's project/group/experiment, with
    the whole trainer config as the run's config) and finishes at the end of ``fit()`` (with exit
    code 1 if training raised). Use ``mode="offline"`` (or ``WANDB_MODE=offline``) to log without
    an account or network. :attr:`wandb_run` gives the run itself for anything else
    (``self.wandb_run.watch(model)``).
    """

    def configure(self) -> None:
        super().configure()
        _import_wandb()  # fail at the start of fit(), on every rank, not at the first log call

    def _wandb_parameters(self) -> WandBParameters:
        params = getattr(self.config, "wandb_parameters", None)
        return params if isinstance(params, WandBParameters) else WandBParameters()

    @property
    def wandb_run(self) -> Any:
        """The ``wandb.Run`` on global rank 0 (started on first use); None on other ranks."""
        if not self.is_logging_rank:
            return None
        run = self.__dict__.get("_wandb_run")
        if run is None:
            wandb = _import_wandb()
            kwargs = self._wandb_parameters().init_kwargs(self.config)
            run = wandb.init(config=config_to_dict(self.config), **kwargs)
            self.__dict__["_wandb_run"] = run
            logger.info("wandb run %s (%s)", run.id, kwargs.get("mode", "online"))
        return run

    def _write_scalars(self, values: dict[str, float], step: int) -> None:
        super()._write_scalars(values, step)
        self.wandb_run.log(values, step=step)

    def _write_image(self, name: str, image: np.ndarray | Path, step: int,
                     caption: str | None) -> None:
        super()._write_image(name, image, step, caption)
        wandb = _import_wandb()
        data = str(image) if isinstance(image, Path) else image
        self.wandb_run.log({name: wandb.Image(data, caption=caption)}, step=step)

    def _write_histogram(self, name: str, counts: np.ndarray, edges: np.ndarray,
                         step: int) -> None:
        super()._write_histogram(name, counts, edges, step)
        wandb = _import_wandb()
        self.wandb_run.log({name: wandb.Histogram(np_histogram=(counts, edges))}, step=step)

    def _write_table(self, name: str, columns: list[str], rows: list[list[Any]],
                     step: int) -> None:
        super()._write_table(name, columns, rows, step)
        wandb = _import_wandb()
        self.wandb_run.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def _write_config(self, config: dict[str, Any]) -> None:
        super()._write_config(config)
        self.wandb_run.config.update(config, allow_val_change=True)

    def _write_code(self, code_dir: Path) -> None:
        super()._write_code(code_dir)
        self.wandb_run.log_code(root=str(code_dir))

    def _write_finish(self, success: bool) -> None:
        # Other backends first: the local logger's loss_curve.png exists before it is uploaded.
        super()._write_finish(success)
        run = self.__dict__.pop("_wandb_run", None)
        if run is None:
            return
        params = self._wandb_parameters()
        if success:
            self._log_artifacts(run, params)
        run.finish(exit_code=0 if success else 1)

    def _log_artifacts(self, run: Any, params: WandBParameters) -> None:
        wandb = _import_wandb()
        if params.log_model:
            uri = self._last_checkpoint()
            if uri is None:
                logger.warning("WandBParameters.log_model=True but no committed checkpoint: add "
                               "a CheckpointCallback to log the model")
            else:
                artifact = wandb.Artifact(f"model-{run.id}", type="model",
                                          metadata={"step": self.global_step, "uri": uri})
                artifact.add_reference(uri if "://" in uri else Path(uri).resolve().as_uri(),
                                       checksum=False)
                run.log_artifact(artifact)
        if params.log_artifacts and isinstance(self, LocalLoggerMixin) and self.log_dir.is_dir():
            artifact = wandb.Artifact(f"run-logs-{run.id}", type="run-logs")
            artifact.add_dir(str(self.log_dir))
            run.log_artifact(artifact)

    def _last_checkpoint(self) -> str | None:
        for callback in self.callbacks.values():
            uri = getattr(callback, "last_committed", None)
            if isinstance(uri, str) and uri:
                return uri
        return None

