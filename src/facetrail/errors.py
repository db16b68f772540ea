"""One exception hierarchy for the whole package.

Front doors map these to one clear line (CLI) or a problem-details body (HTTP); nothing in a
message may carry a face image or a descriptor, only names, paths and reasons.
"""

from __future__ import annotations


class FacetrailError(Exception):
    """Base of every error facetrail raises on purpose."""

    exit_code = 1


class MediaError(FacetrailError):
    """Bytes that are not an image or video facetrail will read (corrupt, hostile, unsupported)."""

    exit_code = 3


class NoFaceError(FacetrailError):
    """An image in which no usable face was found where one was required."""

    exit_code = 4


class ModelError(FacetrailError):
    """A model file that is missing, of the wrong kind, or damaged."""

    exit_code = 5


class NotFoundError(FacetrailError):
    """An unknown subject, image or other record."""

    exit_code = 6


class StoreError(FacetrailError):
    """The data directory cannot be used (locked, damaged, from a newer version)."""

    exit_code = 7


class InvalidInputError(FacetrailError):
    """An argument or file that is well formed but not acceptable (bad CSV, bad threshold)."""

    exit_code = 2


class AuthenticationError(FacetrailError):
    """No caller, or one whose password or token is wrong, expired, revoked or disabled."""

    exit_code = 9


class PermissionDeniedError(FacetrailError):
    """The caller's role does not allow the operation, or the record is outside their cases."""

    exit_code = 10


class PolicyError(FacetrailError):
    """The role allows it but policy does not, yet: an approval, authorisation or expiry."""

    exit_code = 11
