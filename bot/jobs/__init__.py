"""The model runner (DESIGN.md, "Layout" and "Scale"): in-process pool or a SAQ job queue on Redis.

`runner.py` names the jobs (`ModelRunner`), `local.py` runs them on this process's `ModelPool`,
`saq_runner.py` sends them to `musechat worker` processes (`worker.py`) through Redis.
"""
