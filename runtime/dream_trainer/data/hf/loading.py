"""Loading Hugging Face ``datasets`` from local files, with no network access."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from dream_trainer.configs.errors import ConfigError
from dream_trainer.data.hf._deps import require

if TYPE_CHECKING:
    import datasets

PathLike: TypeAlias = str | Path
#: What the loaders accept: files/directories, ``{split: files}``, or loaded datasets.
DataSource: TypeAlias = ("PathLike | Sequence[PathLike] | Mapping[str, PathLike | Sequence[PathLike]]"
                         " | datasets.Dataset | datasets.DatasetDict")

#: File suffix -> ``datasets`` packaged builder. Compressed files (``.gz``, ``.zst``, ...) are
#: matched by the suffix before the compression one.
FORMATS: dict[str, str] = {
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".txt": "text", ".text": "text", ".md": "text",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
    ".arrow": "arrow",
}
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _expand(paths: Sequence[PathLike]) -> list[str]:
    """Files named, or found (sorted, recursively) in directories named; errors name the path."""
    files: list[str] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and _suffix(p) in FORMATS and not p.name.startswith("."))
            if not found:
                raise ConfigError("path_or_files", str(entry),
                                  f"the directory holds no data files ({', '.join(FORMATS)})",
                                  "point at the files, or pass data_format= and a file list")
            files.extend(str(p) for p in found)
        elif path.is_file():
            files.append(str(path))
        elif any(ch in str(entry) for ch in "*?["):
            files.append(str(entry))  # a glob: datasets resolves it
        else:
            raise ConfigError(
                "path_or_files", str(entry), "no such local file or directory (datasets are only "
                "read from local files here; the Hugging Face Hub is not contacted)",
                "pass local JSON/JSONL/Parquet/CSV/text files or a save_to_disk() directory; for a "
                "Hub dataset run datasets.load_dataset(name).save_to_disk(dir) on a machine with "
                "network access and pass dir, or pass a datasets.Dataset")
    return files


def _infer_format(files: Sequence[str]) -> str:
    formats = {FORMATS.get(_suffix(Path(f))) for f in files}
    if None in formats:
        unknown = next(f for f in files if FORMATS.get(_suffix(Path(f))) is None)
        raise ConfigError("data_format", None, f"cannot tell the format of {unknown!r} from its "
                          f"suffix (known: {', '.join(FORMATS)})",
                          "pass data_format='json', 'text', 'parquet', 'csv' or 'arrow'")
    if len(formats) > 1:
        raise ConfigError("path_or_files", list(files), f"files of several formats {sorted(formats)}"
                          " cannot be loaded together", "load one format at a time")
    return formats.pop()  # type: ignore[return-value]


def load_local_dataset(path_or_files: DataSource, *, split: str = "train",
                       data_format: str | None = None, num_samples: int | None = None,
                       cache_dir: PathLike | None = None, **load_kwargs: Any) -> datasets.Dataset:
    """One split of a dataset from local files, as a map-style ``datasets.Dataset``.

    ``path_or_files`` may be:

    - a ``datasets.Dataset`` (returned as is) or ``DatasetDict`` (``split`` is taken);
    - a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
      (read with ``datasets.load_from_disk``);
    - a file, a glob, a directory of data files (read recursively, sorted), or a list of these,
      read with ``datasets.load_dataset(FORMAT, data_files={split: files})`` where FORMAT comes
      from the suffix (``.json``/``.jsonl`` -> json, ``.txt`` -> text (one row per line,
      column ``text``), ``.parquet``, ``.csv``, ``.arrow``; compressed ``.gz``/``.zst``/...
      too) unless ``data_format`` is given;
    - a mapping ``{split: files}`` (``split`` picks one).

    ``num_samples`` keeps the first N rows (for quick tests). ``load_kwargs`` go to
    ``load_dataset`` (e.g. ``sample_by="document"`` for text files, ``field=`` for JSON).
    Tokenised results are cached next to the Arrow files that ``load_dataset`` writes under
    ``cache_dir`` (default ``~/.cache/huggingface/datasets``).
    """
    ds_lib = require("datasets")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        raise ConfigError("num_samples", num_samples, "must be a positive int or None",
                          "pass e.g. num_samples=1000, or None for every row")
    cache = str(cache_dir) if cache_dir is not None else None
    source: Any = path_or_files
    if isinstance(source, ds_lib.DatasetDict):
        dataset = _pick_split(source, split)
    elif isinstance(source, ds_lib.Dataset):
        dataset = source
    elif isinstance(source, ds_lib.IterableDataset | ds_lib.IterableDatasetDict):
        raise ConfigError("path_or_files", type(source).__name__, "streaming datasets have no "
                          "length, so data-parallel samplers cannot shard or resume them",
                          "load without streaming=True")
    else:
        if isinstance(source, Mapping):
            if split not in source:
                raise ConfigError("split", split, f"not among the given splits {sorted(source)}",
                                  f"pass one of {sorted(source)}")
            source = source[split]
        entries = [source] if isinstance(source, str | Path) else list(source)
        if not entries:
            raise ConfigError("path_or_files", path_or_files, "no files given",
                              "pass at least one local data file")
        single = Path(entries[0]).expanduser()
        if len(entries) == 1 and single.is_dir() and any(
                (single / marker).exists() for marker in _SAVED_MARKERS):
            loaded = ds_lib.load_from_disk(str(single))
            dataset = (_pick_split(loaded, split) if isinstance(loaded, ds_lib.DatasetDict)
                       else loaded)
        else:
            files = _expand(entries)
            fmt = data_format or _infer_format(files)
            if fmt not in set(FORMATS.values()):
                raise ConfigError("data_format", fmt, "unknown format",
                                  f"pass one of {sorted(set(FORMATS.values()))}")
            dataset = ds_lib.load_dataset(fmt, data_files={split: files}, split=split,
                                          cache_dir=cache, **load_kwargs)
    if num_samples is not None:
        dataset = dataset.select(range(min(num_samples, len(dataset))))
    return dataset


def _pick_split(dataset_dict: Any, split: str) -> Any:
    if split not in dataset_dict:
        raise ConfigError("split", split, f"the dataset has splits {sorted(dataset_dict)}",
                          f"pass one of {sorted(dataset_dict)}")
    return dataset_dict[split]


def check_columns(dataset: datasets.Dataset, fields: Sequence[str], option: str) -> None:
    """Raise a ConfigError naming the first of ``fields`` missing from ``dataset``'s columns."""
    for name in fields:
        if name not in dataset.column_names:
            raise ConfigError(option, name if len(fields) == 1 else list(fields),
                              f"column {name!r} is not in the dataset (columns: "
                              f"{dataset.column_names})",
                              f"pass {option}= naming one of {dataset.column_names}")
