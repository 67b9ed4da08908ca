"""MkDocs hook that writes the manual's Configuration reference (`reference/config.md`) from `conf/` at every
build: every config group with its options and default, every key of the default run with its default and
meaning (the comments beside the keys in conf/, as `python -m poc59.train --help` shows them), every key each
option of a group sets, and the experiment and Hydra presets as their YAML. Nothing in it is typed by hand, so
the page cannot drift from the config.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from poc59.core.config import config_dir, config_groups
from poc59.core.overrides import compose_train, config_keys

PAGE = "reference/config.md"
VERBATIM = ("experiment", "hydra/")  # presets that override keys anywhere: shown as the file itself


def _cell(value: Any, code: bool = False) -> str:
    """Text for a Markdown table cell: pipes escaped; outside code, `<` and `>` too (not read as HTML)."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if code else text.replace("<", "&lt;").replace(">", "&gt;")


def _code(value: Any) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = str(value)
    return f"`{_cell(text, code=True)}`" if text else "`''`"


def _key_table(rows: list[tuple[str, Any, str]]) -> list[str]:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | {_code(value)} | {_cell(meaning)} |" for key, value, meaning in rows]
    return lines


def _about(text: str) -> str:
    """The comment lines a config file starts with (what the option is), as one paragraph."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    return _cell(" ".join(lines))


def render() -> str:
    """The reference page's Markdown, from the config files in `poc59.core.config.config_dir()`."""
    root = config_dir()
    groups = config_groups()
    cfg = compose_train([], hydra=True)
    chosen = OmegaConf.to_container(cfg.hydra.runtime.choices)
    lines = [
        "# Configuration reference",
        "",
        "Generated from `conf/` by `docs/hooks/config_reference.py` each time the manual is built: edit the",
        "comments beside the keys in `conf/`, not this page. `python -m poc59.train --help` prints the same",
        "keys for any choice of groups (`python -m poc59.train encoder=custom --help`), and",
        "`python -m poc59.train --cfg job` the whole composed config. How to pass them:",
        "[Training and configuration](../training.md).",
        "",
        "## Groups",
        "",
        "Pick an option with `group=option` (`encoder=segformer_b3`, `hydra/launcher=slurm`).",
        "",
        "| group | options | default |",
        "|---|---|---|",
    ]
    for group, options in groups.items():
        default = chosen.get(group)
        lines.append(
            f"| `{group}` | {', '.join(f'`{o}`' for o in options)} | {_code(default) if default else 'none'} |"
        )
    lines += ["", "## Every key of the default run", ""]
    lines += _key_table(config_keys(cfg, chosen))
    for group, options in groups.items():
        lines += ["", f"## `{group}`", ""]
        for option in options:
            lines += [f"### `{group}={option}`", ""]
            file = root / group / f"{option}.yaml"
            about = _about(file.read_text())
            lines += [about, ""] if about else []
            if group.startswith(VERBATIM):
                lines += [f"`conf/{group}/{option}.yaml`:", "", "```yaml", file.read_text().rstrip(), "```", ""]
                continue
            composed = compose_train([f"{group}={option}"], hydra=True)
            picked = OmegaConf.to_container(composed.hydra.runtime.choices)
            rows = [row for row in config_keys(composed, picked) if row[0].startswith(f"{group}.")]
            lines += [*_key_table(rows), ""]
    return "\n".join(lines).rstrip() + "\n"


def on_files(files: Any, config: Any) -> Any:
    """MkDocs event: add the generated page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files
