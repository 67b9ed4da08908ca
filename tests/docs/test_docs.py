"""The manual (docs/ and README.md) as a user meets it: it builds with `mkdocs build --strict`, its generated
configuration reference holds every key, and every poc59 command it shows works as shown.

How each shown command is checked (`shown_commands` below finds them on the pages: a command is
`python -m poc59.<name> <arguments>` in a fenced shell block, continuation lines joined, the `# comment` after
it kept apart, or in an inline code span of the text; the arguments of `sbatch ... slurm/<script>.sbatch
<arguments>` are a command too, of `poc59.train`, or `poc59.evaluate` for evaluate.sbatch; a placeholder such
as `<name>` becomes one word, as a user would paste the command with it filled in):
- `--help`: run in this process through the command's own `main`; it answers with its usage, exit 0.
- a command whose comment says `# error: <message>`: run the same way; it is refused (exit 2) with that
  message, and the advice the message gives (`did you mean <key>?`, `its default: <key>=<value>`) is pasted
  into the command, which then parses.
- the quickstart (`python -m poc59.train experiment=quickstart`): run for real, from an empty cache, in a
  fresh process (slow); its log holds the lines the page shows.
- a command without arguments (`python -m poc59.predict` in the text, a module in a tree): the module exists
  and runs with `python -m`.
- every other command needs what CI lacks (a GPU, a SLURM cluster, a dataset at /data/artefact, a trained
  run at a placeholder path), so it is parsed as the command parses it before doing anything: `train` and
  `prepare` compose the config with the overrides (`poc59.core.overrides.check_overrides`: every key exists,
  every value has its key's type, every option of a swept group composes), the other commands read their
  keys through their own table (`CLI.parse`: every key exists, every value converts).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from in_process import command
from poc59.core.cli import HelpRequested
from poc59.core.overrides import ConfigCommand, check_overrides

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SHELL = ("", "bash", "sh", "shell", "console")  # fenced blocks whose lines are commands (untagged: output too)
_PLACEHOLDER = re.compile(r"<[^<>`]+>")
_INLINE = re.compile(r"`([^`]*python -m poc59\.[^`]*)`")
_SBATCH = re.compile(r"(?:^|/)slurm/(\w+)\.sbatch$")
_END = {"|", "||", "&&", ";", ")", ">", "2>", ">>"}


@dataclass(frozen=True)
class Shown:
    """One command as a page shows it: where (`page`, 1-based `line`), which command (`name`, the module
    poc59.<name>), its arguments, the comment beside it in a block, and the text as shown."""

    page: str
    line: int
    name: str
    argv: tuple[str, ...]
    comment: str
    text: str
    inline: bool
    sbatch: bool = False

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.name}"


def pages() -> list[Path]:
    """Every page of the manual, and the README."""
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


def _page_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _commands(text: str) -> list[tuple[str, list[str], bool]]:
    """(name, arguments, whether through an sbatch script) of each poc59 command in one shell line (comment
    removed)."""
    if "python -m poc59." not in text and ".sbatch" not in text:
        return []  # output, or another program's command (its quoting is not ours to read)
    words = shlex.split(_PLACEHOLDER.sub("PLACEHOLDER", text.replace("$(", " ")), comments=True)
    if "$(" in text:  # run=$(python -m poc59.train ...): the command ends at its closing parenthesis
        words = [w for word in words for w in ((word[:-1], ")") if word.endswith(")") else (word,)) if w]
    found = []
    for i, word in enumerate(words):
        name, sbatch = None, False
        if (
            word == "-m"
            and i + 1 < len(words)
            and words[i + 1].startswith("poc59.")
            and i > 0
            and words[i - 1].endswith("python")
        ):
            name, start = words[i + 1].removeprefix("poc59.").rstrip(")"), i + 2
        elif _SBATCH.search(word):
            name, start, sbatch = ("evaluate" if _SBATCH.search(word).group(1) == "evaluate" else "train"), i + 1, True
        if name is None:
            continue
        argv = []
        for arg in words[start:]:
            if arg in _END:
                break
            if arg != "...":  # prose's "and more arguments"
                argv.append(arg)
        found.append((name, argv, sbatch))
    return found


def _comment(line: str) -> str:
    """The `# comment` after a command (outside quotes), without the `#`."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i + 1 :].strip()
    return ""


