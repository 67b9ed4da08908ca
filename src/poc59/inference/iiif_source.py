"""IIIF inputs for predict: an Image API (2 or 3) service's `info.json` URL, a text file of such URLs, or a
Presentation (2 or 3) manifest, URL or file (every canvas's painting image's service).

`IiifClient` fetches over HTTP(S) with urllib: a time-out per request, bounded retries with exponential
backoff on 5xx answers and on connection errors or time-outs (never on 4xx: asking again changes nothing),
and a cache for the client's life (one predict batch), so nothing is fetched twice. Every failure is an
`IiifError` naming the URL and the HTTP status or the reason.

`IiifImage` is one image of such an input: its stem (the image identifier's last segment, made
filesystem-safe and unique in the batch) names its outputs as a file's stem does; `open()` fetches the image
at its native size and returns a `poc59.inference.scans.Scan`: the whole image in one request
(`{id}/full/{w},{h}/0/default.png`, Image API 2 `full/{w},/0/...`) when the service's `maxWidth` /
`maxHeight` / `maxArea` allow it, else its tiles at scale factor 1 (`{id}/{x},{y},{w},{h}/{w},/0/...`, the
service's `tiles` size, else blocks within its limits), stitched. PNG when the service offers it (level 2,
or png in its formats), else JPEG. Each answer must be an image of the size asked: an `info.json` that lies
about the size is named.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
from PIL import Image, ImageOps

from poc59.core.pixels import over_limit, pixel_limit
from poc59.inference.iiif import ScanRef
from poc59.inference.scans import IMAGE_SUFFIXES, Scan, ScanError

log = logging.getLogger(__name__)

__all__ = ["IiifClient", "IiifError", "IiifImage", "iiif_inputs", "is_iiif_input"]

TIMEOUT_S = 30.0
RETRIES = 3  # tries after the first, on 5xx / connection errors / time-outs
BACKOFF_S = 0.5  # before the first retry; doubled for each next one
_USER_AGENT = "poc59-predict (IIIF Image API client)"


class IiifError(ScanError):
    """A IIIF resource that cannot be used: the message names the URL and the HTTP status or the reason."""


class IiifClient:
    """GETs with a time-out, bounded retries and a cache (every answer kept for the client's life).

    `requests` counts the requests actually sent, by URL (tests and logs use it)."""

    def __init__(self, timeout_s: float = TIMEOUT_S, retries: int = RETRIES, backoff_s: float = BACKOFF_S) -> None:
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._cache: dict[str, bytes] = {}
        self.requests: dict[str, int] = {}

    def get(self, url: str) -> bytes:
        """The body of `url` (cached); IiifError after a 4xx, or after the last retry of a 5xx / a failed
        connection / a time-out."""
        if url in self._cache:
            return self._cache[url]
        tries = self.retries + 1
        for attempt in range(tries):
            self.requests[url] = self.requests.get(url, 0) + 1
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url, headers={"User-Agent": _USER_AGENT}), timeout=self.timeout_s
                ) as answer:
                    body = answer.read()
                self._cache[url] = body
                return body
            except urllib.error.HTTPError as err:
                why = f"HTTP {err.code} {err.reason}"
                if err.code < 500:
                    raise IiifError(f"{url}: {why}; check the URL (the rest of the batch goes on)") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                why = (
                    f"no answer within {self.timeout_s:g} s"
                    if isinstance(reason, TimeoutError)
                    else f"connection failed ({reason or type(err).__name__})"
                )
            if attempt + 1 < tries:
                delay = self.backoff_s * 2**attempt
                log.warning("%s: %s; try %d of %d in %.1f s", url, why, attempt + 2, tries, delay)
                time.sleep(delay)
        raise IiifError(f"{url}: {why}, {tries} tries; check that the server is up and the URL is right")

    def json(self, url: str) -> dict[str, Any]:
        """The JSON object at `url`; IiifError when the body is not one."""
        return _json(self.get(url), url)


def _json(body: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise IiifError(f"{where}: not JSON ({err}); is this an IIIF info.json or manifest?") from None
    if not isinstance(doc, dict):
        raise IiifError(f"{where}: not a JSON object; is this an IIIF info.json or manifest?")
    return doc


def is_iiif_input(spec: str) -> bool:
    """True when `input=` names IIIF: an http(s) URL, a .json file, or a text file whose lines are URLs."""
    if urlsplit(spec).scheme in ("http", "https"):
        return True
    path = Path(spec).expanduser()
    if not path.is_file() or path.suffix.lower() in IMAGE_SUFFIXES:
        return False
    if path.suffix.lower() == ".json":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    lines = [line.strip() for line in head.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return bool(lines) and all(urlsplit(line).scheme in ("http", "https") for line in lines)


def _is_manifest(doc: dict[str, Any]) -> bool:
    return doc.get("type") == "Manifest" or doc.get("@type") == "sc:Manifest"


def _services(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The Image API services of every canvas's painting image in a Presentation 3 or 2 manifest, in order."""
    found = []

    def service_of(body: Any) -> dict[str, Any] | None:
        if not isinstance(body, dict):
            return None
        if body.get("type") == "Choice" or body.get("@type") == "oa:Choice":
            items = body.get("items") or [body.get("default")]
            return service_of(items[0]) if items else None
        services = body.get("service") or []
        for s in services if isinstance(services, list) else [services]:
            if isinstance(s, dict) and (s.get("id") or s.get("@id")):
                return s
        return None

    for canvas in doc.get("items") or []:  # Presentation 3: canvas -> AnnotationPage -> painting annotations
        for page in canvas.get("items") or [] if isinstance(canvas, dict) else []:
            for anno in page.get("items") or [] if isinstance(page, dict) else []:
                if isinstance(anno, dict) and anno.get("motivation") == "painting":
                    s = service_of(anno.get("body"))
                    if s is not None:
                        found.append(s)
    for sequence in doc.get("sequences") or []:  # Presentation 2: sequence -> canvas -> images
        for canvas in sequence.get("canvases") or [] if isinstance(sequence, dict) else []:
            for image in canvas.get("images") or [] if isinstance(canvas, dict) else []:
                if isinstance(image, dict):
                    s = service_of(image.get("resource"))
                    if s is not None:
                        found.append(s)
    return found


def _info_url(service: dict[str, Any]) -> str:
    base = str(service.get("id") or service.get("@id"))
    return base if base.endswith("/info.json") else base.rstrip("/") + "/info.json"


def _safe_stem(url: str) -> str:
    """The image identifier's last segment, without an image suffix, as a file name: "a b/c.tif" -> "c"."""
    ident = unquote(urlsplit(url.removesuffix("/info.json").rstrip("/")).path.rsplit("/", 1)[-1])
    ident = ident.replace("\\", "/").rsplit("/", 1)[-1]  # an identifier that is a path (iipsrv: ?IIIF=/a/b.tif)
    if Path(ident).suffix.lower() in IMAGE_SUFFIXES:
        ident = Path(ident).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "_", ident).strip("_") or "image"


