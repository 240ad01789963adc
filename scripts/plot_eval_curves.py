#!/usr/bin/env python
"""Draw one fidelity-realism curve from several `oftsr eval` results.csv files, e.g. a
teacher evaluated once (slow) and a student evaluated later on the same images.

    python scripts/plot_eval_curves.py eval-old/results.csv:teacher eval-new/results.csv \\
        -o curve.png --title "Set14, x4 bicubic"

`FILE.csv:PREFIX` keeps only the rows whose method starts with PREFIX (and the interpolation
row: bicubic, or nearest);
`FILE.csv:PREFIX=LABEL` also names them LABEL (no colon in it) in the plot, e.g. `flowsr/results.csv:student=FlowSR`.

Rows are drawn in the order given. The first file's interpolation row is kept, later ones
are dropped (they are identical for the same data and seed; a warning says when they are
not, as for another data set). Where the files have their `run.json` beside them, a warning
also says when the runs differ in data, seed or LR (a student's scores move with its seed
even where the bicubic rows agree). Model numbers in labels ("student 1", from files of
earlier versions) are removed, unless two models of one role share a file. A name that an earlier file already drew
gets its folder's name added (its path, where an earlier file's folder had that name too: the
default `eval/`), so two students' t points are never joined into one curve.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from oftsr.training.evaluate import plot_curve, read_table


# What two runs drawn together must share (run.json), or their points do not compare.
SAME_RUN = ("data_sha256", "lr_sha256", "lr", "seed")


# How version 0.14 wrote "lr" for made LR, before it named the chain (it used these settings).
OLD_LR = {"made (realesrgan)": "made (realesrgan full chain)", "made (noisy_avgpool)": "made (noisy_avgpool sigma_y 0.05)"}


def run_record(results_csv: str) -> dict | None:
    """The run.json beside a results.csv (None where there is none, or it is unreadable)."""
    try:
        run = json.loads((Path(results_csv).parent / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(run, dict):
        return None
    return {**run, "lr": OLD_LR.get(run.get("lr"), run.get("lr"))} if "lr" in run else run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", help="results.csv files written by `oftsr eval`, each optionally :PREFIX")
    p.add_argument("-o", "--output", required=True, help="the .png to write")
    p.add_argument("--title", default="", help="plot title")
    args = p.parse_args(argv)

    rows, interpolation, drawn, first_run = [], None, set(), None
    for n, spec in enumerate(args.csv):
        path, sep, prefix = spec.rpartition(":")
        if not sep or not path.endswith(".csv"):  # no filter (or a ':' inside the path itself)
            path, prefix = spec, ""
        run = run_record(path)
        if n == 0:
            first_run = run  # the one the others are compared with, as its bicubic row is
        elif run is not None and first_run is not None:
            differ = [k for k in SAME_RUN if k in run and k in first_run and run[k] != first_run[k]]
            if differ:
                print(f"warning: {path}: its run differs from the first file's in {', '.join(differ)} (run.json): "
                      f"its points do not compare with the first's", file=sys.stderr)
        prefix, _, label = prefix.partition("=")
        kept, labels = 0, {}
        table = read_table(path)
        numbered = [re.match(r"^(student|teacher) \d+", r.method) for r in table]
        roles = [m.group(1) for m in dict((m.group(0), m) for m in numbered if m).values()]
        for row in table:
            if row.is_interpolation:
                if interpolation is None:
                    interpolation = row
                    rows.append(row)
                elif abs(row.mean("psnr_y") - interpolation.mean("psnr_y")) > 1e-6:
                    print(f"warning: {path}: its {row.method} row differs from the first file's: other data, or "
                          f"another seed?", file=sys.stderr)
                continue
            if not row.method.startswith(prefix):  # an empty prefix keeps every row
                continue
            name = row.method
            if label:
                name = label
            elif (m := re.match(r"^(student|teacher) \d+", name)) and roles.count(m.group(1)) == 1:
                name = m.group(1) + name[m.end():]  # the only model of its role in the file: no number
            if name not in labels:  # a name an earlier file drew: its folder's, else its path, added
                candidates = (name, f"{name} ({Path(path).parent.name})", f"{name} ({path})")
                labels[name] = next(c for c in candidates if c not in drawn)
            row.method = labels[name]
            rows.append(row)
            kept += 1
        if not kept:
            raise SystemExit(f"error: no row of {path} matches {prefix!r}")
        drawn |= set(labels.values())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {plot_curve(rows, Path(args.output), args.title)}")


if __name__ == "__main__":
    main()
