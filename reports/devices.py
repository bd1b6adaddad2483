"""The cross-device model: the same method/backend and shape on each device, normalised to it.

Pure (frame in, `Table` and bar data out). The timing suite's time, its speedup over the dense
baseline and its share of the device's dense peak (declared, or its rate over a known peak) are
set side by side; which metrics those are comes from the suites' declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from attnbench.metrics import DENSE_BASELINE
from attnbench.reports import data as D
from attnbench.reports.meaning import catalog

Peak = Callable[[str, str], float | None]  # (device name, dtype) → dense peak TFLOP/s, or None


def _f(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _cell(metric: str, unit: str, v: Any) -> D.Cell:
    return D.empty_cell() if v is None or pd.isna(v) else D.Cell(D.fmt(metric, unit, float(v)), float(v), "num")


Bars = dict[str, dict[str, dict[str, float]]]  # metric label → `pair N<seq>` → device → value


def cross_device(
    df: pd.DataFrame, devices: list[str], method_href: Mapping[str, str], peak: Peak
) -> tuple[D.Table, Bars] | None:
    """The cross-device table and its bars, one metric each (% of peak; speedup vs dense).

    None when fewer than two devices or no timed row that ran ok.
    """
    cat = catalog()
    time, speedup = cat.time_metric, cat.speedup_metric
    share, rate = cat.timing_metric("%"), cat.timing_metric("TFLOP/s")
    lat = df[(df["suite"] == cat.timing_suite) & (df["status"] == "ok")]
    if len(devices) < 2 or lat.empty or time is None:
        return None
    key = ["pair", "method", "backend", "family", "params", *D.SHAPE]
    per = lat.pivot_table(index=key, columns=["device", "metric"], values="value", aggfunc="first", dropna=False)
    devs = [d for d in devices if d in set(lat["device"])]
    time_unit = cat.unit(time)
    share_label = cat.label(share) if share else "% of peak"
    cols = [("method", "method"), ("backend", "backend"), ("family", "family"), ("shape", "workload")]
    for d in devs:
        cols += [
            (f"{d}: {cat.label(time)}", f"median {time_unit}".strip()),
            (f"{d}: {share_label}", f"{cat.unit(rate) if rate else 'rate'} over the device's dense peak"),
            (f"{d}: speedup", f"vs {DENSE_BASELINE} on the same device"),
        ]
    t = D.Table("xdev", cols, caption="Same method and shape on each device, normalised to the device")
    sp_label = f"{cat.label(speedup)} (×)" if speedup else "speedup vs dense (×)"
    bars: Bars = {f"{share_label} (%)": {}, sp_label: {}}
    for idx, r in per.iterrows():
        k = dict(zip(key, idx, strict=True))
        have = [d for d in devs if pd.notna(r.get((d, time), np.nan))]
        if len(have) < 2:
            continue
        cells = [
            D.Cell(k["method"], k["method"], "name", href=method_href.get(k["method"], "")),
            D.Cell(k["backend"], k["backend"]),
            D.Cell(k["family"], k["family"]),
            D.Cell(D.shape_label(k), _f(k["seq_len"])),
        ]
        for d in devs:
            pct = r.get((d, share), np.nan) if share else np.nan
            if pd.isna(pct):
                p, tf = peak(d, str(k["dtype"])), r.get((d, rate), np.nan) if rate else np.nan
                pct = 100 * tf / p if p and pd.notna(tf) else np.nan
            sp = r.get((d, speedup), np.nan) if speedup else np.nan
            cells += [
                _cell(time, time_unit, r.get((d, time), np.nan)),
                _cell(share or "", "%", pct),
                _cell("", "x", sp),
            ]
            group = f"{k['pair']} N{_f(k['seq_len']) or 0:g}"
            for what, v in ((f"{share_label} (%)", pct), (sp_label, sp)):
                if pd.notna(v):
                    bars[what].setdefault(group, {})[d] = float(v)
        t.rows.append((k["family"], cells))
    return t, {what: groups for what, groups in bars.items() if groups}
