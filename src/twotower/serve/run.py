"""`serve`: runs the service under uvicorn, in this process or in `workers` processes.

One process loads the model before it binds the port (a bad directory fails at once, named). With
several workers uvicorn imports `app_from_environment` in each process, which reads the settings
this process left in `TWOTOWER_SERVE_SETTINGS`; each worker holds its own model, so item updates
and reload are refused there (they would reach one worker only).
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI

from twotower.serve.app import create_app
from twotower.serve.options import ServeOptions, check_host

SETTINGS_VARIABLE = "TWOTOWER_SERVE_SETTINGS"
GRACEFUL_SECONDS = 30  # how long SIGTERM waits for requests in flight


def serve(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, ann: bool = False,
          options: ServeOptions | None = None) -> None:
    """Serves `model_dir` until SIGINT / SIGTERM, which stop accepting and finish the requests in flight.

    Raises:
        ValueError: a non-loopback `host` without an admin token, or a bad model directory.
        FileNotFoundError: the model directory, or with `ann` its index, is missing.
    """
    import uvicorn

    options = options or ServeOptions()
    check_host(host, options.admin_token)
    if options.workers == 1:
        app = create_app(model_dir, ann=ann, options=options)
        uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=GRACEFUL_SECONDS)
        return
    create_app(model_dir, ann=ann, options=options)  # fails here, once, rather than in every worker
    os.environ[SETTINGS_VARIABLE] = json.dumps({"model_dir": str(model_dir), "ann": ann, "options": options.to_dict()})
    uvicorn.run("twotower.serve.run:app_from_environment", factory=True, host=host, port=port,
                workers=options.workers, timeout_graceful_shutdown=GRACEFUL_SECONDS)


def app_from_environment() -> FastAPI:
    """The app of one worker process, from the settings `serve` put in the environment."""
    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    return create_app(settings["model_dir"], ann=settings["ann"], options=ServeOptions(**settings["options"]))
