"""CLI verb `ab`: run an A/B config, print where the report is and what it found."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import UsageError, emit, read_yaml_file
from .paths import output_folder


def cmd_ab(a: argparse.Namespace) -> int:
    read_yaml_file(a.config, "A/B config")
    if a.out:
        output_folder(a.out, "--out")
    if not a.give_up_after > 0:
        raise UsageError(f"--give-up-after is a number of seconds > 0, got {a.give_up_after:g}")
    from ..ab.config import AbConfigError, load_config
    from ..ab.run import print_failures, run_ab
    from ..ab.tune import write_defaults
    from ..generation.dispatch import DispatchError

    config = load_config(a.config)
    out = Path(a.out) if a.out else config.path.parent / "ab_runs" / config.name
    try:
        run = run_ab(config, out, servers=a.server or None, depth=a.depth, retries=a.retries, progress=not a.json,
                     retry_failed=a.retry_failed, give_up_after=a.give_up_after)
    except DispatchError as e:
        raise DispatchError(f"{e}; finished outputs are kept in {out}") from e
    print_failures(run)
    t = run.timings
    lines = [f"{out}: {len(run.rows)} outputs scored ({run.missing} missing); report {run.files.get('html')}",
             f"ComfyUI executed {t.get('comfy_this_run_s', 0):.1f} s this run; dispatch {t['dispatch_s']:.1f} s, "
             f"scoring {t['scoring_s']:.1f} s, report {t.get('report_s', 0):.1f} s, total {t['total_s']:.1f} s"]
    lines += [f"note: {n}" for n in run.notes]
    data = {"out": str(out), "outputs": len(run.rows), "missing": run.missing, "failed": run.failed,
            "files": run.files, "timings": t, "notes": run.notes}
    code = 1 if run.failed else 0
    if a.write_defaults:
        if run.failed or run.missing:
            print("error: --write-defaults needs every output; rerun (with --retry-failed) first", file=sys.stderr)
            code = 1
        else:
            try:
                tuned = write_defaults(config, run.template, run.rows)
            except AbConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                code = 1
            else:
                lines.append(f"wrote tuned defaults to {config.vault}: {tuned.describe()}")
                data["tuned"] = tuned.__dict__
    emit(data, a.json, "\n".join(lines))
    return code
