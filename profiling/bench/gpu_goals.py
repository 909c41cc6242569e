"""The GPU suite's last section: the measured figures against the goals (issues 11 and 15), as one table.

    python -m profiling.bench.gpu_goals --dir gpu-out [--out goals.csv]

Reads what the other sections wrote (engine.csv, sambert.csv, service.csv, correctness.csv); a figure whose file or
row is missing reads "not measured". The goals are for the embedded engine at its shipped settings (FP16 table + CUDA
graphs); Sambert's figures are listed beside them without a goal. Goals not met are findings: the exit stays 0.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

START_UP_CHECK_MAX_S = 5.0  # "at most a few seconds at start-up": the half check plus the replay check


@dataclass(frozen=True)
class Goal:
    """One line of the table."""

    goal: str
    target: str  # e.g. ">= 50", "<= 0.15", "" (figure only)
    measured: float  # NaN: not measured
    where: str  # the setting and file it comes from

    @property
    def met(self) -> str:
        if math.isnan(self.measured):
            return "not measured"
        if not self.target:
            return ""
        op, value = self.target.split()
        return "yes" if (self.measured >= float(value) if op == ">=" else self.measured <= float(value)) else "NO"


def read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    try:
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def pick(df: pd.DataFrame, column: str, **where) -> float:
    """The first ok row's column where every `where` column equals its value ("fp16*": starts with fp16); NaN if none."""
    if df.empty or column not in df:
        return float("nan")
    rows = df[df["status"].isna() | df["status"].astype(str).eq("ok")] if "status" in df else df  # service: no status if measured
    for key, value in where.items():
        if key not in rows:
            return float("nan")
        if isinstance(value, str):
            text = rows[key].astype(str)
            rows = rows[text.str.startswith(value[:-1]) if value.endswith("*") else text.eq(value)]
        else:
            rows = rows[rows[key] == value]
    return float(rows[column].iloc[0]) if len(rows) else float("nan")


def goals(folder: Path) -> list[Goal]:
    engine, sambert, service, checks = (read(folder, f) for f in ("engine.csv", "sambert.csv", "service.csv", "correctness.csv"))
    tput = "throughput_audio_s_per_s"
    out = []
    for batch, target in ((1, ">= 50"), (8, ""), (32, ">= 520")):
        out.append(Goal(f"embedded batch {batch} throughput (audio s/s)", target,
                        pick(engine, tput, asked="fp16", decoder="graphs", batch=batch), "engine.csv: fp16 table + graphs"))
    for batch in (1, 32):
        half, full = (pick(engine, tput, asked=a, decoder="graphs", batch=batch) for a in ("fp16", "fp32"))
        out.append(Goal(f"embedded FP16 / FP32 with graphs, batch {batch}", ">= 1.3", half / full, "engine.csv"))
    for batch in (1, 32):
        graphs, dynamic = (pick(engine, tput, asked="fp16", decoder=d, batch=batch) for d in ("graphs", "dynamic"))
        out.append(Goal(f"embedded graphs / dynamic, fp16, batch {batch}", "", graphs / dynamic, "engine.csv"))
    load = service[service["kind"] == "load"] if "kind" in service else service
    first = service[service["kind"] == "first_audio"] if "kind" in service else pd.DataFrame()
    out += [
        Goal("service p95 latency, 8 clients (s)", "<= 0.15",
             pick(load, "p95_latency_s", precision="fp16*", cuda_graphs=True, clients=8), "service.csv: fp16 + graphs, max batch 8"),
        Goal("service p50 latency, 8 clients (s)", "", pick(load, "p50_latency_s", precision="fp16*", cuda_graphs=True, clients=8),
             "service.csv"),
        Goal("service GPU utilisation, 8 clients (%)", ">= 70",
             pick(load, "mean_gpu_util_pct", precision="fp16*", cuda_graphs=True, clients=8), "service.csv"),
        Goal("first audio of a 4-sentence paragraph, streamed (s)", "",
             pick(first, "first_audio_s", precision="fp16*", mode="streamed"), "service.csv: idle service"),
    ]
    startup = checks[checks["check"].astype(str).str.startswith("start-up (embedded")] if "check" in checks else pd.DataFrame()
    first_row = lambda column: float(startup[column].iloc[0]) if len(startup) and column in startup else float("nan")  # noqa: E731
    out.append(Goal("start-up self-check time, embedded (s)", f"<= {START_UP_CHECK_MAX_S:g}", first_row("value"),
                    "correctness.csv: half check + replay check"))
    out.append(Goal("start-up CUDA graph capture, embedded (s)", "", first_row("capture_s"),
                    f"correctness.csv: {first_row('graphs'):.0f} graphs, warm-ups included"))
    shipped = checks[checks["check"].astype(str).str.match(r"self-check (embedded fp16|embedded fp32|sambert fp16|sambert fp32)")] \
        if "check" in checks else pd.DataFrame()
    failed = float((shipped["result"] == "FAIL").sum()) if len(shipped) else float("nan")
    out.append(Goal("self-check verdicts failed at the shipped settings", "<= 0", failed,
                    f"correctness.csv: {len(shipped)} verdicts" if len(shipped) else "correctness.csv"))
    for batch in (1, 32):
        out.append(Goal(f"sambert batch {batch} throughput (audio s/s)", "",
                        pick(sambert, "throughput (audio s / s)", precision="fp16", decoder="graphs", batch=batch),
                        "sambert.csv: fp16 + graphs, random weights of the real size"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="gpu-out", help="the suite's results folder")
    p.add_argument("--out", help="CSV of the table")
    args = p.parse_args(argv)
    table = pd.DataFrame([{"goal": g.goal, "target": g.target, "measured": g.measured, "met": g.met, "from": g.where}
                          for g in goals(Path(args.dir))])
    with pd.option_context("display.width", 200, "display.max_colwidth", 60, "display.float_format", "{:.3g}".format):
        print(table.to_string(index=False))
    measured = int(table["measured"].notna().sum())
    print(f"\n{measured} of {len(table)} figures measured; goals met: {int((table['met'] == 'yes').sum())}, "
          f"not met: {int((table['met'] == 'NO').sum())}")
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
