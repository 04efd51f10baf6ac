"""Errors of the lab."""

from smesh.errors import SmeshError


class LabError(SmeshError):
    """A lab cannot be built, found or used as asked."""


class InvalidLabSpec(LabError):
    """A lab name, size or pod option is out of range."""

    exit_code = 2


class LabExists(LabError):
    """A lab of that name is already up."""


class LabNotFound(LabError):
    """No lab of that name is up."""


class UnknownMember(LabError):
    """A pod or node name that the lab does not have."""

    exit_code = 2


class CommandNotFound(LabError):
    """``lab exec`` was given a program that is not on PATH."""

    exit_code = 127