def shown_commands() -> list[Shown]:
    """Every poc59 command of every page, in page order."""
    found: list[Shown] = []
    for path in pages():
        lines = path.read_text(encoding="utf-8").splitlines()
        fence, lang, pending, pending_at = None, "", "", 0
        prose: list[tuple[int, str]] = []
        for number, raw in enumerate(lines, 1):
            stripped = raw.strip()
            if fence is None and stripped.startswith("```"):
                fence, lang = stripped[:3], stripped[3:].strip().split(" ")[0]
                continue
            if fence is not None and stripped.startswith(fence):
                fence = None
                continue
            if fence is None:
                prose.append((number, raw))
                continue
            if lang not in SHELL:
                continue
            pending_at = pending_at if pending else number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            line, pending = pending + stripped, ""
            for name, argv, sbatch in _commands(line):
                found.append(
                    Shown(_page_name(path), pending_at, name, tuple(argv), _comment(line), line, False, sbatch)
                )
        found += _inline(path, prose)
    return found


def _inline(path: Path, prose: list[tuple[int, str]]) -> list[Shown]:
    """The commands in inline code spans of the text outside fenced blocks (a span may wrap a line)."""
    text = "\n".join(raw for _, raw in prose)
    starts = [0]
    for _, raw in prose:
        starts.append(starts[-1] + len(raw) + 1)
    out = []
    for match in _INLINE.finditer(text):
        at = next(i for i, s in enumerate(starts) if s > match.start()) - 1
        span = " ".join(match.group(1).split())
        for name, argv, _ in _commands(span):
            out.append(Shown(_page_name(path), prose[at][0], name, tuple(argv), "", span, True))
    return out


def shown_occurrences() -> int:
    """How many times `python -m poc59.` appears on the pages (inside code or not): what extraction must
    account for, so a command written in a way the reader above misses fails a test instead of going unchecked."""
    return sum(path.read_text(encoding="utf-8").count("python -m poc59.") for path in pages())


SHOWN = shown_commands()
QUICKSTART = ("train", ("experiment=quickstart",))
_ADVICE = (
    re.compile(r"unknown key '(?P<wrong>[^']+)'; did you mean (?P<right>[\w./]+)\?"),
    re.compile(r"(?P<wrong>[\w./]+)=\S+: \S+ takes .*\(its default: (?P<right>[\w./]+=[^)\s]+)\)"),
)


def _kind(shown: Shown) -> str:
    if shown.name == "PLACEHOLDER":
        return "pattern"  # python -m poc59.<name>: the form, not a command
    if "--help" in shown.argv or "-h" in shown.argv:
        return "help"
    if shown.comment.startswith("error:"):
        return "refused"
    if (shown.name, shown.argv) == QUICKSTART:
        return "quickstart"
    if not shown.argv:
        return "mention"
    return "parse"


def _of(kind: str) -> list[pytest.param]:
    return [pytest.param(s, id=s.id) for s in SHOWN if _kind(s) == kind]


def _parse(name: str, argv: list[str]) -> None:
    """What the command checks of its arguments before it touches anything (module docstring)."""
    cli = importlib.import_module(f"poc59.{name}").CLI
    if isinstance(cli, ConfigCommand):
        check_overrides(argv, cli.prog)
    else:
        cli.parse(argv)


def test_every_command_on_the_pages_is_found():
    """Each `python -m poc59.` on the pages is a command the tests below check (or the `<name>` pattern), and
    the manual shows the commands a newcomer needs: a command written in a way shown.py cannot read fails
    here instead of going unchecked."""
    direct = [s for s in SHOWN if not s.sbatch]
    assert len(direct) == shown_occurrences()
    names = {s.name for s in SHOWN}
    assert {"train", "prepare", "evaluate", "compare", "predict", "export", "weights", "sweep_status"} <= names
    assert any(s.sbatch for s in SHOWN)
    assert sum(_kind(s) == "parse" for s in SHOWN) > 40


