"""``serve run`` that stops the way orchestrators stop it.

    python -m rrr_ray.graceful serve run serve_config.yaml    # what `make serve` and the image run

docker, podman, compose, Kubernetes and process managers stop a server with SIGTERM (then SIGKILL
after a grace period). Ray's ``serve run`` shuts Serve down only on Ctrl-C (SIGINT); on SIGTERM
the SIGTERM handler of ``ray.init`` exits at once and Ray's exit hook kills the local node's
processes while the graph still answers, ``/health`` included. Here SIGTERM does what Ctrl-C
does: Serve deletes the application and stops its proxies first (``/health`` stops answering 200
within a second), then Ray's processes end. A second SIGTERM during that shutdown exits at once.
The arguments after ``serve`` are Ray's own ``serve`` command line, unchanged.
"""

from __future__ import annotations

import logging
import signal
import sys

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "serve":
        print("usage: python -m rrr_ray.graceful serve run CONFIG [serve run options]", file=sys.stderr)
        return 2
    import ray
    from ray import serve
    from ray.serve.scripts import cli

    try:
        cli.main(argv[1:], prog_name="serve", standalone_mode=False)
    except SystemExit as exc:  # ray.init's SIGTERM handler: sys.exit(SIGTERM)
        if exc.code == signal.SIGTERM and ray.is_initialized():
            print("Got SIGTERM, shutting down Serve...", file=sys.stderr, flush=True)
            serve.shutdown()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
