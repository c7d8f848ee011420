"""Ray Serve application builders, one per family (the pattern of Ray Serve LLM's `build_openai_app`).

These are the `import_path`s of the Serve config file (serve_config.yaml): Serve imports one, validates
the entry's `args` against the builder's pydantic annotation and calls it; the entry's `deployments:`
then set replicas, autoscaling, admission and resources on the one deployment it returns. So the file
that `serve run`, `make run` and a RayService's `serveConfigV2` carry holds all placement and scaling;
code holds none.
"""

# No `from __future__ import annotations` here: Serve reads the builders' parameter annotation as a
# class (inspect.signature) to validate `args`, and a string annotation would skip that.

from collections.abc import Callable

from ray import serve
from ray.serve import Application

from services.workers.family import Family
from services.workers.image.config import ImageArgs
from services.workers.image.family import IMAGE
from services.workers.server import WorkerServer
from services.workers.text.config import TextArgs
from services.workers.text.family import TEXT
from services.workers.understanding.config import UnderstandingArgs
from services.workers.understanding.family import UNDERSTANDING

FAMILIES: dict[str, Family] = {f.name: f for f in (TEXT, IMAGE, UNDERSTANDING)}


def build_app(family: Family, args: object) -> Application:
    """The family's app: one WorkerServer deployment named `family.deployment`, with Serve's defaults
    until the config's `deployments:` entry overrides them."""
    return serve.deployment(WorkerServer, name=family.deployment).bind(family, family.args.load(args))


def _family_builder(family: Family) -> Callable[[Callable[..., Application]], Callable[..., Application]]:
    def mark(fn: Callable[..., Application]) -> Callable[..., Application]:
        fn.family = family  # type: ignore[attr-defined]  # serve_config.py finds an entry's family by it
        return fn
    return mark


@_family_builder(TEXT)
def build_text_app(args: TextArgs) -> Application:
    """The text app: TextWorkerService over the D2F text engine."""
    return build_app(TEXT, args)


@_family_builder(IMAGE)
def build_image_app(args: ImageArgs) -> Application:
    """The image app: ImageWorkerService (text-to-image, editing) over Orthus or NextStep."""
    return build_app(IMAGE, args)


@_family_builder(UNDERSTANDING)
def build_understanding_app(args: UnderstandingArgs) -> Application:
    """The understanding app: UnderstandingWorkerService (image + question -> answer) over Orthus."""
    return build_app(UNDERSTANDING, args)
