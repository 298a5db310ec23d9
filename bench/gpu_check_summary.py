"""One-screen summary of a ``scripts/gpu_check.sh`` results folder (also written to
``<folder>/summary.txt``).

    .venv/bin/python bench/gpu_check_summary.py docs/bench-results/2027-01-05-h200

Reads what the steps wrote: ``steps.tsv`` (step, exit status, seconds), ``gpu_tests.xml``
(pytest's JUnit report), ``local_corr.json``, ``model_*.json``, ``stream_*.json``,
``node_*.json``, ``rate_*.json``, ``compile_*.json``; a missing file is reported as missing.
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tests(folder: Path) -> str:
    try:
        suite = ET.parse(folder / 'gpu_tests.xml').getroot()
    except (OSError, ET.ParseError):
        return 'gpu tests: no report'
    suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
    total, failed = int(suite.get('tests', 0)), int(suite.get('failures', 0))
    errors, skipped = int(suite.get('errors', 0)), int(suite.get('skipped', 0))
    passed = total - failed - errors - skipped
    return (f'gpu tests: {passed} passed, {failed} failed, {errors} errors, {skipped} skipped '
            f'({float(suite.get("time", 0)):.0f} s)')


def _local_corr(folder: Path) -> list[str]:
    r = _load(folder / 'local_corr.json')
    if r is None:
        return ['kernel benchmark: missing']
    lines = [f'kernel benchmark ({r["device"]}; kernel {r["cuda_kernel"]}):']
    for c in r['cases']:
        cells = []
        for name, v in c['results'].items():
            if v.get('status') != 'ok':
                cells.append(f'{name} {v.get("status")}')
                continue
            mem = '' if v['peak_extra_bytes'] is None else \
                f' {v["peak_extra_bytes"] / 2 ** 20:.0f} MB'
            cells.append(f'{name} {v["ms"]:.2f} ms{mem}')
        lines.append(f'  {c["setting"]} s{c["stride"]} B{c["B"]} {c["H"]}x{c["W"]}: '
                     + ', '.join(cells))
    return lines


def _model(r: dict) -> str:
    o, ours = r['official'], r['ours']
    text = (f'model {r["setting"]} {ours["H"]}x{ours["W"]} b{r["batch"]}: ours '
            f'{ours["pairs_per_second"]:.1f} pairs/s {ours["peak_memory_mb"] / 1024:.1f} GB, '
            f'official ({o.get("local_corr", "?")}) {o["pairs_per_second"]:.1f} pairs/s '
            f'{o["peak_memory_mb"] / 1024:.1f} GB -> '
            f'x{r["throughput_ratio_ours_over_official"]:.2f}')
    if 'official_native' in r:
        n = r['official_native']
        text += (f'; official native {n["pairs_per_second"]:.1f} pairs/s '
                 f'{n["peak_memory_mb"] / 1024:.1f} GB')
    return text


def _stream(r: dict) -> str:
    return (f'stream {r["setting"]}: ours {r["ours"]["frames_per_second"]:.1f} frames/s, '
            f'official {r["official"]["frames_per_second"]:.1f} -> '
            f'x{r["frames_per_second_ratio_ours_over_official"]:.2f}')


def _node(r: dict) -> str:
    return (f'node: latency {r["node"]["median_latency_s"] * 1e3:.0f} ms, raw model '
            f'{r["raw_model"]["median_model_s"] * 1e3:.0f} ms, overhead {r["overhead_ms"]:.0f} ms '
            f'({100 * r["overhead_fraction_of_latency"]:.1f} %)')


def _rate(r: dict) -> str:
    """One line per case of a bench_rate run."""
    m = r['model']
    lines = []
    for c in r['cases']:
        s = next((s for s in c['steps'] if s['input_rate_hz'] == c.get('peak_rate_hz')),
                 c['steps'][0])
        text = (f"rate {c['case']} ({m['source']} {m['setting']}): {s['delivered_per_s']:.1f} "
                f"sets/s of {s['input_rate_hz']:g} Hz, dropped {s['drops_before_model']} before"
                f" / {s['drops_after_model']} after the model of {s['published']}, latency "
                + ('-' if s['latency_ms']['median'] is None else
                   f"{s['latency_ms']['median']:.0f} / {s['latency_ms']['p95']:.0f} ms"))
        failed = s['node_counts'].get('bad_input.pose_failed')
        if failed:
            text += f', pose failed {failed}x'
        if r['peak']:
            peak = c['peak_rate_hz']
            text += ', peak ' + ('none' if peak is None else f'{peak:g} Hz')
        lines.append(text)
    return '\n'.join(lines)


def _compile(r: dict) -> str:
    cold, warm = r['cold']['rows'][0], r['warm']['rows'][0]
    diff = cold['max_abs_diff_compiled_vs_eager']['warp_AB']
    return (f'compile {r["setting"]} {r["mode"]}: cold {cold["warm_up_wall_s"]:.0f} s, restart '
            f'{warm["warm_up_wall_s"]:.0f} s, graph breaks {r["cold"]["graph_breaks"]}, eager '
            f'{cold["eager_s_per_batch"] * 1e3:.1f} ms vs compiled '
            f'{cold["compiled_s_per_batch"] * 1e3:.1f} ms, max |diff| warp {diff:.1e}')


def summarize(folder: Path) -> str:
    lines = [f'gpu_check results: {folder}']
    steps = folder / 'steps.tsv'
    if steps.is_file():
        rows = [line.split('\t') for line in steps.read_text().splitlines() if line]
        lines.append('steps: ' + ', '.join(f'{n} {"ok" if rc == "0" else "FAILED(" + rc + ")"}'
                                           f' {float(s):.0f}s' for n, rc, s in rows))
        lines.append(f'total: {sum(float(s) for _, _, s in rows):.0f} s')
    lines.append(_tests(folder))
    lines += _local_corr(folder)
    for pattern, render in (('model_*.json', _model), ('stream_*.json', _stream),
                            ('node_*.json', _node), ('rate_*.json', _rate),
                            ('compile_*.json', _compile)):
        files = sorted(folder.glob(pattern))
        if not files:
            lines.append(f'{pattern}: missing')
        for path in files:
            r = _load(path)
            try:
                lines.append(render(r))
            except (KeyError, TypeError, IndexError):
                lines.append(f'{path.name}: unreadable')
    return '\n'.join(lines)


def main() -> None:
    folder = Path(sys.argv[1])
    text = summarize(folder)
    (folder / 'summary.txt').write_text(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
