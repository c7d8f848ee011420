"""The registry of job kinds: what a job can be, and which worker service (queue) runs it.

One row per kind. The gateway validates per kind, the job store queues by the kind's service, the
dispatcher runs per kind, and its config names one Serve application per service; each of them keys
its own table by these members, and their tests check that every member has an entry.
"""

from __future__ import annotations

from enum import StrEnum

from tessera.v1 import jobs_pb2


class Service(StrEnum):
    """A worker service: one Redis queue, one dispatcher per dispatching process, one Serve application."""

    TEXT = "text"
    IMAGE = "image"
    UNDERSTANDING = "understanding"


class JobKind(StrEnum):
    """A kind of job. Its value is the JobSpec `kind` field that carries its request (a str, so it
    works wherever the field name does); `service` runs it; `result_field` is the JobResult field
    its result comes back in."""

    service: Service
    result_field: str

    # value (JobSpec field), service, JobResult field
    TEXT = ("text", Service.TEXT, "text")
    IMAGE = ("image", Service.IMAGE, "image")
    EDIT = ("edit", Service.IMAGE, "image")  # editing shares the image workers and their result
    UNDERSTAND = ("understand", Service.UNDERSTANDING, "understand")

    def __new__(cls, value: str, service: Service, result_field: str) -> JobKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.service = service
        member.result_field = result_field
        return member

    @classmethod
    def named(cls, name: str | None) -> JobKind | None:
        """The kind called `name` (a JobSpec field name); None for no name or one not registered."""
        return cls._value2member_map_.get(name or "")  # type: ignore[return-value]

    @classmethod
    def of(cls, spec: jobs_pb2.JobSpec) -> JobKind | None:
        """The spec's kind; None when it sets none, or one this registry does not know."""
        return cls.named(spec.WhichOneof("kind"))

    def spec(self, request: object) -> jobs_pb2.JobSpec:
        """A JobSpec carrying `request` as this kind."""
        return jobs_pb2.JobSpec(**{self.value: request})
