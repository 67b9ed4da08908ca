"""The Label Studio project of a class table: its labelling interface, and finding one whose labels match.

The interface is one image with BrushLabels over the class table, in id order, each label in poc59's colour
(`label_config`). A project is found by its title (or its id, `project=12`); one whose BrushLabels are not the
class table's names in the same order is refused, since the labels' order is what turns a painted label back
into a class id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from poc59.annotation.client import LabelStudio, LabelStudioError
from poc59.core.classes import ClassTable

FROM_NAME = "damage"  # the BrushLabels control poc59 creates
TO_NAME = "image"


def label_config(classes: ClassTable) -> str:
    """Label Studio's labelling interface: the image and one brush label per class (name, colour)."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr(colour)}/>"
        for name, colour in zip(classes.names, classes.palette)
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n'
        "</View>\n"
    )


@dataclass(frozen=True)
class Project:
    """A Label Studio project poc59 works with: its id, title, and the BrushLabels control's name and labels."""

    id: int
    title: str
    from_name: str
    to_name: str
    labels: tuple[str, ...]


def brush_control(project: dict[str, Any]) -> tuple[str, str, tuple[str, ...]] | None:
    """(control name, image name, labels) of the project's first BrushLabels control, or None."""
    for name, control in (project.get("parsed_label_config") or {}).items():
        if str(control.get("type", "")).lower() == "brushlabels":
            to_name = (control.get("to_name") or [TO_NAME])[0]
            return name, to_name, tuple(control.get("labels") or ())
    return None


def find_project(client: LabelStudio, project: str) -> dict[str, Any] | None:
    """The project titled `project` (or with that id, when it is a number); None when there is none.
    Two projects with the title are refused (which one is meant?)."""
    if project.isdigit():
        return client.project(int(project))
    found = [p for p in client.projects() if p.get("title") == project]
    if len(found) > 1:
        ids = ", ".join(str(p["id"]) for p in found)
        raise LabelStudioError(
            f"{client.url} has {len(found)} projects titled {project!r} (ids {ids}): name one by its id, "
            f"e.g. project={found[0]['id']}"
        )
    return client.project(found[0]["id"]) if found else None


def checked_project(client: LabelStudio, found: dict[str, Any], classes: ClassTable, against: str, fix: str) -> Project:
    """`found` as a Project, refused unless its BrushLabels are `classes`' names in id order (`against` says
    whose table that is, `fix` what to do instead, for the message)."""
    control = brush_control(found)
    title = found.get("title", "")
    if control is None:
        raise LabelStudioError(f"project {title!r} (id {found['id']}) on {client.url} has no BrushLabels: {fix}")
    name, to_name, labels = control
    if labels != classes.names:
        raise LabelStudioError(
            f"project {title!r} (id {found['id']}) on {client.url} has the labels {list(labels)}, not {against} "
            f"{list(classes.names)}: {fix}"
        )
    return Project(int(found["id"]), title, name, to_name, labels)