@pytest.mark.parametrize("shown", _of("parse"))
def test_a_command_shown_parses(shown: Shown):
    try:
        _parse(shown.name, list(shown.argv))
    except HelpRequested:
        pytest.fail(f"{shown.id}: {shown.text} asks for help, not a run")
    except Exception as err:  # the command's refusal, shown with where the page has it
        pytest.fail(f"{shown.id}: {shown.text}\n  refused: {type(err).__name__}: {err}")


@pytest.mark.parametrize("shown", _of("help"))
def test_a_help_shown_answers(shown: Shown, capsys, monkeypatch):
    answer = command(shown.name, list(shown.argv), capsys, monkeypatch)
    assert answer.returncode == 0, f"{shown.id}: {shown.text}\n{answer.stderr}"
    assert answer.stdout.startswith("usage: "), answer.stdout[:500]


@pytest.mark.parametrize("shown", _of("refused"))
def test_an_error_shown_is_the_error_given_and_its_advice_works(shown: Shown, capsys, monkeypatch):
    said = shown.comment.removeprefix("error:").strip()
    answer = command(shown.name, list(shown.argv), capsys, monkeypatch)
    assert answer.returncode == 2, f"{shown.id}: {shown.text}\n{answer.stderr}"
    assert said in answer.stderr, f"{shown.id}: the page says {said!r}; the command said:\n{answer.stderr}"
    pasted_any = False
    for advice in _ADVICE:
        found = advice.search(answer.stderr)
        if found is None:
            continue
        pasted_any = True
        wrong, right = found["wrong"], found["right"]
        pasted = [
            right if "=" in right else f"{right}={a.split('=', 1)[1]}" for a in shown.argv if a.startswith(f"{wrong}=")
        ]
        assert pasted, f"{shown.id}: the advice {found[0]!r} names no argument of {shown.text}"
        _parse(shown.name, [a for a in shown.argv if not a.startswith(f"{wrong}=")] + pasted)
    advises = "did you mean" in answer.stderr or "its default:" in answer.stderr
    assert pasted_any or not advises, f"{shown.id}: advice this test cannot paste yet:\n{answer.stderr}"


@pytest.mark.parametrize("shown", _of("mention"))
def test_a_command_named_in_the_text_exists(shown: Shown):
    module = f"poc59.{shown.name}"
    assert importlib.util.find_spec(module) is not None, f"{shown.id}: no module {module}"
    spec = importlib.util.find_spec(module)
    if spec.submodule_search_locations:  # a package runs with -m through its __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{shown.id}: {module} has no __main__"


