"""Turn a p9bench JSON with a gofer9p and a diod column into a Markdown ratio table.

Ratios are "how many times better gofer9p is" (>1 is better, whatever the unit's
direction), because absolute times on this shared 2-core VM are noise.  The CPU
columns are p9bench's server CPU (utime+stime of the server's process tree) per
unit of work (us per op/entry/file; ms per MiB for the MiB/s rows), and the CPU ratio is diod's over
ours: it is much less disturbed by other load on the machine than wall-clock
rates are.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _median(m: Any) -> float | None:
    if isinstance(m, dict):
        for k in ("median", "value"):
            if isinstance(m.get(k), (int, float)):
                return float(m[k])
    if isinstance(m, (int, float)):
        return float(m)
    return None


def main(path: str) -> int:
    data = json.load(open(path))
    defs = data["metric_definitions"]
    targets = {t["label"]: t for t in data["targets"]}
    g, d = targets.get("gofer9p"), targets.get("diod")
    if g is None or d is None:
        print("need targets labelled gofer9p and diod", file=sys.stderr)
        return 2
    lines = [
        f"p9bench {data.get('harness_version', '')}, {data.get('started', '')}, "
        f"export {data['config'].get('export_fstype')}, quick={data['config'].get('quick')}",
        "",
        "| metric | unit | gofer9p | diod | ratio (>1: gofer9p better) "
        "| server CPU/unit gofer9p | diod | CPU ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, md in defs.items():
        gm, dm = g["metrics"].get(key), d["metrics"].get(key)
        gv = _median(gm)
        dv = _median(dm)
        gc = gm.get("server_cpu_per_unit_us") if isinstance(gm, dict) else None
        dc = dm.get("server_cpu_per_unit_us") if isinstance(dm, dict) else None
        if "MiB" in md["unit"]:  # p9bench stores s/MiB there; show ms/MiB
            gc = gc * 1000 if gc else gc
            dc = dc * 1000 if dc else dc
        if gc and dc:
            cpu = f" {gc:.3g} | {dc:.3g} | {dc / gc:.2f}x |"
        else:
            cpu = f" {f'{gc:.3g}' if gc else '-'} | {f'{dc:.3g}' if dc else '-'} | - |"
        if gv is None or dv is None or gv == 0 or dv == 0:
            if gv is None and dv is None:
                continue
            gs = f"{gv:.4g}" if isinstance(gv, float) else gv
            ds = f"{dv:.4g}" if isinstance(dv, float) else dv
            lines.append(f"| {md['label']} | {md['unit']} | {gs} | {ds} | n/a |{cpu}")
            continue
        ratio = gv / dv if md["higher_is_better"] else dv / gv
        lines.append(f"| {md['label']} | {md['unit']} | {gv:.4g} | {dv:.4g} | {ratio:.2f}x |{cpu}")
    for label, t in (("gofer9p", g), ("diod", d)):
        sess = t.get("sessions") or t["metrics"].get("sessions")
        if sess:
            lines.append("")
            lines.append(f"{label} sessions: `{json.dumps(sess)}`")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
