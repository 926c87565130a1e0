"""Media: the files (images, audio, video, documents) that tasks reference, versioned with them.

- :mod:`.keys`: which task data keys hold media (the label config's media tags, ``media.keys``).
- :mod:`.fetch`: resolve Label Studio's URL forms and stream a file to disk with the client's retries.
- :mod:`.store`: the blobs (content-addressed by sha256, Lance blob encoding) and the per-run
  URL -> sha256 refs, beside the task dataset, tagged like it.
- :mod:`.run`: the media step of a sync run (collect, fetch + commit before the task commit, tag).
- :mod:`.read`: join a stored version's tasks with their bytes (PyTorch, Hugging Face, Parquet, COCO/YOLO).

See docs/media.md.
"""
