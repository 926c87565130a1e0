"""The built-in views, as DuckDB SQL over the table ``tasks`` (stored task rows, :mod:`ls_space_sync.model.records`).

Each is task-local (a task's view rows depend on that task's row alone), as every view transform
must be for incremental refresh, and casts every column, so its schema does not depend on the rows.

* ``regions``: one row per region of every annotation (Label Studio's ``result`` list), with the
  label (first of ``choices``/``labels``/``rectanglelabels``/... or the ``textarea`` text, the
  ``rating``/``number`` value) and the geometry normalised to fractions of the image (Label
  Studio stores ``x, y, width, height`` in percent; ``rotation`` stays in degrees) or the span's
  ``start``/``end`` character offsets.
* ``annotations``: one row per annotation: author, lead time (seconds), cancelled, ground truth,
  result (JSON) and its region count.
* ``task_labels``: one row per task, for training: the ground-truth annotation's label if there
  is one, else the majority label of the non-cancelled annotations (ties: the smallest label),
  the agreement (share of the labelled annotations that chose the majority label) and the votes.
  An annotation's label is its first labelled region's.
"""

from __future__ import annotations

# The value keys a region's label is read from, in order (Label Studio 1.23 control tags).
_LABEL_KEYS = ["choices", "labels", "rectanglelabels", "polygonlabels", "keypointlabels", "ellipselabels",
               "brushlabels", "hypertextlabels", "paragraphlabels", "timeserieslabels", "taxonomy", "text"]
_LABEL = "coalesce(" + ", ".join(f"region->'value'->'{k}'->>0" for k in _LABEL_KEYS) + \
    ", region->'value'->>'rating', region->'value'->>'number', region->'value'->>'datetime')"

_REGIONS_BODY = f"""
SELECT CAST(task_id AS BIGINT) AS task_id,
       CAST(a.id AS BIGINT) AS annotation_id,
       CAST(j.key AS BIGINT) AS region_index,
       CAST(a.completed_by AS BIGINT) AS author,
       CAST(a.was_cancelled AS BOOLEAN) AS was_cancelled,
       CAST(a.ground_truth AS BOOLEAN) AS ground_truth,
       CAST(j.value->>'id' AS VARCHAR) AS region_id,
       CAST(j.value->>'from_name' AS VARCHAR) AS from_name,
       CAST(j.value->>'to_name' AS VARCHAR) AS to_name,
       CAST(j.value->>'type' AS VARCHAR) AS type,
       CAST({_LABEL.replace("region->", "j.value->")} AS VARCHAR) AS label,
       TRY_CAST(j.value->'value'->>'x' AS DOUBLE) / 100 AS x,
       TRY_CAST(j.value->'value'->>'y' AS DOUBLE) / 100 AS y,
       TRY_CAST(j.value->'value'->>'width' AS DOUBLE) / 100 AS width,
       TRY_CAST(j.value->'value'->>'height' AS DOUBLE) / 100 AS height,
       TRY_CAST(j.value->'value'->>'rotation' AS DOUBLE) AS rotation,
       TRY_CAST(j.value->'value'->>'start' AS BIGINT) AS start,
       TRY_CAST(j.value->'value'->>'end' AS BIGINT) AS "end",
       CAST(j.value->'value' AS VARCHAR) AS value
FROM (SELECT id AS task_id, unnest(annotations) AS a FROM tasks) AS t, json_each(a.result) AS j
"""

REGIONS = _REGIONS_BODY.strip()

ANNOTATIONS = """
SELECT CAST(task_id AS BIGINT) AS task_id,
       CAST(a.id AS BIGINT) AS annotation_id,
       CAST(a.completed_by AS BIGINT) AS author,
       a.created_at AS created_at,
       a.updated_at AS updated_at,
       CAST(a.lead_time AS DOUBLE) AS lead_time,
       CAST(a.was_cancelled AS BOOLEAN) AS was_cancelled,
       CAST(a.ground_truth AS BOOLEAN) AS ground_truth,
       CAST(coalesce(json_array_length(a.result), 0) AS BIGINT) AS regions,
       CAST(a.result AS VARCHAR) AS result
FROM (SELECT id AS task_id, unnest(annotations) AS a FROM tasks)
""".strip()

TASK_LABELS = f"""
WITH regions AS ({_REGIONS_BODY}),
ann AS (
    SELECT CAST(task_id AS BIGINT) AS task_id, a.id AS annotation_id, a.updated_at AS updated_at,
           coalesce(a.was_cancelled, false) AS cancelled, coalesce(a.ground_truth, false) AS ground_truth
    FROM (SELECT id AS task_id, unnest(annotations) AS a FROM tasks)
),
labelled AS (
    SELECT ann.*, (SELECT first(r.label ORDER BY r.region_index) FROM regions AS r
                   WHERE r.annotation_id = ann.annotation_id AND r.task_id = ann.task_id
                     AND r.label IS NOT NULL) AS label
    FROM ann WHERE NOT cancelled
),
votes AS (SELECT task_id, label, count(*) AS n FROM labelled WHERE label IS NOT NULL GROUP BY task_id, label),
majority AS (
    SELECT task_id, first(label ORDER BY n DESC, label) AS label, max(n) AS top, sum(n) AS votes
    FROM votes GROUP BY task_id
),
truth AS (
    SELECT task_id, first(label ORDER BY updated_at DESC, annotation_id DESC) AS label
    FROM labelled WHERE ground_truth AND label IS NOT NULL GROUP BY task_id
)
SELECT CAST(t.id AS BIGINT) AS task_id,
       CAST(coalesce(truth.label, majority.label) AS VARCHAR) AS label,
       CAST(CASE WHEN truth.label IS NOT NULL THEN 'ground_truth'
                 WHEN majority.label IS NOT NULL THEN 'majority' END AS VARCHAR) AS label_source,
       CAST(majority.label AS VARCHAR) AS majority_label,
       CAST(truth.label AS VARCHAR) AS ground_truth_label,
       CAST(majority.top AS DOUBLE) / majority.votes AS agreement,
       CAST(coalesce(majority.votes, 0) AS BIGINT) AS votes
FROM tasks AS t LEFT JOIN majority ON majority.task_id = t.id LEFT JOIN truth ON truth.task_id = t.id
""".strip()

#: name -> (DuckDB SQL over ``tasks``, primary key).
BUILTINS: dict[str, tuple[str, list[str]]] = {
    "regions": (REGIONS, ["task_id", "annotation_id", "region_index"]),
    "annotations": (ANNOTATIONS, ["task_id", "annotation_id"]),
    "task_labels": (TASK_LABELS, ["task_id"]),
}
