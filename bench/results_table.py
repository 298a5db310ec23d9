"""Markdown tables of benchmark JSON files (bench_model / bench_stream / bench_node /
bench_compile / bench_presets / bench_replay / bench_pose / bench_rate / bench_pipeline output).

The performance tables in the docs are generated from the saved JSON, never typed by hand:

    .venv/bin/python bench/results_table.py docs/bench-results/2026-11-28-xeon/*.json

Prints one table per benchmark kind (model forward, stream, node overhead, compile, presets,
replay batching, node rate, own time per set, pose) with both sides, the ratio ours / official, the machine and the command,
sorted by machine, setting, batch and direction; files of other kinds are listed as skipped.
Memory is the peak the benchmark recorded: the process's peak resident set on a CPU, the CUDA
allocator's peak on a GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _gb(mb: float) -> str:
    return f'{mb / 1024:.2f} GB'


def _machine(r: dict) -> str:
    m = r.get('machine', {})
    name = m.get('gpu') if r.get('device', 'cpu').startswith('cuda') else m.get('cpu', '?')
    if 'gpu' not in m and m.get('cpu_native_bf16') is not None:
        name += ', native bf16' if m['cpu_native_bf16'] else ', no native bf16'
    return f"{name}, {m.get('cpu_count', '?')} CPUs, {m.get('date', '?')[:10]}"


def _model_row(r: dict) -> list[str]:
    o, f = r['ours'], r['official']
    what = (f"`{r['setting']}` {o['H']}x{o['W']}, batch {r['batch']}, "
            f"{'bidirectional' if r['bidirectional'] else 'unidirectional'}, "
            f"{r.get('our_precision', 'official')}")
    return [what, f"{o['pairs_per_second']:.3f} pairs/s, {_gb(o['peak_memory_mb'])}",
            f"{f['pairs_per_second']:.3f} pairs/s, {_gb(f['peak_memory_mb'])}",
            f"x{r['throughput_ratio_ours_over_official']:.2f} / "
            f"x{r['peak_memory_ratio_ours_over_official']:.2f}", _machine(r), f"`{r['command']}`"]


def _stream_row(r: dict) -> list[str]:
    o, f = r['ours'], r['official']
    what = f"`{r['setting']}` {o['H']}x{o['W']}, {r.get('our_precision', 'official')}"
    return [what, f"{o['frames_per_second']:.3f} frames/s, {_gb(o['peak_memory_mb'])}",
            f"{f['frames_per_second']:.3f} frames/s, {_gb(f['peak_memory_mb'])}",
            f"x{r['frames_per_second_ratio_ours_over_official']:.2f}", _machine(r),
            f"`{r['command']}`"]


def _node_row(r: dict) -> list[str]:
    h, w = r['model_size']
    what = (f"`{r['setting']}` model {h}x{w}, images {r['image_size_wh'][0]}x"
            f"{r['image_size_wh'][1]}, {r.get('precision', 'auto')}")
    own = r['node'].get('node_latency_model_ms_mean')
    return [what, f"{r['node']['median_latency_s'] * 1e3:.0f} ms",
            f"{r['raw_model']['median_model_s'] * 1e3:.0f} ms"
            + ('' if own is None else f" (the node's own mean, warm-up included: {own:.0f} ms)"),
            f"{r['overhead_ms']:.0f} ms ({100 * r['overhead_fraction_of_latency']:.1f} %)",
            _machine(r), f"`{r['command']}`"]


def _compile_row(r: dict) -> list[str]:
    cold, warm = r['cold'], r['warm']
    what = (f"`{r['setting']}` {cold['H']}x{cold['W']}, batch {r['batch']}, {r['precision']}, "
            f"mode {r['mode']}, {r['backend']}")
    times = '; '.join(f"{'bidir' if c['bidirectional'] else 'uni'}: {c['warm_up_wall_s']:.0f} s "
                      f"({c['warm_up_cpu_s']:.0f} s CPU) -> {w['warm_up_wall_s']:.0f} s "
                      f"({w['warm_up_cpu_s']:.0f} s CPU)"
                      for c, w in zip(cold['rows'], warm['rows']))
    diffs = '; '.join(
        f"{'bidir' if c['bidirectional'] else 'uni'}: " + ', '.join(
            f"{k} {v:.1e}" for k, v in c['max_abs_diff_compiled_vs_eager'].items()
            if k.startswith(('warp', 'overlap')))
        for c in cold['rows'])
    speed = '; '.join(f"{c['eager_s_per_batch']:.2f} / {c['compiled_s_per_batch']:.2f} s"
                      for c in cold['rows'])
    return [what, times, str(cold['graph_breaks']), diffs, speed, _machine(r),
            f"`{r['command']}`"]


def _preset_rows(r: dict) -> list[list[str]]:
    """One row per preset of a bench_presets run."""
    W, H = r['image_size']
    out = []
    for p in r['rows']:
        hr = f"{p['H_hr']}x{p['W_hr']}" if p['H_hr'] else 'none'
        out.append([f"`{p['setting']}`", f"{p['H_lr']}x{p['W_lr']}", hr,
                    f"{W}x{H}, one direction, {r['precision_resolved']}",
                    f"{p['seconds_per_pair']:.2f} s ({p['pairs_per_second']:.2f} pairs/s)",
                    f"{p['peak_memory_mb'] / 1024:.2f} GB", _machine(r), f"`{r['command']}`"])
    return out


def _replay_rows(r: dict) -> list[list[str]]:
    """One row per ``--batch`` value of a bench_replay run."""
    W, H = r['image_size']
    case = f"{r['mode']}, `{r['setting']}`, images {W}x{H}, {r['precision']}"
    return [[case, str(run['batch']), f"{run['frames_per_s']:.3f} frames/s",
             f"x{r['speedup_vs_batch_1'][str(run['batch'])]:.2f}",
             f"{run.get('max_abs_diff_warp_px', 0.0):.1e} px", _machine(r), f"`{r['command']}`"]
            for run in r['runs']]


def _rate_rows(r: dict) -> list[list[str]]:
    """One row per case of a bench_rate run: its step at the requested rate, or with --peak
    the step at the peak rate (the first step when none passed)."""
    m = r['model']
    model = (f"stand-in {m['model_ms']:g} ms, `{m['setting']}`" if 'model_ms' in m else
             f"{m['source']} weights, `{m['setting']}` on {m['device']}")
    out = []
    for c in r['cases']:
        steps = c['steps']
        step = next((s for s in steps if s['input_rate_hz'] == c.get('peak_rate_hz')), steps[0])
        peak = '-'
        if r['peak']:
            failed = [s for s in steps if s['not_delivered_share'] >= r['loss_limit']]
            peak = 'none' if c['peak_rate_hz'] is None else f"{c['peak_rate_hz']:g} Hz"
            if failed:
                peak += (f" ({failed[0]['input_rate_hz']:g} Hz: "
                         f"{100 * failed[0]['not_delivered_share']:.0f} % lost)")
        lat = step['latency_ms']
        stages = ', '.join(f'{k} {v:.0f}' for k, v in step['node_stage_ms'].items() if v >= 0.5)
        code = f", code {r['code']}" if 'code' in r else ''
        out.append([f"`{c['case']}`, {model}{code}", f"{step['input_rate_hz']:g} Hz",
                    f"{step['delivered_per_s']:.1f} sets/s "
                    f"({100 * step['share_of_min_input_model']:.0f} % of min(input, model))",
                    f"{step['drops_before_model']} / {step['drops_after_model']} of "
                    f"{step['published']}",
                    '-' if lat['median'] is None else f"{lat['median']:.0f} / {lat['p95']:.0f} ms",
                    stages + ' ms', peak, _machine(r), f"`{r['command']}`"])
    return out


def _pose_rows(r: dict) -> list[list[str]]:
    """One row per estimator and case of a bench_pose run: time (median / p90) and errors
    (median) of the revision it compares with and of this tree."""
    units = {'essential': '° dir', 'metric': '% of t'}
    names = {'essential': 'essential matrix', 'metric': 'stereo PnP'}

    def side(s: dict, estimator: str) -> str:
        return (f"{s['time_ms']['median']:.1f} / {s['time_ms']['p90']:.1f} ms, "
                f"rot {s['rotation_error_deg']['median']:.3f}°, "
                f"t {s['translation_error']['median']:.2f} {units[estimator]}, "
                f"recall {s['inlier_recall']:.2f}, NEES {s['nees_mean']:.1f}")
    def ours(c: dict) -> str:
        text = side(c['ours'], c['estimator'])
        if 'predicted' in c:              # runs since the prediction side was added
            p = c['predicted']
            text += (f"; given a prediction {p['time_ms']['median']:.1f} / "
                     f"{p['time_ms']['p90']:.1f} ms (it replaced RANSAC in "
                     f"{100 * p['prediction_share']:.0f} %), rot "
                     f"{p['rotation_error_deg']['median']:.3f}°, t "
                     f"{p['translation_error']['median']:.2f} {units[c['estimator']]}, "
                     f"NEES {p['nees_mean']:.1f}")
        return text
    return [[names[c['estimator']],
             f"{r['matches']} matches, {100 * c['inlier_ratio']:.0f} % inliers, "
             f"{c['noise_px']:g} px, threshold {r['threshold_px']:g} px",
             side(c['baseline'], c['estimator']), ours(c),
             f"x{c['speedup_median']:.1f}", _machine(r), f"`{r['command']}`"]
            for c in r['cases']]


def _own_time_rows(r: dict) -> list[list[str]]:
    """One row per case of a bench_pipeline run: this tree's wall time per set (its stages)
    against the other revision's."""
    sides = dict(r['sides'])
    ours = sides.pop('current')
    (rev, base), = sides.items() or [(None, None)]
    out = []
    for case, c in ours.items():
        if not isinstance(c, dict):
            continue
        stages = ', '.join(f'{k} {v:.1f}' for k, v in c['stage_ms'].items() if v >= 0.05)
        theirs = base.get(case) if base else None
        out.append([f"`{case}` ({', '.join(c['outputs'])}), `{r['setting']}` grid",
                    f"{c['wall_ms']:.1f} ms ({stages})",
                    '-' if theirs is None else f"{theirs['wall_ms']:.1f} ms ({rev})",
                    '-' if theirs is None else f"x{theirs['wall_ms'] / c['wall_ms']:.1f}",
                    _machine(r), f"`{r['command']}`"])
    return out