def _iipsrv_ident(url: str) -> str:
    """The identifier of an iipsrv-style URL (`...?IIIF=/data/scan.tif/info.json`), else the URL."""
    query = urlsplit(url).query
    return query.split("IIIF=", 1)[1] if "IIIF=" in query else url


def iiif_inputs(spec: str, client: IiifClient) -> list[IiifImage]:
    """The images `input=` names (see the module's docstring); IiifError when the input itself cannot be
    read or holds no image. In a file of URLs, an entry that cannot be read (a manifest that fails or has no
    images) becomes an image that fails when predicted, named with its reason, unless every entry fails
    (then IiifError names them all). Duplicated URLs are predicted once; stems are made unique (_2, _3, ...)."""
    urls: list[str] = []
    unreadable: dict[str, str] = {}  # entry of a file of URLs -> why it cannot be read
    if urlsplit(spec).scheme in ("http", "https"):
        urls += _expand(spec, client, None)
    else:
        path = Path(spec).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise IiifError(f"input={spec}: cannot be read ({err})") from None
        if path.suffix.lower() == ".json":
            urls += _expand(path.resolve().as_uri(), client, _json(text.encode(), str(path)))
        else:
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    try:
                        urls += _expand(line, client, None)
                    except IiifError as err:
                        urls.append(line)
                        unreadable[line] = str(err)
            if urls and len(unreadable) == len(set(urls)):
                raise IiifError(f"input={spec}: none of its entries can be read: {'; '.join(unreadable.values())}")
    images, stems = [], set()
    for url in dict.fromkeys(urls):
        stem = base = _safe_stem(_iipsrv_ident(url))
        n = 1
        while stem in stems:
            n += 1
            stem = f"{base}_{n}"
        stems.add(stem)
        images.append(IiifImage(url, stem, client, unreadable.get(url)))
    if len(images) < len(urls):
        log.warning("input=%s: %d URL(s) named more than once, predicted once", spec, len(urls) - len(images))
    if not images:
        raise IiifError(f"input={spec}: no IIIF image in it; give info.json URLs, a file of them, or a manifest")
    return images


