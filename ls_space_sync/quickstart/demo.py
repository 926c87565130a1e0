"""Sample Label Studio projects for the README demo, the tests and the benchmarks.

Where the pieces come from:
    Label configs are NOT copied into this package: they are fetched from the running server's
    own template gallery, `GET /api/templates/`, which serves the `annotation_templates/*/config.yml`
    files shipped inside the installed `label-studio` package (69 templates in 1.23.2). So the
    demo uses exactly the "Text Classification", "Named Entity Recognition" and "Object Detection
    with Bounding Boxes" configs a user would pick in the UI of that server.

    Task data is a small sample shipped here: Label Studio ships one example sentence per template
    (in the config's trailing comment) and a few images under `/static/samples/`, not a data set.
    The 20 review sentences below are written in the style of the text-classification template's
    own example; the image tasks point at the server's own `/static/samples/*.jpg` (relative URLs,
    so they keep working when the server moves to another port). Control and object tag names
    (`from_name`, `to_name`, labels) are read from the fetched config, not hard-coded.

Every call goes through :class:`ls_space_sync.labelstudio.client.LabelStudioClient` (the one
package that talks to Label Studio), with the API key passed explicitly.

Run `python -m ls_space_sync.quickstart.demo --venv DIR --data-dir DIR` to start a local server
with the sample project and keep it running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from ls_space_sync.labelstudio.client import LabelStudioClient

__all__ = [
    "SAMPLE_ANNOTATIONS",
    "SAMPLE_PREDICTIONS",
    "SAMPLE_TASKS",
    "TEMPLATE_BBOX",
    "TEMPLATE_NER",
    "TEMPLATE_TEXT_CLASSIFICATION",
    "bbox_tasks",
    "create_sample_project",
    "create_template_project",
    "ner_tasks",
    "sample_template_configs",
    "text_classification_tasks",
]

TEMPLATE_TEXT_CLASSIFICATION = "Text Classification"
TEMPLATE_NER = "Named Entity Recognition"
TEMPLATE_BBOX = "Object Detection with Bounding Boxes"

MODEL_VERSION = "demo-model-v1"

# (text, sentiment); the first one is the text-classification template's own example.
_REVIEWS: list[tuple[str, str]] = [
    ("This is a great 3D movie that delivers everything almost right in your face.", "Positive"),
    ("The plot was predictable and the dialogue felt wooden.", "Negative"),
    ("It is a two-hour film about a family road trip.", "Neutral"),
    ("A warm, funny and surprisingly moving story.", "Positive"),
    ("I walked out halfway through; the pacing is painfully slow.", "Negative"),
    ("The soundtrack alone is worth the ticket.", "Positive"),
    ("The sequel was released in theatres last Friday.", "Neutral"),
    ("Beautiful cinematography, but the characters never come alive.", "Negative"),
    ("The cast gives the best performances of their careers.", "Positive"),
    ("Too long, too loud and far too pleased with itself.", "Negative"),
    ("The director also wrote the screenplay.", "Neutral"),
    ("Every scene is crafted with care; I want to watch it again.", "Positive"),
    ("The special effects look cheap and dated.", "Negative"),
    ("The film is available in English and Spanish.", "Neutral"),
    ("A clever twist at the end makes the whole journey worthwhile.", "Positive"),
    ("The jokes fall flat and the romance feels forced.", "Negative"),
    ("Filming took place over six months in Canada.", "Neutral"),
    ("An instant classic for the whole family.", "Positive"),
    ("I could not connect with any of the characters.", "Negative"),
    ("The running time is 118 minutes.", "Neutral"),
]

SAMPLE_TASKS = len(_REVIEWS)
"""Tasks in the sample project made by `create_sample_project`."""
SAMPLE_ANNOTATIONS = 6
"""Annotations in it: one on each of the first 6 tasks."""
SAMPLE_PREDICTIONS = 12
"""Predictions in it: one on each of the first 12 tasks (model_version `demo-model-v1`)."""

# (text, [(entity, label)]); the NER template's labels are PER, ORG, LOC, MISC.
_NER_SENTENCES: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Ada Lovelace worked with Charles Babbage in London.",
        [("Ada Lovelace", "PER"), ("Charles Babbage", "PER"), ("London", "LOC")],
    ),
    (
        "HumanSignal maintains Label Studio in San Francisco.",
        [("HumanSignal", "ORG"), ("Label Studio", "MISC"), ("San Francisco", "LOC")],
    ),
    ("The Apache Software Foundation was founded in 1999.", [("Apache Software Foundation", "ORG")]),
    ("Marie Curie was born in Warsaw.", [("Marie Curie", "PER"), ("Warsaw", "LOC")]),
    (
        "Python was created by Guido van Rossum at CWI.",
        [("Python", "MISC"), ("Guido van Rossum", "PER"), ("CWI", "ORG")],
    ),
]

# (image served by Label Studio itself, its width and height in pixels, [(x, y, w, h, label)] in %)
_IMAGES: list[tuple[str, int, int, list[tuple[float, float, float, float, str]]]] = [
    ("/static/samples/sample.jpg", 600, 403, [(10.0, 20.0, 30.0, 25.0, "Car")]),
    ("/static/samples/kittens.jpg", 500, 333, [(5.0, 5.0, 40.0, 40.0, "Airplane"), (50, 50, 20, 20, "Car")]),
    ("/static/samples/trees_in_snow.jpg", 800, 800, []),
]


def sample_template_configs(url: str, api_key: str, *, timeout: float = 30) -> dict[str, str]:
    """Return the server's annotation templates as `{title: label_config}`.

    Reads `GET /api/templates/` (the templates shipped with the installed Label Studio).

    Args:
        url: Label Studio base URL.
        api_key: A legacy API token (sent as `Authorization: Token <key>`).
        timeout: Seconds for the request.

    Raises:
        LabelStudioError: The server refused the request or has no template gallery.
    """
    with _client(url, api_key, timeout) as client:
        return client.templates()


def _control(label_config: str, tag: str) -> tuple[str, str, list[str]]:
    """Return (name, toName, label values) of the first `tag` element in a label config."""
    root = ET.fromstring(label_config)
    element = next(root.iter(tag), None)
    if element is None:
        raise ValueError(f"label config has no <{tag}> tag")
    values = [child.get("value", "") for child in element.iter() if child.tag in {"Choice", "Label"}]
    return element.get("name", ""), element.get("toName", ""), values


def _object_value(label_config: str, name: str) -> str:
    """Return the data key (`$text` -> `text`) of the object tag called `name`."""
    for element in ET.fromstring(label_config).iter():
        value = element.get("value", "")
        if element.get("name") == name and value.startswith("$"):
            return value[1:]
    raise ValueError(f"label config has no object tag named {name!r}")


def text_classification_tasks(label_config: str) -> list[dict]:
    """Build the 20 sample tasks for a text-classification config (the LS template's shape).

    The first `SAMPLE_ANNOTATIONS` tasks carry one annotation, the first `SAMPLE_PREDICTIONS`
    one prediction; the fourth prediction disagrees with its annotation on purpose.

    Returns:
        Task dicts for `ls.projects.import_tasks(request=...)`.
    """
    name, to_name, choices = _control(label_config, "Choices")
    key = _object_value(label_config, to_name)

    def result(choice: str) -> list[dict]:
        return [{"from_name": name, "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}]

    tasks = []
    for i, (text, sentiment) in enumerate(_REVIEWS):
        if sentiment not in choices:
            raise ValueError(f"label config has no choice {sentiment!r}")
        task: dict = {"data": {key: text}, "meta": {"sample": i}}
        if i < SAMPLE_ANNOTATIONS:
            task["annotations"] = [{"result": result(sentiment)}]
        if i < SAMPLE_PREDICTIONS:
            predicted = "Neutral" if i == 3 else sentiment
            task["predictions"] = [
                {"result": result(predicted), "score": round(0.55 + 0.03 * i, 2), "model_version": MODEL_VERSION}
            ]
        tasks.append(task)
    return tasks


def ner_tasks(label_config: str) -> list[dict]:
    """Build 5 sample tasks for the NER template: every task annotated, the first 2 predicted."""
    name, to_name, labels = _control(label_config, "Labels")
    key = _object_value(label_config, to_name)
    tasks = []
    for i, (text, entities) in enumerate(_NER_SENTENCES):
        spans = []
        for entity, label in entities:
            if label not in labels:
                raise ValueError(f"label config has no label {label!r}")
            start = text.index(entity)
            spans.append(
                {
                    "from_name": name,
                    "to_name": to_name,
                    "type": "labels",
                    "value": {"start": start, "end": start + len(entity), "text": entity, "labels": [label]},
                }
            )
        task: dict = {"data": {key: text}, "annotations": [{"result": spans}]}
        if i < 2:
            task["predictions"] = [{"result": spans[:1], "score": 0.8, "model_version": MODEL_VERSION}]
        tasks.append(task)
    return tasks


def bbox_tasks(label_config: str) -> list[dict]:
    """Build 3 sample tasks for the bounding-box template on the server's own sample images.

    The first two are annotated (the third has an empty result) and the first is predicted.
    """
    name, to_name, labels = _control(label_config, "RectangleLabels")
    key = _object_value(label_config, to_name)
    tasks = []
    for i, (image, width, height, boxes) in enumerate(_IMAGES):
        regions = []
        for x, y, w, h, label in boxes:
            if label not in labels:
                raise ValueError(f"label config has no label {label!r}")
            regions.append(
                {
                    "from_name": name,
                    "to_name": to_name,
                    "type": "rectanglelabels",
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
                }
            )
        task: dict = {"data": {key: image}, "annotations": [{"result": regions}]}
        if i == 0:
            task["predictions"] = [{"result": regions, "score": 0.9, "model_version": MODEL_VERSION}]
        tasks.append(task)
    return tasks


@contextlib.contextmanager
def _client(url: str, api_key: str, timeout: float = 60) -> Iterator[LabelStudioClient]:
    """Yield a client of :mod:`ls_space_sync.labelstudio` (the one package that talks to Label
    Studio); its HTTP connections are closed on exit."""
    client = LabelStudioClient(url, api_key, timeout=timeout)
    try:
        yield client
    finally:
        client.close()


_TASK_BUILDERS = {
    TEMPLATE_TEXT_CLASSIFICATION: text_classification_tasks,
    TEMPLATE_NER: ner_tasks,
    TEMPLATE_BBOX: bbox_tasks,
}


def create_template_project(url: str, api_key: str, template: str, title: str | None = None) -> int:
    """Create a project from one of the server's templates and import its sample tasks.

    Args:
        url: Label Studio base URL.
        api_key: API key (legacy token) of a user allowed to create projects.
        template: `TEMPLATE_TEXT_CLASSIFICATION`, `TEMPLATE_NER` or `TEMPLATE_BBOX`.
        title: Project title; the template's title when None.

    Returns:
        The new project's id.

    Raises:
        KeyError: `template` is not one of the three above or not served by this server.
    """
    builder = _TASK_BUILDERS[template]
    label_config = sample_template_configs(url, api_key)[template]
    tasks = builder(label_config)
    with _client(url, api_key) as client:
        project_id = client.create_project(title or template, label_config)
        client.import_tasks(project_id, tasks)
    return project_id


def create_sample_project(url: str, api_key: str, title: str = "ls-space-sync demo") -> int:
    """Create the demo project: Label Studio's text-classification template with sample tasks.

    It holds `SAMPLE_TASKS` (20) tasks, `SAMPLE_ANNOTATIONS` (6) annotations and
    `SAMPLE_PREDICTIONS` (12) predictions, imported in one `import_tasks` call.

    Returns:
        The new project's id.
    """
    return create_template_project(url, api_key, TEMPLATE_TEXT_CLASSIFICATION, title)


def main(argv: list[str] | None = None) -> None:
    """Start a local Label Studio with the sample project and serve it until Ctrl-C."""
    from ls_space_sync.quickstart.localserver import LocalLabelStudio, ensure_venv

    parser = argparse.ArgumentParser(prog="python -m ls_space_sync.quickstart.demo", description=main.__doc__)
    parser.add_argument("--venv", type=Path, default=Path(".ci-cache/label-studio-venv"),
                        help="Label Studio virtual environment (created if missing)")
    parser.add_argument("--data-dir", type=Path, default=Path(".ci-cache/demo-label-studio"),
                        help="server data directory (kept between runs)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    ensure_venv(args.venv)
    with LocalLabelStudio(args.data_dir, venv=args.venv, port=args.port) as server, _client(
        server.url, server.api_key
    ) as client:
        existing = [p["id"] for p in client.projects() if p.get("title") == "ls-space-sync demo"]
        project_id = existing[0] if existing else create_sample_project(server.url, server.api_key)
        print(f"LABEL_STUDIO_URL={server.url}")
        print(f"LABEL_STUDIO_API_KEY={server.api_key}")
        print(f"project_id={project_id}  (log in as {server.username} / {server.password})")
        print("Ctrl-C to stop")
        try:
            while server.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
