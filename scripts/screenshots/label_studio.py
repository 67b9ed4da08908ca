"""A Label Studio task holding poc59's pre-annotation, as the annotator sees it: a screenshot for the docs.

    python scripts/screenshots/label_studio.py ckpt=<model> scan=<image> out=docs/images/label_studio_task.png

starts a throw-away Label Studio on 127.0.0.1 (tests/label_studio_server.py: its own venv, SQLite, a user and
a personal access token; stopped by its pid), pushes the scan with `python -m poc59.annotate push`, signs in
in headless Debian chromium (driven as scripts/screenshots/mirador.py drives it: the DevTools protocol over a
pipe), opens the task in the labelling editor and saves the screenshot once the regions list names the
predicted classes. Exit 0 and the picture written; 2 when Label Studio or chromium is missing (named).
The first start of a new Label Studio migrates its database: a few minutes on a loaded CPU.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]

SIGN_IN = """(() => {{
  const form = document.querySelector('form');
  form.querySelector('input[name=email]').value = {email};
  form.querySelector('input[name=password]').value = {password};
  form.submit();
  return true;
}})()"""

SHOWN = (
    "(() => {{ const t = document.body ? document.body.innerText : '';"
    " const scan = [...document.images].some(i => i.src.includes('/data/upload/') && i.complete && i.naturalWidth > 0);"
    " return scan && document.querySelectorAll('canvas').length > 0 && {names}.every(n => t.includes(n)); }})()"
)
"""Truthy once the editor shows the scan, has drawn its canvas and names every predicted class (JavaScript)."""


def main(argv: list[str]) -> int:
    """ckpt=<model> scan=<image> out=<png>: push the scan to a fresh Label Studio, screenshot its task."""
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    if not {"ckpt", "scan", "out"} <= args.keys():
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    sys.path[:0] = [str(CHECKOUT / "tests"), str(HERE)]
    from mirador import Chromium, ViewerError

    import label_studio_server as ls
    from poc59.annotate import main as annotate
    from poc59.annotation.client import LabelStudio
    from poc59.core.atomic import write_bytes

    if ls.executable() is None:
        print(f"no Label Studio here: {ls.INSTALL} (or set POC59_LABEL_STUDIO)", file=sys.stderr)
        return 2
    try:
        chromium = Chromium(width=1500, height=950)
    except ViewerError as err:
        print(err, file=sys.stderr)
        return 2
    with chromium, tempfile.TemporaryDirectory(prefix="poc59-label-studio-") as tmp:
        tmp = Path(tmp)
        with ls.label_studio_at(tmp / "server") as server:
            ranking = tmp / "ranking.csv"
            code = annotate(
                [
                    "push",
                    f"ckpt={args['ckpt']}",
                    f"input={args['scan']}",
                    f"url={server.url}",
                    f"token={server.token}",
                    "project=poc59 corrections",
                    f"ranking={ranking}",
                ]
            )
            if code != 0:
                return code
            (row,) = csv.DictReader(ranking.open())
            names = row["predicted_classes"].split(";")
            chromium.open(f"{server.url}/user/login/")
            chromium.wait_for("document.querySelector('input[name=email]') !== null", 60, "the sign-in form")
            chromium.evaluate(SIGN_IN.format(email=json.dumps(ls.EMAIL), password=json.dumps(ls.PASSWORD)))
            chromium.wait_for("!location.pathname.startsWith('/user/login')", 60, "the signed-in page")
            task = int(row["task_id"])
            project = LabelStudio(server.url, server.token).task(task)["project"]
            chromium.open(f"{server.url}/projects/{project}/data/?task={task}")
            chromium.wait_for(SHOWN.format(names=json.dumps(names)), 120, f"the editor naming {names}")
            time.sleep(3)  # the brush layers are drawn once the image has loaded
            write_bytes(args["out"], chromium.screenshot())
    print(args["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
