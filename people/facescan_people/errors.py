"""The people's typed errors: what a user asked that cannot be done, said so that they
know what to do. Raised by the people's service (facescan_people.enrol, .directory);
the CLI prints the message and exits 2. Database errors stay the queue's
(facescan_queue.errors), translated the same way.
"""

from __future__ import annotations


class PeopleError(Exception):
    """Base of the people's errors: bad input (exit 2), never a database failure."""


class InvalidName(PeopleError):
    """A person's name that is empty, padded with spaces or holds control characters."""


class UnknownPerson(PeopleError):
    """No person of that name (in that library)."""


class AmbiguousPerson(PeopleError):
    """People of that name in several libraries: --library says which."""


class DuplicatePerson(PeopleError):
    """A person of that name already exists in the library."""


class NotScanned(PeopleError):
    """A photo whose faces are not detected yet (never scanned, or not done)."""


class NoFace(PeopleError):
    """A photo in which no face was found, or a --face number it does not have."""


class FaceChoiceNeeded(PeopleError):
    """A photo with several faces and no --face saying which one is the person."""


class FaceTaken(PeopleError):
    """A reference face the user already gave another person."""


class MixedLibraries(PeopleError):
    """Reference photos of one person in different libraries."""


class InvalidCursor(PeopleError):
    """An --after value that no listing printed."""


class UnknownFace(PeopleError):
    """A face id that no face has (`facescan faces PHOTO --json` prints them)."""


class PhotoClash(PeopleError):
    """A merge or move that would give one person two faces of one photo."""


class SamePerson(PeopleError):
    """A merge of a person with themselves."""


class NothingToUndo(PeopleError):
    """No merge, move or removal left to undo (in that library)."""
