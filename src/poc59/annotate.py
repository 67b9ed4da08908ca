"""`python -m poc59.annotate push|pull ...`: the Label Studio correction loop (`--help`).

push: a model's predictions on unlabelled scans as pre-annotations in a Label Studio project, most useful
scans first (`poc59.annotation.push`); pull: the submitted corrections as pairs in a dataset folder
(`poc59.annotation.pull`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from poc59.core.cli import DONE, PARTIAL, Command, Key, run_command
from poc59.core.config import SettingError

log = logging.getLogger("poc59.annotate")

TOKEN_ENV = "LABEL_STUDIO_API_KEY"  # label-studio-sdk's name for it

CLI = Command(
    prog="python -m poc59.annotate",
    summary="The Label Studio correction loop. push: predict unlabelled scans, rank them by how much a correction "
    "is worth (mean entropy + a rare-class bonus), upload them to a Label Studio project with poc59's prediction "
    "as a pre-annotation, and write the ranking CSV. pull: turn the project's submitted annotations into image/mask "
    "pairs in a dataset folder (ARTeFACT layout, unlabelled pixels 255, provenance in metadata.csv).",
    verbs=("push", "pull"),
    examples=(
        "python -m poc59.annotate push run_dir=outputs/runs/r0 input=scans/ url=http://localhost:8080 "
        "project=corrections ranking=corrections.csv",
        "python -m poc59.annotate pull url=http://localhost:8080 project=corrections dataset=data/corrections",
    ),
    keys=(
        Key("url", str, "the Label Studio server", default="http://localhost:8080"),
        Key("token", str, f"a personal access token (or legacy token); default: ${TOKEN_ENV}", default=""),
        Key(
            "project",
            str,
            "the project's title (push creates it; reused when its labels match) or its id",
            default="poc59 corrections",
        ),
        Key("ckpt", str, "push: a checkpoint (.ckpt) or exported model (.onnx, .pt)"),
        Key("run_dir", str, "push: a run folder (its best checkpoint)"),
        Key("input", str, "push: the unlabelled scans (an image, a folder or a glob)"),
        Key("ranking", str, "push: the ranking CSV written", default="ranking.csv"),
        Key(
            "rare",
            list,
            "push: the rare classes earning the bonus (default: Dust,Scratch,Hair,Burn marks where present)",
        ),
        Key("rare_bonus", float, "push: the bonus in full from 1 % of a scan predicted rare", default=0.5),
        Key("device", str, "push: cpu | cuda | cuda:N | auto", default="cpu"),
        Key("threads", Any, "push: CPU threads (auto | N)", default="auto"),
        Key("dataset", str, "pull: the dataset folder the pairs go to (made when missing)"),
        Key(
            "split",
            str,
            "pull: the first round's <run>/split.json; writes <dataset>/split_corrections.json = it with every "
            "pulled pair in training (train the next round with data.split_file= that file)",
        ),
        Key("overwrite", bool, "push: replace ranking=; pull: replace pairs whose annotation changed", default=False),
    ),
    notes="Exit 0 done; 2 a setting, the server (down, token refused) or a project whose labels differ (nothing "
    "written); 3 pull done but some annotations were skipped (each named, with the reason); 1 a bug.",
    error=SettingError,
)
USER_ERRORS = (
    "poc59.annotation.client:LabelStudioError",
    "poc59.annotation.push:PushError",
    "poc59.annotation.pull:PullError",
)
PUSH_KEYS = (
    "url",
    "token",
    "project",
    "ckpt",
    "run_dir",
    "input",
    "ranking",
    "rare",
    "rare_bonus",
    "overwrite",
    "device",
    "threads",
)
PULL_KEYS = ("url", "token", "project", "dataset", "overwrite", "split")


def _given(options: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    other = sorted(k for k in options if k != "verb" and k not in keys)
    if other:
        raise SettingError(
            f"{', '.join(f'{k}=' for k in other)}: not a key of annotate {options['verb']} (keys: {', '.join(keys)})"
        )
    chosen = {k: v for k, v in options.items() if k in keys}
    chosen["token"] = chosen.get("token") or os.environ.get(TOKEN_ENV, "")
    return chosen


def _act(options: dict[str, Any]) -> int:
    if options["verb"] == "push":
        return _push(_given(options, PUSH_KEYS))
    return _pull(_given(options, PULL_KEYS))


def _push(given: dict[str, Any]) -> int:
    from poc59.annotation.push import PushSettings, push
    from poc59.core.threads import set_threads

    set_threads(given.get("threads", "auto"))
    ranked = push(PushSettings(**given))
    for rank, item in enumerate(ranked, 1):
        print(f"{rank}\ttask {item.task_id}\t{item.score.score:.4f}\t{item.path.name}\t{','.join(item.classes)}")
    print(f"ranking: {given.get('ranking', 'ranking.csv')}")
    return DONE


def _pull(given: dict[str, Any]) -> int:
    from poc59.annotation.pull import PullSettings, pull

    report = pull(PullSettings(**given))
    for o in report.outcomes:
        print(f"{o.action}\ttask {o.task}\t{o.pair or ''}\t{o.reason}".rstrip())
    print(
        f"project {report.project.title!r} (id {report.project.id}) -> {report.dataset}: "
        f"{report.count('added')} added, {report.count('changed')} changed, "
        f"{report.count('unchanged')} unchanged, {report.count('skipped')} skipped"
    )
    if report.split:
        print(f"split: {report.split} (the first round's validation and test images; every pulled pair in training)")
    for o in report.problems:
        log.error("task %d skipped: %s", o.task, o.reason)
    return PARTIAL if report.problems else DONE


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _act, USER_ERRORS, log)


if __name__ == "__main__":
    sys.exit(main())
