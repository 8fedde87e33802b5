"""Build plots/offline.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined, so that the
page `dvc plots show` writes renders without a network connection.

    python plots/build_offline_template.py                 # runs `npm pack vega@5 vega-lite@5 vega-embed@6`
    python plots/build_offline_template.py --packs DIR     # or uses the .tgz files already in DIR

Takes the minified browser builds (build/vega.min.js, build/vega-lite.min.js, build/vega-embed.min.js)
from the npm packages, writes them into the page's <head> with their versions and sha256, and copies the
packages' licences to plots/LICENSES/. DVC fills the page's {plot_divs} placeholder; the page has no
{scripts} placeholder, so DVC's own <script src="https://cdn.jsdelivr.net/..."> tags are left out; a
small script after the libraries drops the div of a plot without data (DVC writes it with an empty spec).
.dvc/config makes the page the project's default (`dvc config plots.html_template ../plots/offline.html`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = {"vega": "vega@5", "vega-lite": "vega-lite@5", "vega-embed": "vega-embed@6"}
PAGE = """<!DOCTYPE html>
<html>
<!-- DVC plots page for offline use: built by plots/build_offline_template.py from the npm packages
{versions}
Licences: plots/LICENSES/. -->
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <script>/* a plot file without rows (the training-curves folder of a head fitted in one go) has an empty
       spec: its div is removed instead of drawing an empty chart */
    const embedPlot = vegaEmbed;
    vegaEmbed = (el, spec, opt) => (spec && Object.keys(spec).length ? embedPlot(el, spec, opt)
                                    : Promise.resolve(document.querySelector(el).remove()));
    </script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def npm_pack(dest: Path) -> None:
    subprocess.run(["npm", "pack", *PACKAGES.values()], cwd=dest, check=True, capture_output=True)


def read_package(packs: Path, name: str) -> tuple[str, str, bytes | None]:
    """(version, minified build, LICENSE text or None) of package ``name`` from its .tgz in ``packs``."""
    (tgz,) = [p for p in packs.glob(f"{name}-[0-9]*.tgz")]
    with tarfile.open(tgz) as tar:
        meta = json.loads(tar.extractfile("package/package.json").read())
        script = tar.extractfile(f"package/build/{name}.min.js").read().decode()
        names = tar.getnames()
        licence = tar.extractfile("package/LICENSE").read() if "package/LICENSE" in names else None
    return meta["version"], script, licence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=Path, default=None, help="folder with the .tgz files of npm pack")
    parser.add_argument("--out", type=Path, default=HERE / "offline.html")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        packs = args.packs or Path(tmp)
        if args.packs is None:
            npm_pack(packs)
        versions, scripts = [], []
        for name in PACKAGES:
            version, script, licence = read_package(packs, name)
            placeholders = ("{plot_divs}", "{scripts}", "{refresh_tag}")
            if "</script" in script.lower() or any(p in script for p in placeholders):
                raise SystemExit(f"{name}.min.js holds text that would break the page")
            digest = hashlib.sha256(script.encode()).hexdigest()
            versions.append(f"  {name} {version}: build/{name}.min.js, sha256 {digest}")
            banner = f"/* {name} {version}, BSD-3-Clause, plots/LICENSES/{name}.txt */"
            scripts.append(f"    <script>{banner}\n{script}\n    </script>")
            if licence is not None:
                (HERE / "LICENSES" / f"{name}.txt").write_bytes(licence)
        page = PAGE.format(versions="\n".join(versions), scripts="\n".join(scripts))
        args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB):\n" + "\n".join(versions))


if __name__ == "__main__":
    main()
