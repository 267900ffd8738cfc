"""Events delivered to plugins, and how bursts of them for one object coalesce."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from kr_core.model import KubeObject, Resource

T = TypeVar("T", bound=KubeObject)


class EventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """A change to one object.

    ``new`` is the object after the change (``None`` for DELETED), ``old`` the one before it (``None`` for
    ADDED). Events are hints: a plugin reconciles from the caches, and a missed or merged event is repaired by
    the next full sync.
    """

    type: EventType
    resource: Resource
    new: T | None
    old: T | None = None

    @property
    def obj(self) -> T:
        """The object the event is about: ``new``, or ``old`` for a deletion."""
        o = self.new if self.new is not None else self.old
        assert o is not None
        return o

    @property
    def key(self) -> tuple[Resource, str]:
        """(resource, namespace/name): events with the same key are about the same object."""
        return (self.resource, self.obj.key)

    def __str__(self) -> str:
        return f"{self.type.value} {self.resource.value} {self.obj.key}"


def coalesce(first: Event, second: Event) -> Event | None:
    """Merge two pending events for the same object into one, or ``None`` if they cancel out.

    The merged event goes from the state before ``first`` to the state after ``second``:
    ADDED+MODIFIED is ADDED of the latest object; ADDED+DELETED is nothing; MODIFIED+DELETED is DELETED of the
    latest object; DELETED+ADDED is MODIFIED from the deleted object to the new one.
    """
    before = first.old
    after = second.new
    if first.type is EventType.ADDED:
        if second.type is EventType.DELETED:
            return None
        return Event(EventType.ADDED, second.resource, after, None)
    if second.type is EventType.DELETED:
        return Event(EventType.DELETED, second.resource, None, second.old)
    if first.type is EventType.DELETED:  # DELETED then ADDED/MODIFIED: the object was replaced
        return Event(EventType.MODIFIED, second.resource, after, first.old)
    return Event(EventType.MODIFIED, second.resource, after, before)
