"""``difrep study FILE [section.option=value ...]``: run a study file (configs/studies/*.yaml; docs/study.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..study import Study, load_study

STUDIES = Path(__file__).resolve().parents[3] / "configs" / "studies"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a study file: stages, findings and one report (resumes)",
                       description="Run the stages of a study file (configs/studies/*.yaml) into its folder and write "
                       "report.md and results.json. Options can be overridden as section.option=value (e.g. "
                       "stages.sweep.timesteps=[10,50] or seeds=[0]). Rerun the same command to continue: finished "
                       "stages, cache shards, probe cells and training runs are kept; a changed setting reruns only "
                       "the stages that depend on it.")
    p.add_argument("config", help="study file (configs/studies/demo.yaml, ...)")
    p.add_argument("--stages", help="comma-separated stages to run now (and those they read); default: all")
    p.add_argument("--print-config", action="store_true", help="print the resolved study file and exit")
    p.set_defaults(run=run, accepts_extra=True)


def study_file(name: str) -> Path:
    """A study file shipped in configs/studies (``demo`` -> configs/studies/demo.yaml)."""
    path = STUDIES / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"{path}: the study file is missing (difrep runs its shipped studies from a source checkout)")
    return path


def run_file(config: str | Path, overrides: list[str], stages: str | None = None, print_config: bool = False) -> int:
    spec = load_study(config, overrides)
    if print_config:
        import yaml

        print(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        return 0
    study = Study(spec)
    study.run(stages.split(",") if stages else None)
    for name, result in study.results.items():
        for run in result.get("runs", []):
            if run["values"]:
                print(f"{name}: {run['name']:40} {result['metric']} {run['mean']:5.1f} +- {run['std']:.1f}")
        if "chosen" in result and study.stages[name].kind != "scenes":
            print(f"{name}: chosen {', '.join(f'{k}={v}' for k, v in result['chosen'].items() if not isinstance(v, list))}")
    print(f"report: {study.out / 'report.md'}")
    return 0


def run(args: argparse.Namespace, extra: list[str]) -> int:
    bad = [x for x in extra if "=" not in x]
    if bad:
        raise UserError(f"unexpected argument(s) {bad}: overrides look like section.option=value")
    return run_file(args.config, extra, args.stages, args.print_config)
