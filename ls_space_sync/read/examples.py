"""Worked SQL queries for the usual questions (``ls-space-sync sql --example NAME --project P``).

``{table}`` stands for the project's table (``project_3``). Kept apart from :mod:`read.query` so
that listing their names (the CLI's ``--help``) imports nothing but this module.
"""

from __future__ import annotations

EXAMPLES: dict[str, str] = {
    "label-distribution": """
-- Label distribution per control (from_name): regions and tasks per label.
-- Cancelled (skipped) annotations are left out.
SELECT r.value ->> 'from_name' AS control,
       l.value ->> '$' AS label,
       count(*) AS regions,
       count(DISTINCT t.id) AS tasks
FROM {table} AS t,
     unnest(t.annotations) AS u(a),
     json_each(a.result) AS r,
     json_each(r.value, '$.value.' || (r.value ->> 'type')) AS l
WHERE NOT coalesce(a.was_cancelled, false)
GROUP BY ALL
ORDER BY control, regions DESC, label
""",
    "annotations-per-annotator": """
-- Annotations per annotator (completed_by = Label Studio user id).
SELECT a.completed_by AS annotator,
       count(*) AS annotations,
       count(*) FILTER (WHERE a.was_cancelled) AS cancelled,
       count(DISTINCT t.id) AS tasks,
       min(a.created_at) AS first_created,
       max(a.updated_at) AS last_updated
FROM {table} AS t, unnest(t.annotations) AS u(a)
GROUP BY ALL
ORDER BY annotations DESC, annotator
""",
    "disagreements": """
-- Tasks whose annotators disagree: per task and control, more than one distinct answer, where an
-- answer is the sorted list of labels one annotation gives for that control.
WITH answers AS (
    SELECT t.id AS task_id, a.id AS annotation_id, r.value ->> 'from_name' AS control,
           list_sort(list(l.value ->> '$')) AS answer
    FROM {table} AS t,
         unnest(t.annotations) AS u(a),
         json_each(a.result) AS r,
         json_each(r.value, '$.value.' || (r.value ->> 'type')) AS l
    WHERE NOT coalesce(a.was_cancelled, false)
    GROUP BY ALL
)
SELECT task_id, control,
       count(*) AS annotations,
       count(DISTINCT answer) AS distinct_answers,
       list_sort(list(DISTINCT array_to_string(answer, '|'))) AS answers
FROM answers
GROUP BY ALL
HAVING count(DISTINCT answer) > 1
ORDER BY task_id, control
""",
    "lead-time": """
-- Lead time (seconds an annotator spent on an annotation) percentiles, per annotator and overall.
SELECT coalesce(CAST(a.completed_by AS VARCHAR), 'all') AS annotator,
       count(a.lead_time) AS annotations,
       quantile_cont(a.lead_time, 0.5) AS p50_seconds,
       quantile_cont(a.lead_time, 0.9) AS p90_seconds,
       quantile_cont(a.lead_time, 0.99) AS p99_seconds,
       max(a.lead_time) AS max_seconds
FROM {table} AS t, unnest(t.annotations) AS u(a)
WHERE NOT coalesce(a.was_cancelled, false) AND a.lead_time IS NOT NULL
GROUP BY ROLLUP (a.completed_by)
ORDER BY GROUPING(a.completed_by), a.completed_by
""",
}
