"""``manifest.json`` in ``--out``: what was computed from which input with which options.

Keyed by the input bag's absolute path. An entry records the input's fingerprint
(:func:`~romav2_ros.fleet.inputs.fingerprint`), the options that change what is written
(:func:`output_options`), the tool version and the outcome. A rerun skips a bag only when
all of these match and, for a finished bag, its output folder is still there; a bag that
failed on its input (corrupt, wrong topics) is reported again without being retried until
the input or the options change (``--retry-failed`` retries it anyway). Failures of the
machinery (a worker that died on every attempt) are never recorded: they are retried.

Written by the driver only, atomically (a temporary file renamed over the old one) after
every finished bag, so an interrupted run keeps what it finished.
"""
from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

from romav2_ros.fleet.inputs import METADATA, BagInput

FILE = 'manifest.json'
FORMAT = 1
#: ``romav2-replay`` arguments that do not change what is written: the per-bag paths, the
#: shortcut flags already folded into the parameter values, and execution choices.
NOT_OUTPUT_ARGS = frozenset({'in_bag', 'out_bag', 'values', 'param', 'setting', 'weights',
                             'random_weights', 'device', 'batch'})
#: Node parameters that do not change what is written (where it runs, a warm-up pass).
NOT_OUTPUT_PARAMS = frozenset({'device', 'warmup'})


def tool_version() -> str:
    try:
        return f'romav2_ros {metadata.version("romav2_ros")}'
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return 'romav2_ros (not installed)'


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _weights_identity(values: dict) -> dict | None:
    """The checkpoint file a pretrained model loads: path, size, mtime (not its 1 GB hash)."""
    if values['model_source'] != 'pretrained':
        return None  # random: the seed is a parameter; a factory: its name is
    if values['weights']:
        path = Path(values['weights']).expanduser().resolve()
    else:
        from romav2_core.weights import default_cache_path
        path = default_cache_path()
    try:
        stat = path.stat()
    except OSError:
        return {'path': str(path), 'missing': True}
    return {'path': str(path), 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def output_options(replay_args, exclude=frozenset()) -> dict:
    """Everything in a parsed ``romav2-replay`` namespace that changes the output bag
    (``exclude``: more argument names that do not, e.g. ``romav2-batch``'s own)."""
    options = {k: _jsonable(v) for k, v in sorted(vars(replay_args).items())
               if k not in NOT_OUTPUT_ARGS and k not in exclude}
    options['params'] = {k: v for k, v in sorted(replay_args.values.items())
                         if k not in NOT_OUTPUT_PARAMS}
    options['weights_file'] = _weights_identity(replay_args.values)
    options['tool'] = tool_version()
    return options


class Manifest:
    """The manifest of one output folder."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / FILE
        self.entries: dict[str, dict] = {}
        self.unreadable = None
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get('format') == FORMAT:
                    self.entries = data['entries']
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.unreadable = f'{self.path} is unreadable ({exc}): every input is recomputed'

    def previous(self, bag: BagInput, out_dir: Path, input_fp: dict, options: dict) -> dict | None:
        """The entry that makes ``bag`` need no work: done with its output present, or failed
        on the same input; None when it must be (re)computed."""
        entry = self.entries.get(str(bag.path))
        if not entry or entry['input'] != input_fp or entry['options'] != options or \
                entry['output'] != bag.name:
            return None
        if entry['status'] == 'done' and not (out_dir / bag.name / METADATA).is_file():
            return None
        return entry

    def record(self, bag: BagInput, input_fp: dict, options: dict, status: str,
               **details) -> None:
        """Note a finished (``status`` 'done') or input-failed ('failed') bag and save."""
        self.entries[str(bag.path)] = {'output': bag.name, 'status': status,
                                       'input': input_fp, 'options': options, **details}
        self.save()

    def forget(self, bag: BagInput) -> None:
        if self.entries.pop(str(bag.path), None) is not None:
            self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f'.{FILE}.tmp')
        tmp.write_text(json.dumps({'format': FORMAT, 'entries': self.entries}, indent=1,
                                  sort_keys=True))
        os.replace(tmp, self.path)
