"""Every picture of the manual (docs/images/), made again from a real run, so they follow the outputs:

    python scripts/screenshots/all.py [run_dir=<a quickstart run>] [only=name,name] [out=docs/images] [scan=<image>]

Without `run_dir=` it first trains the model the captions name, `python -m poc59.train experiment=quickstart
threads=1 seed=1` (a few CPU minutes; its run folder goes under a temporary folder). The run is copied before
anything writes into it, so a run of yours is left as it is. Each picture is written to `out=` whole or not at
all (poc59.core.atomic); the paths written are printed on stdout, one a line.

The pictures (`PICTURES`), each written to `out=` as <name>.png (`label_studio` as label_studio_task.png):
- `training_curves`: the run's own training_curves.png.
- `evaluate_iou_bars`: `python -m poc59.evaluate run_dir=<run>`'s evaluation/val/iou_bars.png.
- `predict_overlay`: `python -m poc59.predict` on the synthetic image `scan=` (default syn00013 of the run's
  data): its <stem>_overlay.png.
- `report`, `serve`, `mirador`, `label_studio`: the screenshot scripts beside this one (or in `scripts=`), each
  called as `python scripts/screenshots/<name>.py ckpt=<run>/checkpoints/best.ckpt scan=<image> out=<png>`
  (`serve.py` takes the same three as positional arguments): exit 0 and the picture written; exit 2 when
  something it needs, a browser or a server, is missing, which it names.

Not made here: `compare_per_class_iou` (two quickstart configurations, 128 and 160 px, compared) and
`mlflow-run` (tests/tracking/test_mlflow.py takes it from a real MLflow server).

Exit 0 when every picture asked for was made; 2 when one could not be (each named on stderr: a script not
written yet, or what it lacked), the others made all the same; 1 a bug.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

CHECKOUT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
QUICKSTART = ["experiment=quickstart", "threads=1", "seed=1"]  # the captions' model
SCRIPTS = ("report", "serve", "mirador", "label_studio")  # scripts/screenshots/<name>.py, written with those features
POSITIONAL = {"serve"}  # scripts that take <model> <scan> <out> rather than ckpt= scan= out=
FILES = {"label_studio": "label_studio_task"}  # a picture whose file is not named after it (docs/images/<file>.png)
KEYS = {"run_dir", "only", "out", "scan", "scripts"}


# a picture's maker: (the run, the scan, a work folder, the screenshot scripts' folder) -> the PNG's bytes
Picture = Callable[[Path, Path, Path, Path], bytes]


class NotMade(Exception):
    """A picture that could not be made, and why (a missing script, or what the script lacked)."""


def _poc59(command: str, *args: str) -> str:
    """`python -m poc59.<command> <args>`; its stdout. A refusal or a crash is raised with its stderr."""
    done = subprocess.run([sys.executable, "-m", f"poc59.{command}", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"python -m poc59.{command} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done.stdout


def _scan(run: Path, scan: str) -> Path:
    """The image `scan` (a path, or an id of the run's own data folder)."""
    if Path(scan).is_file():
        return Path(scan)
    root = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    found = sorted((root / "images").glob(f"{scan}.*"))
    if not found:
        raise NotMade(f"scan={scan}: no such file, and no image {scan}.* in {root / 'images'}")
    return found[0]


def training_curves(run: Path, scan: Path, work: Path, scripts: Path) -> bytes:
    return (run / "training_curves.png").read_bytes()


def evaluate_iou_bars(run: Path, scan: Path, work: Path, scripts: Path) -> bytes:
    _poc59("evaluate", f"run_dir={run}", "threads=1")
    return (run / "evaluation" / "val" / "iou_bars.png").read_bytes()


def predict_overlay(run: Path, scan: Path, work: Path, scripts: Path) -> bytes:
    maps = work / "maps"
    _poc59("predict", f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"input={scan}", f"output={maps}", "iiif=false")
    return (maps / f"{scan.stem}_overlay.png").read_bytes()


def _script(name: str) -> Picture:
    def make(run: Path, scan: Path, work: Path, scripts: Path) -> bytes:
        script = scripts / f"{name}.py"
        if not script.is_file():
            raise NotMade(f"{name}: {script} is not written yet")
        shot = work / f"{name}.png"
        ckpt = run / "checkpoints" / "best.ckpt"
        given = [ckpt, scan, shot] if name in POSITIONAL else [f"ckpt={ckpt}", f"scan={scan}", f"out={shot}"]
        done = subprocess.run([sys.executable, str(script), *map(str, given)], capture_output=True, text=True)
        if done.returncode == 2:
            raise NotMade(f"{name}: {script} could not run here: {done.stderr.strip()[-500:]}")
        if done.returncode != 0 or not shot.is_file():
            raise RuntimeError(f"{script} exited {done.returncode} without {shot}:\n{done.stderr[-3000:]}")
        return shot.read_bytes()

    return make


PICTURES: dict[str, Picture] = {
    "training_curves": training_curves,
    "evaluate_iou_bars": evaluate_iou_bars,
    "predict_overlay": predict_overlay,
    **{name: _script(name) for name in SCRIPTS},
}


def main(argv: list[str]) -> int:
    from poc59.core.atomic import write_bytes

    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in KEYS]
    only = [n for n in args.get("only", "").split(",") if n] or list(PICTURES)
    wrong = [n for n in only if n not in PICTURES]
    if unknown or wrong:
        print(
            f"{' '.join(unknown + [f'only={n}' for n in wrong])}: not understood; "
            f"keys run_dir=, only= (of {', '.join(PICTURES)}), out=, scan=, scripts=",
            file=sys.stderr,
        )
        return 2
    out = Path(args.get("out", CHECKOUT / "docs" / "images"))
    scripts = Path(args.get("scripts", HERE)).resolve()
    failed = []
    with tempfile.TemporaryDirectory(prefix="poc59-pictures-") as tmp:
        work = Path(tmp)
        if "run_dir" in args:
            run = Path(shutil.copytree(args["run_dir"], work / "run", symlinks=True))
        else:
            run = Path(_poc59("train", *QUICKSTART, f"run_dir={work / 'run'}").strip().splitlines()[-1])
        scan = _scan(run, args.get("scan", "syn00013"))
        for name in only:
            try:
                picture = PICTURES[name](run, scan, work, scripts)
            except NotMade as why:
                failed.append(str(why))
                continue
            print(write_bytes(out / f"{FILES.get(name, name)}.png", picture), flush=True)
    for why in failed:
        print(f"not made: {why}", file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