def _shown_output(page: Path, after: int) -> list[str]:
    """The lines of the output block a command's block is followed by: on `page`, the command on line `after`
    closes its block at the next fence; the next block must be untagged (output, not commands)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    fences = [i for i in range(after, len(lines)) if lines[i].strip().startswith("```")]
    opened, closed = fences[1], fences[2]  # fences[0] closes the command's own block
    assert lines[opened].strip() == "```", f"{page}:{opened + 1}: the command's output block should be untagged"
    return lines[opened + 1 : closed]


def _as_pattern(shown_line: str) -> re.Pattern[str]:
    """A shown log line as a pattern: `<date time>` any timestamp, `...` anything, a number any number."""
    parts = re.split(r"(<date time>|\.\.\.|\d+(?:\.\d+)?)", shown_line)
    special = {"<date time>": r"\S+ \S+", "...": ".*"}
    return re.compile(
        "".join(
            special.get(p, r"\d+(?:\.\d+)?" if re.fullmatch(r"\d+(?:\.\d+)?", p or "x") else re.escape(p))
            for p in parts
        )
    )


@pytest.mark.slow  # the quickstart as a newcomer runs it: about 3 minutes on a 2-core CPU
def test_the_quickstart_runs_as_shown(tmp_path):
    pages = [s for s in SHOWN if _kind(s) == "quickstart"]
    assert {s.page for s in pages} >= {"README.md", "docs/getting-started.md"}
    env = {**os.environ, "POC59_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}  # an empty cache
    done = subprocess.run(
        [sys.executable, "-m", "poc59.train", *QUICKSTART[1]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = Path(done.stdout.strip().splitlines()[-1])
    run = run if run.is_absolute() else tmp_path / run
    assert (run / "summary.json").is_file() and run.parent == tmp_path / "outputs" / "runs"
    log = done.stderr.splitlines()
    for shown in pages:
        for line in _shown_output(ROOT / shown.page, shown.line):
            pattern = _as_pattern(line)
            assert any(pattern.fullmatch(got) for got in log), (
                f"{shown.page} shows {line!r}; the log:\n{done.stderr[-3000:]}"
            )


@pytest.mark.slow  # a whole site build, most of it composing every option of every config group
def test_the_manual_builds_strict_with_every_config_key(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None and not os.environ.get("CI"):
        pytest.skip('no mkdocs here (pip install -e ".[docs]"); CI installs it and runs this test')
    assert mkdocs, (
        'CI needs mkdocs for the manual: the install line must hold the docs extra (pip install -e ".[docs]")'
    )
    site = tmp_path / "site"
    built = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-5000:]
    for page in (ROOT / "docs").rglob("*.md"):
        page_dir = page.relative_to(ROOT / "docs").with_suffix("")
        out = site / ("index.html" if page_dir.name == "index" else page_dir / "index.html")
        assert out.is_file(), f"{page} was not built"
    reference = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    from omegaconf import OmegaConf

    from poc59.core.config import config_groups
    from poc59.core.overrides import compose_train, config_keys

    cfg = compose_train([], hydra=True)
    missing = [
        key
        for key, _, _ in config_keys(cfg, OmegaConf.to_container(cfg.hydra.runtime.choices))
        if f"<code>{key}</code>" not in reference
    ]
    assert not missing, f"the configuration reference lacks {missing}"
    options = [f"<code>{g}={o}</code>" for g, opts in config_groups().items() for o in opts]
    assert [o for o in options if o not in reference] == []


_SPAN = re.compile(r"`([^`\s]+)`")
_KEY = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*|[a-z_]+/[a-z_]+")
SYNTAX = {"key", "group"}  # `key=value`, `group=option`: the form, not a key


def _named_keys() -> list[tuple[str, str]]:
    """(page:line, key) of every `key=value` an inline code span of the pages names (no spaces in the span;
    added keys `+key=`, Hydra's own `hydra.*`, environment variables and the form `key=value` left out)."""
    found = []
    for path in pages():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for span in _SPAN.findall(line):
                key, sep, _ = span.partition("=")
                if sep and _KEY.fullmatch(key) and key not in SYNTAX and not key.startswith("hydra."):
                    found.append((f"{_page_name(path)}:{number}", key))
    return found


def _known_keys() -> set[str]:
    """Every key a poc59 command takes: each command's own table, and the training config's keys under
    every option of every group (a key of `logger=wandb` exists once that option is chosen), and the groups."""
    from poc59.core.config import config_groups, flatten
    from poc59.core.overrides import compose_train

    known = set(config_groups())
    for group, options in config_groups().items():
        for option in options:
            known |= set(flatten(OmegaConf.to_container(compose_train([f"{group}={option}"]), resolve=False)))
    for path in sorted((ROOT / "src" / "poc59").glob("*.py")):
        cli = getattr(importlib.import_module(f"poc59.{path.stem}"), "CLI", None)
        known |= {key.name for key in getattr(cli, "keys", ())}
    return known


@pytest.mark.slow  # composes every option of every config group: about 20 s on a busy 2-core CPU
def test_every_key_the_text_names_exists():
    """A `key=value` in the text (`data.on_bad_file=skip`, `overwrite=true`) is a key some command takes, so a
    renamed or removed key cannot stay in the manual."""
    known = _known_keys()
    families = [k[:-1] for k in known if k.endswith(".*")]
    named = _named_keys()
    assert len(named) > 100
    unknown = [
        f"{where}: {key}"
        for where, key in named
        if key not in known
        and not any(k.startswith(key + ".") for k in known)  # a mapping's key set whole: data.mask_remap={255:1}
        and not any(key.startswith(f) for f in families)
    ]
    assert not unknown, "keys the manual names that no command takes:\n" + "\n".join(unknown)