KINDS = {
    'model_forward': ('Model forward', ['case', 'ours', 'official 2.0.1',
                                        'throughput / memory ours:official', 'machine',
                                        'command'],
                      _model_row),
    'stream': ('Sequential stream', ['case', 'ours (encode once + match_features)',
                                     'official (`match` per pair)', 'frames/s ours:official',
                                     'machine', 'command'], _stream_row),
    'node_overhead': ('Node overhead', ['case', 'end-to-end latency (median)',
                                        'raw model (median)', 'overhead', 'machine', 'command'],
                      _node_row),
    'compile': ('torch.compile', ['case', 'warm-up with compilation: cold -> after a restart',
                                  'graph breaks', 'max abs(compiled - eager)',
                                  'eager / compiled s per batch', 'machine', 'command'],
                _compile_row),
    'presets': ('Preset costs (ours, as the node runs it)',
                ['setting', 'coarse', 'HR pass', 'case', 'time per pair', 'peak memory',
                 'machine', 'command'], _preset_rows),
    'node_rate': ('Node rate (`bench_rate.py`: fixed-rate stereo input, delivered output sets)',
                  ['case', 'input', 'delivered', 'dropped before / after the model',
                   'latency median / p95', "node's time per set by stage", 'peak rate (< 5 % lost)',
                   'machine', 'command'], _rate_rows),
    'pipeline_own_time': ("The node's own time per set (`bench_pipeline.py`: stand-in at 0 ms, "
                          "no DDS)", ['case', 'this tree', 'before', 'speed-up', 'machine',
                                      'command'], _own_time_rows),
    'pose': ('Pose estimators (time median / p90, median errors, mean NEES)',
             ['estimator', 'case', 'baseline revision', 'this tree', 'speed-up', 'machine',
              'command'], _pose_rows),
    'replay_batch': ('`romav2-replay --batch N`',
                     ['case', 'N', 'throughput', 'vs N = 1', 'max abs(warp - warp of N = 1)',
                      'machine', 'command'], _replay_rows),
}