def _expand(url: str, client: IiifClient, doc: dict[str, Any] | None) -> list[str]:
    """info.json URLs behind `url`: itself when it is one (fetched later, when predicted), or a manifest's
    images (IiifError for a manifest without any)."""
    if doc is None and (url.split("?")[0].endswith("/info.json") or url.endswith("/info.json")):
        return [url]
    if doc is None:
        doc = client.json(url)
    if not _is_manifest(doc):
        if "width" in doc and "height" in doc and (doc.get("id") or doc.get("@id")):
            return [url]  # an info.json under another name
        raise IiifError(f"{url}: neither a IIIF manifest nor an Image API info.json (no type Manifest, no width)")
    services = _services(doc)
    if not services:
        raise IiifError(
            f"{url}: a manifest with no images (no canvas paints an image with an Image API service); "
            "give a manifest whose canvases have images, or their info.json URLs"
        )
    return [urljoin(url, _info_url(s)) for s in services]


@dataclass
class _Service:
    """What an info.json says: the service's base URI, size, API version, limits and the format to ask."""

    base: str
    width: int
    height: int
    version: int
    max_width: int | None
    max_height: int | None
    max_area: int | None
    tiles: tuple[int, int] | None
    format: str

    @classmethod
    def parse(cls, doc: dict[str, Any], url: str) -> _Service:
        context = json.dumps(doc.get("@context", ""))
        version = 3 if "image/3" in context or doc.get("type") == "ImageService3" else 2
        base = doc.get("id") or doc.get("@id") or url.removesuffix("/info.json")
        try:
            width, height = int(doc["width"]), int(doc["height"])
        except (KeyError, TypeError, ValueError):
            raise IiifError(f"{url}: an info.json without a width and a height") from None
        if width < 1 or height < 1:
            raise IiifError(f"{url}: info.json says {width} x {height} pixels")
        profile = doc.get("profile")
        profiles = profile if isinstance(profile, list) else [profile]
        formats = {str(f) for f in (doc.get("preferredFormats") or []) + (doc.get("extraFormats") or [])}
        extras = [p for p in profiles if isinstance(p, dict)]  # Image API 2: limits and formats in the profile
        for p in extras:
            formats |= {str(f) for f in p.get("formats") or []}
        level2 = any(isinstance(p, str) and p.rstrip("/").rsplit("/", 1)[-1].startswith("level2") for p in profiles)
        limits = {k: v for p in [doc, *extras] for k, v in p.items() if k in ("maxWidth", "maxHeight", "maxArea")}
        tiles = None
        for tile in doc.get("tiles") or []:
            if isinstance(tile, dict) and 1 in (tile.get("scaleFactors") or [1]) and tile.get("width"):
                tiles = (int(tile["width"]), int(tile.get("height") or tile["width"]))
                break
        max_width = limits.get("maxWidth")
        return cls(
            str(base).rstrip("/"),
            width,
            height,
            version,
            max_width,
            limits.get("maxHeight", max_width),
            limits.get("maxArea"),
            tiles,
            "png" if level2 or "png" in formats else "jpg",
        )

    def allows(self, w: int, h: int) -> bool:
        """True when one request may ask for w x h pixels."""
        return (
            (self.max_width is None or w <= self.max_width)
            and (self.max_height is None or h <= self.max_height)
            and (self.max_area is None or w * h <= self.max_area)
        )

    def blocks(self) -> tuple[int, int]:
        """The size of the regions to ask for one by one: the tiles, else the largest square within the limits."""
        if self.tiles and self.allows(*self.tiles):
            return self.tiles
        side = min(v for v in (self.max_width, self.max_height, math.isqrt(self.max_area or 0) or None) if v)
        return side, side

    def whole_url(self) -> str:
        size = f"{self.width}," if self.version == 2 else f"{self.width},{self.height}"
        return f"{self.base}/full/{size}/0/default.{self.format}"

    def region_url(self, x: int, y: int, w: int, h: int) -> str:
        return f"{self.base}/{x},{y},{w},{h}/{w},/0/default.{self.format}"


