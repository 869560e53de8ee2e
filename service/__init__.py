"""The domain service: what the HTTP app (`app/`) and the command line (`hpscale/`) share.

It sits between the outside and the inside (`store/`, `fitting/`): study lookup, run
validation and defaults, CSV mapping, the current-fit claim/compute/wait loop,
recommendation assembly and token checks. It raises `service.errors.DomainError`s, never
HTTP errors; `app/errors.py` maps each to a status, the CLI to an exit code.
"""