SETTING_ORDER = ('turbo', 'fast', 'base', 'precise')


def _order(r: dict) -> tuple:
    m = r.get('machine', {})
    setting = r.get('setting')
    return (m.get('date', '')[:10], m.get('cpu', ''),
            SETTING_ORDER.index(setting) if setting in SETTING_ORDER else len(SETTING_ORDER),
            r.get('batch', 1), bool(r.get('bidirectional')),
            str(r.get('our_precision', r.get('precision', ''))))


def tables(results: list[dict]) -> str:
    out = []
    for kind, (title, header, row) in KINDS.items():
        rows = []
        for r in sorted(results, key=_order):
            if r.get('benchmark') == kind:
                cells = row(r)  # one row, or a list of rows (a run of several cases)
                rows += cells if isinstance(cells[0], list) else [cells]
        if not rows:
            continue
        out += [f'**{title}**', '', '| ' + ' | '.join(header) + ' |',
                '|' + '---|' * len(header)]
        out += ['| ' + ' | '.join(cells) + ' |' for cells in rows]
        out.append('')
    return '\n'.join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('files', nargs='+', type=Path)
    args = p.parse_args()
    results = []
    for path in args.files:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f'skipped {path} ({exc})', file=sys.stderr)
            continue
        if result.get('benchmark') in KINDS:
            results.append(result)
        else:
            print(f'skipped {path} (benchmark {result.get("benchmark")!r})', file=sys.stderr)
    print(tables(results))


if __name__ == '__main__':
    main()