@dataclass(frozen=True)
class IiifImage:
    """One image of a IIIF input: `url` its info.json, `stem` the name its outputs take (as a file's stem)."""

    url: str
    stem: str
    client: IiifClient = field(repr=False, compare=False)
    unreadable: str | None = None  # why this entry of the input could not be listed (it fails when predicted)

    @property
    def name(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def service(self) -> _Service:
        """The image's info.json, parsed (fetched once)."""
        if self.unreadable:
            raise IiifError(self.unreadable)
        return _Service.parse(self.client.json(self.url), self.url)

    def size(self) -> tuple[int, int]:
        """(width, height) as info.json gives them."""
        s = self.service()
        return s.width, s.height

    def scan_ref(self) -> ScanRef:
        """What the IIIF outputs' canvas shows: this Image API service."""
        s = self.service()
        return ScanRef.iiif(s.base, s.width, s.height, s.version)

    def open(self, allow_large_images: bool = False) -> Scan:
        """The image at info.json's size, fetched whole or tile by tile, as a Scan (decoded whole)."""
        s = self.service()
        limit = over_limit(s.width, s.height) if not allow_large_images else None
        if limit is not None:
            raise IiifError(
                f"{self.url}: {s.width} x {s.height} = {s.width * s.height:,} pixels exceeds Pillow's "
                f"decompression-bomb limit of {limit:,} pixels. If you trust the server, pass allow_large_images=true"
            )
        with pixel_limit(allow_large_images):
            if s.allows(s.width, s.height):
                pixels = self._fetch(s.whole_url(), s.width, s.height)
            else:
                bw, bh = s.blocks()
                log.info(
                    "%s: %d x %d fetched in %d x %d tiles (the service's limits)", self.url, s.width, s.height, bw, bh
                )
                pixels = np.empty((s.height, s.width, 3), np.uint8)
                for y in range(0, s.height, bh):
                    for x in range(0, s.width, bw):
                        w, h = min(bw, s.width - x), min(bh, s.height - y)
                        pixels[y : y + h, x : x + w] = self._fetch(s.region_url(x, y, w, h), w, h)
        return Scan(self.url, s.width, s.height, whole=pixels)  # type: ignore[arg-type]  # a URL names it

    def _fetch(self, url: str, width: int, height: int) -> np.ndarray:
        """RGB uint8 [height, width, 3] from `url`; IiifError when it is no image or not of that size."""
        body = self.client.get(url)
        try:
            img = Image.open(io.BytesIO(body))
            img.load()
            img = ImageOps.exif_transpose(img).convert("RGB")
        except Exception as err:  # Pillow raises many types for bad data
            raise IiifError(f"{url}: not an image ({type(err).__name__}: {err}); the server answered garbage") from None
        if img.size != (width, height):
            raise IiifError(
                f"{url}: the server sent {img.size[0]} x {img.size[1]} pixels for {width} x {height} asked; "
                f"its info.json ({self.url}) gives a size the image does not have"
            )
        return np.asarray(img)
