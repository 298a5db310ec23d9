"""The node's parameter table in Markdown, from ``params.PARAMS`` (README.md shows its output;
a test keeps the two equal): ``python -m romav2_ros.param_table``."""
from __future__ import annotations

import sys

from romav2_ros import params


def _type(p: params.Param) -> str:
    if p.kind == 'double_array':
        return 'double[]'
    return {bool: 'bool', int: 'int', float: 'double', str: 'string'}[type(p.default)]


def _default(value) -> str:
    if value is None:
        return 'unset'
    if isinstance(value, bool):
        return f'`{str(value).lower()}`'
    return f'`{value!r}`'


def _range(p: params.Param) -> str:
    if p.choices:
        return ', '.join(p.choices)
    if p.range is None or isinstance(p.default, bool):
        return ''
    lo, hi, *step = p.range
    return f'[{lo}, {hi}]' + (f' step {step[0]}' if step else '')


def table(rows=params.PARAMS) -> str:
    lines = ['| name | type | default | units | range / choices | runtime | meaning |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for p in rows:
        lines.append(f'| `{p.name}` | {_type(p)} | {_default(p.default)} | {p.units} | '
                     f'{_range(p)} | {"yes" if p.runtime else "no"} | {p.description} |')
    return '\n'.join(lines) + '\n'


def main() -> int:
    sys.stdout.write(table())
    sys.stdout.write('\nManaged node only (`romav2_lifecycle_node`):\n\n')
    sys.stdout.write(table(params.LIFECYCLE_PARAMS))
    return 0


if __name__ == '__main__':
    sys.exit(main())
