"""A condition report as it prints, for the docs: predict writes it, headless Chromium prints it, pdftoppm renders it.

    python scripts/screenshots/report.py ckpt=<model> scan=<image> out=docs/images/report.png [pages=1] [dpi=80]

runs `python -m poc59.predict ckpt=<model> input=<image> output=<tmp> report=true report_pdf=true` (in this
process), renders the printed PDF's first `pages` A4 pages (1 or 2) at `dpi` with pdftoppm (Debian's
poppler-utils) and writes them side by side as one PNG to `out` (atomically), whose path it prints.

Exit 0: the picture written; 2: a setting missing, or Chromium or pdftoppm not installed (named on stderr);
1: a bug.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    """See the module docstring."""
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    if not {"ckpt", "scan", "out"} <= args.keys():
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    pages, dpi = int(args.get("pages", 1)), int(args.get("dpi", 80))
    if pages not in (1, 2) or dpi < 20:
        print("pages=1 or pages=2, and dpi=20 or more", file=sys.stderr)
        return 2
    if shutil.which("pdftoppm") is None:
        print("pdftoppm is not installed: apt-get install poppler-utils", file=sys.stderr)
        return 2
    import io

    from PIL import Image

    from poc59.core.atomic import write_bytes
    from poc59.inference.report import chromium_path
    from poc59.predict import main as predict

    if chromium_path() is None:
        print("headless Chromium is not installed: apt-get install chromium", file=sys.stderr)
        return 2
    scan = Path(args["scan"])
    with tempfile.TemporaryDirectory(prefix="poc59-report-shot-") as tmp:
        maps = Path(tmp) / "maps"
        code = predict(
            [f"ckpt={args['ckpt']}", f"input={scan}", f"output={maps}", "report=true", "report_pdf=true", "iiif=false"]
        )
        if code != 0:
            return code
        pdf = maps / f"{scan.stem}.report.pdf"
        prefix = Path(tmp) / "page"
        subprocess.run(
            ["pdftoppm", "-r", str(dpi), "-f", "1", "-l", str(pages), "-png", str(pdf), str(prefix)], check=True
        )
        shots = [Image.open(p).convert("RGB") for p in sorted(Path(tmp).glob("page-*.png"))]
        gap = dpi // 8
        sheet = Image.new("RGB", (sum(s.width for s in shots) + gap * (len(shots) + 1), shots[0].height + 2 * gap))
        sheet.paste((200, 200, 200), (0, 0, sheet.width, sheet.height))
        x = gap
        for shot in shots:
            sheet.paste(shot, (x, gap))
            x += shot.width + gap
        buf = io.BytesIO()
        sheet.save(buf, format="PNG", optimize=True)
        write_bytes(args["out"], buf.getvalue())
    print(args["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
