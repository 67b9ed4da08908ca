"""A small Label Studio HTTP client (the standard library only): what push and pull ask of the server.

Authentication takes either kind of Label Studio access token. A personal access token (a JWT, the kind Label
Studio 1.23 enables by default) is a refresh token: it is exchanged at `/api/token/refresh` for a short-lived
access token sent as `Authorization: Bearer`, refreshed once when the server answers 401. A legacy token (no
dots) is sent as `Authorization: Token` as it is.

Every failure the user can fix (server not reachable, token refused, a project that is not there) raises
`LabelStudioError` with one message naming the address and the fix; anything else the server answers is a
`LabelStudioError` naming the request and the server's answer.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKEN_HELP = (
    "create a personal access token in Label Studio (your user icon > Account & Settings > Personal Access Token) "
    "and pass it as token=<token> or in the environment as LABEL_STUDIO_API_KEY"
)
PAGE_SIZE = 100


class LabelStudioError(ValueError):
    """The server cannot be used as asked (the message names the address and what to do)."""


class LabelStudio:
    """One Label Studio server at `url`, reached with `token` (personal access token or legacy token)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise LabelStudioError(
                f"url={url}: not an http(s) address; give the server's, e.g. url=http://localhost:8080"
            )
        if not token:
            raise LabelStudioError(f"no token for {url}: {TOKEN_HELP}")
        self.url = url.rstrip("/")
        self.token = token.strip()
        self.timeout = timeout
        self._access: str | None = None

    @property
    def personal(self) -> bool:
        """A personal access token (a JWT: three dot-separated parts), not a legacy one."""
        return self.token.count(".") == 2

    # -- requests -------------------------------------------------------------------------------------------------

    def _open(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({reason}): start it (label-studio start) or give its "
                "address as url=http://<host>:<port>"
            ) from None

    def _refresh(self) -> str:
        body = json.dumps({"refresh": self.token}).encode()
        request = urllib.request.Request(
            f"{self.url}/api/token/refresh/", body, {"Content-Type": "application/json"}, method="POST"
        )
        try:
            data = self._open(request)
        except urllib.error.HTTPError as err:
            if err.code in (400, 401, 403):
                raise LabelStudioError(f"{self.url} refused the token ({err.code}): {TOKEN_HELP}") from None
            raise LabelStudioError(f"{self.url}: the token refresh failed ({err.code} {_said(err)})") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise LabelStudioError(f"{self.url} is not a Label Studio server (its token refresh is not JSON)") from None
        self._access = answer.get("access")
        if not self._access:
            raise LabelStudioError(f"{self.url} gave no access token for the token: {TOKEN_HELP}")
        return self._access

    def _auth(self) -> str:
        if not self.personal:
            return f"Token {self.token}"
        return f"Bearer {self._access or self._refresh()}"

    def request(
        self,
        method: str,
        path: str,
        payload: Any = None,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        raw: bool = False,
    ) -> Any:
        """The JSON answer to `method path` (bytes when `raw`); `payload` is sent as JSON, `body` as it is."""
        url = f"{self.url}{path}" if path.startswith("/") else path
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        if payload is not None:
            body, content_type = json.dumps(payload).encode(), "application/json"
        for attempt in (0, 1):
            headers = {"Authorization": self._auth(), "Accept": "application/json"}
            if content_type:
                headers["Content-Type"] = content_type
            request = urllib.request.Request(url, body, headers, method=method)
            try:
                data = self._open(request)
                break
            except urllib.error.HTTPError as err:
                if err.code == 401 and self.personal and attempt == 0:
                    self._access = None  # the access token expired: refresh once
                    continue
                if err.code in (401, 403):
                    raise LabelStudioError(
                        f"{self.url} refused the token for {method} {path} ({err.code}): {TOKEN_HELP}"
                    ) from None
                raise HttpError(method, path, err.code, _said(err)) from None
        if raw:
            return data
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise LabelStudioError(
                f"{self.url}: {method} {path} did not answer JSON: is this a Label Studio server?"
            ) from None

    # -- what push and pull use ----------------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """The user the token belongs to (checks the address and the token)."""
        return self.request("GET", "/api/current-user/whoami")

    def user(self, user_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/users/{user_id}")

    def projects(self) -> list[dict[str, Any]]:
        """Every project the user can see."""
        return self._pages("/api/projects", "results")

    def project(self, project_id: int) -> dict[str, Any]:
        try:
            return self.request("GET", f"/api/projects/{project_id}")
        except HttpError as err:
            if err.code == 404:
                raise LabelStudioError(
                    f"{self.url} has no project {project_id} (or the token's user cannot see it)"
                ) from None
            raise

    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        return self.request("POST", "/api/projects", {"title": title, "label_config": label_config})

    def upload(self, project_id: int, path: Path, name: str) -> list[int]:
        """Import one image file as a task of the project; its task ids."""
        boundary = uuid.uuid4().hex
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: {kind}\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        answer = self.request(
            "POST",
            f"/api/projects/{project_id}/import",
            params={"return_task_ids": "true"},
            body=body,
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        return list(answer.get("task_ids") or [])

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project (data, ids; annotations and predictions as the list endpoint gives them)."""
        return self._pages("/api/tasks", "tasks", {"project": project_id, "fields": "all"})

    def task(self, task_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/tasks/{task_id}")

    def predict(self, task_id: int, result: list[dict[str, Any]], score: float, model_version: str) -> dict[str, Any]:
        payload = {"task": task_id, "result": result, "score": score, "model_version": model_version}
        return self.request("POST", "/api/predictions", payload)

    def prediction(self, prediction_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/predictions/{prediction_id}")

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project that has annotations, with them (Label Studio's JSON export)."""
        return self.request("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})

    def file(self, url_path: str) -> bytes:
        """A file the server serves (an uploaded image: /data/upload/...)."""
        return self.request("GET", url_path, raw=True)

    def _pages(self, path: str, key: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            try:
                answer = self.request("GET", path, params={**(params or {}), "page": page, "page_size": PAGE_SIZE})
            except HttpError as err:
                if err.code == 404 and page > 1:  # past the last page
                    return found
                raise
            if isinstance(answer, list):
                return found + answer
            items = answer.get(key) or []
            found += items
            total = answer.get("count", answer.get("total"))
            if not items or len(items) < PAGE_SIZE or (total is not None and len(found) >= total):
                return found
            page += 1


class HttpError(LabelStudioError):
    """The server answered a request with an error status."""

    def __init__(self, method: str, path: str, code: int, said: str) -> None:
        super().__init__(f"Label Studio answered {code} to {method} {path}: {said}")
        self.code = code


def _said(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode(errors="replace")[:300]
    except OSError:
        return err.reason
